/*
 * mhd_floor.c: the floor under tgwebhookd's webhook figures: libmicrohttpd
 * over GnuTLS as tgwebhookd runs it (one epoll thread, TLS 1.2/1.3), doing
 * nothing but read the POST body and answer the fixed inline sendMessage.
 * No parsing, no checks, no log.  What tgwebhookd costs above this is its
 * own work; what this costs above nginx is the HTTP and TLS stack's.
 *
 * Usage: mhd_floor PORT CERT KEY
 */
#include <microhttpd.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "util.h"

static const char answer[] = "{\"method\":\"sendMessage\",\"chat_id\":31337,"
    "\"text\":\"Hello, Ann! I am a bot that says hello.\"}";

static enum MHD_Result
on_request(void *cls, struct MHD_Connection *c, const char *url,
    const char *method, const char *version, const char *data, size_t *size,
    void **ctx)
{
	struct MHD_Response *r = cls;

	(void)url;
	(void)method;
	(void)version;
	(void)data;
	if (*ctx == NULL) {
		*ctx = c;	/* headers seen: the body follows */
		return MHD_YES;
	}
	if (*size > 0) {
		*size = 0;	/* body read and dropped */
		return MHD_YES;
	}
	return MHD_queue_response(c, MHD_HTTP_OK, r);
}

int
main(int argc, char **argv)
{
	struct MHD_Daemon *d;
	struct MHD_Response *r;
	char err[256], *cert, *key;
	sigset_t set;
	int sig;

	if (argc != 4) {
		fprintf(stderr, "usage: mhd_floor PORT CERT KEY\n");
		return 2;
	}
	if ((cert = file_read(argv[2], 1 << 20, NULL, err, sizeof(err))) == NULL ||
	    (key = file_read(argv[3], 1 << 20, NULL, err, sizeof(err))) == NULL) {
		fprintf(stderr, "mhd_floor: %s\n", err);
		return 1;
	}
	r = MHD_create_response_from_buffer(strlen(answer),
	    (void *)(uintptr_t)answer,
	    MHD_RESPMEM_PERSISTENT);
	MHD_add_response_header(r, "Content-Type", "application/json");
	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD | MHD_USE_EPOLL |
	    MHD_USE_TLS, (uint16_t)atoi(argv[1]), NULL, NULL, on_request, r,
	    MHD_OPTION_HTTPS_MEM_CERT, cert, MHD_OPTION_HTTPS_MEM_KEY, key,
	    MHD_OPTION_HTTPS_PRIORITIES,
	    "NORMAL:-VERS-ALL:+VERS-TLS1.3:+VERS-TLS1.2",
	    MHD_OPTION_CONNECTION_TIMEOUT, 60u, MHD_OPTION_END);
	if (d == NULL) {
		fprintf(stderr, "mhd_floor: libmicrohttpd would not start\n");
		return 1;
	}
	sigemptyset(&set);
	sigaddset(&set, SIGTERM);
	sigaddset(&set, SIGINT);
	sigprocmask(SIG_BLOCK, &set, NULL);
	sigwait(&set, &sig);
	MHD_stop_daemon(d);
	MHD_destroy_response(r);
	free(cert);
	free(key);
	return 0;
}
