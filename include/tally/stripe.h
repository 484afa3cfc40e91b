#ifndef TALLY_STRIPE_H
#define TALLY_STRIPE_H

/**
 * @file tally/stripe.h
 * @brief A small Stripe API client on libcurl and jansson.
 *
 * Parameters are a jansson object encoded the way Stripe expects
 * (application/x-www-form-urlencoded with nested keys: `metadata[k]=v`,
 * `items[0][price]=p`, `expand[]=x`), each key and value escaped with
 * curl_easy_escape. Every POST carries an Idempotency-Key chosen by the
 * caller (derive it from the command or event that caused the request) and
 * the pinned Stripe-Version.
 *
 * Retries: network errors and timeouts, 409 (lock_timeout, key in use), 429,
 * 5xx and any response with `Stripe-Should-Retry: true` are retried with
 * capped exponential backoff and full jitter (honouring Retry-After), never
 * when Stripe answers `Stripe-Should-Retry: false`. Other 4xx answers are
 * final and surface Stripe's error object.
 *
 * One CURL easy handle per client, so connections are reused. A client is
 * not thread-safe: one per thread. The secret key is sent in the
 * Authorization header only; it never appears in a log line or an error.
 */

#include <jansson.h>
#include <stdbool.h>
#include <stdint.h>

#include "tally/common.h"
#include "tally/config.h"
#include "tally/metrics.h"
#include "tally/stripe_event.h"

typedef struct tally_stripe tally_stripe;

typedef struct tally_stripe_opts {
	const char *api_base;     /* "https://api.stripe.com" */
	const char *secret_key;   /* sk_…; copied */
	const char *api_version;  /* Stripe-Version header, e.g. "2024-06-20" */
	int timeout_ms;           /* whole request, per attempt */
	int connect_timeout_ms;   /* 0: min(timeout_ms, 10 s) */
	int max_retries;          /* retries after the first attempt */
	int64_t backoff_base_ms;  /* 0: 500 ms */
	int64_t backoff_cap_ms;   /* 0: 20 s */
} tally_stripe_opts;

/** Stripe's error object, plus what the transport knew. */
typedef struct tally_stripe_error {
	long http_status;    /* 0 when no HTTP answer */
	char type[48];       /* api_error, card_error, invalid_request_error… */
	char code[64];       /* resource_missing, lock_timeout… */
	char message[256];
	char param[64];
	char decline_code[64];
	char request_id[64]; /* Request-Id header */
	bool should_retry_false; /* Stripe-Should-Retry: false was seen */
	int attempts;        /* HTTP attempts made */
} tally_stripe_error;

/**
 * Create a client.
 * @return 0 or TALLY_EINVALID (missing key or base; a base that is not
 *         https, unless plain http to localhost, 127.0.0.0/8 or [::1])
 */
int tally_stripe_new(tally_stripe **out, const tally_stripe_opts *opts,
		     tally_error *err) TALLY_MUSTCHECK;

/** Client from stripe.api_base, stripe.secret_key (environment only),
 *  stripe.api_version, stripe.timeout_ms and stripe.max_retries. */
int tally_stripe_new_from_config(tally_stripe **out, const tally_config *cfg,
				 tally_error *err) TALLY_MUSTCHECK;

void tally_stripe_free(tally_stripe *s);

/**
 * Whether id is a Stripe id with this prefix ("cus_", "sub_", "in_",
 * "ch_", "pm_", "ii_", "price_", "prod_", "sub_sched_"): the prefix, then
 * one or more of [A-Za-z0-9_], at most 255 bytes in all.
 */
bool tally_stripe_id_valid(const char *id, const char *prefix);

/**
 * Whether path may be requested: "/v1/" and segments of [A-Za-z0-9_]
 * only, and the segment after a collection with ids (customers,
 * subscriptions, subscription_schedules, invoices, invoiceitems, charges,
 * payment_methods, prices, products) a valid id of it
 * (tally_stripe_id_valid). tally_stripe_request refuses any other path
 * with TALLY_EINVALID, code "invalid_id", before sending anything.
 */
bool tally_stripe_path_valid(const char *path);

/**
 * Encode params (a JSON object; NULL = none) as Stripe form data.
 * Objects nest as `a[b]`, arrays of scalars as `a[]`, arrays of objects as
 * `a[0][b]`; true/false as words, integers in decimal, null as "" (unset),
 * reals are refused (amounts are integers).
 * @param[out] out malloc'd NUL-terminated string (caller frees)
 * @return 0 or TALLY_EINVALID
 */
int tally_stripe_form_encode(char **out, const json_t *params,
			     tally_error *err) TALLY_MUSTCHECK;

/**
 * Send one request: method "GET", "POST" or "DELETE"; path such as
 * "/v1/customers"; params go in the query (GET/DELETE) or body (POST).
 * idempotency_key is required for POST (≤ 255 bytes), optional for DELETE
 * and ignored for GET.
 * @param[out] out parsed 2xx body (caller json_decref()s); may be NULL
 * @param serr   Stripe's error when the answer was not 2xx; may be NULL
 * @return 0; TALLY_ENOTFOUND (404); TALLY_EINVALID (a final 4xx, or a
 *         retryable error Stripe said not to retry); TALLY_ETRANSIENT
 *         (retries exhausted); TALLY_ERROR (unparseable answer)
 */
int tally_stripe_request(tally_stripe *s, json_t **out, const char *method,
			 const char *path, const json_t *params,
			 const char *idempotency_key, tally_stripe_error *serr,
			 tally_error *err) TALLY_MUSTCHECK;

/** Called for each object of a list; return non-zero to stop (returned). */
typedef int (*tally_stripe_each_fn)(json_t *obj, void *payload);

/**
 * Page through a list endpoint (GET path with params, limit=100 unless
 * given), following has_more with starting_after = last object's id.
 * @return 0, fn's non-zero value, or an error as tally_stripe_request
 */
int tally_stripe_list(tally_stripe *s, const char *path, const json_t *params,
		      tally_stripe_each_fn fn, void *payload,
		      tally_stripe_error *serr, tally_error *err)
	TALLY_MUSTCHECK;

/** Requests sent (attempts included) since the client was created. */
uint64_t tally_stripe_requests_sent(const tally_stripe *s);

/**
 * Count every attempt's answer in m (borrowed; must outlive s) as
 * tally_stripe_requests_total{status="2xx|4xx|429|5xx|error"}; all five
 * series are registered now. Optional: without it nothing is counted.
 */
void tally_stripe_set_metrics(tally_stripe *s, tally_metrics *m);

/**
 * The status label of one attempt: "2xx", "429", "4xx" (other 4xx),
 * "5xx", or "error" for no HTTP answer (http_status 0: a transport error
 * or timeout) and any other status.
 */
const char *tally_stripe_status_class(long http_status);

/**
 * Derive an Idempotency-Key: "tally-<scope>-<id>-<step>", with id replaced
 * by its SHA-256 (hex) when the key would exceed 255 bytes.
 */
void tally_stripe_idempotency_key(char out[256], const char *scope,
				  const char *id, const char *step);


#endif /* TALLY_STRIPE_H */
