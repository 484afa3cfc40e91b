/*
 * webhook_sig.c - Stripe webhook signature scheme v1 (HMAC-SHA256).
 *
 * The header is parsed in place without copying; each secret's HMAC is
 * computed once (streamed: "<t>", ".", body, so a 1 MiB body is never
 * copied) and compared in constant time with every v1 in the header.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/webhook.h"

#include <assert.h>
#include <inttypes.h>
#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/evp.h>
#include <openssl/params.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

#define MAX_V1 16 /* more v1 entries than this are ignored */

static EVP_MAC *hmac;
static pthread_once_t hmac_once = PTHREAD_ONCE_INIT;

static void hmac_init(void)
{
	/* fetched once: EVP_MAC objects are immutable and thread-safe */
	hmac = EVP_MAC_fetch(NULL, "HMAC", NULL);
	assert(hmac != NULL && "OpenSSL has no HMAC");
}

void tally_webhook_signature_hex(char out[65], const char *body, size_t len,
				 const char *secret, int64_t t)
{
	static const char hexd[] = "0123456789abcdef";
	unsigned char mac[EVP_MAX_MD_SIZE];
	char ts[32];
	size_t maclen = 0, i;
	int tl;
	EVP_MAC_CTX *ctx;
	OSSL_PARAM params[2];
	char digest[] = "SHA256";

	pthread_once(&hmac_once, hmac_init);
	tl = snprintf(ts, sizeof(ts), "%" PRId64 ".", t);
	params[0] = OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST,
						     digest, 0);
	params[1] = OSSL_PARAM_construct_end();
	ctx = EVP_MAC_CTX_new(hmac);
	if (ctx == NULL ||
	    !EVP_MAC_init(ctx, (const unsigned char *)secret, strlen(secret),
			  params) ||
	    !EVP_MAC_update(ctx, (const unsigned char *)ts, (size_t)tl) ||
	    !EVP_MAC_update(ctx, (const unsigned char *)body, len) ||
	    !EVP_MAC_final(ctx, mac, &maclen, sizeof(mac)) || maclen != 32) {
		/* only on OOM inside OpenSSL: match nothing */
		EVP_MAC_CTX_free(ctx);
		memset(out, 'x', 64);
		out[64] = '\0';
		return;
	}
	EVP_MAC_CTX_free(ctx);
	for (i = 0; i < 32; i++) {
		out[2 * i] = hexd[mac[i] >> 4];
		out[2 * i + 1] = hexd[mac[i] & 15];
	}
	out[64] = '\0';
	OPENSSL_cleanse(mac, sizeof(mac));
}

void tally_webhook_sign(char *out, size_t outlen, const char *body, size_t len,
			const char *secret, int64_t t)
{
	char hex[65];

	tally_webhook_signature_hex(hex, body, len, secret, t);
	snprintf(out, outlen, "t=%" PRId64 ",v1=%s", t, hex);
}

const char *tally_webhook_reason_name(tally_webhook_reason reason)
{
	switch (reason) {
	case TALLY_WEBHOOK_OK:
		return "ok";
	case TALLY_WEBHOOK_MISSING_HEADER:
		return "missing_header";
	case TALLY_WEBHOOK_MALFORMED_HEADER:
		return "malformed_header";
	case TALLY_WEBHOOK_NO_V1:
		return "no_v1";
	case TALLY_WEBHOOK_EXPIRED:
		return "expired";
	case TALLY_WEBHOOK_BAD_SIGNATURE:
		return "bad_signature";
	}
	return "unknown";
}

typedef struct span {
	const char *p;
	size_t n;
} span;

static bool is_sp(char c)
{
	return c == ' ' || c == '\t';
}

/* Strictly decimal, no sign, at most 18 digits (no overflow). */
static bool parse_ts(int64_t *out, span s)
{
	int64_t v = 0;
	size_t i;

	if (s.n == 0 || s.n > 18)
		return false;
	for (i = 0; i < s.n; i++) {
		if (s.p[i] < '0' || s.p[i] > '9')
			return false;
		v = v * 10 + (s.p[i] - '0');
	}
	*out = v;
	return true;
}

static int finish(tally_webhook_reason *reason_out, tally_webhook_reason r)
{
	if (reason_out != NULL)
		*reason_out = r;
	return r == TALLY_WEBHOOK_OK ? 0 : TALLY_EINVALID;
}

/* The parsed header: the timestamp and up to MAX_V1 v1 values. */
typedef struct parsed {
	int64_t t;
	span v1[MAX_V1];
	size_t nv1;
} parsed;

/* Items separated by ',', each "key=value"; exactly one t=, v0 and
 * unknown schemes ignored. */
static tally_webhook_reason parse_header(parsed *h, const char *sig_header)
{
	bool have_t = false;
	const char *p;

	h->nv1 = 0;
	if (sig_header == NULL)
		return TALLY_WEBHOOK_MISSING_HEADER;
	for (p = sig_header; is_sp(*p); p++)
		;
	if (*p == '\0')
		return TALLY_WEBHOOK_MISSING_HEADER;
	while (*p != '\0') {
		const char *end = strchr(p, ',');
		const char *eq;
		span key, val;

		if (end == NULL)
			end = p + strlen(p);
		while (p < end && is_sp(*p))
			p++;
		eq = memchr(p, '=', (size_t)(end - p));
		if (eq == NULL)
			return TALLY_WEBHOOK_MALFORMED_HEADER;
		key.p = p;
		key.n = (size_t)(eq - p);
		val.p = eq + 1;
		val.n = (size_t)(end - val.p);
		while (val.n > 0 && is_sp(val.p[val.n - 1]))
			val.n--;
		if (key.n == 1 && key.p[0] == 't') {
			if (have_t || !parse_ts(&h->t, val))
				return TALLY_WEBHOOK_MALFORMED_HEADER;
			have_t = true;
		} else if (key.n == 2 && key.p[0] == 'v' && key.p[1] == '1') {
			if (h->nv1 < MAX_V1)
				h->v1[h->nv1++] = val;
		}
		p = *end == ',' ? end + 1 : end;
	}
	if (!have_t)
		return TALLY_WEBHOOK_MALFORMED_HEADER;
	return h->nv1 == 0 ? TALLY_WEBHOOK_NO_V1 : TALLY_WEBHOOK_OK;
}

static bool is_hex64(span s)
{
	size_t i;

	if (s.n != 64)
		return false;
	for (i = 0; i < 64; i++)
		if (!((s.p[i] >= '0' && s.p[i] <= '9') ||
		      (s.p[i] >= 'a' && s.p[i] <= 'f')))
			return false;
	return true;
}

tally_webhook_reason tally_webhook_check_header(const char *sig_header,
						size_t max_len)
{
	parsed h;
	tally_webhook_reason r;
	size_t i;

	if (sig_header != NULL && strlen(sig_header) > max_len)
		return TALLY_WEBHOOK_MALFORMED_HEADER;
	r = parse_header(&h, sig_header);
	if (r != TALLY_WEBHOOK_OK)
		return r;
	for (i = 0; i < h.nv1; i++)
		if (is_hex64(h.v1[i]))
			return TALLY_WEBHOOK_OK;
	return TALLY_WEBHOOK_BAD_SIGNATURE; /* no v1 could ever match */
}

int tally_webhook_verify(const char *sig_header, const char *body, size_t len,
			 const char *const *secrets, size_t nsecrets,
			 int64_t now_s, int64_t tolerance_s,
			 tally_webhook_reason *reason_out)
{
	parsed h;
	tally_webhook_reason r = parse_header(&h, sig_header);
	bool matched = false;
	size_t i, j;

	if (r != TALLY_WEBHOOK_OK)
		return finish(reason_out, r);
	for (i = 0; i < nsecrets && !matched; i++) {
		char expected[65];

		if (secrets[i] == NULL || secrets[i][0] == '\0')
			continue;
		tally_webhook_signature_hex(expected, body, len, secrets[i],
					    h.t);
		for (j = 0; j < h.nv1; j++)
			if (h.v1[j].n == 64 &&
			    CRYPTO_memcmp(expected, h.v1[j].p, 64) == 0)
				matched = true;
		OPENSSL_cleanse(expected, sizeof(expected));
	}
	if (!matched)
		return finish(reason_out, TALLY_WEBHOOK_BAD_SIGNATURE);
	if (tolerance_s >= 0 && h.t < now_s - tolerance_s)
		return finish(reason_out, TALLY_WEBHOOK_EXPIRED);
	return finish(reason_out, TALLY_WEBHOOK_OK);
}
