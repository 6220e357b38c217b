/*
 * cert.c: certificate generation and inspection.
 *
 * How Telegram checks the name (botapi-facts.md 3.7): for a host name, the
 * DNS subjectAltNames, else the CN (X509_check_host); for an IP address
 * with an uploaded (self-signed) certificate, the IP *string* is matched
 * the same way, so the CN (or a DNS SAN) must be the IP; for an IP with a
 * CA-issued certificate, an IP SAN (X509_check_ip_asc).  We run the same
 * checks before Telegram does, so a wrong certificate stops the start with
 * a message instead of failing deliveries silently for hours.
 */
#include "cert.h"

#include <arpa/inet.h>
#include <libgen.h>
#include <openssl/bio.h>
#include <openssl/err.h>
#include <openssl/evp.h>
#include <openssl/pem.h>
#include <openssl/rand.h>
#include <openssl/x509.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "util.h"

#define CERT_FILE_MAX (1 << 20)

bool
cert_domain_is_ip(const char *domain)
{
	unsigned char buf[16];

	return inet_pton(AF_INET, domain, buf) == 1 ||
	    inet_pton(AF_INET6, domain, buf) == 1;
}

/* The OpenSSL error queue as one string. */
static void
ssl_err(char *err, size_t errlen, const char *what)
{
	char msg[256] = "";
	unsigned long e = ERR_get_error();

	if (e != 0)
		ERR_error_string_n(e, msg, sizeof(msg));
	ERR_clear_error();
	errf(err, errlen, "%s%s%s", what, msg[0] ? ": " : "", msg);
}

static int
add_ext(X509 *x, int nid, const char *value)
{
	X509V3_CTX ctx;
	X509_EXTENSION *ext;

	X509V3_set_ctx_nodb(&ctx);
	X509V3_set_ctx(&ctx, x, x, NULL, NULL, 0);
	if ((ext = X509V3_EXT_conf_nid(NULL, &ctx, nid, value)) == NULL)
		return -1;
	X509_add_ext(x, ext, -1);
	X509_EXTENSION_free(ext);
	return 0;
}

static char *
bio_string(BIO *b, size_t *len)
{
	char *p;
	long n = BIO_get_mem_data(b, &p);

	*len = (size_t)n;
	return xstrndup(p, (size_t)n);
}

int
cert_write(const char *cert_path, const char *cert_pem, const char *key_path,
    const char *key_pem, char *err, size_t errlen)
{
	char *dir;
	int rc = -1;

	dir = xstrdup(key_path);
	if (dir_ensure(dirname(dir), 0700, err, errlen) == -1)
		goto out;
	free(dir);
	dir = xstrdup(cert_path);
	if (dir_ensure(dirname(dir), 0700, err, errlen) == -1)
		goto out;
	/* Key first: a certificate without its key is useless, and a
	 * crash in between leaves only a key, which the next start
	 * reports instead of overwriting. */
	if (file_write_atomic(key_path, key_pem, strlen(key_pem), 0600, err,
	    errlen) == -1 || file_write_atomic(cert_path, cert_pem,
	    strlen(cert_pem), 0644, err, errlen) == -1)
		goto out;
	rc = 0;
out:
	free(dir);
	return rc;
}

int
cert_generate(const char *domain, int bits, int days, const char *cert_path,
    const char *key_path, char *err, size_t errlen)
{
	char *cpem = NULL, *kpem = NULL;
	int rc = -1;

	if (cert_make(domain, bits, days, &cpem, &kpem, err, errlen) == -1)
		return -1;
	rc = cert_write(cert_path, cpem, key_path, kpem, err, errlen);
	explicit_bzero(kpem, strlen(kpem));
	free(kpem);
	free(cpem);
	return rc;
}

int
cert_make(const char *domain, int bits, int days, char **cert_pem,
    char **key_pem, char *err, size_t errlen)
{
	EVP_PKEY *key = NULL;
	X509 *x = NULL;
	X509_NAME *name;
	BIO *kb = NULL, *cb = NULL;
	unsigned char serial[16];
	BIGNUM *bn = NULL;
	char *san = NULL, *kpem = NULL, *cpem = NULL;
	size_t klen = 0, clen = 0;
	int rc = -1;

	*cert_pem = *key_pem = NULL;
	if ((key = EVP_RSA_gen((unsigned)bits)) == NULL) {
		ssl_err(err, errlen, "EVP_RSA_gen()");
		goto out;
	}
	x = X509_new();
	X509_set_version(x, 2);
	if (RAND_bytes(serial, sizeof(serial)) != 1) {
		ssl_err(err, errlen, "RAND_bytes()");
		goto out;
	}
	serial[0] &= 0x7f;	/* a positive serial */
	bn = BN_bin2bn(serial, sizeof(serial), NULL);
	BN_to_ASN1_INTEGER(bn, X509_get_serialNumber(x));
	X509_gmtime_adj(X509_getm_notBefore(x), 0);
	X509_gmtime_adj(X509_getm_notAfter(x), (long)days * 86400);
	X509_set_pubkey(x, key);
	name = X509_get_subject_name(x);
	if (X509_NAME_add_entry_by_txt(name, "CN", MBSTRING_ASC,
	    (const unsigned char *)domain, -1, -1, 0) != 1) {
		ssl_err(err, errlen, "X509_NAME_add_entry_by_txt(CN)");
		goto out;
	}
	X509_set_issuer_name(x, name);
	/* The extensions `openssl req -x509` adds, plus the name as a SAN
	 * (clients other than Telegram ignore the CN). */
	san = xasprintf("%s:%s", cert_domain_is_ip(domain) ? "IP" : "DNS",
	    domain);
	if (add_ext(x, NID_basic_constraints, "critical,CA:TRUE") == -1 ||
	    add_ext(x, NID_subject_key_identifier, "hash") == -1 ||
	    add_ext(x, NID_authority_key_identifier, "keyid:always") == -1 ||
	    add_ext(x, NID_subject_alt_name, san) == -1) {
		ssl_err(err, errlen, "X509V3_EXT_conf_nid()");
		goto out;
	}
	if (X509_sign(x, key, EVP_sha256()) == 0) {
		ssl_err(err, errlen, "X509_sign()");
		goto out;
	}
	kb = BIO_new(BIO_s_mem());
	cb = BIO_new(BIO_s_mem());
	if (PEM_write_bio_PrivateKey(kb, key, NULL, NULL, 0, NULL, NULL) != 1 ||
	    PEM_write_bio_X509(cb, x) != 1) {
		ssl_err(err, errlen, "PEM_write_bio()");
		goto out;
	}
	kpem = bio_string(kb, &klen);
	cpem = bio_string(cb, &clen);
	*key_pem = kpem;
	*cert_pem = cpem;
	kpem = cpem = NULL;
	rc = 0;
out:
	if (kpem != NULL)
		explicit_bzero(kpem, klen);
	free(kpem);
	free(cpem);
	free(san);
	BN_free(bn);
	BIO_free(kb);
	BIO_free(cb);
	X509_free(x);
	EVP_PKEY_free(key);
	return rc;
}

static time_t
asn1_to_time(const ASN1_TIME *t)
{
	struct tm tm;

	if (ASN1_TIME_to_tm(t, &tm) != 1)
		return 0;
	return timegm(&tm);
}

static void
fingerprint(X509 *x, char *out, size_t len)
{
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned n = 0;
	size_t o = 0;

	X509_digest(x, EVP_sha256(), md, &n);
	for (unsigned i = 0; i < n && o + 4 <= len; i++)
		o += (size_t)snprintf(out + o, len - o, "%s%02X", i ? ":" : "",
		    md[i]);
}

/* Does x name domain the way Telegram will check it? */
static bool
name_matches(X509 *x, const char *domain, bool uploaded)
{
	if (!cert_domain_is_ip(domain) || uploaded)
		return X509_check_host(x, domain, 0, 0, NULL) == 1;
	return X509_check_ip_asc(x, domain, 0) == 1;
}

int
cert_check(const char *cert_path, const char *key_path, const char *domain,
    struct cert_info *info, char *err, size_t errlen)
{
	char *pem = NULL, *kpem = NULL, rerr[256];
	size_t len, klen = 0;
	BIO *b = NULL, *out = NULL;
	X509 *x = NULL;
	EVP_PKEY *key = NULL;
	int rc = -1;

	memset(info, 0, sizeof(*info));
	if ((pem = file_read(cert_path, CERT_FILE_MAX, &len, rerr,
	    sizeof(rerr))) == NULL) {
		errf(err, errlen, "certificate: %s", rerr);
		goto out;
	}
	b = BIO_new_mem_buf(pem, (int)len);
	if ((x = PEM_read_bio_X509(b, NULL, NULL, NULL)) == NULL) {
		ssl_err(rerr, sizeof(rerr), "PEM_read_bio_X509()");
		errf(err, errlen, "%s: not a PEM certificate (%s); convert DER "
		    "with `openssl x509 -inform der -in FILE -out FILE.pem`",
		    cert_path, rerr);
		goto out;
	}
	X509_NAME_oneline(X509_get_subject_name(x), info->subject,
	    sizeof(info->subject));
	fingerprint(x, info->sha256, sizeof(info->sha256));
	info->self_signed = X509_check_issued(x, x) == X509_V_OK;
	info->not_before = asn1_to_time(X509_get0_notBefore(x));
	info->not_after = asn1_to_time(X509_get0_notAfter(x));
	{
		int days = 0, secs = 0;

		ASN1_TIME_diff(&days, &secs, NULL, X509_get0_notAfter(x));
		info->days_left = days;
		if (days == 0 && secs < 0)
			info->days_left = -1;
	}
	out = BIO_new(BIO_s_mem());
	PEM_write_bio_X509(out, x);
	info->leaf_pem = bio_string(out, &len);

	if ((kpem = file_read(key_path, CERT_FILE_MAX, &klen, rerr,
	    sizeof(rerr))) == NULL) {
		errf(err, errlen, "private_key: %s", rerr);
		goto out;
	}
	BIO_free(b);
	b = BIO_new_mem_buf(kpem, (int)klen);
	if ((key = PEM_read_bio_PrivateKey(b, NULL, NULL, NULL)) == NULL) {
		ssl_err(rerr, sizeof(rerr), "PEM_read_bio_PrivateKey()");
		errf(err, errlen, "%s: not an unencrypted PEM private key (%s)",
		    key_path, rerr);
		goto out;
	}
	if (X509_check_private_key(x, key) != 1) {
		ERR_clear_error();
		errf(err, errlen, "%s does not belong to the certificate %s: "
		    "point private_key at the certificate's key, or remove "
		    "both files to have a new pair generated (self_signed = "
		    "on)", key_path, cert_path);
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notBefore(x)) > 0) {
		errf(err, errlen, "%s is not valid yet (from %s): check the "
		    "system clock", cert_path, ctime(&info->not_before));
		err[strcspn(err, "\n")] = '\0';
		goto out;
	}
	if (X509_cmp_current_time(X509_get0_notAfter(x)) < 0) {
		errf(err, errlen, "%s expired %ld day(s) ago: renew it, or "
		    "remove it and its key to have a new self-signed pair "
		    "generated (self_signed = on)", cert_path,
		    -info->days_left);
		goto out;
	}
	if (domain != NULL && !name_matches(x, domain, info->self_signed)) {
		if (cert_domain_is_ip(domain) && info->self_signed)
			errf(err, errlen, "%s (%s) does not name %s: for an "
			    "IP address Telegram matches a self-signed "
			    "certificate's CN (or DNS name), so make one with "
			    "CN=%s, or remove the files to have it generated",
			    cert_path, info->subject, domain, domain);
		else
			errf(err, errlen, "%s (%s) does not name %s, the "
			    "webhook's domain, so Telegram's TLS check will "
			    "fail: use a certificate for %s, or set domain to "
			    "a name it covers", cert_path, info->subject,
			    domain, domain);
		goto out;
	}
	rc = 0;
out:
	if (rc == -1) {
		free(info->leaf_pem);
		info->leaf_pem = NULL;
	}
	if (kpem != NULL)
		explicit_bzero(kpem, klen);
	free(kpem);
	free(pem);
	BIO_free(b);
	BIO_free(out);
	X509_free(x);
	EVP_PKEY_free(key);
	return rc;
}

void
cert_info_clear(struct cert_info *info)
{
	free(info->leaf_pem);
	memset(info, 0, sizeof(*info));
}
