/*
 * stripe.c - Stripe API client: form encoding, idempotent POSTs, retries.
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
#include "tally/stripe.h"
#include "tally/log.h"
#include "tally/pg.h"

#include <assert.h>
#include <curl/curl.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

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
};

/* ---- growable string ---------------------------------------------------- */

typedef struct sbuf {
	char *p;
	size_t len, cap;
} sbuf;

static void sb_add(sbuf *b, const char *s, size_t n)
{
	if (b->len + n + 1 > b->cap) {
		size_t cap = b->cap ? b->cap : 256;

		while (b->len + n + 1 > cap)
			cap *= 2;
		b->p = tally_xrealloc(b->p, cap);
		b->cap = cap;
	}
	memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

static void sb_adds(sbuf *b, const char *s)
{
	sb_add(b, s, strlen(s));
}

/* Bounded copy that always terminates (snprintf "%s" without the
 * truncation warnings). */
static void cpy(char *dst, size_t size, const char *src)
{
	size_t n = strlen(src);

	if (n >= size)
		n = size - 1;
	memcpy(dst, src, n);
	dst[n] = '\0';
}

/* ---- form encoding ------------------------------------------------------ */

static void add_escaped(sbuf *b, const char *s, size_t n)
{
	char *e = curl_easy_escape(NULL, s, (int)n);

	if (e == NULL)
		abort(); /* allocation failure, as tally_xmalloc */
	sb_adds(b, e);
	curl_free(e);
}

static void add_pair(sbuf *out, const char *key, const char *val)
{
	if (out->len > 0)
		sb_add(out, "&", 1);
	add_escaped(out, key, strlen(key));
	sb_add(out, "=", 1);
	add_escaped(out, val, strlen(val));
}

static int encode_value(sbuf *out, sbuf *key, const json_t *v,
			tally_error *err);

static int encode_child(sbuf *out, sbuf *key, const char *seg,
			const json_t *v, tally_error *err)
{
	size_t keep = key->len;
	int rc;

	if (keep > 0) {
		sb_add(key, "[", 1);
		sb_adds(key, seg);
		sb_add(key, "]", 1);
	} else {
		sb_adds(key, seg);
	}
	rc = encode_value(out, key, v, err);
	key->len = keep;
	if (key->p)
		key->p[keep] = '\0';
	return rc;
}

static int encode_value(sbuf *out, sbuf *key, const json_t *v,
			tally_error *err)
{
	char num[32];
	const char *k;
	json_t *item;
	size_t i;
	int rc;

	switch (json_typeof(v)) {
	case JSON_OBJECT:
		json_object_foreach((json_t *)v, k, item) {
			rc = encode_child(out, key, k, item, err);
			if (rc != 0)
				return rc;
		}
		return 0;
	case JSON_ARRAY:
		json_array_foreach(v, i, item) {
			if (json_is_object(item) || json_is_array(item)) {
				snprintf(num, sizeof(num), "%zu", i);
				rc = encode_child(out, key, num, item, err);
			} else {
				rc = encode_child(out, key, "", item, err);
			}
			if (rc != 0)
				return rc;
		}
		return 0;
	case JSON_STRING:
		add_pair(out, key->p, json_string_value(v));
		return 0;
	case JSON_INTEGER:
		snprintf(num, sizeof(num), "%" JSON_INTEGER_FORMAT,
			 json_integer_value(v));
		add_pair(out, key->p, num);
		return 0;
	case JSON_TRUE:
		add_pair(out, key->p, "true");
		return 0;
	case JSON_FALSE:
		add_pair(out, key->p, "false");
		return 0;
	case JSON_NULL:
		add_pair(out, key->p, "");
		return 0;
	case JSON_REAL:
	default:
		return tally_error_set(err, TALLY_EINVALID,
				       "stripe form: %s: non-integer number",
				       key->p ? key->p : "");
	}
}

int tally_stripe_form_encode(char **out, const json_t *params,
			     tally_error *err)
{
	sbuf body = { 0 }, key = { 0 };
	int rc = 0;

	*out = NULL;
	sb_add(&body, "", 0);
	if (params != NULL) {
		if (!json_is_object(params)) {
			rc = tally_error_set(err, TALLY_EINVALID,
					     "stripe form: params not an object");
			goto cleanup;
		}
		sb_add(&key, "", 0);
		rc = encode_value(&body, &key, params, err);
		if (rc != 0)
			goto cleanup;
	}
	*out = body.p;
	body.p = NULL; /* now owned by the caller */
cleanup:
	free(body.p);
	free(key.p);
	return rc;
}

/* ---- client ------------------------------------------------------------- */

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

/* ---- one HTTP exchange -------------------------------------------------- */

typedef struct exchange {
	sbuf body;
	char request_id[64];
	int should_retry; /* -1 absent, 0 false, 1 true */
	int64_t retry_after_ms;
} exchange;

static size_t on_body(char *ptr, size_t size, size_t n, void *payload)
{
	exchange *x = payload;

	/* Stripe bodies are small; refuse absurd ones instead of growing */
	if (x->body.len + size * n > (size_t)64 << 20)
		return 0;
	sb_add(&x->body, ptr, size * n);
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

static size_t on_header(char *ptr, size_t size, size_t n, void *payload)
{
	exchange *x = payload;
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
		cpy(x->request_id, sizeof(x->request_id), val);
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

/* Replace any occurrence of the secret key in s (in place). */
static void scrub(const tally_stripe *s, char *msg)
{
	size_t kl = strlen(s->secret_key);
	char *p;

	if (kl < 4)
		return;
	while ((p = strstr(msg, s->secret_key)) != NULL) {
		memset(p, '*', kl);
	}
}

static void parse_error(tally_stripe_error *se, const char *body)
{
	json_t *root, *e;

	root = json_loads(body, 0, NULL);
	e = root ? json_object_get(root, "error") : NULL;
	if (json_is_object(e)) {
		const char *v;

		v = tally_stripe_jstr(e, "type");
		cpy(se->type, sizeof(se->type), v ? v : "");
		v = tally_stripe_jstr(e, "code");
		cpy(se->code, sizeof(se->code), v ? v : "");
		v = tally_stripe_jstr(e, "message");
		cpy(se->message, sizeof(se->message), v ? v : "");
		v = tally_stripe_jstr(e, "param");
		cpy(se->param, sizeof(se->param), v ? v : "");
		v = tally_stripe_jstr(e, "decline_code");
		cpy(se->decline_code, sizeof(se->decline_code), v ? v : "");
	}
	json_decref(root);
}

static bool curl_retryable(CURLcode cc)
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
static bool status_retryable(long status, int should_retry)
{
	if (should_retry == 1)
		return true;
	if (should_retry == 0)
		return false;
	return status == 409 || status == 429 || status >= 500;
}

int tally_stripe_request(tally_stripe *s, json_t **out, const char *method,
			 const char *path, const json_t *params,
			 const char *idempotency_key, tally_stripe_error *serr,
			 tally_error *err)
{
	tally_stripe_error se_local;
	tally_stripe_error *se = serr ? serr : &se_local;
	bool is_post = strcmp(method, "POST") == 0;
	char *form = NULL, *url = NULL, hdr[512];
	char curlerr[CURL_ERROR_SIZE];
	struct curl_slist *headers = NULL;
	exchange x = { 0 };
	int attempt, rc = TALLY_ERROR;
	size_t ul;

	assert(!is_post || (idempotency_key && *idempotency_key &&
			    strlen(idempotency_key) <= 255));
	if (out)
		*out = NULL;
	memset(se, 0, sizeof(*se));

	rc = tally_stripe_form_encode(&form, params, err);
	if (rc != 0)
		goto cleanup;
	ul = strlen(s->api_base) + strlen(path) + strlen(form) + 2;
	url = tally_xmalloc(ul);
	if (!is_post && *form)
		snprintf(url, ul, "%s%s?%s", s->api_base, path, form);
	else
		snprintf(url, ul, "%s%s", s->api_base, path);

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
	if (is_post) {
		headers = curl_slist_append(headers,
			"Content-Type: application/x-www-form-urlencoded");
	}
	headers = curl_slist_append(headers, "Accept: application/json");
	headers = curl_slist_append(headers, "Expect:");
	if (headers == NULL)
		abort();

	for (attempt = 0;; attempt++) {
		CURLcode cc;
		long status = 0;
		bool retry;
		int64_t wait;

		free(x.body.p);
		memset(&x, 0, sizeof(x));
		x.should_retry = -1;
		x.retry_after_ms = -1;
		sb_add(&x.body, "", 0);
		curlerr[0] = '\0';

		/* reset keeps the connection cache: connections are reused */
		curl_easy_reset(s->curl);
		curl_easy_setopt(s->curl, CURLOPT_URL, url);
		curl_easy_setopt(s->curl, CURLOPT_HTTPHEADER, headers);
		curl_easy_setopt(s->curl, CURLOPT_USERAGENT,
				 "tally/0.1 (libcurl)");
		curl_easy_setopt(s->curl, CURLOPT_NOSIGNAL, 1L);
		curl_easy_setopt(s->curl, CURLOPT_TIMEOUT_MS,
				 (long)s->timeout_ms);
		curl_easy_setopt(s->curl, CURLOPT_CONNECTTIMEOUT_MS,
				 (long)s->connect_timeout_ms);
		curl_easy_setopt(s->curl, CURLOPT_TCP_KEEPALIVE, 1L);
		curl_easy_setopt(s->curl, CURLOPT_ERRORBUFFER, curlerr);
		curl_easy_setopt(s->curl, CURLOPT_WRITEFUNCTION, on_body);
		curl_easy_setopt(s->curl, CURLOPT_WRITEDATA, &x);
		curl_easy_setopt(s->curl, CURLOPT_HEADERFUNCTION, on_header);
		curl_easy_setopt(s->curl, CURLOPT_HEADERDATA, &x);
		curl_easy_setopt(s->curl, CURLOPT_ACCEPT_ENCODING, "");
		if (is_post) {
			curl_easy_setopt(s->curl, CURLOPT_POST, 1L);
			curl_easy_setopt(s->curl, CURLOPT_POSTFIELDS, form);
			curl_easy_setopt(s->curl, CURLOPT_POSTFIELDSIZE,
					 (long)strlen(form));
		} else if (strcmp(method, "GET") != 0) {
			curl_easy_setopt(s->curl, CURLOPT_CUSTOMREQUEST,
					 method);
		}

		s->sent++;
		se->attempts = attempt + 1;
		cc = curl_easy_perform(s->curl);
		if (cc == CURLE_OK)
			curl_easy_getinfo(s->curl, CURLINFO_RESPONSE_CODE,
					  &status);
		se->http_status = status;
		cpy(se->request_id, sizeof(se->request_id), x.request_id);

		if (cc == CURLE_OK && status >= 200 && status < 300) {
			json_error_t je;
			json_t *root = json_loads(x.body.p, 0, &je);

			if (root == NULL) {
				rc = tally_error_set(err, TALLY_ERROR,
					"stripe: %s %s: unparseable answer "
					"(line %d)", method, path, je.line);
				goto cleanup;
			}
			if (out)
				*out = root;
			else
				json_decref(root);
			rc = 0;
			goto cleanup;
		}
		if (cc != CURLE_OK) {
			retry = curl_retryable(cc);
			cpy(se->message, sizeof(se->message), curlerr[0] ? curlerr : curl_easy_strerror(cc));
			scrub(s, se->message);
		} else {
			parse_error(se, x.body.p);
			scrub(s, se->message);
			se->should_retry_false = x.should_retry == 0;
			retry = status_retryable(status, x.should_retry);
		}
		if (!retry || attempt >= s->max_retries) {
			const char *what = se->type[0] ? se->type : "http";

			if (cc != CURLE_OK) {
				rc = tally_error_set(err, retry
					? TALLY_ETRANSIENT : TALLY_ERROR,
					"stripe: %s %s: %s", method, path,
					se->message);
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
				scrub(s, err->msg);
			goto cleanup;
		}
		wait = tally_backoff_ms(attempt, s->backoff_base_ms,
					s->backoff_cap_ms);
		if (x.retry_after_ms > wait)
			wait = x.retry_after_ms < s->backoff_cap_ms
				? x.retry_after_ms : s->backoff_cap_ms;
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
	/* the header list holds the key: wipe it before freeing */
	{
		struct curl_slist *h;

		for (h = headers; h; h = h->next) {
			volatile char *p = h->data;

			while (*p)
				*p++ = '\0';
		}
	}
	curl_slist_free_all(headers);
	free(x.body.p);
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

const char *tally_stripe_jstr(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	return json_is_string(v) ? json_string_value(v) : NULL;
}

int64_t tally_stripe_jint(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	return json_is_integer(v) ? (int64_t)json_integer_value(v) : 0;
}

const char *tally_stripe_jid(const json_t *obj, const char *key)
{
	json_t *v = json_object_get(obj, key);

	if (json_is_string(v))
		return json_string_value(v);
	if (json_is_object(v))
		return tally_stripe_jstr(v, "id");
	return NULL;
}
