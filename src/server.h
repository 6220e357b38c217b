/*
 * server.h: the webhook endpoint, over libmicrohttpd.  Transport only: it
 * runs the gate on each request, reads a bounded body, hands it to intake
 * and answers as intake says.  It knows nothing of what follows intake.
 */
#ifndef TGW_SERVER_H
#define TGW_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

struct gate;
struct intake;

struct server_opts {
	struct sockaddr_storage addr;
	int listen_fd;		/* from server_bind(), or -1: bind addr */
	bool tls;
	const char *cert_pem;	/* certificate (and chain), PEM */
	const char *key_pem;
	unsigned threads;
	unsigned max_clients;
	unsigned per_ip_limit;	/* connections per untrusted address;
				 * 0: none */
	unsigned timeout_s;	/* idle connection timeout */
	size_t max_body;
	struct gate *gate;		/* owned by the server */
	struct intake *intake;		/* lent: outlives the server */
};

struct server;

/* Binds and listens on addr (so that privileges can be dropped before
 * anything else starts).  Returns the socket, or -1 with err. */
int server_bind(const struct sockaddr_storage *addr, char *err, size_t errlen);
/* Binds and starts serving.  NULL with err on failure. */
struct server *server_start(const struct server_opts *o, char *err,
    size_t errlen);
/* Swaps in a new gate (owned from now on) for the requests that come
 * next; requests in flight finish with the old one. */
void server_swap(struct server *s, struct gate *g);
/* Serves this certificate (PEM, chain after it) and key to connections
 * made from now on; open connections keep theirs.  0, or -1 with err
 * (GnuTLS's reason) and the old certificate kept. */
int server_set_certificate(struct server *s, const char *cert_pem,
    const char *key_pem, char *err, size_t errlen);
/* Stops accepting connections; requests that still arrive on open
 * connections are answered 503 with Retry-After. */
void server_quiesce(struct server *s);
/* Requests being handled now. */
unsigned server_inflight(struct server *s);
/* Closes everything and frees s. */
void server_stop(struct server *s);

#endif
