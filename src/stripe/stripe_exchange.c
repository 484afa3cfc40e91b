/*
 * stripe_exchange.c - reading one HTTP exchange with Stripe: the answer's
 * body and headers (Request-Id, Stripe-Should-Retry, Retry-After), its
 * error object, whether it is worth retrying, and its status class.
 */
#define _POSIX_C_SOURCE 200809L
#include "stripe/stripe_int.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

/* Bounded copy that always terminates (snprintf "%s" without the
 * truncation warnings). */
void tally_stripe__cpy(char *dst, size_t size, const char *src)
{
	size_t n = strlen(src);

	if (n >= size)
		n = size - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

size_t tally_stripe__on_body(char *ptr, size_t size, size_t n, void *payload)
{
	tally_stripe__exchange *x = payload;

	/* Stripe bodies are small; refuse absurd ones instead of growing */
	if (x->body.len + size * n > (size_t)64 << 20)
		return 0;
	tally_strbuf_add(&x->body, ptr, size * n);
	return size * n;
}

static void trim_copy(char *out, size_t outlen, const char *v, size_t n)
{
	while (n > 0 && (*v == ' ' || *v == '\t')) {
		v++;
		n--;
	}
	while (n > 0 && (v[n - 1] == '\r' || v[n - 1] == '\n' ||
			 v[n - 1] == ' '))
		n--;
	if (n >= outlen)
		n = outlen - 1;
	memcpy(out, v, n);
	out[n] = '\0';
}

size_t tally_stripe__on_header(char *ptr, size_t size, size_t n, void *payload)
{
	tally_stripe__exchange *x = payload;
	size_t len = size * n;
	const char *colon = memchr(ptr, ':', len);
	char name[64], val[128];
	size_t nl;

	if (colon == NULL)
		return len;
	nl = (size_t)(colon - ptr);
	if (nl >= sizeof(name))
		return len;
	memcpy(name, ptr, nl);
	name[nl] = '\0';
	trim_copy(val, sizeof(val), colon + 1, len - nl - 1);
	if (strcasecmp(name, "Request-Id") == 0) {
		tally_stripe__cpy(x->request_id, sizeof(x->request_id), val);
	} else if (strcasecmp(name, "Stripe-Should-Retry") == 0) {
		x->should_retry = strcasecmp(val, "true") == 0 ? 1 : 0;
	} else if (strcasecmp(name, "Retry-After") == 0) {
		int64_t secs;

		if (tally_parse_i64(&secs, val) == 0 && secs >= 0 &&
		    secs < 3600)
			x->retry_after_ms = secs * 1000;
	}
	return len;
}

/* Replace any occurrence of the secret key in msg (in place). */
void tally_stripe__scrub(const char *secret_key, char *msg)
{
	size_t kl = strlen(secret_key);
	char *p;

	if (kl < 4)
		return;
	while ((p = strstr(msg, secret_key)) != NULL) {
		memset(p, '*', kl);
	}
}

void tally_stripe__parse_error(tally_stripe_error *se, const char *body)
{
	json_t *root, *e;

	root = json_loads(body, 0, NULL);
	e = root ? json_object_get(root, "error") : NULL;
	if (json_is_object(e)) {
		const char *v;

		v = tally_stripe_jstr(e, "type");
		tally_stripe__cpy(se->type, sizeof(se->type), v ? v : "");
		v = tally_stripe_jstr(e, "code");
		tally_stripe__cpy(se->code, sizeof(se->code), v ? v : "");
		v = tally_stripe_jstr(e, "message");
		tally_stripe__cpy(se->message, sizeof(se->message), v ? v : "");
		v = tally_stripe_jstr(e, "param");
		tally_stripe__cpy(se->param, sizeof(se->param), v ? v : "");
		v = tally_stripe_jstr(e, "decline_code");
		tally_stripe__cpy(se->decline_code, sizeof(se->decline_code),
				  v ? v : "");
	}
	json_decref(root);
}

bool tally_stripe__curl_retryable(CURLcode cc)
{
	switch (cc) {
	case CURLE_COULDNT_RESOLVE_HOST:
	case CURLE_COULDNT_CONNECT:
	case CURLE_OPERATION_TIMEDOUT:
	case CURLE_SEND_ERROR:
	case CURLE_RECV_ERROR:
	case CURLE_GOT_NOTHING:
	case CURLE_PARTIAL_FILE:
	case CURLE_HTTP2:
	case CURLE_HTTP2_STREAM:
	case CURLE_SSL_CONNECT_ERROR:
		return true;
	default:
		return false;
	}
}

/* Whether an HTTP answer should be retried (header first, then status). */
bool tally_stripe__status_retryable(long status, int should_retry)
{
	if (should_retry == 1)
		return true;
	if (should_retry == 0)
		return false;
	return status == 409 || status == 429 || status >= 500;
}

/* the labels of tally_stripe_requests_total, by tally_stripe__status_index */
const char *const tally_stripe__status_classes[TALLY_STRIPE__STATUS_CLASSES] = {
	"2xx", "4xx", "429", "5xx", "error"
};

int tally_stripe__status_index(long http_status)
{
	if (http_status >= 200 && http_status < 300)
		return 0;
	if (http_status == 429) /* rate limited: its own series */
		return 2;
	if (http_status >= 400 && http_status < 500)
		return 1;
	if (http_status >= 500 && http_status < 600)
		return 3;
	return 4; /* no answer (0), or nothing Stripe sends (1xx, 3xx) */
}

const char *tally_stripe_status_class(long http_status)
{
	return tally_stripe__status_classes[tally_stripe__status_index(
		http_status)];
}
