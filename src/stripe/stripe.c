/*
 * stripe.c - Stripe API client: idempotent requests with retries,
 * pagination, and the JSON helpers of its answers. Form encoding is
 * stripe_form.c, the reading of one exchange stripe_exchange.c.
 *
 * Key decision: the retry policy lives here, in one place, and follows
 * Stripe's own SDKs: the Stripe-Should-Retry header wins when present;
 * otherwise network errors, 409, 429 and 5xx are retried with capped
 * exponential backoff and full jitter. Because every POST carries an
 * Idempotency-Key, retrying a request whose answer was lost (timeout) is
 * safe: Stripe replays the first result instead of acting twice.
 *
 * The secret key is only ever copied into the Authorization header; error
 * messages are scrubbed of it in case a server echoes it back.
 */
#define _POSIX_C_SOURCE 200809L
#include "stripe/stripe_int.h"
#include "tally/log.h"
#include "tally/pg.h"

#include <arpa/inet.h>
#include <assert.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tally_stripe {
	CURL *curl;
	char *api_base;
	char *secret_key;
	char *api_version;
	int timeout_ms;
	int connect_timeout_ms;
	int max_retries;
	int64_t backoff_base_ms;
	int64_t backoff_cap_ms;
	uint64_t sent;
	/* tally_stripe_requests_total by status class; NULL: not counted */
	tally_counter *c_status[TALLY_STRIPE__STATUS_CLASSES];
};

/* ---- client ------------------------------------------------------------- */

/* Whether host (as libcurl parsed it) is this machine: localhost,
 * 127.0.0.0/8 or [::1]. */
static bool loopback_host(const char *host)
{
	struct in_addr a4;
	struct in6_addr a6;
	char h6[64];
	size_t n = strlen(host);

	if (strcmp(host, "localhost") == 0)
		return true;
	if (inet_pton(AF_INET, host, &a4) == 1)
		return (ntohl(a4.s_addr) >> 24) == 127;
	if (n > 2 && n < sizeof(h6) && host[0] == '[' && host[n - 1] == ']') {
		memcpy(h6, host + 1, n - 2);
		h6[n - 2] = '\0';
		return inet_pton(AF_INET6, h6, &a6) == 1 &&
		       IN6_IS_ADDR_LOOPBACK(&a6);
	}
	return false;
}

/* The secret key goes in every request's Authorization header: the API
 * base must be https, or plain http to this machine only (stripe-mock). */
static int check_api_base(const char *base, tally_error *err)
{
	CURLU *u = curl_url();
	char *scheme = NULL, *host = NULL;
	int rc = 0;

	if (u == NULL)
		abort();
	if (curl_url_set(u, CURLUPART_URL, base, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_SCHEME, &scheme, 0) != CURLUE_OK ||
	    curl_url_get(u, CURLUPART_HOST, &host, 0) != CURLUE_OK)
		rc = tally_error_set(err, TALLY_EINVALID,
				     "stripe.api_base (STRIPE_API_BASE) is "
				     "not a URL");
	else if (strcmp(scheme, "https") != 0 &&
		 !(strcmp(scheme, "http") == 0 && loopback_host(host)))
		rc = tally_error_set(err, TALLY_EINVALID,
				     "stripe.api_base (STRIPE_API_BASE) must "
				     "be https (plain http only to localhost, "
				     "127.0.0.0/8 or [::1]): the secret key "
				     "is sent with every request");
	curl_free(scheme);
	curl_free(host);
	curl_url_cleanup(u);
	return rc;
}

int tally_stripe_new(tally_stripe **out, const tally_stripe_opts *opts,
		     tally_error *err)
{
	tally_stripe *s;

	*out = NULL;
	if (opts->secret_key == NULL || *opts->secret_key == '\0')
		return tally_error_set(err, TALLY_EINVALID,
				       "stripe: no secret key (set "
				       "STRIPE_SECRET_KEY)");
	if (opts->api_base == NULL || *opts->api_base == '\0')
		return tally_error_set(err, TALLY_EINVALID,
				       "stripe: no api base");
	if (check_api_base(opts->api_base, err) != 0)
		return TALLY_EINVALID;
	s = tally_xcalloc(1, sizeof(*s));
	s->curl = curl_easy_init();
	if (s->curl == NULL) {
		free(s);
		return tally_error_set(err, TALLY_ERROR,
				       "stripe: curl_easy_init failed");
	}
	s->api_base = tally_xstrdup(opts->api_base);
	/* "https://api.stripe.com/" + "/v1/x" would double the slash */
	while (s->api_base[0] && s->api_base[strlen(s->api_base) - 1] == '/')
		s->api_base[strlen(s->api_base) - 1] = '\0';
	s->secret_key = tally_xstrdup(opts->secret_key);
	s->api_version = tally_xstrdup(opts->api_version ? opts->api_version
							  : "");
	s->timeout_ms = opts->timeout_ms > 0 ? opts->timeout_ms : 30000;
	s->connect_timeout_ms = opts->connect_timeout_ms > 0
		? opts->connect_timeout_ms
		: (s->timeout_ms < 10000 ? s->timeout_ms : 10000);
	s->max_retries = opts->max_retries >= 0 ? opts->max_retries : 0;
	s->backoff_base_ms = opts->backoff_base_ms > 0 ? opts->backoff_base_ms
						       : 500;
	s->backoff_cap_ms = opts->backoff_cap_ms > 0 ? opts->backoff_cap_ms
						     : 20000;
	*out = s;
	return 0;
}

int tally_stripe_new_from_config(tally_stripe **out, const tally_config *cfg,
				 tally_error *err)
{
	tally_stripe_opts o = { 0 };

	o.api_base = tally_config_str(cfg, "stripe.api_base");
	o.secret_key = tally_config_str(cfg, "stripe.secret_key");
	o.api_version = tally_config_str(cfg, "stripe.api_version");
	o.timeout_ms = (int)tally_config_int(cfg, "stripe.timeout_ms");
	o.max_retries = (int)tally_config_int(cfg, "stripe.max_retries");
	return tally_stripe_new(out, &o, err);
}

void tally_stripe_free(tally_stripe *s)
{
	if (s == NULL)
		return;
	curl_easy_cleanup(s->curl);
	free(s->api_base);
	if (s->secret_key) {
		/* don't leave the key in freed heap memory */
		volatile char *p = s->secret_key;

		while (*p)
			*p++ = '\0';
	}
	free(s->secret_key);
	free(s->api_version);
	free(s);
}

uint64_t tally_stripe_requests_sent(const tally_stripe *s)
{
	return s->sent;
}

void tally_stripe_set_metrics(tally_stripe *s, tally_metrics *m)
{
	int i;

	for (i = 0; i < TALLY_STRIPE__STATUS_CLASSES; i++) {
		char labels[32];

		snprintf(labels, sizeof(labels), "status=\"%s\"",
			 tally_stripe__status_classes[i]);
		s->c_status[i] = tally_metrics_counter(
			m, "tally_stripe_requests_total", labels,
			"Stripe API attempts by answer: 2xx, 429, other 4xx, "
			"5xx, error (no HTTP answer)");
	}
}

/* ---- one request, retried ---------------------------------------------- */

/* The request's headers; the first holds the secret key (see wipe). */
static struct curl_slist *request_headers(const tally_stripe *s,
					  const char *method,
					  const char *idempotency_key)
{
	struct curl_slist *headers = NULL;
	char hdr[512];

	snprintf(hdr, sizeof(hdr), "Authorization: Bearer %s", s->secret_key);
	headers = curl_slist_append(headers, hdr);
	memset(hdr, 0, sizeof(hdr));
	if (*s->api_version) {
		snprintf(hdr, sizeof(hdr), "Stripe-Version: %s",
			 s->api_version);
		headers = curl_slist_append(headers, hdr);
	}
	if (idempotency_key && *idempotency_key &&
	    strcmp(method, "GET") != 0) {
		snprintf(hdr, sizeof(hdr), "Idempotency-Key: %s",
			 idempotency_key);
		headers = curl_slist_append(headers, hdr);
	}
	if (strcmp(method, "POST") == 0) {
		headers = curl_slist_append(headers,
			"Content-Type: application/x-www-form-urlencoded");
	}
	headers = curl_slist_append(headers, "Accept: application/json");
	headers = curl_slist_append(headers, "Expect:");
	if (headers == NULL)
		abort();
	return headers;
}

/* The header list holds the key: wipe it before freeing. */
static void free_headers(struct curl_slist *headers)
{
	struct curl_slist *h;

	for (h = headers; h; h = h->next) {
		volatile char *p = h->data;

		while (*p)
			*p++ = '\0';
	}
	curl_slist_free_all(headers);
}

/* Set up s->curl for one attempt (reset keeps the connection cache:
 * connections are reused). */
static void setup_attempt(tally_stripe *s, tally_stripe__exchange *x,
			  const char *url, struct curl_slist *headers,
			  const char *method, const char *form,
			  char *curlerr)
{
	curl_easy_reset(s->curl);
	curl_easy_setopt(s->curl, CURLOPT_URL, url);
	curl_easy_setopt(s->curl, CURLOPT_HTTPHEADER, headers);
	curl_easy_setopt(s->curl, CURLOPT_USERAGENT, "tally/0.1 (libcurl)");
	curl_easy_setopt(s->curl, CURLOPT_NOSIGNAL, 1L);
	curl_easy_setopt(s->curl, CURLOPT_TIMEOUT_MS, (long)s->timeout_ms);
	curl_easy_setopt(s->curl, CURLOPT_CONNECTTIMEOUT_MS,
			 (long)s->connect_timeout_ms);
	curl_easy_setopt(s->curl, CURLOPT_TCP_KEEPALIVE, 1L);
	curl_easy_setopt(s->curl, CURLOPT_ERRORBUFFER, curlerr);
	curl_easy_setopt(s->curl, CURLOPT_WRITEFUNCTION,
			 tally_stripe__on_body);
	curl_easy_setopt(s->curl, CURLOPT_WRITEDATA, x);
	curl_easy_setopt(s->curl, CURLOPT_HEADERFUNCTION,
			 tally_stripe__on_header);
	curl_easy_setopt(s->curl, CURLOPT_HEADERDATA, x);
	curl_easy_setopt(s->curl, CURLOPT_ACCEPT_ENCODING, "");
	if (strcmp(method, "POST") == 0) {
		curl_easy_setopt(s->curl, CURLOPT_POST, 1L);
		curl_easy_setopt(s->curl, CURLOPT_POSTFIELDS, form);
		curl_easy_setopt(s->curl, CURLOPT_POSTFIELDSIZE,
				 (long)strlen(form));
	} else if (strcmp(method, "GET") != 0) {
		curl_easy_setopt(s->curl, CURLOPT_CUSTOMREQUEST, method);
	}
}

/* The error of a final failure (retry: it was retryable, retries are
 * exhausted), scrubbed of the key. */
static int final_error(const tally_stripe *s, const tally_stripe_error *se,
		       CURLcode cc, long status, bool retry,
		       const char *method, const char *path, tally_error *err)
{
	const char *what = se->type[0] ? se->type : "http";
	int rc;

	if (cc != CURLE_OK) {
		rc = tally_error_set(
		    err, retry ? TALLY_ETRANSIENT : TALLY_ERROR,
		    "stripe: %s %s: %s", method, path, se->message);
	} else {
		int code = status == 404 ? TALLY_ENOTFOUND
			: retry ? TALLY_ETRANSIENT
			: TALLY_EINVALID;
		/* a 5xx Stripe told us not to retry is final */
		rc = tally_error_set(err, code,
			"stripe: %s %s: %ld %s%s%s: %s%s%s",
			method, path, status, what,
			se->code[0] ? "/" : "", se->code,
			se->message,
			se->param[0] ? " param=" : "",
			se->param);
	}
	if (err)
		tally_stripe__scrub(s->secret_key, err->msg);
	return rc;
}

/* A 2xx answer: its JSON into *out (or dropped). */
static int take_answer(const tally_stripe__exchange *x, json_t **out,
		       const char *method, const char *path, tally_error *err)
{
	json_error_t je;
	json_t *root = json_loads(tally_strbuf_cstr(&x->body), 0, &je);

	if (root == NULL)
		return tally_error_set(err, TALLY_ERROR,
				       "stripe: %s %s: unparseable answer "
				       "(line %d)", method, path, je.line);
	if (out)
		*out = root;
	else
		json_decref(root);
	return 0;
}

/* How long to wait before attempt + 1: backoff, or Retry-After (capped). */
static int64_t retry_wait(const tally_stripe *s,
			  const tally_stripe__exchange *x, int attempt)
{
	int64_t wait = tally_backoff_ms(attempt, s->backoff_base_ms,
					s->backoff_cap_ms);

	if (x->retry_after_ms > wait)
		wait = x->retry_after_ms < s->backoff_cap_ms
			? x->retry_after_ms : s->backoff_cap_ms;
	return wait;
}

/* The URL: the form goes into the query string unless it is a POST. */
static char *request_url(const tally_stripe *s, const char *method,
			 const char *path, const char *form)
{
	size_t ul = strlen(s->api_base) + strlen(path) + strlen(form) + 2;
	char *url = tally_xmalloc(ul);

	if (strcmp(method, "POST") != 0 && *form)
		snprintf(url, ul, "%s%s?%s", s->api_base, path, form);
	else
		snprintf(url, ul, "%s%s", s->api_base, path);
	return url;
}

/* A failed attempt: its error into se (scrubbed); whether to retry. */
static bool read_failure(const tally_stripe *s, tally_stripe_error *se,
			 const tally_stripe__exchange *x, CURLcode cc,
			 long status, const char *curlerr)
{
	bool retry;

	if (cc != CURLE_OK) {
		retry = tally_stripe__curl_retryable(cc);
		tally_stripe__cpy(se->message, sizeof(se->message),
				  curlerr[0] ? curlerr
					     : curl_easy_strerror(cc));
	} else {
		tally_stripe__parse_error(se, tally_strbuf_cstr(&x->body));
		se->should_retry_false = x->should_retry == 0;
		retry = tally_stripe__status_retryable(status,
						       x->should_retry);
	}
	tally_stripe__scrub(s->secret_key, se->message);
	return retry;
}

int tally_stripe_request(tally_stripe *s, json_t **out, const char *method,
			 const char *path, const json_t *params,
			 const char *idempotency_key, tally_stripe_error *serr,
			 tally_error *err)
{
	tally_stripe_error se_local;
	tally_stripe_error *se = serr ? serr : &se_local;
	char *form = NULL, *url = NULL;
	char curlerr[CURL_ERROR_SIZE];
	struct curl_slist *headers = NULL;
	tally_stripe__exchange x = { 0 };
	int attempt, rc = TALLY_ERROR;

	/* every POST is idempotent */
	assert(strcmp(method, "POST") != 0 ||
	       (idempotency_key && *idempotency_key &&
		strlen(idempotency_key) <= 255));
	if (out)
		*out = NULL;
	memset(se, 0, sizeof(*se));
	if (!tally_stripe_path_valid(path)) {
		/* a final failure of the caller's command or event */
		tally_stripe__cpy(se->type, sizeof(se->type),
				  "invalid_request_error");
		tally_stripe__cpy(se->code, sizeof(se->code), "invalid_id");
		tally_stripe__cpy(se->message, sizeof(se->message),
				  "not a valid Stripe id in the request path");
		return tally_error_set(err, TALLY_EINVALID,
				       "stripe: %s: not a valid Stripe id in "
				       "the request path", method);
	}

	rc = tally_stripe_form_encode(&form, params, err);
	if (rc != 0)
		goto cleanup;
	url = request_url(s, method, path, form);
	headers = request_headers(s, method, idempotency_key);
	for (attempt = 0;; attempt++) {
		CURLcode cc;
		long status = 0;
		bool retry;
		int64_t wait;

		tally_strbuf_free(&x.body);
		memset(&x, 0, sizeof(x));
		x.should_retry = -1;
		x.retry_after_ms = -1;
		curlerr[0] = '\0';
		setup_attempt(s, &x, url, headers, method, form, curlerr);
		s->sent++;
		se->attempts = attempt + 1;
		cc = curl_easy_perform(s->curl);
		if (cc == CURLE_OK)
			curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE,
					  &status);
		se->http_status = status;
		if (s->c_status[0] != NULL)
			tally_counter_add(s->c_status[tally_stripe__status_index(
						  cc == CURLE_OK ? status : 0)],
					  1);
		tally_stripe__cpy(se->request_id, sizeof(se->request_id),
				  x.request_id);
		if (cc == CURLE_OK && status >= 200 && status < 300) {
			rc = take_answer(&x, out, method, path, err);
			goto cleanup;
		}
		retry = read_failure(s, se, &x, cc, status, curlerr);
		if (!retry || attempt >= s->max_retries) {
			rc = final_error(s, se, cc, status, retry, method, path,
					 err);
			goto cleanup;
		}
		wait = retry_wait(s, &x, attempt);
		tally_log(TALLY_WARN, "stripe.retry",
			  TALLY_KV_STR("method", method),
			  TALLY_KV_STR("path", path),
			  TALLY_KV_INT("status", status),
			  TALLY_KV_STR("code", se->code),
			  TALLY_KV_STR("curl", cc != CURLE_OK
				       ? curl_easy_strerror(cc) : ""),
			  TALLY_KV_STR("request_id", x.request_id),
			  TALLY_KV_INT("attempt", attempt + 1),
			  TALLY_KV_INT("wait_ms", wait));
		tally_sleep_ms(wait);
	}

cleanup:
	free_headers(headers);
	tally_strbuf_free(&x.body);
	free(url);
	free(form);
	return rc;
}

/* ---- pagination --------------------------------------------------------- */

int tally_stripe_list(tally_stripe *s, const char *path, const json_t *params,
		      tally_stripe_each_fn fn, void *payload,
		      tally_stripe_error *serr, tally_error *err)
{
	json_t *q = params ? json_deep_copy(params) : json_object();
	json_t *page = NULL;
	int rc = 0;

	if (json_object_get(q, "limit") == NULL)
		json_object_set_new(q, "limit", json_integer(100));
	for (;;) {
		json_t *data, *obj, *last = NULL;
		size_t i;

		rc = tally_stripe_request(s, &page, "GET", path, q, NULL, serr,
					  err);
		if (rc != 0)
			goto cleanup;
		data = json_object_get(page, "data");
		if (!json_is_array(data)) {
			rc = tally_error_set(err, TALLY_ERROR,
					     "stripe: GET %s: not a list", path);
			goto cleanup;
		}
		json_array_foreach(data, i, obj) {
			rc = fn(obj, payload);
			if (rc != 0)
				goto cleanup;
			last = obj;
		}
		if (!json_is_true(json_object_get(page, "has_more")) ||
		    last == NULL || tally_stripe_jstr(last, "id") == NULL)
			break;
		json_object_set_new(q, "starting_after",
				    json_string(tally_stripe_jstr(last, "id")));
		json_decref(page);
		page = NULL;
	}
cleanup:
	json_decref(page);
	json_decref(q);
	return rc;
}

/* ---- helpers ------------------------------------------------------------ */

void tally_stripe_idempotency_key(char out[256], const char *scope,
				  const char *id, const char *step)
{
	int n = snprintf(out, 256, "tally-%s-%s-%s", scope, id, step);

	if (n < 0 || n >= 256) {
		unsigned char md[SHA256_DIGEST_LENGTH];
		char hex[2 * SHA256_DIGEST_LENGTH + 1];
		int i;

		SHA256((const unsigned char *)id, strlen(id), md);
		for (i = 0; i < SHA256_DIGEST_LENGTH; i++)
			snprintf(hex + 2 * i, 3, "%02x", md[i]);
		snprintf(out, 256, "tally-%.40s-%s-%.100s", scope, hex, step);
	}
}

