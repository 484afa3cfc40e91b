#ifndef TALLY_TESTS_STRIPE_SCRIPTED_H
#define TALLY_TESTS_STRIPE_SCRIPTED_H

/*
 * stripe_scripted.h - a small stateful Stripe on libmicrohttpd for the
 * invoice usage tests: invoices with a status the test sets, invoice items
 * (POST, list by customer), customers, and Stripe's idempotency (a key
 * seen before answers its first result; a key reused with other
 * parameters is a 400 idempotency_error; `forget_keys` plays Stripe after
 * 24 hours). Faults: the Nth POST /v1/invoiceitems fails with a 500 before
 * creating anything (fail_before) or after creating the item (fail_after:
 * the answer is lost, as with a crash between Stripe and PostgreSQL);
 * finalize_at: Stripe finalizes the drafts just before the Nth POST;
 * delay_at: the Nth POST /v1/invoiceitems to arrive waits delay_ms before
 * Stripe handles it (room to kill the caller mid-call; the item is still
 * created, its answer goes nowhere), counted in delayed_done when handled.
 * Start it per test: Check forks each test and threads do not follow.
 */
#define _POSIX_C_SOURCE 200809L
#include <ctype.h>
#include <jansson.h>
#include <microhttpd.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#define SS_MAXINV 16
#define SS_MAXITEMS 128
#define SS_MAXKEYS 256

typedef struct ss_item {
	char id[32], customer[64], invoice[64], currency[8];
	char line_key[256], tenant[40], meta_invoice[64], desc[256];
	long long amount, period_start, period_end;
	bool deleted; /* DELETE /v1/invoiceitems/{id}, as the test says */
} ss_item;

typedef struct ss_key {
	char key[256];
	char *body;    /* the request's form body */
	int status;
	char *answer;
} ss_key;

static struct {
	pthread_mutex_t mu;
	char inv_id[SS_MAXINV][64], inv_status[SS_MAXINV][16];
	int ninv;
	ss_item items[SS_MAXITEMS];
	int nitems;
	ss_key keys[SS_MAXKEYS];
	int nkeys;
	bool forget_keys;
	int fail_before, fail_after; /* 1-based POST /v1/invoiceitems */
	int finalize_at; /* Stripe finalizes every draft before that POST */
	int delay_at, delay_ms; /* 1-based arrival of POST /v1/invoiceitems */
	int item_arrivals, delayed_done;
	int item_posts, item_lists, invoice_gets, customers;
	char customer_email[256]; /* of the last POST /v1/customers */
} ss_srv = { .mu = PTHREAD_MUTEX_INITIALIZER };

static struct MHD_Daemon *ss_daemon;
static char ss_base[64];

typedef struct ss_upload {
	char buf[8192];
	size_t len;
} ss_upload;

static inline void ss_invoice(const char *id, const char *status)
{
	int i;

	pthread_mutex_lock(&ss_srv.mu);
	for (i = 0; i < ss_srv.ninv; i++)
		if (strcmp(ss_srv.inv_id[i], id) == 0)
			break;
	if (i == ss_srv.ninv && ss_srv.ninv < SS_MAXINV)
		snprintf(ss_srv.inv_id[ss_srv.ninv++], 64, "%s", id);
	snprintf(ss_srv.inv_status[i], 16, "%s", status);
	pthread_mutex_unlock(&ss_srv.mu);
}

static void ss_decode(char *s)
{
	char *o = s;

	for (; *s; s++) {
		if (*s == '%' && isxdigit((unsigned char)s[1]) &&
		    isxdigit((unsigned char)s[2])) {
			char h[3] = { s[1], s[2], 0 };

			*o++ = (char)strtol(h, NULL, 16);
			s += 2;
		} else {
			*o++ = *s == '+' ? ' ' : *s;
		}
	}
	*o = '\0';
}

/* The value of form field `name` in body (decoded), or "". */
static void ss_field(const char *body, const char *name, char *out,
		     size_t n)
{
	char *copy = strdup(body), *save = NULL, *tok;

	out[0] = '\0';
	for (tok = strtok_r(copy, "&", &save); tok;
	     tok = strtok_r(NULL, "&", &save)) {
		char *eq = strchr(tok, '=');

		if (eq == NULL)
			continue;
		*eq = '\0';
		ss_decode(tok);
		if (strcmp(tok, name) == 0) {
			ss_decode(eq + 1);
			snprintf(out, n, "%s", eq + 1);
			break;
		}
	}
	free(copy);
}

static json_t *ss_item_json(const ss_item *it)
{
	return json_pack("{s:s, s:s, s:s, s:o, s:I, s:s, s:s, s:{s:I, s:I},"
			 " s:{s:s, s:s, s:s}}", "id", it->id, "object",
			 "invoiceitem", "customer", it->customer, "invoice",
			 it->invoice[0] ? json_string(it->invoice) : json_null(),
			 "amount", (json_int_t)it->amount, "currency",
			 it->currency, "description", it->desc, "period",
			 "start", (json_int_t)it->period_start, "end",
			 (json_int_t)it->period_end, "metadata", "tenant_id",
			 it->tenant, "invoice_id", it->meta_invoice,
			 "line_key", it->line_key);
}

static const char *ss_inv_status(const char *id)
{
	int i;

	for (i = 0; i < ss_srv.ninv; i++)
		if (strcmp(ss_srv.inv_id[i], id) == 0)
			return ss_srv.inv_status[i];
	return NULL;
}

/* POST /v1/invoiceitems; *answer malloc'd. Returns the HTTP status;
 * *lost: the item was created but the answer is lost (500). */
static int ss_post_item(const char *body, char **answer, bool *lost)
{
	ss_item *it;
	char inv[64], tmp[64];
	const char *st;
	int n = ++ss_srv.item_posts;

	*lost = false;
	if (n == ss_srv.finalize_at) {
		int i;

		for (i = 0; i < ss_srv.ninv; i++)
			if (strcmp(ss_srv.inv_status[i], "draft") == 0)
				snprintf(ss_srv.inv_status[i], 16, "open");
	}
	if (n == ss_srv.fail_before) {
		*answer = strdup("{\"error\":{\"type\":\"api_error\"}}");
		return 500;
	}
	ss_field(body, "invoice", inv, sizeof(inv));
	st = inv[0] ? ss_inv_status(inv) : NULL;
	if (inv[0] && (st == NULL || strcmp(st, "draft") != 0)) {
		*answer = strdup("{\"error\":{\"type\":\"invalid_request_error\","
				 "\"message\":\"You can only add invoice items"
				 " to draft invoices.\",\"param\":\"invoice\"}}");
		return 400;
	}
	if (ss_srv.nitems == SS_MAXITEMS)
		return 500;
	it = &ss_srv.items[ss_srv.nitems++];
	memset(it, 0, sizeof(*it));
	snprintf(it->id, sizeof(it->id), "ii_scripted_%d", ss_srv.nitems);
	snprintf(it->invoice, sizeof(it->invoice), "%s", inv);
	ss_field(body, "customer", it->customer, sizeof(it->customer));
	ss_field(body, "currency", it->currency, sizeof(it->currency));
	ss_field(body, "description", it->desc, sizeof(it->desc));
	ss_field(body, "metadata[line_key]", it->line_key,
		 sizeof(it->line_key));
	ss_field(body, "metadata[tenant_id]", it->tenant, sizeof(it->tenant));
	ss_field(body, "metadata[invoice_id]", it->meta_invoice,
		 sizeof(it->meta_invoice));
	ss_field(body, "amount", tmp, sizeof(tmp));
	it->amount = strtoll(tmp, NULL, 10);
	ss_field(body, "period[start]", tmp, sizeof(tmp));
	it->period_start = strtoll(tmp, NULL, 10);
	ss_field(body, "period[end]", tmp, sizeof(tmp));
	it->period_end = strtoll(tmp, NULL, 10);
	{
		json_t *j = ss_item_json(it);

		*answer = json_dumps(j, JSON_COMPACT);
		json_decref(j);
	}
	*lost = n == ss_srv.fail_after;
	return 200;
}

static char *ss_list_items(const char *customer)
{
	json_t *data = json_array(), *l;
	char *s;
	int i;

	for (i = 0; i < ss_srv.nitems; i++)
		if (!ss_srv.items[i].deleted && (customer == NULL ||
		    strcmp(ss_srv.items[i].customer, customer) == 0))
			json_array_append_new(data,
					      ss_item_json(&ss_srv.items[i]));
	l = json_pack("{s:s, s:o, s:b}", "object", "list", "data", data,
		      "has_more", 0);
	s = json_dumps(l, JSON_COMPACT);
	json_decref(l);
	return s;
}

/* Stripe's idempotency: the status (and answer) of a key seen before,
 * or -1. */
static int ss_replay(const char *key, const char *body, char **answer)
{
	int i;

	if (key == NULL || ss_srv.forget_keys)
		return -1;
	for (i = 0; i < ss_srv.nkeys; i++) {
		if (strcmp(ss_srv.keys[i].key, key) != 0)
			continue;
		if (strcmp(ss_srv.keys[i].body, body) != 0) {
			*answer = strdup("{\"error\":{\"type\":"
					 "\"idempotency_error\",\"message\":"
					 "\"Keys for idempotent requests can "
					 "only be used with the same "
					 "parameters\"}}");
			return 400;
		}
		*answer = strdup(ss_srv.keys[i].answer);
		return ss_srv.keys[i].status;
	}
	return -1;
}

static void ss_remember(const char *key, const char *body, int status,
			const char *answer)
{
	ss_key *k;

	if (key == NULL || ss_srv.nkeys == SS_MAXKEYS)
		return;
	k = &ss_srv.keys[ss_srv.nkeys++];
	snprintf(k->key, sizeof(k->key), "%s", key);
	k->body = strdup(body);
	k->status = status;
	k->answer = strdup(answer);
}

static int ss_route(struct MHD_Connection *conn, const char *url,
		    const char *method, const char *body, char **answer)
{
	const char *key = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
						      "Idempotency-Key");
	const char *st;
	int status;
	bool lost = false;

	if (strcmp(method, "POST") == 0) {
		status = ss_replay(key, body, answer);
		if (status >= 0)
			return status;
	}
	if (strcmp(method, "POST") == 0 &&
	    strcmp(url, "/v1/invoiceitems") == 0) {
		status = ss_post_item(body, answer, &lost);
	} else if (strcmp(method, "POST") == 0 &&
		   strcmp(url, "/v1/customers") == 0) {
		ss_field(body, "email", ss_srv.customer_email,
			 sizeof(ss_srv.customer_email));
		*answer = malloc(64);
		snprintf(*answer, 64, "{\"id\":\"cus_scripted_%d\","
			 "\"object\":\"customer\"}", ++ss_srv.customers);
		status = 200;
	} else if (strcmp(method, "GET") == 0 &&
		   strcmp(url, "/v1/invoiceitems") == 0) {
		ss_srv.item_lists++;
		*answer = ss_list_items(MHD_lookup_connection_value(
			conn, MHD_GET_ARGUMENT_KIND, "customer"));
		return 200;
	} else if (strcmp(method, "GET") == 0 &&
		   strncmp(url, "/v1/invoices/", 13) == 0) {
		ss_srv.invoice_gets++;
		st = ss_inv_status(url + 13);
		*answer = malloc(256);
		if (st == NULL) {
			snprintf(*answer, 256, "{\"error\":{\"type\":"
				 "\"invalid_request_error\",\"code\":"
				 "\"resource_missing\"}}");
			return 404;
		}
		snprintf(*answer, 256, "{\"id\":\"%s\",\"object\":\"invoice\","
			 "\"status\":\"%s\"}", url + 13, st);
		return 200;
	} else {
		*answer = strdup("{\"error\":{\"type\":"
				 "\"invalid_request_error\"}}");
		return 404;
	}
	if (strcmp(method, "POST") == 0 && status != 500)
		ss_remember(key, body, status, *answer);
	if (lost) {
		free(*answer);
		*answer = strdup("{\"error\":{\"type\":\"api_error\"}}");
		return 500;
	}
	return status;
}

/* delay_at: hold this request (before Stripe handles it) for delay_ms. */
static bool ss_delay(const char *url, const char *method)
{
	struct timespec ts;
	bool delay;
	int ms;

	if (strcmp(method, "POST") != 0 || strcmp(url, "/v1/invoiceitems") != 0)
		return false;
	pthread_mutex_lock(&ss_srv.mu);
	delay = ++ss_srv.item_arrivals == ss_srv.delay_at;
	ms = ss_srv.delay_ms;
	pthread_mutex_unlock(&ss_srv.mu);
	if (delay) {
		ts.tv_sec = ms / 1000;
		ts.tv_nsec = (long)(ms % 1000) * 1000000L;
		nanosleep(&ts, NULL);
	}
	return delay;
}

static enum MHD_Result ss_handler(void *cls, struct MHD_Connection *conn,
				  const char *url, const char *method,
				  const char *version, const char *data,
				  size_t *data_size, void **con_cls)
{
	ss_upload *up = *con_cls;
	struct MHD_Response *resp;
	char *answer = NULL;
	enum MHD_Result r;
	int status;
	bool delayed;

	(void)cls;
	(void)version;
	if (up == NULL) {
		*con_cls = calloc(1, sizeof(ss_upload));
		return MHD_YES;
	}
	if (*data_size > 0) {
		size_t n = *data_size;

		if (n > sizeof(up->buf) - 1 - up->len)
			n = sizeof(up->buf) - 1 - up->len;
		memcpy(up->buf + up->len, data, n);
		up->len += n;
		*data_size = 0;
		return MHD_YES;
	}
	delayed = ss_delay(url, method);
	pthread_mutex_lock(&ss_srv.mu);
	status = ss_route(conn, url, method, up->buf, &answer);
	ss_srv.delayed_done += delayed;
	pthread_mutex_unlock(&ss_srv.mu);
	resp = MHD_create_response_from_buffer(strlen(answer), answer,
					       MHD_RESPMEM_MUST_FREE);
	MHD_add_response_header(resp, "Content-Type", "application/json");
	MHD_add_response_header(resp, "Request-Id", "req_scripted");
	r = MHD_queue_response(conn, (unsigned)status, resp);
	MHD_destroy_response(resp);
	return r;
}

static void ss_completed(void *cls, struct MHD_Connection *conn,
			 void **con_cls, enum MHD_RequestTerminationCode toe)
{
	(void)cls;
	(void)conn;
	(void)toe;
	free(*con_cls);
	*con_cls = NULL;
}

static void ss_start(void)
{
	const union MHD_DaemonInfo *info;

	ss_daemon = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
				     MHD_USE_THREAD_PER_CONNECTION, 0, NULL,
				     NULL, ss_handler, NULL,
				     MHD_OPTION_NOTIFY_COMPLETED, ss_completed,
				     NULL, MHD_OPTION_END);
	ck_assert_msg(ss_daemon != NULL, "scripted Stripe must start");
	info = MHD_get_daemon_info(ss_daemon, MHD_DAEMON_INFO_BIND_PORT);
	snprintf(ss_base, sizeof(ss_base), "http://127.0.0.1:%d",
		 (int)info->port);
}

static void ss_stop(void)
{
	if (ss_daemon)
		MHD_stop_daemon(ss_daemon);
	ss_daemon = NULL;
}

/* Items on the scripted Stripe with this line key and tenant. */
static inline int ss_items_for(const char *tenant, const char *line_key)
{
	int i, n = 0;

	pthread_mutex_lock(&ss_srv.mu);
	for (i = 0; i < ss_srv.nitems; i++)
		n += !ss_srv.items[i].deleted &&
		     strcmp(ss_srv.items[i].tenant, tenant) == 0 &&
		     strcmp(ss_srv.items[i].line_key, line_key) == 0;
	pthread_mutex_unlock(&ss_srv.mu);
	return n;
}

/* Items with this tenant, invoice (metadata) and line key; *amount: the
 * last one's. */
static inline int ss_items_of(const char *tenant, const char *invoice,
			      const char *line_key, long long *amount)
{
	int i, n = 0;

	pthread_mutex_lock(&ss_srv.mu);
	for (i = 0; i < ss_srv.nitems; i++) {
		const ss_item *it = &ss_srv.items[i];

		if (it->deleted || strcmp(it->tenant, tenant) != 0 ||
		    strcmp(it->meta_invoice, invoice) != 0 ||
		    (line_key != NULL && strcmp(it->line_key, line_key) != 0))
			continue;
		n++;
		if (amount)
			*amount = it->amount;
	}
	pthread_mutex_unlock(&ss_srv.mu);
	return n;
}

/* The value of a counter of ss_srv, read under its lock. */
static inline int ss_count(const int *counter)
{
	int n;

	pthread_mutex_lock(&ss_srv.mu);
	n = *counter;
	pthread_mutex_unlock(&ss_srv.mu);
	return n;
}

#endif /* TALLY_TESTS_STRIPE_SCRIPTED_H */
