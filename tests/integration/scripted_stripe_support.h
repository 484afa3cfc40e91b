/*
 * scripted_stripe_support.h - a scripted Stripe API for
 * test_finance_stripe.c: a loopback libmicrohttpd server that answers GET
 * /v1/subscriptions/sub_H (with or without expanded discounts) and an
 * empty GET /v1/invoices, counting what it was asked, and a tally_stripe
 * client pointed at it.
 */
#ifndef TALLY_TESTS_SCRIPTED_STRIPE_SUPPORT_H
#define TALLY_TESTS_SCRIPTED_STRIPE_SUPPORT_H

#include "check_main.h"
#include "tally/stripe.h"

#include <microhttpd.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* A Stripe answering GET /v1/subscriptions/sub_H with its discounts
 * expanded, as asked with expand[] (without it, bare_body when set, its
 * discounts as ids); it counts what it was asked. expanded_body replaces
 * the built-in answer when set. */
static int expand_asked, gets;
static char *bare_body, *expanded_body;

static inline enum MHD_Result arg_seen(void *cls, enum MHD_ValueKind kind,
				const char *key, const char *value)
{
	(void)kind;
	if (strncmp(key, "expand", 6) == 0 && value &&
	    strcmp(value, "items.data.discounts") == 0) {
		expand_asked++;
		(*(int *)cls)++;
	}
	return MHD_YES;
}

static inline enum MHD_Result sub_answer(void *cls, struct MHD_Connection *conn,
				  const char *url, const char *method,
				  const char *version, const char *data,
				  size_t *size, void **con_cls)
{
	static const char body[] =
		"{\"id\":\"sub_H\",\"object\":\"subscription\","
		"\"discounts\":[{\"id\":\"di_bare\",\"object\":\"discount\","
		"\"start\":1775000000,\"end\":null,\"source\":{\"type\":"
		"\"coupon\",\"coupon\":{\"id\":\"TEN\",\"duration\":"
		"\"forever\",\"percent_off\":10}}}],\"items\":{\"data\":[{"
		"\"id\":\"si_H\",\"discounts\":[{\"id\":\"di_item_bare\","
		"\"object\":\"discount\",\"start\":1775000000,\"coupon\":{"
		"\"id\":\"ONE\",\"duration\":\"forever\",\"amount_off\":100,"
		"\"currency\":\"eur\"}}]}]}}";
	static const char no_invoices[] =
		"{\"object\":\"list\",\"data\":[],\"has_more\":false}";
	struct MHD_Response *r;
	enum MHD_Result q;
	bool ours = strcmp(method, "GET") == 0 &&
		    strcmp(url, "/v1/subscriptions/sub_H") == 0;
	bool list = strcmp(method, "GET") == 0 &&
		    strcmp(url, "/v1/invoices") == 0;
	const char *out = list ? no_invoices : "{}";
	int asked = 0;

	(void)cls;
	(void)version;
	(void)data;
	(void)size;
	(void)con_cls;
	if (ours) {
		gets++;
		MHD_get_connection_values(conn, MHD_GET_ARGUMENT_KIND,
					  arg_seen, &asked);
		out = expanded_body ? expanded_body : body;
		if (asked == 0 && bare_body)
			out = bare_body;
	}
	r = MHD_create_response_from_buffer(strlen(out), (void *)out,
					    MHD_RESPMEM_MUST_COPY);
	MHD_add_response_header(r, "Content-Type", "application/json");
	q = MHD_queue_response(conn, ours || list ? 200 : 404, r);
	MHD_destroy_response(r);
	return q;
}

/* The scripted Stripe on a free port, and a client of it in *stripe. */
static inline struct MHD_Daemon *scripted_stripe(tally_stripe **stripe)
{
	struct MHD_Daemon *d = MHD_start_daemon(
		MHD_USE_INTERNAL_POLLING_THREAD, 0, NULL, NULL, sub_answer,
		NULL, MHD_OPTION_END);
	tally_stripe_opts so = { 0 };
	tally_error err;
	char base[64];

	ck_assert_ptr_nonnull(d);
	snprintf(base, sizeof(base), "http://127.0.0.1:%u",
		 (unsigned)MHD_get_daemon_info(d,
			MHD_DAEMON_INFO_BIND_PORT)->port);
	so.api_base = base;
	so.secret_key = "sk_test_finance";
	so.timeout_ms = 5000;
	ck_assert_int_eq(tally_stripe_new(stripe, &so, &err), 0);
	return d;
}

#endif
