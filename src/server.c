/*
 * server.c: libmicrohttpd with an internal thread pool over epoll.
 *
 * A request is checked in the order of DESIGN.md's edge table as soon as
 * its headers are in (path, source, secret, method, then the declared
 * size), so a stranger's body is never read.  The body is read up to
 * max_body and handed whole to intake (intake.h), which owns what follows.
 * An update whose handler may be slow runs on the runner's threads while
 * its connection is suspended (MHD_suspend_connection), so no handler can
 * stall the other connections; intake's answer resumes it, at the latest
 * at reply_deadline.  An inline answer that cannot be delivered goes back
 * to intake (intake_undelivered).  Never 410 (23 hours of 410 make
 * Telegram delete the webhook), never a redirect.
 */
#include "server.h"

#include <gnutls/abstract.h>
#include <gnutls/gnutls.h>
#include <errno.h>
#include <inttypes.h>
#include <microhttpd.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "gate.h"
#include "intake.h"
#include "log.h"
#include "metrics.h"
#include "util.h"

/*
 * TLS 1.2 and 1.3 only, as Telegram's guide asks.  TLS 1.2 is kept to
 * ECDHE (forward secrecy: no static-RSA key exchange, no DHE with a
 * group of the client's choosing) and to AEAD ciphers (no CBC with
 * HMAC-SHA1 or SHA256, Lucky-13's family); TLS 1.3 has nothing else.
 * Telegram's client speaks ECDHE-RSA-AES-GCM, so nothing it needs goes.
 */
#define TLS_PRIORITIES "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2:" \
	"-KX-ALL:+ECDHE-ECDSA:+ECDHE-RSA:" \
	"-CIPHER-ALL:+AES-128-GCM:+AES-256-GCM:+CHACHA20-POLY1305:" \
	"-MAC-ALL:+AEAD"
#define RETRY_AFTER_S "5"
#define CONN_MEMORY (12 << 10)
/* Idle timeout for connections from outside trusted_networks. */
#define UNTRUSTED_TIMEOUT_S 10
#define PEER_BUCKETS 1024
/* How long server_stop waits for suspended requests: longer than the
 * longest reply_deadline (55 s), by which the runner resumes each. */
#define SUSPENDED_WAIT_MS 60000u

/* Open connections per untrusted address. */
struct peer {
	unsigned char addr[16];
	unsigned n;
	struct peer *next;
};
/* A connection from an address not known to be Telegram's, until a
 * request on it passes the gate; its socket context. */
struct stranger {
	struct peer *peer;	/* counted there; NULL once proved */
};
/* Rejected requests logged per window before the rest are counted. */
#define REJECT_LOG_BURST 10
#define REJECT_LOG_WINDOW_MS 10000

struct request {
	struct server *s;
	struct MHD_Connection *conn;
	const char *target_at;	/* where it was in the request line */
	size_t target_len;
	const char *blank;	/* where the blank line after the headers is,
				 * if they all ended in CRLF */
	bool admitted;		/* past the gate: counted in inflight */
	bool chunked;		/* refused: 411 */
	bool body_started;
	const char *bad_framing;	/* found in the body's framing */
	char *inline_answer;	/* the answer's body, while it is sent */
	struct buf body;
	size_t len;		/* the body's, once handed to intake */
	bool too_large;
	bool suspended;		/* waiting for intake's answer */
	atomic_bool ready;	/* the answer is in: the fields below */
	enum intake_status status;
	int64_t update_id;
	int type_index;
	char *answer;		/* intake's inline call, until answered */
	char target[];		/* the request-target as received */
};

/* A certificate chain and its key, as GnuTLS hands them to a handshake.
 * The current one is swapped atomically by a reload; the one before
 * stays alive until the next swap, for handshakes still using it. */
struct creds {
	gnutls_pcert_st pcerts[8];
	unsigned n;
	gnutls_privkey_t key;
};

static void stranger_proved(struct server *s, struct MHD_Connection *c);

struct server {
	struct MHD_Daemon *mhd;
	struct server_opts o;
	pthread_rwlock_t lock;	/* o.gate: readers are requests, the
				 * writer a reload */
	atomic_bool quiescing;
	atomic_uint inflight;
	atomic_uint suspended;	/* connections waiting for the runner */
	struct MHD_Response *empty200, *r400, *r400close, *r403, *r404, *r405,
	    *r411close, *r413, *r503;
	gnutls_datum_t ticket_key;	/* TLS session tickets (resumption) */
	_Atomic(struct creds *) creds_current;	/* served to handshakes */
	struct creds *creds_previous;	/* for handshakes begun before a swap */
	pthread_mutex_t peers_mu;
	struct peer *peers[PEER_BUCKETS];
	pthread_mutex_t log_mu;
	uint64_t log_window;
	unsigned log_count, log_suppressed;
};

static void
log_rejected(struct server *s, const char *client, const char *method,
    const char *why, unsigned status)
{
	uint64_t now = now_ms();
	unsigned suppressed = 0;
	bool show;

	pthread_mutex_lock(&s->log_mu);
	if (now - s->log_window >= REJECT_LOG_WINDOW_MS) {
		suppressed = s->log_suppressed;
		s->log_window = now;
		s->log_count = 0;
		s->log_suppressed = 0;
	}
	show = s->log_count++ < REJECT_LOG_BURST;
	if (!show)
		s->log_suppressed++;
	pthread_mutex_unlock(&s->log_mu);
	if (suppressed > 0)
		log_warn("%u more rejected requests were not logged",
		    suppressed);
	if (show && status != 0)
		log_warn("rejected %s from %s: %s (%u)", method, client, why,
		    status);
	else if (show)
		log_warn("refused a %s from %s: %s", method, client, why);
}

static struct MHD_Response *
fixed(unsigned status)
{
	struct MHD_Response *r = MHD_create_response_from_buffer(0, (void *)"",
	    MHD_RESPMEM_PERSISTENT);

	if (status == 503) {
		MHD_add_response_header(r, MHD_HTTP_HEADER_RETRY_AFTER,
		    RETRY_AFTER_S);
	}
	return r;
}

static enum MHD_Result
answer(struct MHD_Connection *c, unsigned status, struct MHD_Response *r)
{
	return MHD_queue_response(c, status, r);
}

/* An inline answer that cannot reach Telegram any more must not be lost
 * (intake.c says why): intake queues it as a follow-up, or else forgets
 * the update so that Telegram's redelivery is handled again. */
static void
undelivered(struct server *s, struct request *rq, char *json, const char *why)
{
	if (intake_undelivered(s->o.intake, rq->update_id, rq->type_index,
	    json) == 0) {
		log_info("update %" PRId64 ": %s before its inline answer was "
		    "sent: it goes out as a follow-up", rq->update_id, why);
		return;
	}
	log_warn("update %" PRId64 ": %s before its inline answer was sent, "
	    "and it cannot be queued: Telegram's redelivery will be handled "
	    "again", rq->update_id, why);
}

/* False when the peer has closed or reset the connection: its FIN or
 * RST has come, and a write would still seem to succeed (into the
 * kernel's buffer) and be lost. */
static bool
peer_still_there(struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c,
	    MHD_CONNECTION_INFO_CONNECTION_FD);
	struct pollfd p;

	if (ci == NULL)
		return true;
	p.fd = ci->connect_fd;
	p.events = POLLRDHUP;
	p.revents = 0;
	return poll(&p, 1, 0) != 1 ||
	    (p.revents & (POLLRDHUP | POLLHUP | POLLERR)) == 0;
}

/* Answers 200 with the inline call json (taken), or with nothing. */
static enum MHD_Result
answer_inline(struct server *s, struct request *rq, char *json)
{
	struct MHD_Connection *c = rq->conn;
	struct MHD_Response *r;
	enum MHD_Result ret;

	if (json == NULL)
		return answer(c, MHD_HTTP_OK, s->empty200);
	if (!peer_still_there(c)) {
		undelivered(s, rq, json, "Telegram closed the connection");
		return MHD_NO;
	}
	/* Kept until on_completed, which learns whether it was sent. */
	rq->inline_answer = json;
	r = MHD_create_response_from_buffer(strlen(json), json,
	    MHD_RESPMEM_PERSISTENT);
	MHD_add_response_header(r, MHD_HTTP_HEADER_CONTENT_TYPE,
	    "application/json");
	ret = MHD_queue_response(c, MHD_HTTP_OK, r);
	MHD_destroy_response(r);
	return ret;
}

static const char *
peer_text(struct MHD_Connection *c, char *buf, size_t len)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c,
	    MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	unsigned char a[16];

	if (ci == NULL || gate_addr_from_sockaddr(ci->client_addr, a) == -1)
		return "unknown";
	gate_addr_format(a, buf, len);
	return buf;
}

/*
 * What one pass over a request's header lines gathers.  RFC 9110 5.3: a
 * field sent on several lines is one comma-separated list, in order.  A
 * proxy that appends its own X-Forwarded-For line (HAProxy's `option
 * forwardfor`) instead of extending the client's one must not leave the
 * client's forged first line to decide the source.
 */
struct headers {
	struct buf forwarded_for;	/* every X-Forwarded-For line, joined */
	unsigned forwarded_lines;
	unsigned content_length;	/* lines of each */
	unsigned transfer_encoding;
	const char *next;	/* where the next line must begin */
	const char *problem;	/* the first framing fault, or NULL */
};

/*
 * Strict framing, where libmicrohttpd 0.9.75 is lenient (RFC 9112 2.2,
 * 5, 6.1, 6.3): a front proxy and we must agree on where each request
 * ends, or a second request can be smuggled inside the first one's body.
 * libmicrohttpd keeps a request's lines in its read buffer, one after
 * the other, each with its CR and LF overwritten by NULs, and points the
 * header values and the version there.  So a line ended by CRLF ends two
 * bytes before the next line begins, and a bare LF ends one byte before:
 * after the request line, each header line must begin exactly two bytes
 * past the end of the one before.  (A value folded over lines, obsolete
 * since RFC 7230, is copied elsewhere by libmicrohttpd and fails the same
 * test; so does a NUL inside a line.)  This is the layout of
 * libmicrohttpd 0.9.75 (Debian 12), read in its connection.c; should a
 * later version lay its buffer out otherwise, every request would be
 * refused, and test_server's pipelined requests fail at once.
 */
static bool
line_ends_in_crlf(const char *end)
{
	return end[0] == '\0' && end[1] == '\0';
}

/* RFC 9110's tchar, in the C locale's ASCII as isalnum() had it. */
static bool
is_tchar(unsigned char c)
{
	switch (c) {
	case '!': case '#': case '$': case '%': case '&': case '\'':
	case '*': case '+': case '-': case '.': case '^': case '_':
	case '`': case '|': case '~':
		return true;
	}
	return (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') ||
	    (c >= 'A' && c <= 'Z');
}

static bool
is_token(const char *p, size_t n)
{
	if (n == 0)
		return false;
	for (size_t i = 0; i < n; i++)
		if (!is_tchar((unsigned char)p[i]))
			return false;
	return true;
}

/* key (of key_size bytes) is the header name, in any case. */
static bool
header_is(const char *key, size_t key_size, const char *name,
    size_t name_size)
{
	return key_size == name_size && strcasecmp(key, name) == 0;
}
#define HEADER_IS(key, key_size, name) \
	header_is(key, key_size, name, sizeof(name) - 1)

static void
framing_fault(struct headers *h, const char *why)
{
	if (h->problem == NULL)
		h->problem = why;
}

static enum MHD_Result
on_header(void *cls, enum MHD_ValueKind kind, const char *key,
    size_t key_size, const char *value, size_t value_size)
{
	struct headers *h = cls;

	(void)kind;
	if (key != h->next)
		framing_fault(h, "a line not ended by CRLF, or a folded "
		    "header");
	if (!is_token(key, key_size))
		framing_fault(h, "a header name that is not a token");
	for (size_t i = 0; i < value_size; i++)
		if (((unsigned char)value[i] < 0x20 && value[i] != '\t') ||
		    value[i] == 0x7f)
			framing_fault(h, "a control character in a header");
	h->next = line_ends_in_crlf(value + value_size) ?
	    value + value_size + 2 : NULL;
	/* the name's length first: most lines are none of these */
	if (HEADER_IS(key, key_size, "X-Forwarded-For")) {
		if (h->forwarded_lines++ > 0)
			buf_append(&h->forwarded_for, ",", 1);
		buf_append(&h->forwarded_for, value, value_size);
	} else if (HEADER_IS(key, key_size, MHD_HTTP_HEADER_CONTENT_LENGTH)) {
		if (h->content_length++ > 0)
			framing_fault(h, "Content-Length given twice");
		if (value_size == 0 || strspn(value, "0123456789") !=
		    value_size)
			framing_fault(h, "a Content-Length that is not a "
			    "number");
	} else if (HEADER_IS(key, key_size,
	    MHD_HTTP_HEADER_TRANSFER_ENCODING)) {
		if (h->transfer_encoding++ > 0)
			framing_fault(h, "Transfer-Encoding given twice");
		/* libmicrohttpd decodes chunked only, and reads anything
		 * else to the end of the connection */
		if (strcasecmp(value, "chunked") != 0)
			framing_fault(h, "a Transfer-Encoding other than "
			    "chunked");
	}
	return MHD_YES;
}

/*
 * Reads the request's header lines into h (bounded by the connection's
 * memory, as the lines are) and checks the framing from the request line
 * to the blank line.  Returns NULL, or what is wrong.
 */
static const char *
read_headers(struct request *rq, const char *method, const char *version,
    struct headers *h)
{
	const char *t = rq->target_at;

	for (size_t i = 0; i < rq->target_len; i++)
		if ((unsigned char)rq->target[i] <= 0x20 ||
		    (unsigned char)rq->target[i] >= 0x7f)
			return "a request-target with a space or control "
			    "character";
	/* METHOD SP request-target SP HTTP-version CRLF, single spaces */
	if (t == NULL || t != method + strlen(method) + 1 ||
	    version != t + rq->target_len + 1 ||
	    strncmp(version, "HTTP/1.", 7) != 0)
		return "a malformed request line";
	h->next = line_ends_in_crlf(version + strlen(version)) ?
	    version + strlen(version) + 2 : NULL;
	MHD_get_connection_values_n(rq->conn, MHD_HEADER_KIND, on_header, h);
	if (h->problem != NULL)
		return h->problem;
	/* The blank line: a bare LF there is seen when the bytes after it
	 * have come (a body, or a pipelined request); the body's first
	 * bytes are checked again in on_request. */
	if (h->next == NULL || !line_ends_in_crlf(h->next))
		return "a line not ended by CRLF";
	if (h->content_length > 0 && h->transfer_encoding > 0)
		return "both Content-Length and Transfer-Encoding";
	/* A chunked body: libmicrohttpd 0.9.75 takes chunk lines ended by a
	 * bare LF, which a proxy may read otherwise, so a request hidden in
	 * the body would run.  Telegram always sends Content-Length: 411,
	 * before any of the body is read. */
	if (h->transfer_encoding > 0) {
		rq->chunked = true;
		return "a chunked body (Transfer-Encoding: chunked): only "
		    "Content-Length is taken (a proxy in front must pass it)";
	}
	rq->blank = h->next;
	return NULL;
}

/*
 * Called by libmicrohttpd with the request-target before it decodes %xx
 * or splits off the query: the gate judges these bytes, so that
 * "/PATH%3Fx", "/PATH%00x" or "%2FPATH" are not the secret path.  A
 * request's state starts here and ends in on_completed.
 */
static void *
on_uri(void *cls, const char *uri, struct MHD_Connection *c)
{
	size_t len = uri != NULL ? strlen(uri) : 0;
	/* one allocation with its target */
	struct request *rq = xcalloc(1, sizeof(*rq) + len + 1);

	rq->s = cls;
	rq->conn = c;
	if (len > 0)
		memcpy(rq->target, uri, len);
	rq->target_at = uri;
	rq->target_len = len;
	return rq;
}

/* Intake's answer comes later: on the thread that submitted the body. */
static void
on_pending(void *arg)
{
	struct request *rq = arg;

	rq->suspended = true;
	atomic_fetch_add(&rq->s->suspended, 1);
	MHD_suspend_connection(rq->conn);
}

/* Intake's answer: on the thread that submitted the body, or for a
 * suspended connection on a runner thread. */
static void
on_answer(void *arg, struct intake_result *r)
{
	struct request *rq = arg;
	struct server *s = rq->s;

	rq->status = r->status;
	rq->update_id = r->update_id;
	rq->type_index = r->type_index;
	rq->answer = r->answer;
	r->answer = NULL;
	if (r->status == INTAKE_BAD) {
		char peer[64];

		log_warn("bad update from %s (%zu bytes): %s",
		    peer_text(rq->conn, peer, sizeof(peer)), rq->len,
		    r->error);
	}
	if (rq->suspended) {
		atomic_store(&rq->ready, true);
		MHD_resume_connection(rq->conn);
		atomic_fetch_sub(&s->suspended, 1);
	}
}

/* The answer intake gave. */
static enum MHD_Result
answer_update(struct server *s, struct request *rq)
{
	struct MHD_Connection *c = rq->conn;
	char *inline_call = rq->answer;

	rq->answer = NULL;
	switch (rq->status) {
	case INTAKE_BAD:
		return answer(c, MHD_HTTP_BAD_REQUEST, s->r400);
	case INTAKE_BUSY:
		return answer(c, MHD_HTTP_SERVICE_UNAVAILABLE, s->r503);
	case INTAKE_OK:
		break;
	}
	return answer_inline(s, rq, inline_call);
}

/* The whole body is in: intake takes it from here. */
static enum MHD_Result
handle_update(struct server *s, struct request *rq)
{
	rq->len = rq->body.len;
	intake_submit(s->o.intake, buf_steal(&rq->body), rq->len,
	    &(struct intake_cb){ on_pending, on_answer, rq });
	if (rq->suspended)
		return MHD_YES;
	return answer_update(s, rq);
}

/*
 * The request's headers are in: framing, then the gate in the order of
 * the edge table, then the declared size.  A stranger's body is never
 * read.  A request framed in a way a proxy could read otherwise is
 * answered 400 and its connection closed, whoever sent it, so that
 * nothing after it on the connection is taken for a request.
 */
static enum MHD_Result
admit(struct server *s, struct request *rq, const char *method,
    const char *version)
{
	struct MHD_Connection *c = rq->conn;
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c,
	    MHD_CONNECTION_INFO_CLIENT_ADDRESS);
	struct headers hs = { 0 };
	struct gate_request gr = {
		.url = rq->target,
		.method = method,
		.peer = ci != NULL ? ci->client_addr : NULL,
		.secret_header = MHD_lookup_connection_value(c,
		    MHD_HEADER_KIND, "X-Telegram-Bot-Api-Secret-Token"),
	};
	const char *cl = NULL, *bad;
	char client[64];
	bool too_large = false;
	enum gate_verdict v = GATE_OK;
	static const unsigned codes[] = {
		[GATE_NOT_FOUND] = MHD_HTTP_NOT_FOUND,
		[GATE_BAD_SOURCE] = MHD_HTTP_FORBIDDEN,
		[GATE_BAD_SECRET] = MHD_HTTP_FORBIDDEN,
		[GATE_BAD_METHOD] = MHD_HTTP_METHOD_NOT_ALLOWED,
	};
	static const enum metric_reject reasons[] = {
		[GATE_NOT_FOUND] = MR_PATH,
		[GATE_BAD_SOURCE] = MR_SOURCE,
		[GATE_BAD_SECRET] = MR_SECRET,
		[GATE_BAD_METHOD] = MR_METHOD,
	};

	if ((bad = read_headers(rq, method, version, &hs)) == NULL &&
	    hs.forwarded_lines > 0)
		gr.forwarded_for = hs.forwarded_for.data != NULL ?
		    hs.forwarded_for.data : "";
	if (bad == NULL) {
		cl = MHD_lookup_connection_value(c, MHD_HEADER_KIND,
		    MHD_HTTP_HEADER_CONTENT_LENGTH);
		too_large = cl != NULL && strtoull(cl, NULL, 10) >
		    s->o.max_body;
		/* the client's address as text only for a refusal's log */
		pthread_rwlock_rdlock(&s->lock);
		v = gate_check(s->o.gate, &gr, NULL, 0);
		if (v != GATE_OK || too_large)
			gate_client_text(s->o.gate, &gr, client,
			    sizeof(client));
		pthread_rwlock_unlock(&s->lock);
	}
	buf_free(&hs.forwarded_for);
	if (bad != NULL) {
		unsigned code = rq->chunked ? MHD_HTTP_LENGTH_REQUIRED :
		    MHD_HTTP_BAD_REQUEST;

		log_rejected(s, peer_text(c, client, sizeof(client)), method,
		    bad, code);
		metrics_reject(MR_FRAMING);
		return answer(c, code, rq->chunked ? s->r411close :
		    s->r400close);
	}
	if (v != GATE_OK) {
		struct MHD_Response *r = v == GATE_NOT_FOUND ? s->r404 :
		    v == GATE_BAD_METHOD ? s->r405 : s->r403;

		log_rejected(s, client, method, gate_verdict_name(v),
		    codes[v]);
		metrics_reject(reasons[v]);
		return answer(c, codes[v], r);
	}
	stranger_proved(s, c);
	if (atomic_load(&s->quiescing))
		return answer(c, MHD_HTTP_SERVICE_UNAVAILABLE, s->r503);
	if (too_large) {
		log_rejected(s, client, method, "body over max_body",
		    MHD_HTTP_CONTENT_TOO_LARGE);
		metrics_reject(MR_TOO_LARGE);
		return answer(c, MHD_HTTP_CONTENT_TOO_LARGE, s->r413);
	}
	/* one allocation for the body when its length is declared */
	if (cl != NULL)
		buf_reserve(&rq->body, strtoull(cl, NULL, 10));
	rq->admitted = true;
	atomic_fetch_add(&s->inflight, 1);
	return MHD_YES;
}

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *c, const char *url,
    const char *method, const char *version, const char *upload,
    size_t *upload_size, void **con_cls)
{
	struct server *s = cls;
	struct request *rq = *con_cls;

	(void)url;	/* decoded: the gate judges rq->target instead */
	if (rq == NULL)
		return MHD_NO;	/* on_uri always runs first */
	if (!rq->admitted)
		return admit(s, rq, method, version);
	if (rq->suspended) {
		/* Resumed by intake's answer. */
		if (!atomic_load(&rq->ready))
			return MHD_YES;
		rq->suspended = false;
		return answer_update(s, rq);
	}
	if (*upload_size > 0) {
		/* The body begins right after the blank line: one byte short
		 * of where CRLF endings put it means the last header line or
		 * the blank line ended in a bare LF.  (Further off, the
		 * buffer was moved, and the first call has judged.) */
		if (!rq->body_started && upload >= rq->blank &&
		    upload < rq->blank + 2)
			rq->bad_framing = "a line not ended by CRLF";
		rq->body_started = true;
		if (!rq->too_large && rq->body.len + *upload_size <=
		    s->o.max_body)
			buf_append(&rq->body, upload, *upload_size);
		else
			rq->too_large = true;
		*upload_size = 0;
		return MHD_YES;
	}
	if (rq->bad_framing != NULL) {
		char peer[64];

		log_rejected(s, peer_text(c, peer, sizeof(peer)), method,
		    rq->bad_framing, MHD_HTTP_BAD_REQUEST);
		metrics_reject(MR_FRAMING);
		return answer(c, MHD_HTTP_BAD_REQUEST, s->r400close);
	}
	if (rq->too_large) {
		char peer[64];

		log_rejected(s, peer_text(c, peer, sizeof(peer)), method,
		    "body over max_body", MHD_HTTP_CONTENT_TOO_LARGE);
		metrics_reject(MR_TOO_LARGE);
		return answer(c, MHD_HTTP_CONTENT_TOO_LARGE, s->r413);
	}
	return handle_update(s, rq);
}

static void
on_completed(void *cls, struct MHD_Connection *c, void **con_cls,
    enum MHD_RequestTerminationCode toe)
{
	struct server *s = cls;
	struct request *rq = *con_cls;

	(void)c;
	if (rq == NULL)
		return;
	/* Answered by intake, then closed before on_request could send it
	 * (resumed at stop, or the peer went away while suspended). */
	if (rq->answer != NULL)
		undelivered(s, rq, rq->answer, "the connection closed");
	/* Not sent whole: Telegram cannot have run it. */
	if (rq->inline_answer != NULL && toe !=
	    MHD_REQUEST_TERMINATED_COMPLETED_OK)
		undelivered(s, rq, rq->inline_answer, "the connection failed");
	else
		free(rq->inline_answer);
	if (rq->admitted)
		atomic_fetch_sub(&s->inflight, 1);
	buf_free(&rq->body);
	free(rq);
	*con_cls = NULL;
}

static void
creds_free(struct creds *c)
{
	if (c == NULL)
		return;
	for (unsigned i = 0; i < c->n; i++)
		gnutls_pcert_deinit(&c->pcerts[i]);
	gnutls_privkey_deinit(c->key);
	free(c);
}

static struct creds *
creds_new(const char *cert_pem, const char *key_pem, char *err, size_t errlen)
{
	struct creds *c = xcalloc(1, sizeof(*c));
	gnutls_datum_t cd = { (unsigned char *)(uintptr_t)cert_pem,
		(unsigned)strlen(cert_pem) };
	gnutls_datum_t kd = { (unsigned char *)(uintptr_t)key_pem,
		(unsigned)strlen(key_pem) };
	int rc;

	c->n = nitems(c->pcerts);
	if ((rc = gnutls_pcert_list_import_x509_raw(c->pcerts, &c->n, &cd,
	    GNUTLS_X509_FMT_PEM, 0)) < 0) {
		errf(err, errlen, "gnutls_pcert_list_import_x509_raw(): %s",
		    gnutls_strerror(rc));
		c->n = 0;
		goto fail;
	}
	if ((rc = gnutls_privkey_init(&c->key)) < 0 ||
	    (rc = gnutls_privkey_import_x509_raw(c->key, &kd,
	    GNUTLS_X509_FMT_PEM, NULL, 0)) < 0) {
		errf(err, errlen, "gnutls_privkey_import_x509_raw(): %s",
		    gnutls_strerror(rc));
		goto fail;
	}
	return c;
fail:
	creds_free(c);
	return NULL;
}

/* GnuTLS asks for the certificate at every handshake. */
static int
on_certificate(gnutls_session_t session, const gnutls_datum_t *req_ca_rdn,
    int nreqs, const gnutls_pk_algorithm_t *pk_algos, int pk_algos_length,
    gnutls_pcert_st **pcert, unsigned int *pcert_length,
    gnutls_privkey_t *privkey)
{
	struct server *s = gnutls_db_get_ptr(session);
	struct creds *c = s != NULL ? atomic_load(&s->creds_current) : NULL;

	(void)req_ca_rdn;
	(void)nreqs;
	(void)pk_algos;
	(void)pk_algos_length;
	if (c == NULL)
		return -1;
	*pcert = c->pcerts;
	*pcert_length = c->n;
	*privkey = c->key;
	return 0;
}

int
server_set_certificate(struct server *s, const char *cert_pem,
    const char *key_pem, char *err, size_t errlen)
{
	struct creds *c = creds_new(cert_pem, key_pem, err, errlen);

	if (c == NULL)
		return -1;
	/* Handshakes that started a moment ago may still use the current
	 * credentials: those live until the next swap. */
	creds_free(s->creds_previous);
	s->creds_previous = atomic_exchange(&s->creds_current, c);
	return 0;
}

void
server_swap(struct server *s, struct gate *g)
{
	struct gate *old_gate;

	pthread_rwlock_wrlock(&s->lock);
	old_gate = s->o.gate;
	s->o.gate = g;
	pthread_rwlock_unlock(&s->lock);
	gate_free(old_gate);
}

static bool
peer_trusted(struct server *s, const struct sockaddr *sa)
{
	bool ok;

	pthread_rwlock_rdlock(&s->lock);
	ok = gate_peer_trusted(s->o.gate, sa);
	pthread_rwlock_unlock(&s->lock);
	return ok;
}

static struct peer **
peer_slot(struct server *s, const unsigned char addr[16])
{
	uint32_t h = 2166136261u;
	struct peer **p;

	for (int i = 0; i < 16; i++)
		h = (h ^ addr[i]) * 16777619u;
	for (p = &s->peers[h % PEER_BUCKETS]; *p != NULL; p = &(*p)->next)
		if (memcmp((*p)->addr, addr, 16) == 0)
			break;
	return p;
}

/*
 * Accept policy: Telegram (trusted_networks) and trusted proxies are
 * never limited; any other address may hold at most per_ip_limit
 * connections that no request has yet proved to be Telegram's, so that
 * one source holding connections open (slowloris, a flood of idle
 * sockets) cannot take the places Telegram needs.  With trusted_networks
 * empty that is every address but the proxies: a connection is then
 * proved by its first request that passes the gate (path, secret token),
 * and from then on neither counted nor given the short idle timeout.
 */
static enum MHD_Result
on_accept(void *cls, const struct sockaddr *sa, socklen_t len)
{
	struct server *s = cls;
	unsigned char addr[16];
	struct peer *p;
	bool ok;

	(void)len;
	if (s->o.per_ip_limit == 0 || peer_trusted(s, sa) ||
	    gate_addr_from_sockaddr(sa, addr) == -1)
		return MHD_YES;
	pthread_mutex_lock(&s->peers_mu);
	p = *peer_slot(s, addr);
	ok = p == NULL || p->n < s->o.per_ip_limit;
	pthread_mutex_unlock(&s->peers_mu);
	if (!ok) {
		char text[64];

		gate_addr_format(addr, text, sizeof(text));
		log_rejected(s, text, "connection", "per_ip_limit reached", 0);
		metrics_reject(MR_SOURCE);
	}
	return ok ? MHD_YES : MHD_NO;
}

/* Uncounts a connection of p's address.  Under peers_mu. */
static void
peer_leave(struct server *s, struct peer *p)
{
	struct peer **pp;

	if (--p->n == 0) {
		pp = peer_slot(s, p->addr);
		*pp = p->next;
		free(p);
	}
}

static void
on_connection(void *cls, struct MHD_Connection *c, void **socket_ctx,
    enum MHD_ConnectionNotificationCode code)
{
	struct server *s = cls;
	const union MHD_ConnectionInfo *ci;
	unsigned char addr[16];
	struct peer **pp;
	struct stranger *st;

	/* Session tickets: a client that comes back resumes its TLS session
	 * instead of a full handshake (an RSA signature).  The GnuTLS
	 * session exists from here on; its handshake has not begun. */
	if (code == MHD_CONNECTION_NOTIFY_STARTED && s->ticket_key.data != NULL &&
	    (ci = MHD_get_connection_info(c,
	    MHD_CONNECTION_INFO_GNUTLS_SESSION)) != NULL)
		gnutls_session_ticket_enable_server(ci->tls_session,
		    &s->ticket_key);
	/* The certificate callback has no argument of its own: it finds the
	 * server through the session's database pointer, which nothing else
	 * uses (no session cache: resumption is by tickets; libmicrohttpd
	 * keeps the connection in the session pointer). */
	if (code == MHD_CONNECTION_NOTIFY_STARTED && s->o.tls &&
	    (ci = MHD_get_connection_info(c,
	    MHD_CONNECTION_INFO_GNUTLS_SESSION)) != NULL)
		gnutls_db_set_ptr(ci->tls_session, s);
	if (s->o.per_ip_limit == 0)
		return;
	if (code == MHD_CONNECTION_NOTIFY_STARTED) {
		ci = MHD_get_connection_info(c,
		    MHD_CONNECTION_INFO_CLIENT_ADDRESS);
		if (ci == NULL || peer_trusted(s, ci->client_addr) ||
		    gate_addr_from_sockaddr(ci->client_addr, addr) == -1)
			return;
		/* Strangers get a short idle timeout too. */
		MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT,
		    (unsigned)UNTRUSTED_TIMEOUT_S);
		pthread_mutex_lock(&s->peers_mu);
		pp = peer_slot(s, addr);
		if (*pp == NULL) {
			*pp = xcalloc(1, sizeof(**pp));
			memcpy((*pp)->addr, addr, 16);
		}
		/*
		 * on_accept() checked the count, but the pool's threads accept
		 * at once: two may pass it with one place left.  The count is
		 * decided here, under the lock; a connection past it is ended
		 * now (libmicrohttpd reads the end and closes it).
		 */
		if ((*pp)->n >= s->o.per_ip_limit) {
			pthread_mutex_unlock(&s->peers_mu);
			if ((ci = MHD_get_connection_info(c,
			    MHD_CONNECTION_INFO_CONNECTION_FD)) != NULL)
				shutdown(ci->connect_fd, SHUT_RDWR);
			metrics_reject(MR_SOURCE);
			return;
		}
		(*pp)->n++;
		st = xcalloc(1, sizeof(*st));
		st->peer = *pp;
		pthread_mutex_unlock(&s->peers_mu);
		*socket_ctx = st;	/* counted: uncount at close */
		return;
	}
	if ((st = *socket_ctx) == NULL)
		return;
	pthread_mutex_lock(&s->peers_mu);
	if (st->peer != NULL)
		peer_leave(s, st->peer);
	pthread_mutex_unlock(&s->peers_mu);
	free(st);
	*socket_ctx = NULL;
}

/* A request on c passed the gate: if its connection was a stranger's, it
 * is one no longer (see on_accept). */
static void
stranger_proved(struct server *s, struct MHD_Connection *c)
{
	const union MHD_ConnectionInfo *ci = MHD_get_connection_info(c,
	    MHD_CONNECTION_INFO_SOCKET_CONTEXT);
	struct stranger *st;
	bool was;

	if (ci == NULL || (st = ci->socket_context) == NULL)
		return;
	pthread_mutex_lock(&s->peers_mu);
	if ((was = st->peer != NULL)) {
		peer_leave(s, st->peer);
		st->peer = NULL;
	}
	pthread_mutex_unlock(&s->peers_mu);
	if (was)
		MHD_set_connection_option(c, MHD_CONNECTION_OPTION_TIMEOUT,
		    s->o.timeout_s);
}

static void
on_mhd_log(void *cls, const char *fmt, va_list ap)
{
	char line[512];

	(void)cls;
	vsnprintf(line, sizeof(line), fmt, ap);
	line[strcspn(line, "\n")] = '\0';
	log_debug("libmicrohttpd: %s", line);
}

int
server_bind(const struct sockaddr_storage *addr, char *err, size_t errlen)
{
	socklen_t len = addr->ss_family == AF_INET6 ?
	    sizeof(struct sockaddr_in6) : sizeof(struct sockaddr_in);
	int fd, one = 1, zero = 0;

	if ((fd = socket(addr->ss_family, SOCK_STREAM | SOCK_CLOEXEC |
	    SOCK_NONBLOCK, 0)) == -1) {
		errf(err, errlen, "socket: %s", strerror(errno));
		return -1;
	}
	setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
	/* [::] serves IPv4 too (as mapped addresses, which the gate
	 * understands). */
	if (addr->ss_family == AF_INET6)
		setsockopt(fd, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof(zero));
	if (bind(fd, (const struct sockaddr *)addr, len) == -1 ||
	    listen(fd, 511) == -1) {
		errf(err, errlen, "cannot listen: %s%s", strerror(errno),
		    errno == EACCES ? " (a port below 1024 needs root or "
		    "CAP_NET_BIND_SERVICE)" : errno == EADDRINUSE ? " (another "
		    "program serves that port)" : "");
		close(fd);
		return -1;
	}
	return fd;
}

struct server *
server_start(const struct server_opts *o, char *err, size_t errlen)
{
	struct server *s = xcalloc(1, sizeof(*s));
	unsigned flags = MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
	    MHD_ALLOW_SUSPEND_RESUME | MHD_USE_ERROR_LOG;
	struct MHD_OptionItem opts[16];
	size_t n = 0;
	pthread_rwlockattr_t ra;
	int rc;

	s->o = *o;
	/* Writer preference: a reload must not starve under load. */
	pthread_rwlockattr_init(&ra);
	pthread_rwlockattr_setkind_np(&ra,
	    PTHREAD_RWLOCK_PREFER_WRITER_NONRECURSIVE_NP);
	pthread_rwlock_init(&s->lock, &ra);
	pthread_rwlockattr_destroy(&ra);
	pthread_mutex_init(&s->log_mu, NULL);
	pthread_mutex_init(&s->peers_mu, NULL);
	s->empty200 = fixed(200);
	s->r400 = fixed(400);
	s->r400close = fixed(400);
	MHD_add_response_header(s->r400close, MHD_HTTP_HEADER_CONNECTION,
	    "close");
	s->r411close = fixed(411);
	MHD_add_response_header(s->r411close, MHD_HTTP_HEADER_CONNECTION,
	    "close");
	s->r403 = fixed(403);
	s->r404 = fixed(404);
	s->r405 = fixed(405);
	s->r413 = fixed(413);
	s->r503 = fixed(503);
	if (o->addr.ss_family == AF_INET6)
		flags |= MHD_USE_IPv6;
	if (o->tls)
		flags |= MHD_USE_TLS;
#define OPT(o_, v_, p_) \
	opts[n++] = (struct MHD_OptionItem){ (o_), (intptr_t)(v_), (p_) }
	OPT(MHD_OPTION_EXTERNAL_LOGGER, on_mhd_log, NULL);
	if (o->listen_fd >= 0)
		OPT(MHD_OPTION_LISTEN_SOCKET, o->listen_fd, NULL);
	else
		OPT(MHD_OPTION_SOCK_ADDR, 0, (void *)&s->o.addr);
	OPT(MHD_OPTION_NOTIFY_COMPLETED, on_completed, s);
	OPT(MHD_OPTION_URI_LOG_CALLBACK, on_uri, s);
	OPT(MHD_OPTION_CONNECTION_LIMIT, o->max_clients, NULL);
	OPT(MHD_OPTION_CONNECTION_TIMEOUT, o->timeout_s, NULL);
	OPT(MHD_OPTION_LISTENING_ADDRESS_REUSE, 1, NULL);
	/* Per-connection memory for headers and reading: Telegram's header
	 * block fits in 4 KiB; bodies are copied out as they come.  The whole
	 * of it is dirty for as long as the connection lives (libmicrohttpd
	 * mallocs it and zeroes it at each request), so it is most of a
	 * connection's cost: 12 KiB takes the 6 KiB header block promised
	 * (with libmicrohttpd's record of each header line and the
	 * response's header) and answers a larger one 431. */
	OPT(MHD_OPTION_CONNECTION_MEMORY_LIMIT, (size_t)CONN_MEMORY, NULL);
	OPT(MHD_OPTION_NOTIFY_CONNECTION, on_connection, s);
	if (o->threads > 1)
		OPT(MHD_OPTION_THREAD_POOL_SIZE, o->threads, NULL);
	if (o->tls) {
		if (server_set_certificate(s, o->cert_pem, o->key_pem, err,
		    errlen) == -1) {
			server_stop(s);
			return NULL;
		}
		if ((rc = gnutls_session_ticket_key_generate(&s->ticket_key)) <
		    0) {
			errf(err, errlen, "TLS session ticket key: %s",
			    gnutls_strerror(rc));
			server_stop(s);
			return NULL;
		}
		OPT(MHD_OPTION_HTTPS_CERT_CALLBACK, 0, (void *)on_certificate);
		OPT(MHD_OPTION_HTTPS_PRIORITIES, 0, (void *)TLS_PRIORITIES);
	}
	OPT(MHD_OPTION_END, 0, NULL);
#undef OPT
	s->mhd = MHD_start_daemon(flags, 0, on_accept, s, on_request, s,
	    MHD_OPTION_ARRAY, opts, MHD_OPTION_END);
	if (s->mhd == NULL) {
		errf(err, errlen, "libmicrohttpd would not start; run with "
		    "[log] level = debug for its reason");
		server_stop(s);
		return NULL;
	}
	return s;
}

void
server_quiesce(struct server *s)
{
	MHD_socket fd;

	atomic_store(&s->quiescing, true);
	if (s->mhd != NULL && (fd = MHD_quiesce_daemon(s->mhd)) != MHD_INVALID_SOCKET)
		close(fd);
}

unsigned
server_inflight(struct server *s)
{
	return atomic_load(&s->inflight);
}

void
server_stop(struct server *s)
{
	uint64_t until = now_ms() + SUSPENDED_WAIT_MS;

	if (s == NULL)
		return;
	/* libmicrohttpd 0.9.75 aborts the process when it is stopped with a
	 * connection suspended (MHD_PANIC), as it was when a handler outlived
	 * shutdown_timeout.  The runner resumes each at reply_deadline at the
	 * latest; a request it resumes now is closed unanswered, and its
	 * inline answer, if it has one, goes out as a follow-up. */
	while (atomic_load(&s->suspended) > 0 && now_ms() < until)
		usleep(10 * 1000);
	if (atomic_load(&s->suspended) > 0)
		log_err("%u request(s) still wait for a handler after %u s",
		    atomic_load(&s->suspended), SUSPENDED_WAIT_MS / 1000);
	if (s->mhd != NULL)
		MHD_stop_daemon(s->mhd);
	MHD_destroy_response(s->empty200);
	MHD_destroy_response(s->r400);
	MHD_destroy_response(s->r400close);
	MHD_destroy_response(s->r411close);
	MHD_destroy_response(s->r403);
	MHD_destroy_response(s->r404);
	MHD_destroy_response(s->r405);
	MHD_destroy_response(s->r413);
	MHD_destroy_response(s->r503);
	pthread_mutex_destroy(&s->log_mu);
	pthread_mutex_destroy(&s->peers_mu);
	for (size_t i = 0; i < PEER_BUCKETS; i++)
		while (s->peers[i] != NULL) {
			struct peer *p = s->peers[i];

			s->peers[i] = p->next;
			free(p);
		}
	pthread_rwlock_destroy(&s->lock);
	if (s->ticket_key.data != NULL) {
		gnutls_memset(s->ticket_key.data, 0, s->ticket_key.size);
		gnutls_free(s->ticket_key.data);
	}
	gate_free(s->o.gate);
	creds_free(s->creds_previous);
	creds_free(atomic_exchange(&s->creds_current, NULL));
	free(s);
}
