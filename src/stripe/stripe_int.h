/*
 * stripe_int.h - what the Stripe client's files share: one HTTP exchange
 * (the answer's body and the headers that matter) and its reading
 * (stripe_exchange.c).
 */
#ifndef TALLY_STRIPE_INT_H
#define TALLY_STRIPE_INT_H

#include "tally/stripe.h"

#include "base/strbuf.h"

#include <curl/curl.h>
#include <stdbool.h>

/* One HTTP exchange: what the curl callbacks collect. */
typedef struct tally_stripe__exchange {
	tally_strbuf body;
	char request_id[64];
	int should_retry; /* -1 absent, 0 false, 1 true */
	int64_t retry_after_ms;
} tally_stripe__exchange;

/* Bounded copy that always terminates (snprintf "%s" without the
 * truncation warnings). */
void tally_stripe__cpy(char *dst, size_t size, const char *src);
/* CURLOPT_WRITEFUNCTION / CURLOPT_HEADERFUNCTION; payload: the exchange */
size_t tally_stripe__on_body(char *ptr, size_t size, size_t n,
			     void *payload);
size_t tally_stripe__on_header(char *ptr, size_t size, size_t n,
			       void *payload);
/* Replace any occurrence of the secret key in msg (in place). */
void tally_stripe__scrub(const char *secret_key, char *msg);
/* Stripe's error object of an answer body into se. */
void tally_stripe__parse_error(tally_stripe_error *se, const char *body);
/* Whether a transport error / an HTTP answer should be retried. */
bool tally_stripe__curl_retryable(CURLcode cc);
bool tally_stripe__status_retryable(long status, int should_retry);
/* The status class of an attempt (0: no HTTP answer), an index into
 * tally_stripe__status_classes (tally_stripe_status_class()). */
enum { TALLY_STRIPE__STATUS_CLASSES = 5 };
extern const char *const tally_stripe__status_classes[];
int tally_stripe__status_index(long http_status);

#endif /* TALLY_STRIPE_INT_H */
