/*
 * cert.h: the webhook's TLS certificate, with OpenSSL.  Makes a
 * self-signed certificate for a domain (as Telegram's guide does with
 * `openssl req -x509`), and checks a certificate the way Telegram will:
 * its name against the webhook's domain (botapi-facts.md 3.7), the key,
 * and the validity dates.
 */
#ifndef TGW_CERT_H
#define TGW_CERT_H

#include <stdbool.h>
#include <stddef.h>
#include <time.h>

struct cert_info {
	bool self_signed;	/* its own issuer: to be uploaded */
	time_t not_before, not_after;
	long days_left;		/* until not_after; negative if expired */
	char subject[256];	/* one line, for messages */
	char sha256[96];	/* fingerprint, hex with colons */
	char *leaf_pem;		/* the certificate alone, PEM (owned) */
};

/* True if domain is an IPv4 or IPv6 literal. */
bool cert_domain_is_ip(const char *domain);
/* Makes an RSA key of `bits` and a self-signed certificate valid `days`
 * with CN = domain and subjectAltName DNS:domain (IP:domain for an
 * address); writes both atomically, the key 0600.  0 or -1 with err. */
int cert_generate(const char *domain, int bits, int days, const char *cert_path,
    const char *key_path, char *err, size_t errlen);
/* cert_generate()'s pair in memory: *cert_pem and *key_pem (PEM text,
 * the caller frees both, and wipes the key first).  0 or -1 with err. */
int cert_make(const char *domain, int bits, int days, char **cert_pem,
    char **key_pem, char *err, size_t errlen);
/* Writes a pair as cert_generate() does: the directories made 0700 if
 * missing, the key first and 0600, each file atomically (a new temp
 * file, O_EXCL, fsynced, renamed).  0 or -1 with err. */
int cert_write(const char *cert_path, const char *cert_pem,
    const char *key_path, const char *key_pem, char *err, size_t errlen);
/* Checks the certificate at cert_path (the first PEM certificate in the
 * file; the rest is its chain) and the key at key_path for domain.
 * Returns 0 and fills info, or -1 with err saying what is wrong and what
 * fixes it.  A certificate within 30 days of expiry is not an error:
 * callers warn from info->days_left. */
int cert_check(const char *cert_path, const char *key_path, const char *domain,
    struct cert_info *info, char *err, size_t errlen);
void cert_info_clear(struct cert_info *info);

#endif
