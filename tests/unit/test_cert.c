/* Unit tests for cert.c, with fixtures made here: good, wrong name, wrong
 * key, expired, not PEM, IP addresses. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>
#include <stdint.h>
#include <cmocka.h>

#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/x509.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "cert.h"
#include "util.h"

static char dir[64];

static char *
p(const char *name)
{
	static char buf[4][256];
	static int i;

	i = (i + 1) % 4;
	snprintf(buf[i], sizeof(buf[i]), "%s/%s", dir, name);
	return buf[i];
}

static int
setup(void **state)
{
	(void)state;
	strcpy(dir, "/tmp/tgw-cert-test-XXXXXX");
	assert_non_null(mkdtemp(dir));
	return 0;
}

static int
teardown(void **state)
{
	char cmd[128];

	(void)state;
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	return system(cmd);
}

static void
test_generate_and_check(void **state)
{
	struct cert_info info;
	char err[512];
	struct stat st;

	(void)state;
	assert_int_equal(cert_generate("bot.example", 2048, 365, p("a.pem"),
	    p("sub/a.key"), err, sizeof(err)), 0);
	assert_int_equal(stat(p("sub/a.key"), &st), 0);
	assert_int_equal(st.st_mode & 0777, 0600);
	assert_int_equal(cert_check(p("a.pem"), p("sub/a.key"), "bot.example",
	    &info, err, sizeof(err)), 0);
	assert_true(info.self_signed);
	assert_in_range(info.days_left, 364, 365);
	assert_non_null(strstr(info.subject, "CN=bot.example"));
	assert_non_null(strstr(info.leaf_pem, "BEGIN CERTIFICATE"));
	assert_null(strstr(info.leaf_pem, "PRIVATE"));
	assert_int_equal(strlen(info.sha256), 95);
	cert_info_clear(&info);
	/* the name is checked as Telegram checks it */
	assert_int_equal(cert_check(p("a.pem"), p("sub/a.key"),
	    "other.example", &info, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "does not name other.example"));
	assert_int_equal(cert_check(p("a.pem"), p("sub/a.key"),
	    "x.bot.example", &info, err, sizeof(err)), -1);
}

static void
test_ip_domain(void **state)
{
	struct cert_info info;
	char err[512];

	(void)state;
	assert_true(cert_domain_is_ip("203.0.113.5"));
	assert_false(cert_domain_is_ip("bot.example"));
	assert_int_equal(cert_generate("203.0.113.5", 2048, 30, p("ip.pem"),
	    p("ip.key"), err, sizeof(err)), 0);
	assert_int_equal(cert_check(p("ip.pem"), p("ip.key"), "203.0.113.5",
	    &info, err, sizeof(err)), 0);
	cert_info_clear(&info);
	assert_int_equal(cert_check(p("ip.pem"), p("ip.key"), "203.0.113.6",
	    &info, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "CN=203.0.113.6"));
}

static void
test_wrong_key(void **state)
{
	struct cert_info info;
	char err[512];

	(void)state;
	assert_int_equal(cert_generate("bot.example", 2048, 30, p("b.pem"),
	    p("b.key"), err, sizeof(err)), 0);
	assert_int_equal(cert_generate("bot.example", 2048, 30, p("c.pem"),
	    p("c.key"), err, sizeof(err)), 0);
	assert_int_equal(cert_check(p("b.pem"), p("c.key"), "bot.example",
	    &info, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "does not belong to the certificate"));
	assert_null(info.leaf_pem);
}

/* An expired self-signed pair, made with OpenSSL directly. */
static void
make_expired(const char *cert_path, const char *key_path)
{
	EVP_PKEY *key = EVP_RSA_gen(2048);
	X509 *x = X509_new();
	FILE *f;

	X509_set_version(x, 2);
	ASN1_INTEGER_set(X509_get_serialNumber(x), 1);
	X509_gmtime_adj(X509_getm_notBefore(x), -10L * 86400);
	X509_gmtime_adj(X509_getm_notAfter(x), -2L * 86400);
	X509_set_pubkey(x, key);
	X509_NAME_add_entry_by_txt(X509_get_subject_name(x), "CN",
	    MBSTRING_ASC, (const unsigned char *)"bot.example", -1, -1, 0);
	X509_set_issuer_name(x, X509_get_subject_name(x));
	X509_sign(x, key, EVP_sha256());
	f = fopen(cert_path, "w");
	PEM_write_X509(f, x);
	fclose(f);
	f = fopen(key_path, "w");
	PEM_write_PrivateKey(f, key, NULL, NULL, 0, NULL, NULL);
	fclose(f);
	X509_free(x);
	EVP_PKEY_free(key);
}

static void
test_expired(void **state)
{
	struct cert_info info;
	char err[512];

	(void)state;
	make_expired(p("old.pem"), p("old.key"));
	assert_int_equal(cert_check(p("old.pem"), p("old.key"), "bot.example",
	    &info, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "expired 2 day(s) ago"));
}

static void
test_not_pem_and_missing(void **state)
{
	struct cert_info info;
	char err[512];

	(void)state;
	assert_int_equal(file_write_atomic(p("junk.pem"), "junk", 4, 0644, err,
	    sizeof(err)), 0);
	assert_int_equal(cert_check(p("junk.pem"), p("b.key"), "bot.example",
	    &info, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "not a PEM certificate"));
	assert_int_equal(cert_check(p("none.pem"), p("b.key"), "bot.example",
	    &info, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "No such file"));
	assert_int_equal(cert_check(p("b.pem"), p("junk.pem"), "bot.example",
	    &info, err, sizeof(err)), -1);
	assert_non_null(strstr(err, "not an unencrypted PEM private key"));
}

int
main(void)
{
	const struct CMUnitTest tests[] = {
		cmocka_unit_test(test_generate_and_check),
		cmocka_unit_test(test_ip_domain),
		cmocka_unit_test(test_wrong_key),
		cmocka_unit_test(test_expired),
		cmocka_unit_test(test_not_pem_and_missing),
	};

	return cmocka_run_group_tests_name("cert", tests, setup, teardown);
}
