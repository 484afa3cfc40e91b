#ifndef TALLY_WEBHOOK_H
#define TALLY_WEBHOOK_H

/**
 * @file tally/webhook.h
 * @brief Stripe webhook signatures (`Stripe-Signature` header): verify and
 *        sign, per Stripe's v1 scheme.
 *
 * Header: `t=<unix seconds>,v1=<hex>[,v1=<hex>...][,v0=...]`. The signature
 * is lower-case hex HMAC-SHA256 over `"<t>." + raw body`, keyed with the
 * endpoint secret used as-is (including its `whsec_` prefix). Any v1 may
 * match any configured secret (secret rotation: current and previous);
 * other schemes (v0) are ignored. Comparison is constant-time
 * (CRYPTO_memcmp). As in Stripe's own libraries, the signature is checked
 * before the timestamp, so a caller without the secret only ever sees
 * bad_signature, and only a timestamp older than the tolerance is
 * rejected (`t < now - tolerance`).
 *
 * Pure functions: no allocation that outlives a call, thread-safe, secrets
 * never copied into errors or logs.
 */

#include <stddef.h>
#include <stdint.h>

#include "tally/common.h"

/** Why a webhook was rejected; stable, used as metric labels. */
typedef enum {
	TALLY_WEBHOOK_OK = 0,
	TALLY_WEBHOOK_MISSING_HEADER,   /* no or empty Stripe-Signature */
	TALLY_WEBHOOK_MALFORMED_HEADER, /* no/bad t=, item without '=' */
	TALLY_WEBHOOK_NO_V1,            /* parsed, but no v1 signature */
	TALLY_WEBHOOK_EXPIRED,          /* signed correctly, t too old */
	TALLY_WEBHOOK_BAD_SIGNATURE,    /* no v1 matches any secret */
} tally_webhook_reason;

/** Header name as Stripe sends it. */
#define TALLY_WEBHOOK_HEADER "Stripe-Signature"
/** Default tolerance, seconds (Stripe's libraries use the same). */
#define TALLY_WEBHOOK_TOLERANCE_S 300
/** Room for a header made by tally_webhook_sign(). */
#define TALLY_WEBHOOK_SIG_HEADER_MAX 96

/**
 * Verify a Stripe-Signature header against the raw body.
 * @param sig_header  header value, may be NULL (missing)
 * @param body        raw request bytes exactly as received
 * @param secrets     nsecrets endpoint secrets; empty strings are skipped
 * @param now_s       current unix time in seconds
 * @param tolerance_s maximum age of t; < 0 disables the check
 *                    (re-verification of stored events)
 * @param reason_out  set to the reason (TALLY_WEBHOOK_OK on success);
 *                    may be NULL
 * @return 0 when valid, TALLY_EINVALID otherwise
 */
int tally_webhook_verify(const char *sig_header, const char *body, size_t len,
			 const char *const *secrets, size_t nsecrets,
			 int64_t now_s, int64_t tolerance_s,
			 tally_webhook_reason *reason_out) TALLY_MUSTCHECK;

/**
 * Whether a Stripe-Signature header could be valid for some body, without
 * the body or a secret (reject a request before reading its body): longer
 * than max_len or unparsable is MALFORMED_HEADER, no t= or v1 as in
 * tally_webhook_verify(), and no v1 of 64 lower-case hex digits is
 * BAD_SIGNATURE (it can never match). TALLY_WEBHOOK_OK otherwise.
 */
tally_webhook_reason tally_webhook_check_header(const char *sig_header,
						size_t max_len);

/** Stable snake_case name: "ok", "missing_header", "expired", ... */
const char *tally_webhook_reason_name(tally_webhook_reason reason);

/**
 * Lower-case hex v1 signature of (t, body) with secret (64 chars + NUL).
 */
void tally_webhook_signature_hex(char out[65], const char *body, size_t len,
				 const char *secret, int64_t t);

/**
 * A complete header "t=<t>,v1=<hex>" as Stripe would send it (tests,
 * benchmarks, re-signing). out needs TALLY_WEBHOOK_SIG_HEADER_MAX bytes.
 */
void tally_webhook_sign(char *out, size_t outlen, const char *body, size_t len,
			const char *secret, int64_t t);

#endif /* TALLY_WEBHOOK_H */
