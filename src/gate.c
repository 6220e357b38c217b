/*
 * gate.c: request authentication, free of I/O.
 *
 * Invariants: every address is compared in its 16-byte IPv6 form, IPv4 as
 * ::ffff:a.b.c.d, so a dual-stack listener's mapped addresses match IPv4
 * networks.  Secrets are compared with CRYPTO_memcmp over the expected
 * length, so timing tells nothing about how many bytes matched.
 */
#include "gate.h"

#include <arpa/inet.h>
#include <ctype.h>
#include <netinet/in.h>
#include <openssl/crypto.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "util.h"

struct net {
	unsigned char addr[16];
	unsigned prefix;	/* 0..128 over the 16-byte form */
};

struct netlist {
	struct net *nets;
	size_t n;
};

struct gate {
	char *path;		/* with its leading '/' */
	size_t path_len;
	char *secret;
	struct netlist *networks;
	struct netlist *proxies;
};

static const unsigned char v4mapped[12] = { 0, 0, 0, 0, 0, 0, 0, 0, 0, 0,
	0xff, 0xff };

int
gate_addr_from_string(const char *s, unsigned char out[16])
{
	struct in_addr a4;

	if (inet_pton(AF_INET, s, &a4) == 1) {
		memcpy(out, v4mapped, 12);
		memcpy(out + 12, &a4, 4);
		return 0;
	}
	if (inet_pton(AF_INET6, s, out) == 1)
		return 0;
	return -1;
}

int
gate_addr_from_sockaddr(const struct sockaddr *sa, unsigned char out[16])
{
	if (sa == NULL)
		return -1;
	if (sa->sa_family == AF_INET) {
		const struct sockaddr_in *in = (const void *)sa;

		memcpy(out, v4mapped, 12);
		memcpy(out + 12, &in->sin_addr, 4);
		return 0;
	}
	if (sa->sa_family == AF_INET6) {
		const struct sockaddr_in6 *in6 = (const void *)sa;

		memcpy(out, &in6->sin6_addr, 16);
		return 0;
	}
	return -1;
}

void
gate_addr_format(const unsigned char addr[16], char *out, size_t len)
{
	if (memcmp(addr, v4mapped, 12) == 0)
		inet_ntop(AF_INET, addr + 12, out, (socklen_t)len);
	else
		inet_ntop(AF_INET6, addr, out, (socklen_t)len);
}

static int
net_parse(const char *s, struct net *n, char *err, size_t errlen)
{
	char buf[INET6_ADDRSTRLEN + 8];
	const char *slash = strchr(s, '/');
	size_t alen = slash ? (size_t)(slash - s) : strlen(s);
	bool v4;
	long prefix;

	if (alen == 0 || alen >= INET6_ADDRSTRLEN) {
		errf(err, errlen, "'%s' is not an address or network", s);
		return -1;
	}
	memcpy(buf, s, alen);
	buf[alen] = '\0';
	if (gate_addr_from_string(buf, n->addr) == -1) {
		errf(err, errlen, "'%s' is not an IPv4 or IPv6 address", buf);
		return -1;
	}
	v4 = strchr(buf, ':') == NULL;
	if (slash == NULL) {
		prefix = v4 ? 32 : 128;
	} else {
		char *end;

		if (!isdigit((unsigned char)slash[1])) {
			errf(err, errlen, "'%s': bad prefix length", s);
			return -1;
		}
		prefix = strtol(slash + 1, &end, 10);
		if (*end != '\0' || prefix > (v4 ? 32 : 128)) {
			errf(err, errlen, "'%s': prefix length must be 0-%d",
			    s, v4 ? 32 : 128);
			return -1;
		}
	}
	n->prefix = (unsigned)(v4 ? prefix + 96 : prefix);
	/* Clear host bits so that 149.154.167.1/20 means the network. */
	for (unsigned i = n->prefix; i < 128; i++)
		n->addr[i / 8] &= (unsigned char)~(0x80u >> (i % 8));
	return 0;
}

struct netlist *
netlist_parse(const char *s, char *err, size_t errlen)
{
	struct netlist *nl = xcalloc(1, sizeof(*nl));
	char **items = strlist_split(s, &nl->n);

	nl->nets = xcalloc(nl->n, sizeof(*nl->nets));
	for (size_t i = 0; i < nl->n; i++) {
		if (net_parse(items[i], &nl->nets[i], err, errlen) == -1) {
			strlist_free(items);
			netlist_free(nl);
			return NULL;
		}
	}
	strlist_free(items);
	return nl;
}

void
netlist_free(struct netlist *nl)
{
	if (nl == NULL)
		return;
	free(nl->nets);
	free(nl);
}

size_t
netlist_count(const struct netlist *nl)
{
	return nl == NULL ? 0 : nl->n;
}

bool
netlist_match(const struct netlist *nl, const unsigned char addr[16])
{
	for (size_t i = 0; nl != NULL && i < nl->n; i++) {
		const struct net *n = &nl->nets[i];
		unsigned full = n->prefix / 8, rest = n->prefix % 8;

		if (memcmp(n->addr, addr, full) != 0)
			continue;
		if (rest != 0) {
			unsigned char mask = (unsigned char)(0xff00u >> rest);

			if ((n->addr[full] & mask) != (addr[full] & mask))
				continue;
		}
		return true;
	}
	return false;
}

int
gate_parse_listen(const char *s, struct sockaddr_storage *out, char *err,
    size_t errlen)
{
	struct sockaddr_storage ss;
	char host[INET6_ADDRSTRLEN + 1];
	const char *colon, *hs, *he;
	long port;
	char *end;

	memset(&ss, 0, sizeof(ss));
	if (s[0] == '[') {
		hs = s + 1;
		if ((he = strchr(hs, ']')) == NULL || he[1] != ':')
			goto bad;
		colon = he + 1;
	} else {
		hs = s;
		if ((colon = strrchr(s, ':')) == NULL)
			goto bad;
		he = colon;
	}
	if ((size_t)(he - hs) >= sizeof(host))
		goto bad;
	memcpy(host, hs, (size_t)(he - hs));
	host[he - hs] = '\0';
	port = strtol(colon + 1, &end, 10);
	if (colon[1] == '\0' || *end != '\0' || port < 1 || port > 65535)
		goto bad;
	if (s[0] != '[') {
		struct sockaddr_in *in = (void *)&ss;

		in->sin_family = AF_INET;
		in->sin_port = htons((uint16_t)port);
		if (inet_pton(AF_INET, host, &in->sin_addr) != 1)
			goto bad;
	} else {
		struct sockaddr_in6 *in6 = (void *)&ss;

		in6->sin6_family = AF_INET6;
		in6->sin6_port = htons((uint16_t)port);
		if (inet_pton(AF_INET6, host, &in6->sin6_addr) != 1)
			goto bad;
	}
	if (out != NULL)
		*out = ss;
	return 0;
bad:
	errf(err, errlen, "'%s' is not ADDRESS:PORT (like 0.0.0.0:8443 or "
	    "[::]:8443)", s);
	return -1;
}

bool
gate_secret_equal(const char *expected, const char *given)
{
	size_t n = strlen(expected);

	if (given == NULL)
		return false;
	/* The length of the expected secret is no secret worth hiding; its
	 * bytes are.  Compare over the expected length only when the
	 * lengths agree, and still spend the same time when they do not. */
	if (strlen(given) != n) {
		(void)CRYPTO_memcmp(expected, expected, n);
		return false;
	}
	return CRYPTO_memcmp(expected, given, n) == 0;
}

struct gate *
gate_new(const char *path, const char *secret, struct netlist *networks,
    struct netlist *proxies)
{
	struct gate *g = xcalloc(1, sizeof(*g));

	g->path = xasprintf("/%s", path);
	g->path_len = strlen(g->path);
	g->secret = xstrdup(secret != NULL ? secret : "");
	g->networks = networks;
	g->proxies = proxies;
	return g;
}

void
gate_free(struct gate *g)
{
	if (g == NULL)
		return;
	explicit_bzero(g->secret, strlen(g->secret));
	explicit_bzero(g->path, strlen(g->path));
	free(g->path);
	free(g->secret);
	netlist_free(g->networks);
	netlist_free(g->proxies);
	free(g);
}

/*
 * The client address: the peer, unless the peer is a trusted proxy; then
 * the right-most X-Forwarded-For hop that is not a trusted proxy (hops to
 * its left could be forged by the client).  An unparsable hop is where
 * trust ends: the client is judged by an address that matches nothing.
 */
static int
gate_client(const struct gate *g, const struct gate_request *r,
    unsigned char addr[16])
{
	const char *xff = r->forwarded_for, *end;

	if (gate_addr_from_sockaddr(r->peer, addr) == -1)
		return -1;
	if (xff == NULL || !netlist_match(g->proxies, addr))
		return 0;
	end = xff + strlen(xff);
	while (end > xff) {
		const char *start = end;
		char hop[INET6_ADDRSTRLEN + 1];
		size_t n;

		while (start > xff && start[-1] != ',')
			start--;
		while (start < end && isspace((unsigned char)*start))
			start++;
		n = (size_t)(end - start);
		while (n > 0 && isspace((unsigned char)start[n - 1]))
			n--;
		if (n == 0 || n >= sizeof(hop))
			return -1;
		memcpy(hop, start, n);
		hop[n] = '\0';
		if (gate_addr_from_string(hop, addr) == -1)
			return -1;
		if (!netlist_match(g->proxies, addr))
			return 0;
		end = start;
		while (end > xff && end[-1] != ',')
			end--;
		if (end > xff)
			end--;	/* step over the comma */
	}
	return 0;
}

void
gate_client_text(const struct gate *g, const struct gate_request *r,
    char *client, size_t clientlen)
{
	unsigned char addr[16];

	if (gate_client(g, r, addr) == 0)
		gate_addr_format(addr, client, clientlen);
	else
		snprintf(client, clientlen, "unknown");
}

enum gate_verdict
gate_check(const struct gate *g, const struct gate_request *r, char *client,
    size_t clientlen)
{
	unsigned char addr[16];
	bool known;
	const char *q;
	size_t ulen;

	known = gate_client(g, r, addr) == 0;
	if (client != NULL)
		gate_client_text(g, r, client, clientlen);
	/* The query string is not part of the path Telegram was given. */
	ulen = (q = strchr(r->url, '?')) != NULL ? (size_t)(q - r->url) :
	    strlen(r->url);
	if (ulen != g->path_len ||
	    CRYPTO_memcmp(g->path, r->url, g->path_len) != 0)
		return GATE_NOT_FOUND;
	if (netlist_count(g->networks) > 0 &&
	    (!known || !netlist_match(g->networks, addr)))
		return GATE_BAD_SOURCE;
	if (g->secret[0] != '\0' && !gate_secret_equal(g->secret,
	    r->secret_header))
		return GATE_BAD_SECRET;
	if (strcmp(r->method, "POST") != 0)
		return GATE_BAD_METHOD;
	return GATE_OK;
}

const char *
gate_verdict_name(enum gate_verdict v)
{
	switch (v) {
	case GATE_OK:
		return "ok";
	case GATE_NOT_FOUND:
		return "wrong path";
	case GATE_BAD_SOURCE:
		return "source not in trusted_networks";
	case GATE_BAD_SECRET:
		return "secret token missing or wrong";
	case GATE_BAD_METHOD:
		return "method not POST";
	}
	return "?";
}

bool
gate_peer_trusted(const struct gate *g, const struct sockaddr *peer)
{
	unsigned char addr[16];

	if (gate_addr_from_sockaddr(peer, addr) == -1)
		return false;
	return netlist_match(g->networks, addr) ||
	    netlist_match(g->proxies, addr);
}
