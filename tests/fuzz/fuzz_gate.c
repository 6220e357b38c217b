/* libFuzzer target: the request gate (path, secret header,
 * X-Forwarded-For) and network lists.  The input is split on newlines
 * into url, secret, forwarded-for, netlist. */
#include <arpa/inet.h>
#include <netinet/in.h>
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "gate.h"
#include "util.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int
LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static struct gate *g;
	char *copy = xstrndup((const char *)data, size), *parts[4] = { 0 };
	char *p = copy, client[64];
	struct sockaddr_in peer = { .sin_family = AF_INET };
	struct gate_request r;
	struct netlist *nl;

	if (g == NULL)
		g = gate_new("hook", "s3cret", netlist_parse("149.154.160.0/20",
		    NULL, 0), netlist_parse("127.0.0.1, ::1, 10.0.0.0/8", NULL,
		    0));
	for (int i = 0; i < 4; i++) {
		parts[i] = p;
		if ((p = strchr(p, '\n')) == NULL)
			break;
		*p++ = '\0';
	}
	inet_pton(AF_INET, "127.0.0.1", &peer.sin_addr);
	r = (struct gate_request){ parts[0], "POST",
		(struct sockaddr *)&peer, parts[1], parts[2] };
	(void)gate_check(g, &r, client, sizeof(client));
	if (parts[3] != NULL) {
		nl = netlist_parse(parts[3], NULL, 0);
		netlist_free(nl);
		(void)gate_parse_listen(parts[3], NULL, NULL, 0);
	}
	free(copy);
	return 0;
}
