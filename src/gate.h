/*
 * gate.h: is this request Telegram's?  Pure checks on what the transport
 * hands over (path, method, peer address, two headers): secret path and
 * secret token compared in constant time, source address against CIDR
 * lists (IPv4 and IPv6; IPv4-mapped IPv6 addresses count as IPv4), and
 * X-Forwarded-For believed only from trusted proxies.
 */
#ifndef TGW_GATE_H
#define TGW_GATE_H

#include <stdbool.h>
#include <stddef.h>
#include <sys/socket.h>

/* A list of networks; every address is held as 16 bytes, IPv4 mapped. */
struct netlist;

/* Parses "149.154.160.0/20, 91.108.4.0/22, 2001:db8::/32, 10.0.0.1".
 * Returns the list (caller frees) or NULL with err naming the bad entry. */
struct netlist *netlist_parse(const char *s, char *err, size_t errlen);
void netlist_free(struct netlist *nl);
size_t netlist_count(const struct netlist *nl);
bool netlist_match(const struct netlist *nl, const unsigned char addr[16]);

/* Address helpers: to the 16-byte form; 0 or -1. */
int gate_addr_from_sockaddr(const struct sockaddr *sa, unsigned char out[16]);
int gate_addr_from_string(const char *s, unsigned char out[16]);
/* The 16-byte form as text ("1.2.3.4" for mapped IPv4). */
void gate_addr_format(const unsigned char addr[16], char *out, size_t len);

/* Parses "0.0.0.0:8443", "[::]:443", "127.0.0.1:8080" into out (may be
 * NULL to only check).  0 or -1 with err. */
int gate_parse_listen(const char *s, struct sockaddr_storage *out, char *err,
    size_t errlen);

/* Constant-time equality of two NUL-terminated secrets. */
bool gate_secret_equal(const char *expected, const char *given);

enum gate_verdict {
	GATE_OK,
	GATE_NOT_FOUND,		/* 404: not the secret path */
	GATE_BAD_SOURCE,	/* 403: outside trusted_networks */
	GATE_BAD_SECRET,	/* 403: secret token header missing or wrong */
	GATE_BAD_METHOD,	/* 405: not POST */
};

struct gate_request {
	const char *url;		/* the request-target as received,
				 * before any %xx decoding */
	const char *method;
	const struct sockaddr *peer;
	const char *secret_header;	/* may be NULL */
	const char *forwarded_for;	/* may be NULL */
};

struct gate;

/* path without its leading '/'; secret may be empty (no header wanted);
 * networks and proxies may be NULL (anyone; no proxies) and are owned by
 * the gate from now on. */
struct gate *gate_new(const char *path, const char *secret,
    struct netlist *networks, struct netlist *proxies);
void gate_free(struct gate *g);
/* Checks r in the order of the edge table: path, source, secret, method.
 * client (unless NULL) receives the address judged, as
 * gate_client_text() gives it. */
enum gate_verdict gate_check(const struct gate *g, const struct gate_request *r,
    char *client, size_t clientlen);
/* The address r is judged by (after X-Forwarded-For) as text, "unknown"
 * if there is none: for the log of a refused request, made only then
 * (inet_ntop costs more than the rest of the checks). */
void gate_client_text(const struct gate *g, const struct gate_request *r,
    char *client, size_t clientlen);
const char *gate_verdict_name(enum gate_verdict v);
/* True if peer is known by its address to be Telegram or a trusted proxy:
 * it is in trusted_networks or trusted_proxies.  With trusted_networks
 * empty, only the proxies are: anyone may then be Telegram, and nobody is
 * known to be before a request passes the gate. */
bool gate_peer_trusted(const struct gate *g, const struct sockaddr *peer);

#endif
