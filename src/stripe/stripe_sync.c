/*
 * stripe_sync.c - the tally_stripe_sync object (lifecycle), the plan <->
 * Stripe price lookups and the small helpers its files share (SQL with
 * varargs parameters, JSON field access).
 *
 * The module keeps PostgreSQL and Stripe in agreement; one file per
 * concept: sync_tenants.c (tenant rows, status transitions),
 * sync_signals.c (billing.signals outbox), sync_subscriptions.c,
 * sync_invoices.c, sync_payments.c (mirrors), sync_events.c (webhook
 * events), sync_commands.c and sync_subscription_commands.c (billing
 * commands), sync_dunning.c, sync_meters.c, sync_reconcile.c.
 *
 * Key decision: PostgreSQL is the arbiter of "already done". Stripe calls
 * happen outside database transactions (never hold a transaction open over
 * the network), and each step of a command is recorded as soon as Stripe
 * answers, keyed by its deterministic Idempotency-Key. Webhook events are
 * applied in one transaction together with their dedupe row, their signals
 * (outbox) and the tenant status change, so a redelivery is a no-op.
 *
 * Ordering: Stripe does not order events. Every mirrored row stores the
 * (as_of, as_of_rank) of the version it holds; the upsert's WHERE clause
 * only replaces it with a strictly newer version. as_of is the event's
 * `created` (or the fetch time for objects read from the API); the rank
 * breaks ties within a second by lifecycle (draft < open < paid, created <
 * updated < deleted).
 */
#define _POSIX_C_SOURCE 200809L
#include "io/outbox.h"
#include "stripe/sync_int.h"
#include "tally/log.h"

#include <assert.h>
#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tally_ss__cpy(char *dst, size_t size, const char *src)
{
	size_t n = src ? strlen(src) : 0;

	if (n >= size)
		n = size - 1;
	if (n)
		memcpy(dst, src, n);
	dst[n] = '\0';
}

int64_t tally_ss__now_ms(tally_stripe_sync *ss)
{
	return ss->clock ? ss->clock(ss->clock_payload) : tally_now_ms();
}

/* Run sql with n text parameters given as const char * varargs. */
int tally_ss__ex(tally_stripe_sync *ss, PGresult **out, tally_error *err,
	      const char *sql, int n, ...)
{
	const char *p[MAXP];
	va_list ap;
	int i;

	assert(n <= MAXP);
	va_start(ap, n);
	for (i = 0; i < n; i++)
		p[i] = va_arg(ap, const char *);
	va_end(ap);
	return tally_pg_exec(ss->pg, out, sql, n, p, err);
}

int tally_ss__audit_why(tally_stripe_sync *ss, const char *source,
			const char *reason, bool local, tally_error *err)
{
	return tally_ss__ex(ss, NULL, err,
		"SELECT set_config('tally.audit_source', $1, $3::boolean), "
		"set_config('tally.audit_reason', $2, $3::boolean)", 3,
		source, reason, local ? "true" : "false");
}

const char *tally_ss__i64s(ss_numbuf b, int64_t v)
{
	snprintf(b, sizeof(ss_numbuf), "%" PRId64, v);
	return b;
}

/* Integer field as text, or NULL (SQL NULL) when absent/null. */
const char *tally_ss__jnum(ss_numbuf b, const json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);

	if (!json_is_integer(v))
		return NULL;
	return tally_ss__i64s(b, (int64_t)json_integer_value(v));
}

int64_t tally_ss__to_i64(const char *s)
{
	int64_t v = 0;

	if (s == NULL || tally_parse_i64(&v, s) != 0)
		return 0;
	return v;
}

const json_t *tally_ss__jpath(const json_t *o, const char *a, const char *b)
{
	const json_t *v = json_object_get(o, a);

	return b && v ? json_object_get(v, b) : v;
}

const char *tally_ss__jpstr(const json_t *o, const char *a, const char *b)
{
	const json_t *v = tally_ss__jpath(o, a, b);

	return json_is_string(v) ? json_string_value(v) : NULL;
}

/* ---- config lookups ----------------------------------------------------- */

static const char *const plan_ids[] = {
	"starter", "professional", "enterprise", "white_label_starter",
	"white_label_enterprise", NULL,
};

const char *tally_ss__price_for_plan(tally_stripe_sync *ss, const char *plan)
{
	char key[96];
	int i;

	for (i = 0; plan_ids[i]; i++)
		if (strcmp(plan_ids[i], plan) == 0) {
			snprintf(key, sizeof(key), "stripe.price_%s", plan);
			/* configured first, else what setup stored */
			return *tally_config_str(ss->cfg, key)
				? tally_config_str(ss->cfg, key)
				: tally_plan_prices_get(ss->plan_prices, plan);
		}
	return "";
}

const char *tally_ss__plan_for_price(tally_stripe_sync *ss, const char *price)
{
	int i;

	if (price == NULL || *price == '\0')
		return NULL;
	for (i = 0; plan_ids[i]; i++)
		if (strcmp(tally_ss__price_for_plan(ss, plan_ids[i]), price) ==
		    0)
			return plan_ids[i];
	return NULL;
}

/* ---- lifecycle ---------------------------------------------------------- */

int tally_stripe_sync_new(tally_stripe_sync **out,
			  const tally_stripe_sync_opts *opts, tally_error *err)
{
	tally_stripe_sync *ss;
	tally_error e;

	(void)err;
	assert(opts->pg && opts->cfg);
	ss = tally_xcalloc(1, sizeof(*ss));
	ss->pg = opts->pg;
	ss->stripe = opts->stripe;
	ss->cfg = opts->cfg;
	ss->secrets = opts->webhook_secrets;
	ss->nsecrets = opts->nsecrets;
	ss->clock = opts->clock;
	ss->clock_payload = opts->clock_payload;
	ss->meter_rate_per_s = opts->meter_rate_per_s > 0
		? opts->meter_rate_per_s : 25;
	ss->publish_wait_ms = opts->publish_wait_ms > 0
		? opts->publish_wait_ms : 10000;
	if (tally_plan_prices_load(ss->pg, &ss->plan_prices, &e) != 0)
		tally_log(TALLY_WARN, "stripe.plan_prices_unavailable",
			  TALLY_KV_STR("error", e.msg));
	*out = ss;
	return 0;
}

void tally_stripe_sync_free(tally_stripe_sync *ss)
{
	if (ss == NULL)
		return;
	/* the producer is gone (see the header): no report can arrive */
	tally_outbox_free(ss->signals);
	free(ss->signals_topic);
	tally_plan_prices_free(ss->plan_prices);
	free(ss);
}
