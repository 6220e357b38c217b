/* Unit tests for gate.c: networks, listen addresses, secrets, the order
 * of checks, X-Forwarded-For. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>

#include "gate.h"

static struct sockaddr_storage
sa(const char *ip)
{
	struct sockaddr_storage ss;

	memset(&ss, 0, sizeof(ss));
	if (strchr(ip, ':') == NULL) {
		struct sockaddr_in *in = (void *)&ss;

		in->sin_family = AF_INET;
		inet_pton(AF_INET, ip, &in->sin_addr);
	} else {
		struct sockaddr_in6 *in6 = (void *)&ss;

		in6->sin6_family = AF_INET6;
		inet_pton(AF_INET6, ip, &in6->sin6_addr);
	}
	return ss;
}

static bool
match(const struct netlist *nl, const char *ip)
{
	unsigned char a[16];

	assert_int_equal(gate_addr_from_string(ip, a), 0);
	return netlist_match(nl, a);
}

static void
test_netlist(void **state)
{
	char err[128];
	struct netlist *nl = netlist_parse(
	    "149.154.160.0/20, 91.108.4.0/22 2001:db8::/32,10.1.2.3", err,
	    sizeof(err));

	(void)state;
	assert_non_null(nl);
	assert_int_equal(netlist_count(nl), 4);
	assert_true(match(nl, "149.154.167.99"));
	assert_true(match(nl, "149.154.160.0"));
	assert_false(match(nl, "149.154.176.0"));
	assert_true(match(nl, "91.108.6.146"));
	assert_false(match(nl, "91.108.8.1"));
	assert_true(match(nl, "10.1.2.3"));
	assert_false(match(nl, "10.1.2.4"));
	assert_true(match(nl, "2001:db8:1::5"));
	assert_false(match(nl, "2001:db9::1"));
	/* IPv4-mapped IPv6 is IPv4 */
	assert_true(match(nl, "::ffff:149.154.161.1"));
	netlist_free(nl);

	nl = netlist_parse("0.0.0.0/0", err, sizeof(err));
	assert_true(match(nl, "8.8.8.8"));
	assert_false(match(nl, "2001:db8::1"));
	netlist_free(nl);
	/* host bits are cleared */
	nl = netlist_parse("149.154.167.1/20", err, sizeof(err));
	assert_true(match(nl, "149.154.160.1"));
	netlist_free(nl);
}

static void
test_netlist_errors(void **state)
{
	static const char *const bad[] = { "1.2.3.4/33", "1.2.3/8",
		"::1/129", "x", "1.2.3.4/", "1.2.3.4/-1", "1.2.3.4/8x" };
	char err[128];

	(void)state;
	for (size_t i = 0; i < sizeof(bad) / sizeof(bad[0]); i++) {
		err[0] = '\0';
		assert_null(netlist_parse(bad[i], err, sizeof(err)));
		assert_string_not_equal(err, "");
	}
}

static void
test_listen(void **state)
{
	struct sockaddr_storage ss;
	char err[128];

	(void)state;
	assert_int_equal(gate_parse_listen("0.0.0.0:8443", &ss, err,
	    sizeof(err)), 0);
	assert_int_equal(ss.ss_family, AF_INET);
	assert_int_equal(ntohs(((struct sockaddr_in *)&ss)->sin_port), 8443);
	assert_int_equal(gate_parse_listen("[::]:443", &ss, err, sizeof(err)),
	    0);
	assert_int_equal(ss.ss_family, AF_INET6);
	assert_int_equal(gate_parse_listen("8443", NULL, err, sizeof(err)), -1);
	assert_int_equal(gate_parse_listen("1.2.3.4:0", NULL, err,
	    sizeof(err)), -1);
	assert_int_equal(gate_parse_listen("1.2.3.4:70000", NULL, err,
	    sizeof(err)), -1);
	assert_int_equal(gate_parse_listen("host:80", NULL, err, sizeof(err)),
	    -1);
}

static void
test_secret_equal(void **state)
{
	(void)state;
	assert_true(gate_secret_equal("abc_DEF-1", "abc_DEF-1"));
	assert_false(gate_secret_equal("abc_DEF-1", "abc_DEF-2"));
	assert_false(gate_secret_equal("abc", "abcd"));
	assert_false(gate_secret_equal("abc", ""));
	assert_false(gate_secret_equal("abc", NULL));
}

static struct gate *
new_gate(void)
{
	return gate_new("hook123", "s3cret",
	    netlist_parse("149.154.160.0/20", NULL, 0),
	    netlist_parse("127.0.0.1, 10.0.0.0/8", NULL, 0));
}

static enum gate_verdict
check(struct gate *g, const char *url, const char *method, const char *peer,
    const char *secret, const char *xff, char *client)
{
	struct sockaddr_storage ss = sa(peer);
	struct gate_request r = { url, method, (struct sockaddr *)&ss, secret,
		xff };
	enum gate_verdict v = gate_check(g, &r, client, 64);
	char text[64];

	/* the server asks for the address's text apart, only to log a
	 * refusal: the same verdict without it, the same text */
	assert_int_equal(gate_check(g, &r, NULL, 0), v);
	gate_client_text(g, &r, text, sizeof(text));
	assert_string_equal(text, client);
	return v;
}

static void
test_order_of_checks(void **state)
{
	struct gate *g = new_gate();
	char client[64];

	(void)state;
	assert_int_equal(check(g, "/hook123", "POST", "149.154.167.1",
	    "s3cret", NULL, client), GATE_OK);
	assert_string_equal(client, "149.154.167.1");
	/* wrong path wins over everything, even a bad source */
	assert_int_equal(check(g, "/hook12", "GET", "8.8.8.8", NULL, NULL,
	    client), GATE_NOT_FOUND);
	assert_int_equal(check(g, "/hook1234", "POST", "149.154.167.1",
	    "s3cret", NULL, client), GATE_NOT_FOUND);
	assert_int_equal(check(g, "/", "POST", "149.154.167.1", "s3cret",
	    NULL, client), GATE_NOT_FOUND);
	/* the query string is ignored */
	assert_int_equal(check(g, "/hook123?x=1", "POST", "149.154.167.1",
	    "s3cret", NULL, client), GATE_OK);
	assert_int_equal(check(g, "/hook123", "POST", "8.8.8.8", "s3cret",
	    NULL, client), GATE_BAD_SOURCE);
	assert_int_equal(check(g, "/hook123", "POST", "149.154.167.1",
	    "wrong", NULL, client), GATE_BAD_SECRET);
	assert_int_equal(check(g, "/hook123", "POST", "149.154.167.1", NULL,
	    NULL, client), GATE_BAD_SECRET);
	assert_int_equal(check(g, "/hook123", "GET", "149.154.167.1",
	    "s3cret", NULL, client), GATE_BAD_METHOD);
	/* mapped IPv6 peer (dual-stack listener) */
	assert_int_equal(check(g, "/hook123", "POST", "::ffff:149.154.167.1",
	    "s3cret", NULL, client), GATE_OK);
	assert_string_equal(client, "149.154.167.1");
	gate_free(g);
}

static void
test_forwarded_for(void **state)
{
	struct gate *g = new_gate();
	char client[64];

	(void)state;
	/* from a trusted proxy: right-most untrusted hop */
	assert_int_equal(check(g, "/hook123", "POST", "127.0.0.1", "s3cret",
	    "1.1.1.1, 149.154.167.1", client), GATE_OK);
	assert_string_equal(client, "149.154.167.1");
	/* a forged left-most entry is not believed */
	assert_int_equal(check(g, "/hook123", "POST", "127.0.0.1", "s3cret",
	    "149.154.167.1, 8.8.8.8", client), GATE_BAD_SOURCE);
	assert_string_equal(client, "8.8.8.8");
	/* chained proxies are skipped */
	assert_int_equal(check(g, "/hook123", "POST", "127.0.0.1", "s3cret",
	    "149.154.167.1,10.2.3.4 , 10.0.0.9", client), GATE_OK);
	assert_string_equal(client, "149.154.167.1");
	/* from an untrusted peer, the header is ignored */
	assert_int_equal(check(g, "/hook123", "POST", "8.8.8.8", "s3cret",
	    "149.154.167.1", client), GATE_BAD_SOURCE);
	/* garbage in the header: nothing is trusted */
	assert_int_equal(check(g, "/hook123", "POST", "127.0.0.1", "s3cret",
	    "149.154.167.1, junk", client), GATE_BAD_SOURCE);
	assert_string_equal(client, "unknown");
	gate_free(g);
}

static void
test_open_gate(void **state)
{
	struct gate *g = gate_new("p", "", NULL, NULL);
	char client[64];

	(void)state;
	assert_int_equal(check(g, "/p", "POST", "8.8.8.8", NULL, NULL, client),
	    GATE_OK);
	gate_free(g);
}

/* Known by address: trusted_networks and trusted_proxies, nobody else;
 * an empty trusted_networks lets anyone pass the gate, but makes no
 * address known (so the server still limits strangers). */
static void
test_peer_trusted(void **state)
{
	struct gate *g = gate_new("p", "", netlist_parse("149.154.160.0/20",
	    NULL, 0), netlist_parse("10.0.0.1", NULL, 0));
	struct sockaddr_storage a;

	(void)state;
	a = sa("149.154.167.220");
	assert_true(gate_peer_trusted(g, (struct sockaddr *)&a));
	a = sa("10.0.0.1");
	assert_true(gate_peer_trusted(g, (struct sockaddr *)&a));
	a = sa("8.8.8.8");
	assert_false(gate_peer_trusted(g, (struct sockaddr *)&a));
	gate_free(g);
	g = gate_new("p", "", netlist_parse("", NULL, 0), netlist_parse(
	    "10.0.0.1", NULL, 0));
	assert_false(gate_peer_trusted(g, (struct sockaddr *)&a));
	a = sa("::ffff:10.0.0.1");
	assert_true(gate_peer_trusted(g, (struct sockaddr *)&a));
	gate_free(g);
	g = gate_new("p", "", NULL, NULL);
	assert_false(gate_peer_trusted(g, (struct sockaddr *)&a));
	gate_free(g);
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_netlist),
		cmocka_unit_test(test_netlist_errors),
		cmocka_unit_test(test_listen),
		cmocka_unit_test(test_secret_equal),
		cmocka_unit_test(test_order_of_checks),
		cmocka_unit_test(test_forwarded_for),
		cmocka_unit_test(test_open_gate),
		cmocka_unit_test(test_peer_trusted),
	};

	return cmocka_run_group_tests_name("gate", tests, NULL, NULL);
}
