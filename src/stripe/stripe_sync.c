/*
 * stripe_sync.c - commands, webhook mirroring, dunning, meters, reconcile.
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
#include "tally/stripe_sync.h"
#include "tally/event.h"
#include "tally/invoice_sync.h"
#include "tally/log.h"
#include "tally/plan_setup.h"
#include "tally/webhook.h"

#include <assert.h>
#include <inttypes.h>
#include <openssl/sha.h>
#include <stdarg.h>
#include <stdlib.h>
#include <string.h>

/*
 * One signal in flight: the per-message opaque of its Kafka message. The
 * delivery report callback (on the thread that polls the producer) sets
 * state; tally_stripe_sync_publish marks the outbox row published only for
 * a successful report. Slots live on ss->inflight until settled, so a
 * report that arrives after publish stopped waiting still counts, and a
 * signal still in flight is not produced a second time meanwhile.
 */
#define SLOT_MAGIC 0x7a115160u

typedef struct sig_slot {
	uint32_t magic;
	int state; /* 0 in flight, 1 delivered, -1 failed */
	rd_kafka_resp_err_t kerr;
	char tenant_id[37];
	char signal_id[37];
	struct sig_slot *next;
} sig_slot;

struct tally_stripe_sync {
	tally_pg *pg;
	tally_stripe *stripe;
	const tally_config *cfg;
	const char *const *secrets;
	size_t nsecrets;
	tally_clock_fn clock;
	void *clock_payload;
	int meter_rate_per_s;
	int64_t next_meter_ns;
	int publish_wait_ms;
	struct sig_slot *inflight; /* signals produced, report pending */
	int ninflight;
	uint64_t signals_failed;
	tally_plan_prices *plan_prices; /* from `tally stripe setup` */
};

#define MAXP 32
/* as_of_rank of an object read from the API (command answers, reconcile):
 * above every event rank of the same second */
#define API_READ_RANK 9

/* ---- small helpers ------------------------------------------------------ */

static void cpy(char *dst, size_t size, const char *src)
{
	size_t n = src ? strlen(src) : 0;

	if (n >= size)
		n = size - 1;
	if (n)
		memcpy(dst, src, n);
	dst[n] = '\0';
}

static int64_t now_ms(tally_stripe_sync *ss)
{
	return ss->clock ? ss->clock(ss->clock_payload) : tally_now_ms();
}

/* A growable string for SQL array literals. */
typedef struct sbuf_t {
	char *p;
	size_t len, cap;
} sbuf_t;

static void skip_add(sbuf_t *b, const char *str)
{
	size_t n = strlen(str);

	if (b->len + n + 1 > b->cap) {
		b->cap = (b->len + n + 1) * 2;
		b->p = tally_xrealloc(b->p, b->cap);
	}
	memcpy(b->p + b->len, str, n + 1);
	b->len += n;
}

/* Run sql with n text parameters given as const char * varargs. */
static int ex(tally_stripe_sync *ss, PGresult **out, tally_error *err,
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

typedef char numbuf[24];

static const char *i64s(numbuf b, int64_t v)
{
	snprintf(b, sizeof(numbuf), "%" PRId64, v);
	return b;
}

/* Integer field as text, or NULL (SQL NULL) when absent/null. */
static const char *jnum(numbuf b, const json_t *o, const char *k)
{
	json_t *v = json_object_get(o, k);

	if (!json_is_integer(v))
		return NULL;
	return i64s(b, (int64_t)json_integer_value(v));
}

static int64_t to_i64(const char *s)
{
	int64_t v = 0;

	if (s == NULL || tally_parse_i64(&v, s) != 0)
		return 0;
	return v;
}

static const json_t *jpath(const json_t *o, const char *a, const char *b)
{
	const json_t *v = json_object_get(o, a);

	return b && v ? json_object_get(v, b) : v;
}

static const char *jpstr(const json_t *o, const char *a, const char *b)
{
	const json_t *v = jpath(o, a, b);

	return json_is_string(v) ? json_string_value(v) : NULL;
}

/* First element of o[k].data, or NULL. */
static const json_t *first_item(const json_t *o, const char *k)
{
	const json_t *d = jpath(o, k, "data");

	return json_is_array(d) && json_array_size(d) > 0
		? json_array_get(d, 0) : NULL;
}

static void sha_hex(char *out, size_t hexlen, const char *s)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	size_t i;

	SHA256((const unsigned char *)s, strlen(s), md);
	for (i = 0; i < hexlen / 2 && i < SHA256_DIGEST_LENGTH; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	out[hexlen] = '\0';
}

/* A stable UUID (v5-style layout) from a string. */
static void stable_uuid(char out[37], const char *s)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	uint8_t u[16];

	SHA256((const unsigned char *)s, strlen(s), md);
	memcpy(u, md, 16);
	u[6] = (uint8_t)((u[6] & 0x0f) | 0x50);
	u[8] = (uint8_t)((u[8] & 0x3f) | 0x80);
	tally_uuid_fmt(out, u);
}

/* ---- config lookups ----------------------------------------------------- */

static const char *const plan_ids[] = {
	"starter", "professional", "enterprise", "white_label_starter",
	"white_label_enterprise", NULL,
};

static const char *price_for_plan(tally_stripe_sync *ss, const char *plan)
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

static const char *plan_for_price(tally_stripe_sync *ss, const char *price)
{
	int i;

	if (price == NULL || *price == '\0')
		return NULL;
	for (i = 0; plan_ids[i]; i++)
		if (strcmp(price_for_plan(ss, plan_ids[i]), price) == 0)
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
	while (ss->inflight != NULL) {
		sig_slot *next = ss->inflight->next;

		free(ss->inflight);
		ss->inflight = next;
	}
	tally_plan_prices_free(ss->plan_prices);
	free(ss);
}

/* ---- tenants, transitions, signals -------------------------------------- */

typedef struct tenant {
	bool found;
	char id[37];
	char name[256];
	char slug[128];
	char status[24];
	char plan[64];
	int rank;
	char customer[256];
	char subscription[256];
} tenant;

static const char tenant_cols[] =
	"SELECT t.id::text, t.name, t.slug, t.status, t.subscription_plan, "
	"p.rank, coalesce(t.stripe_customer_id, ''), "
	"coalesce(t.stripe_subscription_id, '') "
	"FROM tenants t JOIN plans p ON p.id = t.subscription_plan ";

static void tenant_from_row(tenant *t, PGresult *res)
{
	int64_t rank = 0;

	t->found = true;
	cpy(t->id, sizeof(t->id), PQgetvalue(res, 0, 0));
	cpy(t->name, sizeof(t->name), PQgetvalue(res, 0, 1));
	cpy(t->slug, sizeof(t->slug), PQgetvalue(res, 0, 2));
	cpy(t->status, sizeof(t->status), PQgetvalue(res, 0, 3));
	cpy(t->plan, sizeof(t->plan), PQgetvalue(res, 0, 4));
	if (tally_parse_i64(&rank, PQgetvalue(res, 0, 5)) != 0)
		rank = 0;
	t->rank = (int)rank;
	cpy(t->customer, sizeof(t->customer), PQgetvalue(res, 0, 6));
	cpy(t->subscription, sizeof(t->subscription), PQgetvalue(res, 0, 7));
}

/* where: "WHERE t.id = $1" etc. lock: append FOR UPDATE OF t. */
static int tenant_load(tally_stripe_sync *ss, tenant *t, const char *where,
		       const char *arg, bool lock, tally_error *err)
{
	char sql[512];
	PGresult *res = NULL;
	int rc;

	memset(t, 0, sizeof(*t));
	snprintf(sql, sizeof(sql), "%s%s%s", tenant_cols, where,
		 lock ? " FOR UPDATE OF t" : "");
	rc = ex(ss, &res, err, sql, 1, arg);
	if (rc == 0 && PQntuples(res) == 1)
		tenant_from_row(t, res);
	PQclear(res);
	return rc;
}

static int rank_of(tally_stripe_sync *ss, const char *plan, int *out,
		   tally_error *err)
{
	PGresult *res = NULL;
	int64_t r = 0;
	int rc;

	*out = 0;
	rc = ex(ss, &res, err, "SELECT rank FROM plans WHERE id = $1", 1,
		plan);
	if (rc == 0 && PQntuples(res) == 1 &&
	    tally_parse_i64(&r, PQgetvalue(res, 0, 0)) == 0)
		*out = (int)r;
	PQclear(res);
	return rc;
}

/*
 * Write a signal to the outbox. Its id derives from (kind, cause), so the
 * same fact announced twice (from a command and from its webhook) is one
 * signal. fields is stolen.
 */
static int signal_emit(tally_stripe_sync *ss, const char *tenant_id,
		       const char *kind, const char *cause, int64_t time_s,
		       json_t *fields, tally_error *err)
{
	char id[37], seed[600], tbuf[32];
	json_t *p = fields ? fields : json_object();
	char *text = NULL;
	int rc;

	snprintf(seed, sizeof(seed), "%s|%s|%s", tenant_id, kind, cause);
	stable_uuid(id, seed);
	tally_fmt_time_ms(tbuf, time_s * 1000);
	json_object_set_new(p, "id", json_string(id));
	json_object_set_new(p, "kind", json_string(kind));
	json_object_set_new(p, "tenant_id", json_string(tenant_id));
	json_object_set_new(p, "time", json_integer(time_s * 1000));
	json_object_set_new(p, "occurred_at", json_string(tbuf));
	json_object_set_new(p, "cause", json_string(cause));
	json_object_set_new(p, "version", json_integer(1));
	text = json_dumps(p, JSON_COMPACT | JSON_SORT_KEYS);
	rc = ex(ss, NULL, err,
		"INSERT INTO billing_signals_outbox (tenant_id, signal_id, "
		"kind, payload) VALUES ($1, $2, $3, $4::jsonb) "
		"ON CONFLICT DO NOTHING", 4, tenant_id, id, kind, text);
	free(text);
	json_decref(p);
	return rc;
}

/*
 * Move a tenant to status `to`, once per (cause, to): records the
 * transition, updates tenants (past_due_since, cancelled_at) and signals it.
 */
static int transition(tally_stripe_sync *ss, tenant *t, const char *to,
		      const char *reason, const char *cause, int64_t at_s,
		      tally_error *err)
{
	PGresult *res = NULL;
	numbuf at;
	bool inserted;
	int rc;

	if (strcmp(t->status, to) == 0)
		return 0;
	i64s(at, at_s);
	rc = ex(ss, &res, err,
		"INSERT INTO tenant_status_transitions (tenant_id, from_status,"
		" to_status, reason, cause, stripe_time) VALUES ($1, $2, $3, "
		"$4, $5, to_timestamp($6::bigint)) ON CONFLICT DO NOTHING "
		"RETURNING id", 6, t->id, t->status, to, reason, cause, at);
	inserted = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	if (rc != 0 || !inserted)
		return rc;
	rc = ex(ss, NULL, err,
		"UPDATE tenants SET status = $2::text, updated_at = now(), "
		"past_due_since = CASE WHEN $2::text = 'past_due' THEN "
		"  coalesce(past_due_since, to_timestamp($3::bigint)) "
		"  WHEN $2::text IN ('active', 'trialing') THEN NULL "
		"  ELSE past_due_since END, "
		"cancelled_at = CASE WHEN $2::text = 'cancelled' THEN "
		"  coalesce(cancelled_at, to_timestamp($3::bigint)) "
		"  ELSE cancelled_at END WHERE id = $1", 3, t->id, to, at);
	if (rc == 0) {
		bool dunning = strcmp(reason, "payment_failed") == 0 ||
			       strcmp(reason, "auto_suspend") == 0;

		rc = signal_emit(ss, t->id, dunning ? "dunning"
						    : "status_changed",
				 cause, at_s,
				 json_pack("{s:s, s:s, s:s}", "status_from",
					   t->status, "status_to", to,
					   "reason", reason), err);
	}
	if (rc == 0) {
		tally_log(TALLY_INFO, "stripe.tenant_status",
			  TALLY_KV_STR("tenant_id", t->id),
			  TALLY_KV_STR("from", t->status),
			  TALLY_KV_STR("to", to),
			  TALLY_KV_STR("reason", reason));
		cpy(t->status, sizeof(t->status), to);
	}
	return rc;
}

static const char *tenant_status_for(const char *sub_status)
{
	static const char *const map[][2] = {
		{ "trialing", "trialing" }, { "active", "active" },
		{ "past_due", "past_due" }, { "unpaid", "suspended" },
		{ "canceled", "cancelled" }, { "incomplete", "incomplete" },
		{ "incomplete_expired", "cancelled" },
		{ "paused", "suspended" },
	};
	size_t i;

	for (i = 0; sub_status && i < sizeof(map) / sizeof(map[0]); i++)
		if (strcmp(map[i][0], sub_status) == 0)
			return map[i][1];
	return NULL;
}

/* Open invoices whose payment failed and that are still unpaid. */
static int failed_open_invoices(tally_stripe_sync *ss, const char *tenant_id,
				const char *except, int64_t *n,
				tally_error *err)
{
	PGresult *res = NULL;
	int rc;

	*n = 0;
	rc = ex(ss, &res, err,
		"SELECT count(*) FROM invoices WHERE tenant_id = $1 AND "
		"status = 'open' AND payment_failed_at IS NOT NULL AND "
		"invoice_id <> $2", 2, tenant_id, except ? except : "");
	if (rc == 0 && tally_parse_i64(n, PQgetvalue(res, 0, 0)) != 0)
		*n = 0;
	PQclear(res);
	return rc;
}

/* ---- mirrors ------------------------------------------------------------ */

typedef struct sub_view {
	const char *id, *customer, *status, *price, *item, *plan;
	numbuf qty, cps, cpe, ts, te, cancel_at, canceled_at, ended_at,
		created;
	const char *pqty, *pcps, *pcpe, *pts, *pte, *pcancel_at,
		*pcanceled_at, *pended_at, *pcreated;
	bool cancel_at_period_end;
	int64_t cpe_s;
} sub_view;

static void sub_view_of(tally_stripe_sync *ss, sub_view *v, const json_t *sub)
{
	const json_t *item = first_item(sub, "items");
	const json_t *md = json_object_get(sub, "metadata");

	memset(v, 0, sizeof(*v));
	v->id = tally_stripe_jstr(sub, "id");
	v->customer = tally_stripe_jid(sub, "customer");
	v->status = tally_stripe_jstr(sub, "status");
	v->item = item ? tally_stripe_jstr(item, "id") : NULL;
	v->price = item ? tally_stripe_jid(item, "price") : NULL;
	v->plan = plan_for_price(ss, v->price);
	if (v->plan == NULL && md)
		v->plan = tally_stripe_jstr(md, "plan");
	v->pqty = item ? jnum(v->qty, item, "quantity") : NULL;
	/* current_period_* moved onto items in API 2025-03-31 */
	v->pcps = jnum(v->cps, sub, "current_period_start");
	if (v->pcps == NULL && item)
		v->pcps = jnum(v->cps, item, "current_period_start");
	v->pcpe = jnum(v->cpe, sub, "current_period_end");
	if (v->pcpe == NULL && item)
		v->pcpe = jnum(v->cpe, item, "current_period_end");
	v->cpe_s = to_i64(v->pcpe);
	v->pts = jnum(v->ts, sub, "trial_start");
	v->pte = jnum(v->te, sub, "trial_end");
	v->pcancel_at = jnum(v->cancel_at, sub, "cancel_at");
	v->pcanceled_at = jnum(v->canceled_at, sub, "canceled_at");
	v->pended_at = jnum(v->ended_at, sub, "ended_at");
	v->pcreated = jnum(v->created, sub, "created");
	v->cancel_at_period_end =
		json_is_true(json_object_get(sub, "cancel_at_period_end"));
}

/*
 * Upsert a subscription version; *applied tells whether it was newer than
 * what PostgreSQL held. When applied and it is the tenant's subscription,
 * the tenant follows: plan (and limits), period, trial, status.
 */
static int mirror_subscription(tally_stripe_sync *ss, tenant *t,
			       const json_t *sub, int64_t as_of, int rank,
			       const char *event_id, bool *applied,
			       tally_error *err)
{
	PGresult *res = NULL;
	sub_view v;
	numbuf asb, rb;
	const char *tstatus;
	int rc, new_rank = 0;

	*applied = false;
	sub_view_of(ss, &v, sub);
	if (v.id == NULL || v.customer == NULL || v.status == NULL)
		return tally_error_set(err, TALLY_EINVALID,
				       "subscription without id/customer");
	rc = ex(ss, &res, err,
		"INSERT INTO subscriptions AS s (tenant_id, subscription_id, "
		"customer_id, status, plan, price_id, item_id, quantity, "
		"currency, current_period_start, current_period_end, "
		"trial_start, trial_end, cancel_at_period_end, cancel_at, "
		"canceled_at, ended_at, stripe_created, as_of, as_of_rank, "
		"last_event_id) VALUES ($1, $2, $3, $4, $5, $6, $7, "
		"$8::bigint, upper($9), to_timestamp($10::bigint), "
		"to_timestamp($11::bigint), to_timestamp($12::bigint), "
		"to_timestamp($13::bigint), $14::boolean, "
		"to_timestamp($15::bigint), to_timestamp($16::bigint), "
		"to_timestamp($17::bigint), "
		"coalesce(to_timestamp($18::bigint), to_timestamp($19::bigint)),"
		" to_timestamp($19::bigint), $20::smallint, $21) "
		"ON CONFLICT (tenant_id, subscription_id) DO UPDATE SET "
		"customer_id = EXCLUDED.customer_id, status = EXCLUDED.status, "
		"plan = EXCLUDED.plan, price_id = EXCLUDED.price_id, "
		"item_id = EXCLUDED.item_id, quantity = EXCLUDED.quantity, "
		"currency = EXCLUDED.currency, "
		"current_period_start = EXCLUDED.current_period_start, "
		"current_period_end = EXCLUDED.current_period_end, "
		"trial_start = EXCLUDED.trial_start, "
		"trial_end = EXCLUDED.trial_end, "
		"cancel_at_period_end = EXCLUDED.cancel_at_period_end, "
		"cancel_at = EXCLUDED.cancel_at, "
		"canceled_at = EXCLUDED.canceled_at, "
		"ended_at = EXCLUDED.ended_at, as_of = EXCLUDED.as_of, "
		"as_of_rank = EXCLUDED.as_of_rank, "
		"last_event_id = EXCLUDED.last_event_id, updated_at = now() "
		"WHERE (s.as_of, s.as_of_rank) < "
		"(EXCLUDED.as_of, EXCLUDED.as_of_rank) OR "
		/* an API read (rank 9) is the current object: it also
		 * replaces a read or an event of the same second */
		"(EXCLUDED.as_of_rank = 9 AND (s.as_of, s.as_of_rank) <= "
		"(EXCLUDED.as_of, EXCLUDED.as_of_rank)) RETURNING 1",
		21, t->id, v.id, v.customer, v.status, v.plan, v.price,
		v.item, v.pqty, tally_stripe_jstr(sub, "currency"), v.pcps,
		v.pcpe, v.pts, v.pte, v.cancel_at_period_end ? "true"
							      : "false",
		v.pcancel_at, v.pcanceled_at, v.pended_at, v.pcreated,
		i64s(asb, as_of), i64s(rb, rank), event_id);
	*applied = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	if (rc != 0 || !*applied)
		return rc;
	/* the tenant follows its own subscription only */
	if (t->subscription[0] && strcmp(t->subscription, v.id) != 0)
		return 0;
	if (v.plan) {
		rc = rank_of(ss, v.plan, &new_rank, err);
		if (rc != 0)
			return rc;
	}
	rc = ex(ss, NULL, err,
		"UPDATE tenants t SET stripe_subscription_id = $2, "
		"stripe_customer_id = coalesce(t.stripe_customer_id, $3), "
		"subscription_plan = p.id, "
		"max_users = coalesce(p.max_users, -1), "
		"max_workflows = coalesce(p.max_workflows, -1), "
		"max_ai_requests_per_month = p.max_ai_requests_per_month, "
		"monthly_budget = CASE WHEN t.subscription_plan <> p.id "
		"  THEN p.monthly_price ELSE t.monthly_budget END, "
		"current_period_start = to_timestamp($5::bigint), "
		"current_period_end = to_timestamp($6::bigint), "
		"trial_end = to_timestamp($7::bigint), "
		"cancel_at_period_end = $8::boolean, "
		"stripe_updated_at = greatest(t.stripe_updated_at, "
		"  to_timestamp($9::bigint)), updated_at = now() "
		"FROM plans p WHERE t.id = $1 AND "
		"p.id = coalesce($4, t.subscription_plan)",
		9, t->id, v.id, v.customer, v.plan, v.pcps, v.pcpe, v.pte,
		v.cancel_at_period_end ? "true" : "false", asb);
	if (rc != 0)
		return rc;
	cpy(t->subscription, sizeof(t->subscription), v.id);
	if (v.plan && new_rank > 0 && new_rank < t->rank) {
		char cause[512];

		snprintf(cause, sizeof(cause), "downgrade:%s:%s:%" PRId64,
			 v.id, v.plan, as_of);
		rc = signal_emit(ss, t->id, "downgrade", cause, as_of,
				 json_pack("{s:s, s:s, s:s}", "plan_from",
					   t->plan, "plan_to", v.plan,
					   "subscription_id", v.id), err);
		if (rc != 0)
			return rc;
	}
	if (v.plan) {
		cpy(t->plan, sizeof(t->plan), v.plan);
		t->rank = new_rank;
	}
	if (v.cancel_at_period_end && strcmp(v.status, "canceled") != 0) {
		char cause[300];

		snprintf(cause, sizeof(cause), "cancel_at_period_end:%s", v.id);
		rc = signal_emit(ss, t->id, "subscription_cancelled", cause,
				 as_of, json_pack("{s:s, s:b, s:I}",
				 "subscription_id", v.id, "at_period_end", 1,
				 "effective_at", (json_int_t)v.cpe_s), err);
		if (rc != 0)
			return rc;
	}
	tstatus = tenant_status_for(v.status);
	if (tstatus == NULL)
		return 0;
	if (strcmp(tstatus, "cancelled") == 0) {
		char cause[300];

		snprintf(cause, sizeof(cause), "subscription_cancelled:%s",
			 v.id);
		rc = signal_emit(ss, t->id, "subscription_cancelled", cause,
				 as_of, json_pack("{s:s, s:b}",
				 "subscription_id", v.id, "at_period_end", 0),
				 err);
		if (rc == 0)
			rc = transition(ss, t, "cancelled", "subscription",
					cause, as_of, err);
		return rc;
	}
	/* dunning owns past_due/suspended while failed invoices are open */
	if ((strcmp(tstatus, "active") == 0 ||
	     strcmp(tstatus, "trialing") == 0) &&
	    (strcmp(t->status, "past_due") == 0 ||
	     strcmp(t->status, "suspended") == 0)) {
		int64_t open = 0;

		rc = failed_open_invoices(ss, t->id, NULL, &open, err);
		if (rc != 0 || open > 0)
			return rc;
	}
	if (strcmp(tstatus, "past_due") == 0 &&
	    strcmp(t->status, "suspended") == 0)
		return 0;
	{
		char cause[300];

		snprintf(cause, sizeof(cause), "subscription:%s:%s:%" PRId64,
			 v.id, v.status, as_of);
		rc = transition(ss, t, tstatus, "subscription", cause, as_of,
				err);
	}
	return rc;
}

static int invoice_rank(const json_t *inv)
{
	const char *st = tally_stripe_jstr(inv, "status");
	int64_t attempts = tally_stripe_jint(inv, "attempt_count");

	if (attempts > 99)
		attempts = 99;
	if (st == NULL || strcmp(st, "draft") == 0)
		return 0;
	if (strcmp(st, "open") == 0)
		return 100 + (int)attempts;
	if (strcmp(st, "uncollectible") == 0)
		return 200 + (int)attempts;
	return 300; /* paid, void: final */
}

static const char *invoice_subscription(const json_t *inv)
{
	const char *s = tally_stripe_jid(inv, "subscription");

	if (s == NULL)
		s = jpstr(json_object_get(inv, "parent"),
			  "subscription_details", "subscription");
	return s;
}

static int mirror_lines(tally_stripe_sync *ss, const tenant *t,
			const char *invoice_id, const json_t *lines,
			tally_error *err)
{
	const json_t *line;
	size_t i;
	int rc;

	rc = ex(ss, NULL, err, "DELETE FROM invoice_lines WHERE tenant_id = $1"
		" AND invoice_id = $2", 2, t->id, invoice_id);
	json_array_foreach(lines, i, line) {
		const json_t *parent = json_object_get(line, "parent");
		const json_t *sid = jpath(parent, "subscription_item_details",
					  NULL);
		const json_t *iid = jpath(parent, "invoice_item_details", NULL);
		const char *price, *sub;
		bool proration;
		numbuf a, q, ps, pe;

		if (rc != 0)
			break;
		price = jpstr(json_object_get(line, "pricing"),
			      "price_details", "price");
		if (price == NULL)
			price = tally_stripe_jid(line, "price");
		sub = tally_stripe_jid(line, "subscription");
		if (sub == NULL && sid)
			sub = tally_stripe_jstr(sid, "subscription");
		proration = json_is_true(json_object_get(line, "proration")) ||
			    json_is_true(jpath(sid, "proration", NULL)) ||
			    json_is_true(jpath(iid, "proration", NULL));
		rc = ex(ss, NULL, err,
			"INSERT INTO invoice_lines (tenant_id, invoice_id, "
			"line_id, amount, currency, description, quantity, "
			"price_id, subscription_id, proration, period_start, "
			"period_end) VALUES ($1, $2, $3, $4::numeric, "
			"upper($5), $6, $7::bigint, $8, $9, $10::boolean, "
			"to_timestamp($11::bigint), to_timestamp($12::bigint))"
			" ON CONFLICT DO NOTHING", 12, t->id, invoice_id,
			tally_stripe_jstr(line, "id"),
			jnum(a, line, "amount") ? a : "0",
			tally_stripe_jstr(line, "currency"),
			tally_stripe_jstr(line, "description"),
			jnum(q, line, "quantity"), price, sub,
			proration ? "true" : "false",
			jnum(ps, json_object_get(line, "period"), "start"),
			jnum(pe, json_object_get(line, "period"), "end"));
	}
	return rc;
}

/*
 * A finalized subscription-cycle invoice closes the usage period it bills
 * for tally-aggregate: its period_start .. period_end (a subscription
 * invoice looks back one period) becomes an 'invoiced' billing_periods row,
 * so usage of that period arriving later goes into usage_adjustments for
 * the next invoice instead of rewriting the invoiced period
 * (docs/aggregate.md, "Closing a period"). The closer's protocol: the
 * tenant row FOR UPDATE first -- it waits for the batches that may have
 * read the period as open, and later batches wait for this commit -- then
 * the row, in one statement. Drafts (still changing), other billing
 * reasons (a mid-period update or threshold invoice does not end the
 * period) and empty periods close nothing; a period already closed keeps
 * its first invoice and takes no lock (reconcile --apply passes every
 * cycle invoice here).
 */
static int close_period(tally_stripe_sync *ss, const tenant *t,
			const json_t *inv, const char *invoice_id,
			tally_error *err)
{
	const char *st = tally_stripe_jstr(inv, "status");
	const char *why = tally_stripe_jstr(inv, "billing_reason");
	numbuf ps, pe;
	int rc;

	if (st == NULL || strcmp(st, "draft") == 0 || why == NULL ||
	    strcmp(why, "subscription_cycle") != 0 ||
	    jnum(ps, inv, "period_start") == NULL ||
	    jnum(pe, inv, "period_end") == NULL ||
	    tally_stripe_jint(inv, "period_end") <=
		    tally_stripe_jint(inv, "period_start"))
		return 0;
	/* one statement: the lock is held until the row is in, also where
	 * the caller runs without a transaction (sync, reconcile) */
	rc = ex(ss, NULL, err,
		"WITH l AS (SELECT id FROM tenants WHERE id = $1 AND NOT EXISTS "
		"(SELECT 1 FROM billing_periods c WHERE c.tenant_id = $1 AND "
		"c.period_start = to_timestamp($2::bigint) AND "
		"c.status <> 'open') FOR UPDATE) "
		"INSERT INTO billing_periods AS b (tenant_id, period_start, "
		"period_end, status, closed_at, invoice_id) SELECT l.id, "
		"to_timestamp($2::bigint), to_timestamp($3::bigint), "
		"'invoiced', now(), $4 FROM l "
		"ON CONFLICT (tenant_id, period_start) DO UPDATE SET "
		"status = 'invoiced', closed_at = now(), "
		"invoice_id = EXCLUDED.invoice_id, "
		"period_end = EXCLUDED.period_end "
		"WHERE b.status = 'open'", 4, t->id, ps, pe, invoice_id);
	return rc;
}

static int mirror_invoice(tally_stripe_sync *ss, tenant *t,
			  const json_t *inv, int64_t as_of, int rank,
			  const char *event_id, bool failed_event,
			  const json_t *all_lines, bool *applied,
			  tally_error *err)
{
	PGresult *res = NULL;
	const char *id = tally_stripe_jstr(inv, "id");
	const json_t *lines;
	numbuf due, paid, rem, sub, tot, att, ps, pe, dd, npa, pat, cr, asb,
		rb, fa;
	int rc;

	*applied = false;
	if (id == NULL)
		return 0; /* invoice.upcoming previews have no id */
	rc = ex(ss, &res, err,
		"INSERT INTO invoices AS i (tenant_id, invoice_id, customer_id,"
		" subscription_id, number, status, billing_reason, currency, "
		"amount_due, amount_paid, amount_remaining, subtotal, total, "
		"attempt_count, period_start, period_end, due_date, "
		"next_payment_attempt, paid_at, payment_failed_at, "
		"stripe_created, as_of, as_of_rank, last_event_id) VALUES "
		"($1, $2, $3, $4, $5, $6, $7, upper($8), $9::numeric, "
		"$10::numeric, $11::numeric, $12::numeric, $13::numeric, "
		"coalesce($14::integer, 0), to_timestamp($15::bigint), "
		"to_timestamp($16::bigint), to_timestamp($17::bigint), "
		"to_timestamp($18::bigint), to_timestamp($19::bigint), "
		"to_timestamp($20::bigint), "
		"coalesce(to_timestamp($21::bigint), to_timestamp($22::bigint)),"
		" to_timestamp($22::bigint), $23::smallint, $24) "
		"ON CONFLICT (tenant_id, invoice_id) DO UPDATE SET "
		"customer_id = EXCLUDED.customer_id, "
		"subscription_id = EXCLUDED.subscription_id, "
		"number = EXCLUDED.number, status = EXCLUDED.status, "
		"billing_reason = EXCLUDED.billing_reason, "
		"currency = EXCLUDED.currency, "
		"amount_due = EXCLUDED.amount_due, "
		"amount_paid = EXCLUDED.amount_paid, "
		"amount_remaining = EXCLUDED.amount_remaining, "
		"subtotal = EXCLUDED.subtotal, total = EXCLUDED.total, "
		"attempt_count = EXCLUDED.attempt_count, "
		"period_start = EXCLUDED.period_start, "
		"period_end = EXCLUDED.period_end, "
		"due_date = EXCLUDED.due_date, "
		"next_payment_attempt = EXCLUDED.next_payment_attempt, "
		"paid_at = EXCLUDED.paid_at, "
		"payment_failed_at = coalesce(EXCLUDED.payment_failed_at, "
		"  i.payment_failed_at), "
		"as_of = EXCLUDED.as_of, as_of_rank = EXCLUDED.as_of_rank, "
		"last_event_id = EXCLUDED.last_event_id, updated_at = now() "
		"WHERE (i.as_of, i.as_of_rank) < "
		"(EXCLUDED.as_of, EXCLUDED.as_of_rank) RETURNING 1",
		24, t->id, id, tally_stripe_jid(inv, "customer"),
		invoice_subscription(inv), tally_stripe_jstr(inv, "number"),
		tally_stripe_jstr(inv, "status"),
		tally_stripe_jstr(inv, "billing_reason"),
		tally_stripe_jstr(inv, "currency"),
		jnum(due, inv, "amount_due") ? due : "0",
		jnum(paid, inv, "amount_paid") ? paid : "0",
		jnum(rem, inv, "amount_remaining") ? rem : "0",
		jnum(sub, inv, "subtotal"), jnum(tot, inv, "total"),
		jnum(att, inv, "attempt_count"), jnum(ps, inv, "period_start"),
		jnum(pe, inv, "period_end"), jnum(dd, inv, "due_date"),
		jnum(npa, inv, "next_payment_attempt"),
		jnum(pat, json_object_get(inv, "status_transitions"),
		     "paid_at"),
		failed_event ? i64s(fa, as_of) : NULL,
		jnum(cr, inv, "created"), i64s(asb, as_of), i64s(rb, rank),
		event_id);
	*applied = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	if (rc == 0)
		rc = close_period(ss, t, inv, id, err);
	if (rc != 0 || !*applied)
		return rc;
	lines = all_lines ? all_lines : jpath(inv, "lines", "data");
	if (json_is_array(lines))
		rc = mirror_lines(ss, t, id, lines, err);
	return rc;
}

/* Dunning reaction to a newer invoice version. */
static int invoice_dunning_(tally_stripe_sync *ss, tenant *t,
			   const json_t *inv, const char *type, int64_t as_of,
			   const char *event_id, tally_error *err)
{
	const char *id = tally_stripe_jstr(inv, "id");
	const char *status = tally_stripe_jstr(inv, "status");
	char cause[300];
	numbuf amt;
	int rc = 0;

	(void)event_id;
	if (strcmp(type, "invoice.payment_failed") == 0 && status &&
	    strcmp(status, "open") == 0) {
		snprintf(cause, sizeof(cause), "payment_failed:%s:%" PRId64,
			 id, tally_stripe_jint(inv, "attempt_count"));
		rc = signal_emit(ss, t->id, "payment_failed", cause, as_of,
			json_pack("{s:s, s:s?, s:s, s:I, s:I}", "invoice_id",
				  id, "subscription_id",
				  invoice_subscription(inv), "amount_due",
				  jnum(amt, inv, "amount_due") ? amt : "0",
				  "attempt_count",
				  (json_int_t)tally_stripe_jint(inv,
							       "attempt_count"),
				  "next_payment_attempt",
				  (json_int_t)tally_stripe_jint(inv,
						"next_payment_attempt")),
			err);
		if (rc == 0 && (strcmp(t->status, "active") == 0 ||
				strcmp(t->status, "trialing") == 0 ||
				strcmp(t->status, "incomplete") == 0)) {
			snprintf(cause, sizeof(cause), "payment_failed:%s", id);
			rc = transition(ss, t, "past_due", "payment_failed",
					cause, as_of, err);
		}
		return rc;
	}
	if (status && (strcmp(status, "paid") == 0 ||
		       strcmp(status, "void") == 0)) {
		int64_t open = 0;

		if (strcmp(status, "paid") == 0) {
			snprintf(cause, sizeof(cause), "paid:%s", id);
			rc = signal_emit(ss, t->id, "payment_succeeded", cause,
				as_of, json_pack("{s:s, s:s?, s:s}",
				"invoice_id", id, "subscription_id",
				invoice_subscription(inv), "amount_paid",
				jnum(amt, inv, "amount_paid") ? amt : "0"),
				err);
		}
		if (rc != 0)
			return rc;
		if (strcmp(t->status, "past_due") != 0 &&
		    strcmp(t->status, "suspended") != 0)
			return 0;
		rc = failed_open_invoices(ss, t->id, id, &open, err);
		if (rc != 0 || open > 0)
			return rc;
		snprintf(cause, sizeof(cause), "%s:%s", status, id);
		rc = transition(ss, t, "active", status, cause, as_of, err);
	}
	return rc;
}

static int invoice_dunning(tally_stripe_sync *ss, tenant *t,
			   const json_t *inv, const char *type, int64_t as_of,
			   const char *event_id, tally_error *err)
{
	int rc = invoice_dunning_(ss, t, inv, type, as_of, event_id, err);

	/* past due since the oldest failure still unpaid, whatever the
	 * order in which the invoices' events arrived */
	if (rc == 0 && strcmp(t->status, "past_due") == 0)
		rc = ex(ss, NULL, err,
			"UPDATE tenants SET past_due_since = coalesce(("
			"SELECT min(payment_failed_at) FROM invoices WHERE "
			"tenant_id = $1 AND status = 'open' AND "
			"payment_failed_at IS NOT NULL), past_due_since) "
			"WHERE id = $1", 1, t->id);
	return rc;
}

static int payment_rank(const char *object, const char *status,
			const char *type)
{
	static const char *const pi[] = {
		"requires_payment_method", "requires_confirmation",
		"requires_action", "processing", "requires_capture",
		"canceled", "succeeded", NULL,
	};
	int i;

	if (strcmp(object, "payment_intent") == 0) {
		for (i = 0; status && pi[i]; i++)
			if (strcmp(pi[i], status) == 0)
				return i;
		return 0;
	}
	if (strcmp(object, "charge") == 0)
		return strcmp(type, "charge.refunded") == 0 ? 3
			: status && strcmp(status, "pending") == 0 ? 0 : 1;
	/* dispute: open states, then closed ones */
	if (status && (strcmp(status, "won") == 0 ||
		       strcmp(status, "lost") == 0))
		return 5;
	return strcmp(type, "charge.dispute.closed") == 0 ? 5 : 1;
}

static int mirror_payment(tally_stripe_sync *ss, tenant *t, const json_t *o,
			  const char *object, const char *type, int64_t as_of,
			  const char *event_id, bool *applied,
			  tally_error *err)
{
	PGresult *res = NULL;
	const char *status = tally_stripe_jstr(o, "status");
	const json_t *lpe = json_object_get(o, "last_payment_error");
	const char *pi = NULL, *charge = NULL, *fcode, *fmsg;
	numbuf amt, rec, ref, cr, asb, rb;
	int rc;

	*applied = false;
	if (strcmp(object, "payment_intent") == 0) {
		pi = tally_stripe_jstr(o, "id");
		charge = tally_stripe_jid(o, "latest_charge");
		fcode = json_is_object(lpe) ? tally_stripe_jstr(lpe, "code")
					    : NULL;
		fmsg = json_is_object(lpe)
			? tally_stripe_jstr(lpe, "message") : NULL;
	} else if (strcmp(object, "charge") == 0) {
		pi = tally_stripe_jid(o, "payment_intent");
		charge = tally_stripe_jstr(o, "id");
		fcode = tally_stripe_jstr(o, "failure_code");
		fmsg = tally_stripe_jstr(o, "failure_message");
	} else {
		pi = tally_stripe_jid(o, "payment_intent");
		charge = tally_stripe_jid(o, "charge");
		fcode = NULL;
		fmsg = NULL;
	}
	rc = ex(ss, &res, err,
		"INSERT INTO payments AS p (tenant_id, stripe_id, object, "
		"customer_id, invoice_id, payment_intent_id, charge_id, status,"
		" amount, amount_received, amount_refunded, currency, "
		"failure_code, failure_message, dispute_reason, stripe_created,"
		" as_of, as_of_rank, last_event_id) VALUES ($1, $2, $3, $4, "
		"$5, $6, $7, $8, coalesce($9::numeric, 0), $10::numeric, "
		"$11::numeric, upper($12), $13, $14, $15, "
		"coalesce(to_timestamp($16::bigint), to_timestamp($17::bigint)),"
		" to_timestamp($17::bigint), $18::smallint, $19) "
		"ON CONFLICT (tenant_id, stripe_id) DO UPDATE SET "
		"customer_id = coalesce(EXCLUDED.customer_id, p.customer_id), "
		"invoice_id = coalesce(EXCLUDED.invoice_id, p.invoice_id), "
		"payment_intent_id = EXCLUDED.payment_intent_id, "
		"charge_id = EXCLUDED.charge_id, status = EXCLUDED.status, "
		"amount = EXCLUDED.amount, "
		"amount_received = EXCLUDED.amount_received, "
		"amount_refunded = EXCLUDED.amount_refunded, "
		"currency = EXCLUDED.currency, "
		"failure_code = EXCLUDED.failure_code, "
		"failure_message = EXCLUDED.failure_message, "
		"dispute_reason = EXCLUDED.dispute_reason, "
		"as_of = EXCLUDED.as_of, as_of_rank = EXCLUDED.as_of_rank, "
		"last_event_id = EXCLUDED.last_event_id, updated_at = now() "
		"WHERE (p.as_of, p.as_of_rank) < "
		"(EXCLUDED.as_of, EXCLUDED.as_of_rank) RETURNING 1",
		19, t->id, tally_stripe_jstr(o, "id"), object,
		tally_stripe_jid(o, "customer"), tally_stripe_jid(o, "invoice"),
		pi, charge, status ? status : "unknown",
		jnum(amt, o, "amount"), jnum(rec, o, "amount_received"),
		jnum(ref, o, "amount_refunded"),
		tally_stripe_jstr(o, "currency"), fcode, fmsg,
		strcmp(object, "dispute") == 0 ? tally_stripe_jstr(o, "reason")
					       : NULL,
		jnum(cr, o, "created"), i64s(asb, as_of),
		i64s(rb, payment_rank(object, status, type)), event_id);
	*applied = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	return rc;
}

/* ---- webhook events ----------------------------------------------------- */

typedef struct event_ctx {
	tally_stripe_sync *ss;
	json_t *ev;
	const json_t *obj;
	json_t *lines; /* all invoice lines when the event's were paged */
	const char *id, *type, *object;
	int64_t created;
	const char *outcome;
	char tenant_id[37];
	/* a dispute's charge as fetched from Stripe (fallback) */
	char charge_customer[256];
	char charge_tenant[37];
} event_ctx;

static int resolve_tenant(event_ctx *x, tenant *t, tally_error *err)
{
	tally_stripe_sync *ss = x->ss;
	const char *cus = NULL;
	const json_t *md;
	int rc;

	memset(t, 0, sizeof(*t));
	if (strcmp(x->object, "customer") == 0)
		cus = tally_stripe_jstr(x->obj, "id");
	else
		cus = tally_stripe_jid(x->obj, "customer");
	if (cus) {
		rc = tenant_load(ss, t, "WHERE t.stripe_customer_id = $1", cus,
				 true, err);
		if (rc != 0 || t->found)
			return rc;
	}
	if (strcmp(x->object, "dispute") == 0 ||
	    (cus == NULL && strcmp(x->object, "charge") == 0)) {
		PGresult *res = NULL;
		const char *ch = tally_stripe_jid(x->obj, "charge");
		const char *pi = tally_stripe_jid(x->obj, "payment_intent");

		if (ch == NULL)
			ch = tally_stripe_jstr(x->obj, "id");
		rc = ex(ss, &res, err,
			"SELECT tenant_id::text FROM payments WHERE "
			"stripe_id = $1 OR charge_id = $1 OR "
			"($2::text IS NOT NULL AND payment_intent_id = $2) "
			"LIMIT 1", 2, ch ? ch : "", pi);
		if (rc == 0 && PQntuples(res) == 1)
			rc = tenant_load(ss, t, "WHERE t.id = $1::uuid",
					 PQgetvalue(res, 0, 0), true, err);
		PQclear(res);
		if (rc != 0 || t->found)
			return rc;
	}
	/* the charge as Stripe has it (a dispute that came before any
	 * event of its charge): its customer, else its metadata tenant */
	if (x->charge_customer[0]) {
		rc = tenant_load(ss, t, "WHERE t.stripe_customer_id = $1",
				 x->charge_customer, true, err);
		if (rc != 0 || t->found)
			return rc;
	}
	if (x->charge_tenant[0]) {
		rc = tenant_load(ss, t, "WHERE t.id = $1::uuid",
				 x->charge_tenant, true, err);
		if (rc != 0 || t->found)
			return rc;
	}
	md = json_object_get(x->obj, "metadata");
	if (json_is_object(md) && tally_stripe_jstr(md, "tenant_id")) {
		const char *tid = tally_stripe_jstr(md, "tenant_id");
		uint8_t u[16];

		if (tally_uuid_parse(u, tid, (uint32_t)strlen(tid)) == 0)
			return tenant_load(ss, t, "WHERE t.id = $1::uuid", tid,
					   true, err);
	}
	return 0;
}

static bool has_prefix(const char *s, const char *p)
{
	return strncmp(s, p, strlen(p)) == 0;
}

static int sub_event_rank(const char *type)
{
	if (strcmp(type, "customer.subscription.created") == 0)
		return 0;
	if (strcmp(type, "customer.subscription.deleted") == 0)
		return 3;
	return 1;
}

static int apply_event(tally_pg *pg, void *payload, tally_error *err)
{
	event_ctx *x = payload;
	tally_stripe_sync *ss = x->ss;
	PGresult *res = NULL;
	tenant t;
	numbuf cr;
	bool applied = false, fresh;
	int rc;

	(void)pg;
	x->outcome = NULL;
	x->tenant_id[0] = '\0';
	i64s(cr, x->created);
	/* an event left unresolved (unknown tenant) may be tried again */
	rc = ex(ss, &res, err,
		"INSERT INTO stripe_events AS e (event_id, type, object_id, "
		"event_created, outcome) VALUES ($1, $2, $3, "
		"to_timestamp($4::bigint), 'processing') ON CONFLICT (event_id)"
		" DO UPDATE SET outcome = 'processing', processed_at = now() "
		"WHERE e.outcome = 'unknown_tenant' RETURNING 1", 4, x->id,
		x->type, tally_stripe_jstr(x->obj, "id"), cr);
	fresh = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	if (rc != 0)
		return rc;
	if (!fresh) {
		x->outcome = "duplicate";
		return 0;
	}
	rc = resolve_tenant(x, &t, err);
	if (rc != 0)
		return rc;
	if (!t.found) {
		x->outcome = "unknown_tenant";
		goto record;
	}
	cpy(x->tenant_id, sizeof(x->tenant_id), t.id);

	if (has_prefix(x->type, "customer.subscription.")) {
		rc = mirror_subscription(ss, &t, x->obj, x->created,
					 sub_event_rank(x->type), x->id,
					 &applied, err);
		/* facts are signalled even when the state is stale */
		if (rc == 0 &&
		    strcmp(x->type,
			   "customer.subscription.trial_will_end") == 0) {
			char cause[300];

			snprintf(cause, sizeof(cause), "trial_will_end:%s:%s",
				 tally_stripe_jstr(x->obj, "id"),
				 jnum(cr, x->obj, "trial_end") ? cr : "");
			rc = signal_emit(ss, t.id, "trial_ending", cause,
				x->created, json_pack("{s:s, s:I}",
				"subscription_id",
				tally_stripe_jstr(x->obj, "id"), "trial_end",
				(json_int_t)tally_stripe_jint(x->obj,
							     "trial_end")),
				err);
		}
	} else if (has_prefix(x->type, "invoice.")) {
		bool failed = strcmp(x->type, "invoice.payment_failed") == 0;

		if (strcmp(x->type, "invoice.upcoming") == 0) {
			x->outcome = "ignored";
			goto record;
		}
		rc = mirror_invoice(ss, &t, x->obj, x->created,
				    invoice_rank(x->obj), x->id, failed,
				    x->lines, &applied, err);
		if (rc == 0 && applied)
			rc = invoice_dunning(ss, &t, x->obj, x->type,
					     x->created, x->id, err);
	} else if (has_prefix(x->type, "payment_intent.") ||
		   has_prefix(x->type, "charge.")) {
		const char *obj = strcmp(x->object, "dispute") == 0
			? "dispute" : x->object;

		rc = mirror_payment(ss, &t, x->obj, obj, x->type, x->created,
				    x->id, &applied, err);
		if (rc == 0 && strcmp(obj, "dispute") == 0) {
			bool closed = strcmp(x->type,
					     "charge.dispute.closed") == 0;
			char cause[300];
			numbuf amt;

			snprintf(cause, sizeof(cause), "%s:%s",
				 closed ? "dispute_closed" : "dispute_opened",
				 tally_stripe_jstr(x->obj, "id"));
			rc = signal_emit(ss, t.id, "dispute", cause,
				x->created, json_pack("{s:s, s:s?, s:s?, s:s?,"
				" s:s, s:b}", "dispute_id",
				tally_stripe_jstr(x->obj, "id"), "charge_id",
				tally_stripe_jid(x->obj, "charge"), "status",
				tally_stripe_jstr(x->obj, "status"), "reason",
				tally_stripe_jstr(x->obj, "reason"), "amount",
				jnum(amt, x->obj, "amount") ? amt : "0",
				"closed", closed), err);
		} else if (rc == 0 &&
			   strcmp(x->type, "charge.refunded") == 0) {
			char cause[300];
			numbuf amt;

			snprintf(cause, sizeof(cause), "refund:%s:%s",
				 tally_stripe_jstr(x->obj, "id"),
				 jnum(amt, x->obj, "amount_refunded")
				 ? amt : "0");
			rc = signal_emit(ss, t.id, "refund", cause, x->created,
				json_pack("{s:s, s:s}", "charge_id",
				tally_stripe_jstr(x->obj, "id"),
				"amount_refunded", amt), err);
		}
	} else if (strcmp(x->type, "customer.deleted") == 0) {
		rc = ex(ss, NULL, err,
			"UPDATE tenants SET stripe_customer_id = NULL, "
			"updated_at = now() WHERE id = $1 AND "
			"stripe_customer_id = $2", 2, t.id,
			tally_stripe_jstr(x->obj, "id"));
		applied = true;
	} else if (strcmp(x->type, "customer.updated") == 0 ||
		   strcmp(x->type, "customer.created") == 0) {
		rc = ex(ss, NULL, err,
			"UPDATE tenants SET stripe_customer_id = $2, "
			"updated_at = now() WHERE id = $1 AND "
			"stripe_customer_id IS NULL", 2, t.id,
			tally_stripe_jstr(x->obj, "id"));
		applied = true;
	} else {
		x->outcome = "ignored";
		goto record;
	}
	if (rc != 0)
		return rc;
	x->outcome = applied ? "applied" : "stale";
record:
	return ex(ss, NULL, err,
		  "UPDATE stripe_events SET outcome = $2, tenant_id = "
		  "nullif($3, '')::uuid, processed_at = now() "
		  "WHERE event_id = $1", 3, x->id, x->outcome, x->tenant_id);
}

/*
 * A dispute carries no customer, only its charge. When PostgreSQL knows no
 * payment for that charge yet (the dispute arrived before the charge's own
 * events), fetch the charge (GET /v1/charges/{id}) for its customer, before
 * the transaction (no network inside it). Not found: left to
 * unknown_tenant; transient: the event is retried.
 */
static int dispute_charge(event_ctx *x, tally_error *err)
{
	tally_stripe_sync *ss = x->ss;
	const json_t *chobj = json_object_get(x->obj, "charge");
	const char *ch = tally_stripe_jid(x->obj, "charge");
	const char *pi = tally_stripe_jid(x->obj, "payment_intent");
	tally_stripe_error se;
	PGresult *res = NULL;
	json_t *charge = NULL;
	const json_t *md;
	char path[320];
	bool known;
	uint8_t u[16];
	int rc;

	if (ch == NULL)
		return 0;
	if (json_is_object(chobj) && tally_stripe_jid(chobj, "customer")) {
		cpy(x->charge_customer, sizeof(x->charge_customer),
		    tally_stripe_jid(chobj, "customer"));
		return 0; /* expanded: nothing to fetch */
	}
	rc = ex(ss, &res, err,
		"SELECT 1 FROM payments WHERE stripe_id = $1 OR charge_id = $1"
		" OR ($2::text IS NOT NULL AND payment_intent_id = $2) "
		"LIMIT 1", 2, ch, pi);
	known = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	if (rc != 0 || known || ss->stripe == NULL)
		return rc;
	snprintf(path, sizeof(path), "/v1/charges/%s", ch);
	rc = tally_stripe_request(ss->stripe, &charge, "GET", path, NULL, NULL,
				  &se, err);
	if (rc == TALLY_ENOTFOUND || rc == TALLY_EINVALID) {
		tally_log(TALLY_WARN, "stripe.dispute_charge_unavailable",
			  TALLY_KV_STR("event_id", x->id),
			  TALLY_KV_STR("charge_id", ch),
			  TALLY_KV_INT("http_status", se.http_status),
			  TALLY_KV_STR("code", se.code));
		return 0;
	}
	if (rc != 0)
		return rc == TALLY_ERROR ? TALLY_ETRANSIENT : rc;
	if (tally_stripe_jid(charge, "customer"))
		cpy(x->charge_customer, sizeof(x->charge_customer),
		    tally_stripe_jid(charge, "customer"));
	md = json_object_get(charge, "metadata");
	if (json_is_object(md) && tally_stripe_jstr(md, "tenant_id") &&
	    tally_uuid_parse(u, tally_stripe_jstr(md, "tenant_id"),
			     (uint32_t)strlen(tally_stripe_jstr(
				     md, "tenant_id"))) == 0)
		tally_uuid_fmt(x->charge_tenant, u);
	json_decref(charge);
	return 0;
}

static int collect_line(json_t *obj, void *payload)
{
	json_array_append(payload, obj);
	return 0;
}

int tally_stripe_sync_event(tally_stripe_sync *ss, const char *body,
			    size_t len, const char *sig_header,
			    const char **outcome, tally_error *err)
{
	event_ctx x;
	json_error_t je;
	tally_webhook_reason why;
	const json_t *data;
	int rc;

	memset(&x, 0, sizeof(x));
	x.ss = ss;
	if (outcome)
		*outcome = NULL;
	if (ss->nsecrets > 0 &&
	    tally_webhook_verify(sig_header, body, len, ss->secrets,
				 ss->nsecrets, now_ms(ss) / 1000, -1,
				 &why) != 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "stripe event: signature: %s",
				       tally_webhook_reason_name(why));
	x.ev = json_loadb(body, len, 0, &je);
	data = x.ev ? json_object_get(x.ev, "data") : NULL;
	x.obj = data ? json_object_get(data, "object") : NULL;
	x.id = x.ev ? tally_stripe_jstr(x.ev, "id") : NULL;
	x.type = x.ev ? tally_stripe_jstr(x.ev, "type") : NULL;
	x.object = x.obj ? tally_stripe_jstr(x.obj, "object") : NULL;
	x.created = x.ev ? tally_stripe_jint(x.ev, "created") : 0;
	if (x.id == NULL || x.type == NULL || !json_is_object(x.obj) ||
	    x.object == NULL || x.created <= 0) {
		rc = tally_error_set(err, TALLY_EINVALID,
				     "stripe event: not an event object");
		goto cleanup;
	}
	/* page the rest of an invoice's lines before the transaction */
	if (has_prefix(x.type, "invoice.") && ss->stripe &&
	    json_is_true(jpath(x.obj, "lines", "has_more")) &&
	    tally_stripe_jstr(x.obj, "id")) {
		char path[300];
		tally_stripe_error se;

		snprintf(path, sizeof(path), "/v1/invoices/%s/lines",
			 tally_stripe_jstr(x.obj, "id"));
		x.lines = json_array();
		rc = tally_stripe_list(ss->stripe, path, NULL, collect_line,
				       x.lines, &se, err);
		if (rc != 0)
			goto cleanup;
	}
	if (strcmp(x.object, "dispute") == 0) {
		rc = dispute_charge(&x, err);
		if (rc != 0)
			goto cleanup;
	}
	/* a drafted cycle invoice gets the period's usage (invoice_sync.c);
	 * before the event is recorded, so a failure is delivered again */
	rc = tally_invoice_sync_event(ss->pg, ss->stripe, ss->cfg, x.type,
				      x.obj, err);
	if (rc != 0)
		goto cleanup;
	rc = tally_pg_txn(ss->pg, apply_event, &x, 0, err);
	if (rc == 0 && strcmp(x.outcome, "duplicate") == 0)
		rc = TALLY_EDUPLICATE;
	if (rc == 0 || rc == TALLY_EDUPLICATE)
		tally_log(TALLY_DEBUG, "stripe.event", TALLY_KV_STR("id", x.id),
			  TALLY_KV_STR("type", x.type),
			  TALLY_KV_STR("outcome", x.outcome));
	if (outcome && x.outcome)
		*outcome = strcmp(x.outcome, "applied") == 0 ? "applied"
			: strcmp(x.outcome, "stale") == 0 ? "stale"
			: strcmp(x.outcome, "ignored") == 0 ? "ignored"
			: strcmp(x.outcome, "unknown_tenant") == 0
			? "unknown_tenant" : "duplicate";
cleanup:
	json_decref(x.lines);
	json_decref(x.ev);
	return rc;
}

/* ---- commands ----------------------------------------------------------- */

typedef struct cmd_ctx {
	tally_stripe_sync *ss;
	const tally_command *cmd;
	char id[160];
	char tenant_id[37];
	char plan[TALLY_PLAN_MAX + 1];
	char pm[260];
	char email[260];
	char name[260];
	tenant t;
	tally_stripe_error se;
	json_t *result; /* owned */
	char object_id[256];
} cmd_ctx;

static const char *cmd_type_name(tally_command_type ty)
{
	switch (ty) {
	case TALLY_CMD_CREATE_CUSTOMER: return "create_customer";
	case TALLY_CMD_CREATE_SUBSCRIPTION: return "create_subscription";
	case TALLY_CMD_CHANGE_PLAN: return "change_plan";
	case TALLY_CMD_CANCEL_SUBSCRIPTION: return "cancel_subscription";
	case TALLY_CMD_SYNC_TENANT: return "sync_tenant";
	default: return NULL;
	}
}

static const char *proration_name(tally_proration p)
{
	switch (p) {
	case TALLY_PRORATION_NONE: return "none";
	case TALLY_PRORATION_ALWAYS: return "always_invoice";
	default: return "create_prorations";
	}
}

static void strcopy(char *dst, size_t size, tally_str s)
{
	size_t n = s.len < size - 1 ? s.len : size - 1;

	if (n)
		memcpy(dst, s.ptr, n);
	dst[n] = '\0';
}

/* Record a final failure: Stripe's error (or ours) on the command row. */
static int cmd_fail(cmd_ctx *c, const char *code, const char *msg,
		    tally_error *err)
{
	numbuf hs;
	const tally_stripe_error *se = &c->se;

	tally_log(TALLY_WARN, "stripe.command_failed",
		  TALLY_KV_STR("command_id", c->id),
		  TALLY_KV_STR("tenant_id", c->tenant_id),
		  TALLY_KV_STR("type", se->type),
		  TALLY_KV_STR("code", code ? code : se->code),
		  TALLY_KV_INT("http_status", se->http_status));
	return ex(c->ss, NULL, err,
		  "UPDATE billing_commands SET status = 'failed', "
		  "error_type = nullif($3, ''), error_code = nullif($4, ''), "
		  "error_message = $5, error_param = nullif($6, ''), "
		  "http_status = nullif($7, '0')::integer, "
		  "stripe_request_id = nullif($8, ''), completed_at = now() "
		  "WHERE tenant_id = $1 AND command_id = $2", 8, c->tenant_id,
		  c->id, code ? "tally_error" : se->type,
		  code ? code : se->code, msg ? msg : se->message, se->param,
		  i64s(hs, se->http_status), se->request_id);
}

/* cmd_fail for a final failure found by tally: 1 (done) or an error. */
static int fail_done(cmd_ctx *c, const char *code, const char *msg,
		     tally_error *err)
{
	int rc = cmd_fail(c, code, msg, err);

	return rc != 0 ? rc : 1;
}

/* A Stripe call's error: final ones are recorded, transient ones returned. */
static int cmd_stripe_error(cmd_ctx *c, int rc, tally_error *err)
{
	/* a rejected API key is tally's configuration, not the command:
	 * keep it pending (retried) instead of failing every command */
	if (rc == TALLY_EINVALID && c->se.http_status == 401)
		return TALLY_ETRANSIENT;
	if (rc == TALLY_EINVALID || rc == TALLY_ENOTFOUND) {
		int rc2 = cmd_fail(c, NULL, NULL, err);

		return rc2 != 0 ? rc2 : 1; /* 1: done, failed */
	}
	return rc;
}

/*
 * POST once per (command, step): if stripe_requests already holds the
 * object this step produced, GET it (lookup by recorded id) instead of
 * creating it again; otherwise POST with the derived Idempotency-Key and
 * record the object id as soon as Stripe answers.
 * @return 0 (*out set), 1 (failed and recorded), or an error
 */
/* A command step's Idempotency-Key: command ids are unique per tenant
 * only, so the tenant is part of the key ("tally-cmd-<tenant>-<id>-<step>"). */
static void cmd_key(const cmd_ctx *c, const char *step, char key[256])
{
	char id[sizeof(c->tenant_id) + sizeof(c->id) + 1];

	snprintf(id, sizeof(id), "%s-%s", c->tenant_id, c->id);
	tally_stripe_idempotency_key(key, "cmd", id, step);
}

static int step_post(cmd_ctx *c, const char *step, const char *method,
		     const char *path, const json_t *params,
		     const char *get_prefix, json_t **out, tally_error *err)
{
	tally_stripe_sync *ss = c->ss;
	PGresult *res = NULL;
	char key[256], getpath[400];
	numbuf hs;
	int rc;

	*out = NULL;
	cmd_key(c, step, key);
	rc = ex(ss, &res, err,
		"SELECT coalesce(object_id, '') FROM stripe_requests "
		"WHERE tenant_id = $1 AND idempotency_key = $2", 2,
		c->tenant_id, key);
	if (rc != 0)
		goto cleanup;
	if (PQntuples(res) == 1 && *PQgetvalue(res, 0, 0) && get_prefix) {
		snprintf(getpath, sizeof(getpath), "%s%s", get_prefix,
			 PQgetvalue(res, 0, 0));
		rc = tally_stripe_request(ss->stripe, out, "GET", getpath,
					  NULL, NULL, &c->se, err);
		if (rc != 0)
			rc = cmd_stripe_error(c, rc, err);
		goto cleanup;
	}
	PQclear(res);
	res = NULL;
	rc = ex(ss, NULL, err,
		"INSERT INTO stripe_requests (tenant_id, idempotency_key, "
		"command_id, method, path) VALUES ($1, $2, $3, $4, $5) "
		"ON CONFLICT DO NOTHING", 5, c->tenant_id, key, c->id, method,
		path);
	if (rc != 0)
		goto cleanup;
	rc = tally_stripe_request(ss->stripe, out, method, path, params, key,
				  &c->se, err);
	if (rc != 0) {
		rc = cmd_stripe_error(c, rc, err);
		goto cleanup;
	}
	rc = ex(ss, NULL, err,
		"UPDATE stripe_requests SET object_id = $3, http_status = "
		"$4::integer, stripe_request_id = nullif($5, ''), "
		"completed_at = now() WHERE tenant_id = $1 AND "
		"idempotency_key = $2", 5, c->tenant_id, key,
		tally_stripe_jstr(*out, "id"), i64s(hs, c->se.http_status),
		c->se.request_id);
cleanup:
	PQclear(res);
	if (rc != 0) {
		json_decref(*out);
		*out = NULL;
	}
	return rc;
}

/* Whether this command already recorded an object for step. */
static int step_done(cmd_ctx *c, const char *step, bool *done,
		     tally_error *err)
{
	PGresult *res = NULL;
	char key[256];
	int rc;

	cmd_key(c, step, key);
	rc = ex(c->ss, &res, err,
		"SELECT 1 FROM stripe_requests WHERE tenant_id = $1 AND "
		"idempotency_key = $2 AND object_id IS NOT NULL", 2,
		c->tenant_id, key);
	*done = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	return rc;
}

static int ensure_customer(cmd_ctx *c, tally_error *err)
{
	char path[300];
	json_t *cus = NULL, *p;
	int rc;

	if (c->t.customer[0]) {
		snprintf(path, sizeof(path), "/v1/customers/%s", c->t.customer);
		rc = tally_stripe_request(c->ss->stripe, &cus, "GET", path,
					  NULL, NULL, &c->se, err);
		if (rc == 0 && !json_is_true(json_object_get(cus, "deleted"))) {
			json_decref(cus);
			return 0;
		}
		json_decref(cus);
		if (rc != 0)
			return cmd_stripe_error(c, rc, err);
	}
	p = json_pack("{s:s, s:{s:s, s:s}}", "name",
		      c->name[0] ? c->name : c->t.name, "metadata",
		      "tenant_id", c->tenant_id, "slug", c->t.slug);
	if (c->email[0])
		json_object_set_new(p, "email", json_string(c->email));
	rc = step_post(c, "customer", "POST", "/v1/customers", p,
		       "/v1/customers/", &cus, err);
	json_decref(p);
	if (rc != 0)
		return rc;
	cpy(c->t.customer, sizeof(c->t.customer),
	    tally_stripe_jstr(cus, "id"));
	json_decref(cus);
	return ex(c->ss, NULL, err,
		  "UPDATE tenants SET stripe_customer_id = $2, updated_at = "
		  "now() WHERE id = $1", 2, c->tenant_id, c->t.customer);
}

/* Mirror a subscription the API returned (as of now) onto the tenant. */
static int adopt_subscription(cmd_ctx *c, const json_t *sub,
			      tally_error *err)
{
	bool applied;
	int rc;

	rc = mirror_subscription(c->ss, &c->t, sub, now_ms(c->ss) / 1000,
				 API_READ_RANK, NULL, &applied, err);
	if (rc == 0 && !applied)
		tally_log(TALLY_DEBUG, "stripe.subscription_stale",
			  TALLY_KV_STR("command_id", c->id));
	return rc;
}

static int do_create_subscription(cmd_ctx *c, tally_error *err)
{
	tally_stripe_sync *ss = c->ss;
	const char *price = price_for_plan(ss, c->plan);
	int64_t trial = c->cmd->trial_days;
	int64_t maxd = tally_config_int(ss->cfg, "stripe.max_trial_days");
	json_t *p = NULL, *sub = NULL, *pm = NULL;
	bool done = false;
	int rc;

	if (*price == '\0')
		return fail_done(c, "price_not_configured",
				"no Stripe price configured for the plan", err);
	if (trial < 0)
		trial = tally_config_int(ss->cfg, "stripe.default_trial_days");
	if (trial > maxd)
		trial = maxd;
	rc = step_done(c, "subscription", &done, err);
	if (rc != 0)
		return rc;
	if (!done && c->t.subscription[0] &&
	    strcmp(c->t.status, "cancelled") != 0)
		return fail_done(c, "subscription_exists",
				"tenant already has a subscription", err);
	rc = ensure_customer(c, err);
	if (rc != 0)
		return rc;
	if (c->pm[0]) {
		char path[320];

		snprintf(path, sizeof(path), "/v1/payment_methods/%s/attach",
			 c->pm);
		p = json_pack("{s:s}", "customer", c->t.customer);
		rc = step_post(c, "attach", "POST", path, p,
			       "/v1/payment_methods/", &pm, err);
		json_decref(p);
		json_decref(pm);
		if (rc != 0)
			return rc;
	}
	p = json_pack("{s:s, s:[{s:s, s:i}], s:{s:s, s:s, s:s}}",
		      "customer", c->t.customer, "items", "price", price,
		      "quantity", 1, "metadata", "tenant_id", c->tenant_id,
		      "plan", c->plan, "command_id", c->id);
	if (trial > 0)
		json_object_set_new(p, "trial_period_days",
				    json_integer(trial));
	if (c->pm[0])
		json_object_set_new(p, "default_payment_method",
				    json_string(c->pm));
	rc = step_post(c, "subscription", "POST", "/v1/subscriptions", p,
		       "/v1/subscriptions/", &sub, err);
	json_decref(p);
	if (rc != 0)
		return rc;
	/* the tenant adopts this subscription (even replacing a cancelled) */
	c->t.subscription[0] = '\0';
	rc = adopt_subscription(c, sub, err);
	if (rc == 0) {
		cpy(c->object_id, sizeof(c->object_id),
		    tally_stripe_jstr(sub, "id"));
		c->result = json_pack("{s:s, s:s, s:s?, s:I}",
				      "subscription_id", c->object_id,
				      "customer_id", c->t.customer, "status",
				      tally_stripe_jstr(sub, "status"),
				      "trial_days", (json_int_t)trial);
	}
	json_decref(sub);
	return rc;
}

static int get_subscription(cmd_ctx *c, json_t **sub, tally_error *err)
{
	char path[300];
	int rc;

	snprintf(path, sizeof(path), "/v1/subscriptions/%s",
		 c->t.subscription);
	rc = tally_stripe_request(c->ss->stripe, sub, "GET", path, NULL, NULL,
				  &c->se, err);
	return rc != 0 ? cmd_stripe_error(c, rc, err) : 0;
}

static int do_change_plan(cmd_ctx *c, tally_error *err)
{
	tally_stripe_sync *ss = c->ss;
	const char *price = price_for_plan(ss, c->plan);
	const char *old_price;
	json_t *sub = NULL, *p = NULL, *out = NULL;
	char path[320];
	sub_view v;
	int rc, new_rank = 0;
	bool downgrade, at_end;

	if (*price == '\0')
		return fail_done(c, "price_not_configured",
				"no Stripe price configured for the plan", err);
	if (c->t.subscription[0] == '\0')
		return fail_done(c, "no_subscription",
				"tenant has no subscription", err);
	rc = rank_of(ss, c->plan, &new_rank, err);
	if (rc != 0)
		return rc;
	rc = get_subscription(c, &sub, err);
	if (rc != 0)
		return rc;
	sub_view_of(ss, &v, sub);
	old_price = v.price;
	downgrade = new_rank < c->t.rank;
	/* upgrades apply now; downgrades wait for the period end unless the
	 * command says otherwise */
	at_end = downgrade && (!c->cmd->has_at_period_end ||
			       c->cmd->at_period_end);
	if (v.item == NULL || old_price == NULL) {
		rc = fail_done(c, "subscription_without_items",
			      "subscription has no item", err);
		goto cleanup;
	}
	if (strcmp(old_price, price) == 0) {
		c->result = json_pack("{s:s, s:b}", "plan", c->plan,
				      "unchanged", 1);
		rc = adopt_subscription(c, sub, err);
		goto cleanup;
	}
	if (!at_end) {
		snprintf(path, sizeof(path), "/v1/subscriptions/%s",
			 c->t.subscription);
		p = json_pack("{s:[{s:s, s:s}], s:s, s:{s:s}}", "items", "id",
			      v.item, "price", price, "proration_behavior",
			      proration_name(c->cmd->proration), "metadata",
			      "plan", c->plan);
		rc = step_post(c, "change", "POST", path, p,
			       "/v1/subscriptions/", &out, err);
		if (rc != 0)
			goto cleanup;
		rc = adopt_subscription(c, out, err);
		c->result = json_pack("{s:s, s:s, s:s, s:b}", "plan_from",
				      c->t.plan, "plan_to", c->plan,
				      "proration",
				      proration_name(c->cmd->proration),
				      "immediate", 1);
	} else {
		/* downgrade at period end: a subscription schedule whose
		 * second phase switches the price, then releases */
		const char *sched = tally_stripe_jid(sub, "schedule");
		json_t *s2 = NULL;

		if (sched == NULL) {
			p = json_pack("{s:s}", "from_subscription",
				      c->t.subscription);
			rc = step_post(c, "schedule", "POST",
				       "/v1/subscription_schedules", p,
				       "/v1/subscription_schedules/", &s2,
				       err);
			json_decref(p);
			p = NULL;
			if (rc != 0)
				goto cleanup;
			sched = tally_stripe_jstr(s2, "id");
		}
		snprintf(path, sizeof(path), "/v1/subscription_schedules/%s",
			 sched ? sched : "");
		p = json_pack("{s:s, s:[{s:[{s:s, s:i}], s:I, s:I},"
			      " {s:[{s:s, s:i}], s:i, s:s}]}",
			      "end_behavior", "release", "phases",
			      "items", "price", old_price, "quantity", 1,
			      "start_date", (json_int_t)to_i64(v.pcps),
			      "end_date", (json_int_t)v.cpe_s,
			      "items", "price", price, "quantity", 1,
			      "iterations", 1, "proration_behavior", "none");
		json_decref(s2);
		rc = step_post(c, "phases", "POST", path, p,
			       "/v1/subscription_schedules/", &out, err);
		if (rc != 0)
			goto cleanup;
		{
			char cause[512];

			snprintf(cause, sizeof(cause),
				 "downgrade:%s:%s:scheduled:%s",
				 c->t.subscription, c->plan, c->id);
			rc = signal_emit(ss, c->tenant_id, "downgrade", cause,
				now_ms(ss) / 1000, json_pack(
				"{s:s, s:s, s:s, s:b, s:I}", "plan_from",
				c->t.plan, "plan_to", c->plan,
				"subscription_id", c->t.subscription,
				"at_period_end", 1, "effective_at",
				(json_int_t)v.cpe_s), err);
		}
		c->result = json_pack("{s:s, s:s, s:b, s:I, s:s?}",
				      "plan_from", c->t.plan, "plan_to",
				      c->plan, "at_period_end", 1,
				      "effective_at", (json_int_t)v.cpe_s,
				      "schedule_id",
				      tally_stripe_jstr(out, "id"));
	}
	if (rc == 0)
		cpy(c->object_id, sizeof(c->object_id), c->t.subscription);
cleanup:
	json_decref(p);
	json_decref(out);
	json_decref(sub);
	return rc;
}

static int do_cancel(cmd_ctx *c, tally_error *err)
{
	bool at_end = !c->cmd->has_at_period_end || c->cmd->at_period_end;
	char path[320];
	json_t *p = NULL, *out = NULL;
	int rc;

	if (c->t.subscription[0] == '\0')
		return fail_done(c, "no_subscription",
				"tenant has no subscription", err);
	snprintf(path, sizeof(path), "/v1/subscriptions/%s",
		 c->t.subscription);
	if (at_end) {
		p = json_pack("{s:b}", "cancel_at_period_end", 1);
		rc = step_post(c, "cancel", "POST", path, p,
			       "/v1/subscriptions/", &out, err);
	} else {
		rc = step_post(c, "cancel_now", "DELETE", path, NULL,
			       "/v1/subscriptions/", &out, err);
	}
	if (rc == 0)
		rc = adopt_subscription(c, out, err);
	if (rc == 0 && !at_end) {
		/* whatever state the answer showed, the tenant is cancelled */
		char cause[300];

		snprintf(cause, sizeof(cause), "subscription_cancelled:%s",
			 c->t.subscription);
		rc = signal_emit(c->ss, c->tenant_id, "subscription_cancelled",
				 cause, now_ms(c->ss) / 1000,
				 json_pack("{s:s, s:b}", "subscription_id",
					   c->t.subscription, "at_period_end",
					   0), err);
		if (rc == 0)
			rc = transition(c->ss, &c->t, "cancelled", "command",
					cause, now_ms(c->ss) / 1000, err);
	}
	if (rc == 0) {
		cpy(c->object_id, sizeof(c->object_id), c->t.subscription);
		c->result = json_pack("{s:s, s:b}", "subscription_id",
				      c->t.subscription, "at_period_end",
				      at_end);
	}
	json_decref(p);
	json_decref(out);
	return rc;
}

static int mirror_invoice_now(json_t *inv, void *payload);

typedef struct list_ctx {
	tally_stripe_sync *ss;
	tenant *t;
	tally_error *err;
	int rc;
} list_ctx;

static int mirror_invoice_now(json_t *inv, void *payload)
{
	list_ctx *l = payload;
	bool applied;

	l->rc = mirror_invoice(l->ss, l->t, inv, now_ms(l->ss) / 1000,
			       invoice_rank(inv), NULL, false, NULL, &applied,
			       l->err);
	return l->rc;
}

static int do_sync_tenant(cmd_ctx *c, tally_error *err)
{
	json_t *sub = NULL, *q = NULL;
	list_ctx l = { c->ss, &c->t, err, 0 };
	int rc = 0, n = 0;

	if (c->t.subscription[0]) {
		rc = get_subscription(c, &sub, err);
		if (rc == 0)
			rc = adopt_subscription(c, sub, err);
		json_decref(sub);
		if (rc != 0)
			return rc;
		n++;
	}
	if (c->t.customer[0]) {
		q = json_pack("{s:s}", "customer", c->t.customer);
		rc = tally_stripe_list(c->ss->stripe, "/v1/invoices", q,
				       mirror_invoice_now, &l, &c->se, err);
		json_decref(q);
		if (rc != 0 && l.rc == 0)
			return cmd_stripe_error(c, rc, err);
		if (rc != 0)
			return l.rc;
	}
	cpy(c->object_id, sizeof(c->object_id), c->t.subscription);
	c->result = json_pack("{s:s, s:s, s:s}", "customer_id", c->t.customer,
			      "subscription_id", c->t.subscription, "status",
			      c->t.status);
	(void)n;
	return 0;
}

int tally_stripe_sync_command(tally_stripe_sync *ss, const tally_command *cmd,
			      tally_error *err)
{
	cmd_ctx c;
	PGresult *res = NULL;
	json_t *payload = NULL;
	char key[256], *ptext = NULL, *rtext = NULL;
	const char *tname = cmd_type_name(cmd->type);
	numbuf tms;
	int rc;

	memset(&c, 0, sizeof(c));
	c.ss = ss;
	c.cmd = cmd;
	if (tname == NULL || cmd->id.len == 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "command: no id or unknown type");
	strcopy(c.id, sizeof(c.id), cmd->id);
	strcopy(c.plan, sizeof(c.plan), cmd->plan);
	strcopy(c.pm, sizeof(c.pm), cmd->payment_method_id);
	strcopy(c.email, sizeof(c.email), cmd->email);
	strcopy(c.name, sizeof(c.name), cmd->name);
	tally_uuid_fmt(c.tenant_id, cmd->tenant_id);
	tally_stripe_idempotency_key(key, "cmd", c.id, "");
	key[strlen(key) - 1] = '\0'; /* base key, without the step */

	payload = json_pack("{s:s, s:I}", "type", tname, "time",
			    (json_int_t)cmd->time_ms);
	if (c.plan[0])
		json_object_set_new(payload, "plan", json_string(c.plan));
	if (cmd->trial_days >= 0)
		json_object_set_new(payload, "trial_days",
				    json_integer(cmd->trial_days));
	if (c.pm[0])
		json_object_set_new(payload, "payment_method_id",
				    json_string(c.pm));
	if (cmd->type == TALLY_CMD_CHANGE_PLAN)
		json_object_set_new(payload, "proration",
			json_string(proration_name(cmd->proration)));
	if (cmd->has_at_period_end)
		json_object_set_new(payload, "at_period_end",
				    json_boolean(cmd->at_period_end));
	ptext = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS);
	rc = ex(ss, &res, err,
		"INSERT INTO billing_commands AS b (tenant_id, command_id, "
		"type, idempotency_key, payload, command_time) VALUES ($1, $2,"
		" $3, $4, $5::jsonb, to_timestamp($6::bigint / 1000.0)) "
		"ON CONFLICT (tenant_id, command_id) DO UPDATE SET "
		"attempts = b.attempts + 1 RETURNING status, attempts", 6,
		c.tenant_id, c.id, tname, key, ptext,
		i64s(tms, cmd->time_ms));
	if (rc != 0)
		goto cleanup;
	if (strcmp(PQgetvalue(res, 0, 0), "pending") != 0) {
		rc = TALLY_EDUPLICATE;
		tally_log(TALLY_INFO, "stripe.command_duplicate",
			  TALLY_KV_STR("command_id", c.id),
			  TALLY_KV_STR("status", PQgetvalue(res, 0, 0)));
		goto cleanup;
	}
	rc = tenant_load(ss, &c.t, "WHERE t.id = $1::uuid", c.tenant_id,
			 false, err);
	if (rc != 0)
		goto cleanup;
	if (!c.t.found) {
		rc = cmd_fail(&c, "unknown_tenant", "tenant not found", err);
		goto cleanup;
	}
	if (ss->stripe == NULL) {
		rc = tally_error_set(err, TALLY_ETRANSIENT,
				     "command: no Stripe client");
		goto cleanup;
	}
	switch (cmd->type) {
	case TALLY_CMD_CREATE_CUSTOMER:
		rc = ensure_customer(&c, err);
		if (rc == 0) {
			cpy(c.object_id, sizeof(c.object_id), c.t.customer);
			c.result = json_pack("{s:s}", "customer_id",
					     c.t.customer);
		}
		break;
	case TALLY_CMD_CREATE_SUBSCRIPTION:
		rc = do_create_subscription(&c, err);
		break;
	case TALLY_CMD_CHANGE_PLAN:
		rc = do_change_plan(&c, err);
		break;
	case TALLY_CMD_CANCEL_SUBSCRIPTION:
		rc = do_cancel(&c, err);
		break;
	case TALLY_CMD_SYNC_TENANT:
		rc = do_sync_tenant(&c, err);
		break;
	default:
		rc = TALLY_EINVALID;
	}
	if (rc == 1) { /* failed, already recorded */
		rc = 0;
		goto cleanup;
	}
	if (rc != 0)
		goto cleanup;
	rtext = c.result ? json_dumps(c.result, JSON_COMPACT | JSON_SORT_KEYS)
			 : NULL;
	rc = ex(ss, NULL, err,
		"UPDATE billing_commands SET status = 'succeeded', "
		"stripe_object_id = nullif($3, ''), result = $4::jsonb, "
		"stripe_request_id = nullif($5, ''), completed_at = now() "
		"WHERE tenant_id = $1 AND command_id = $2", 5, c.tenant_id,
		c.id, c.object_id, rtext, c.se.request_id);
	if (rc == 0)
		tally_log(TALLY_INFO, "stripe.command_done",
			  TALLY_KV_STR("command_id", c.id),
			  TALLY_KV_STR("type", tname),
			  TALLY_KV_STR("tenant_id", c.tenant_id));
cleanup:
	PQclear(res);
	free(ptext);
	free(rtext);
	json_decref(payload);
	json_decref(c.result);
	return rc;
}

/* ---- dunning ------------------------------------------------------------ */

int tally_stripe_sync_dunning(tally_stripe_sync *ss, int *n, tally_error *err)
{
	PGresult *res = NULL;
	numbuf now, days;
	int rc, i, made = 0;

	if (n)
		*n = 0;
	rc = ex(ss, &res, err,
		"SELECT id::text, extract(epoch FROM past_due_since)::bigint "
		"FROM tenants WHERE status = 'past_due' AND past_due_since "
		"IS NOT NULL AND past_due_since <= to_timestamp($1::bigint) - "
		"make_interval(days => $2::integer)", 2,
		i64s(now, now_ms(ss) / 1000),
		i64s(days, tally_config_int(ss->cfg,
					    "stripe.auto_suspend_days")));
	if (rc != 0)
		goto cleanup;
	for (i = 0; i < PQntuples(res) && rc == 0; i++) {
		tenant t;
		char cause[128];
		int64_t now_s = now_ms(ss) / 1000;

		rc = ex(ss, NULL, err, "BEGIN", 0);
		if (rc != 0)
			break;
		rc = tenant_load(ss, &t, "WHERE t.id = $1::uuid",
				 PQgetvalue(res, i, 0), true, err);
		if (rc == 0 && t.found && strcmp(t.status, "past_due") == 0) {
			snprintf(cause, sizeof(cause), "auto_suspend:%s",
				 PQgetvalue(res, i, 1));
			rc = transition(ss, &t, "suspended", "auto_suspend",
					cause, now_s, err);
			if (rc == 0 && strcmp(t.status, "suspended") == 0)
				made++;
		}
		if (rc == 0)
			rc = ex(ss, NULL, err, "COMMIT", 0);
		else {
			tally_error e2;

			(void)ex(ss, NULL, &e2, "ROLLBACK", 0);
		}
	}
	if (n)
		*n = made;
cleanup:
	PQclear(res);
	return rc;
}

/* ---- meters ------------------------------------------------------------- */

static void rate_wait(tally_stripe_sync *ss)
{
	int64_t now = tally_mono_ns();
	int64_t gap = 1000000000LL / ss->meter_rate_per_s;

	if (ss->next_meter_ns > now)
		tally_sleep_ms((ss->next_meter_ns - now) / 1000000 + 1);
	now = tally_mono_ns();
	ss->next_meter_ns = (ss->next_meter_ns > now ? ss->next_meter_ns
						     : now) + gap;
}

static int send_meter(tally_stripe_sync *ss, const char *tenant_id,
		      const char *meter, const char *hour_s,
		      const char *rev, const char *identifier,
		      const char *customer, const char *value, bool *stop,
		      tally_error *err)
{
	tally_stripe_error se;
	char key[256];
	json_t *p;
	int64_t ts = 0;
	int rc;

	*stop = false;
	ts = to_i64(hour_s);
	p = json_pack("{s:s, s:s, s:I, s:{s:s, s:s}}", "event_name",
		      tally_config_str(ss->cfg, "stripe.meter_event_name"),
		      "identifier", identifier, "timestamp", (json_int_t)ts,
		      "payload", "stripe_customer_id", customer, "value",
		      value);
	tally_stripe_idempotency_key(key, "meter", identifier, "v1");
	rate_wait(ss);
	rc = tally_stripe_request(ss->stripe, NULL, "POST",
				  "/v1/billing/meter_events", p, key, &se,
				  err);
	json_decref(p);
	if (rc == TALLY_ETRANSIENT || rc == TALLY_ERROR) {
		*stop = true; /* stays pending; resent with the same id */
		return rc;
	}
	return ex(ss, NULL, err,
		  "UPDATE stripe_meter_reports SET status = $5, "
		  "error_code = nullif($6, ''), error_message = nullif($7, ''),"
		  " reported_at = CASE WHEN $5 = 'reported' THEN now() END "
		  "WHERE tenant_id = $1 AND meter = $2 AND "
		  "hour = to_timestamp($3::bigint) AND revision = $4::integer",
		  7, tenant_id, meter, hour_s, rev,
		  rc == 0 ? "reported" : "failed", rc == 0 ? "" : se.code,
		  rc == 0 ? "" : se.message);
}

int tally_stripe_sync_report_meters(tally_stripe_sync *ss, int *n,
				    tally_error *err)
{
	PGresult *res = NULL;
	numbuf now;
	bool stop = false;
	int rc, i, sent = 0;

	if (n)
		*n = 0;
	if (ss->stripe == NULL)
		return tally_error_set(err, TALLY_EINVALID,
				       "meters: no Stripe client");
	/* usage reaches Stripe as meter events only when so configured */
	if (tally_usage_billing_of(ss->cfg) != TALLY_USAGE_BILLING_METERS)
		return 0;
	i64s(now, now_ms(ss) / 1000);
	/* Stripe accepts timestamps up to 35 days back: keep an hour of
	 * margin, give up on older pending reports */
	rc = ex(ss, NULL, err,
		"UPDATE stripe_meter_reports SET status = 'outside_window' "
		"WHERE status = 'pending' AND hour < to_timestamp($1::bigint) "
		"- interval '35 days' + interval '1 hour'", 1, now);
	if (rc != 0)
		return rc;
	/* 1. resend what a crash left pending, with the same identifier */
	rc = ex(ss, &res, err,
		"SELECT r.tenant_id::text, r.meter, "
		"extract(epoch FROM r.hour)::bigint, r.revision, r.identifier,"
		" r.customer_id, r.value::text FROM stripe_meter_reports r "
		"WHERE r.status = 'pending' ORDER BY r.hour", 0);
	for (i = 0; rc == 0 && i < PQntuples(res) && !stop; i++) {
		rc = send_meter(ss, PQgetvalue(res, i, 0),
				PQgetvalue(res, i, 1), PQgetvalue(res, i, 2),
				PQgetvalue(res, i, 3), PQgetvalue(res, i, 4),
				PQgetvalue(res, i, 5), PQgetvalue(res, i, 6),
				&stop, err);
		sent += rc == 0;
	}
	PQclear(res);
	res = NULL;
	if (rc != 0)
		return rc;
	/* 2. closed hours whose usage exceeds what was reported */
	rc = ex(ss, &res, err,
		"WITH u AS (SELECT u.tenant_id, u.meter, u.hour, "
		"  sum(u.input_tokens + u.output_tokens) AS total "
		"  FROM usage_hourly u WHERE u.meter = 'ai.tokens' "
		"  AND u.hour >= to_timestamp($1::bigint) - interval '35 days'"
		"      + interval '1 hour' "
		"  AND u.hour + interval '1 hour' <= to_timestamp($1::bigint) "
		"  GROUP BY u.tenant_id, u.meter, u.hour), "
		"r AS (SELECT tenant_id, meter, hour, "
		"  coalesce(sum(value) FILTER (WHERE status IN "
		"    ('reported', 'pending')), 0) AS done, "
		"  max(revision) + 1 AS next_rev FROM stripe_meter_reports "
		"  GROUP BY tenant_id, meter, hour) "
		"SELECT u.tenant_id::text, u.meter, "
		"extract(epoch FROM u.hour)::bigint, "
		"coalesce(r.next_rev, 0), t.stripe_customer_id, "
		"(u.total - coalesce(r.done, 0))::text, u.total::text "
		"FROM u JOIN tenants t ON t.id = u.tenant_id "
		"LEFT JOIN r USING (tenant_id, meter, hour) "
		"WHERE t.stripe_customer_id IS NOT NULL "
		"AND u.total > coalesce(r.done, 0) ORDER BY u.hour", 1, now);
	for (i = 0; rc == 0 && i < PQntuples(res) && !stop; i++) {
		const char *tid = PQgetvalue(res, i, 0);
		const char *meter = PQgetvalue(res, i, 1);
		const char *hour = PQgetvalue(res, i, 2);
		const char *rev = PQgetvalue(res, i, 3);
		char seed[256], hex[33], ident[64];

		snprintf(seed, sizeof(seed), "%s|%s|%s", tid, meter, hour);
		sha_hex(hex, 32, seed);
		snprintf(ident, sizeof(ident), "tly-%s-r%s", hex, rev);
		rc = ex(ss, NULL, err,
			"INSERT INTO stripe_meter_reports (tenant_id, meter, "
			"hour, revision, event_name, identifier, customer_id, "
			"value, cumulative, status) VALUES ($1, $2, "
			"to_timestamp($3::bigint), $4::integer, $5, $6, $7, "
			"$8::numeric, $9::numeric, 'pending')", 9, tid, meter,
			hour, rev,
			tally_config_str(ss->cfg, "stripe.meter_event_name"),
			ident, PQgetvalue(res, i, 4), PQgetvalue(res, i, 5),
			PQgetvalue(res, i, 6));
		if (rc == 0)
			rc = send_meter(ss, tid, meter, hour, rev, ident,
					PQgetvalue(res, i, 4),
					PQgetvalue(res, i, 5), &stop, err);
		sent += rc == 0;
	}
	PQclear(res);
	if (n)
		*n = sent;
	return rc;
}

/* ---- reconcile ---------------------------------------------------------- */

typedef struct recon {
	tally_stripe_sync *ss;
	bool apply;
	FILE *out;
	int ndiff;
	tally_error *err;
	int rc;
} recon;

static int recon_tenant(recon *r, const json_t *obj, tenant *t)
{
	const char *cus = tally_stripe_jid(obj, "customer");
	const json_t *md = json_object_get(obj, "metadata");
	int rc = 0;

	memset(t, 0, sizeof(*t));
	if (cus)
		rc = tenant_load(r->ss, t, "WHERE t.stripe_customer_id = $1",
				 cus, false, r->err);
	if (rc == 0 && !t->found && json_is_object(md) &&
	    tally_stripe_jstr(md, "tenant_id")) {
		const char *tid = tally_stripe_jstr(md, "tenant_id");
		uint8_t u[16];

		if (tally_uuid_parse(u, tid, (uint32_t)strlen(tid)) == 0)
			rc = tenant_load(r->ss, t, "WHERE t.id = $1::uuid",
					 tid, false, r->err);
	}
	return rc;
}

static void diff(recon *r, const char *kind, const char *id,
		 const char *what, const char *pg, const char *stripe)
{
	r->ndiff++;
	fprintf(r->out, "%s\t%s\t%s\tpostgres=%s\tstripe=%s\n", kind, id,
		what, pg ? pg : "-", stripe ? stripe : "-");
}

static int recon_sub(json_t *sub, void *payload)
{
	recon *r = payload;
	PGresult *res = NULL;
	tenant t;
	sub_view v;
	bool differs = false, applied;
	const char *id = tally_stripe_jstr(sub, "id");

	r->rc = recon_tenant(r, sub, &t);
	if (r->rc != 0)
		return r->rc;
	if (!t.found) {
		diff(r, "subscription", id, "unknown_customer", NULL,
		     tally_stripe_jid(sub, "customer"));
		return 0;
	}
	sub_view_of(r->ss, &v, sub);
	r->rc = ex(r->ss, &res, r->err,
		   "SELECT status, coalesce(extract(epoch FROM "
		   "current_period_end)::bigint::text, ''), coalesce(plan, '')"
		   " FROM subscriptions WHERE tenant_id = $1 AND "
		   "subscription_id = $2", 2, t.id, id);
	if (r->rc != 0)
		goto cleanup;
	if (PQntuples(res) == 0) {
		diff(r, "subscription", id, "missing", NULL, v.status);
		differs = true;
	} else {
		if (strcmp(PQgetvalue(res, 0, 0), v.status) != 0) {
			diff(r, "subscription", id, "status",
			     PQgetvalue(res, 0, 0), v.status);
			differs = true;
		}
		if (strcmp(PQgetvalue(res, 0, 1), v.pcpe ? v.pcpe : "") != 0) {
			diff(r, "subscription", id, "period_end",
			     PQgetvalue(res, 0, 1), v.pcpe);
			differs = true;
		}
		if (v.plan && strcmp(PQgetvalue(res, 0, 2), v.plan) != 0) {
			diff(r, "subscription", id, "plan",
			     PQgetvalue(res, 0, 2), v.plan);
			differs = true;
		}
	}
	if (differs && r->apply) {
		char tid[37];

		/* tenant_load clears t: keep the id apart */
		cpy(tid, sizeof(tid), t.id);
		r->rc = ex(r->ss, NULL, r->err, "BEGIN", 0);
		if (r->rc == 0)
			r->rc = tenant_load(r->ss, &t, "WHERE t.id = $1::uuid",
					    tid, true, r->err);
		if (r->rc == 0)
			r->rc = mirror_subscription(r->ss, &t, sub,
				now_ms(r->ss) / 1000, API_READ_RANK, NULL,
				&applied,
				r->err);
		if (r->rc == 0)
			r->rc = ex(r->ss, NULL, r->err, "COMMIT", 0);
		else
			(void)ex(r->ss, NULL, NULL, "ROLLBACK", 0);
	}
cleanup:
	PQclear(res);
	return r->rc;
}

static int recon_inv(json_t *inv, void *payload)
{
	recon *r = payload;
	PGresult *res = NULL;
	tenant t;
	numbuf due, paid;
	bool differs = false, applied;
	const char *id = tally_stripe_jstr(inv, "id");
	const char *st = tally_stripe_jstr(inv, "status");

	r->rc = recon_tenant(r, inv, &t);
	if (r->rc != 0)
		return r->rc;
	if (!t.found) {
		diff(r, "invoice", id, "unknown_customer", NULL,
		     tally_stripe_jid(inv, "customer"));
		return 0;
	}
	jnum(due, inv, "amount_due");
	jnum(paid, inv, "amount_paid");
	r->rc = ex(r->ss, &res, r->err,
		   "SELECT coalesce(status, ''), amount_due::text, "
		   "amount_paid::text FROM invoices WHERE tenant_id = $1 AND "
		   "invoice_id = $2", 2, t.id, id);
	if (r->rc != 0)
		goto cleanup;
	if (PQntuples(res) == 0) {
		diff(r, "invoice", id, "missing", NULL, st);
		differs = true;
	} else {
		if (strcmp(PQgetvalue(res, 0, 0), st ? st : "") != 0) {
			diff(r, "invoice", id, "status", PQgetvalue(res, 0, 0),
			     st);
			differs = true;
		}
		if (strcmp(PQgetvalue(res, 0, 1), due) != 0 ||
		    strcmp(PQgetvalue(res, 0, 2), paid) != 0) {
			char a[64], b[64];

			snprintf(a, sizeof(a), "%s/%s", PQgetvalue(res, 0, 1),
				 PQgetvalue(res, 0, 2));
			snprintf(b, sizeof(b), "%s/%s", due, paid);
			diff(r, "invoice", id, "amount_due/paid", a, b);
			differs = true;
		}
	}
	if (differs && r->apply)
		r->rc = mirror_invoice(r->ss, &t, inv, now_ms(r->ss) / 1000,
				       invoice_rank(inv), NULL, false, NULL,
				       &applied, r->err);
	else if (r->apply)
		/* mirrored before periods were closed: close it now */
		r->rc = close_period(r->ss, &t, inv, id, r->err);
cleanup:
	PQclear(res);
	return r->rc;
}

int tally_stripe_sync_reconcile(tally_stripe_sync *ss, bool apply, FILE *out,
				int *ndiff, tally_error *err)
{
	recon r = { ss, apply, out, 0, err, 0 };
	tally_stripe_error se;
	json_t *q;
	int rc;

	if (ss->stripe == NULL)
		return tally_error_set(err, TALLY_EINVALID,
				       "reconcile: no Stripe client");
	q = json_pack("{s:s}", "status", "all");
	rc = tally_stripe_list(ss->stripe, "/v1/subscriptions", q, recon_sub,
			       &r, &se, err);
	json_decref(q);
	if (rc == 0)
		rc = tally_stripe_list(ss->stripe, "/v1/invoices", NULL,
				       recon_inv, &r, &se, err);
	if (ndiff)
		*ndiff = r.ndiff;
	return rc;
}

/* ---- publishing signals ------------------------------------------------- */

bool tally_stripe_sync_on_delivery(const rd_kafka_message_t *rkm)
{
	sig_slot *slot = rkm->_private;

	if (slot == NULL || slot->magic != SLOT_MAGIC)
		return false;
	slot->kerr = rkm->err;
	slot->state = rkm->err == RD_KAFKA_RESP_ERR_NO_ERROR ? 1 : -1;
	return true;
}

static void default_dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
			  void *opaque)
{
	(void)rk;
	(void)opaque;
	(void)tally_stripe_sync_on_delivery(rkm);
}

void tally_stripe_sync_producer_conf(rd_kafka_conf_t *conf)
{
	rd_kafka_conf_set_dr_msg_cb(conf, default_dr_cb);
}

/* Mark delivered slots published, drop failed ones (their rows stay
 * unpublished and are produced again). Stops at the first PG error, leaving
 * the remaining settled slots for the next call. */
static int settle(tally_stripe_sync *ss, int *marked, int *failed,
		  tally_error *err)
{
	sig_slot **pp = &ss->inflight;
	int rc = 0;

	while (*pp != NULL) {
		sig_slot *s = *pp;

		if (s->state == 0) {
			pp = &s->next;
			continue;
		}
		if (s->state > 0) {
			rc = ex(ss, NULL, err,
				"UPDATE billing_signals_outbox SET "
				"published_at = now() WHERE tenant_id = "
				"$1::uuid AND signal_id = $2::uuid AND "
				"published_at IS NULL", 2, s->tenant_id,
				s->signal_id);
			if (rc != 0)
				return rc;
			(*marked)++;
		} else {
			ss->signals_failed++;
			(*failed)++;
			tally_log(TALLY_WARN, "stripe.signal_not_delivered",
				  TALLY_KV_STR("signal_id", s->signal_id),
				  TALLY_KV_STR("error", rd_kafka_err2str(
						       s->kerr)));
		}
		*pp = s->next;
		ss->ninflight--;
		free(s);
	}
	return 0;
}

int tally_stripe_sync_publish(tally_stripe_sync *ss, rd_kafka_t *producer,
			      const char *topic, int *n, tally_error *err)
{
	PGresult *res = NULL;
	sbuf_t skip = { 0 };
	sig_slot *s;
	int rc, i, rows, marked = 0, failed = 0;
	int64_t deadline;

	if (n)
		*n = 0;
	/* reports that arrived since the last call (late ones included) */
	rd_kafka_poll(producer, 0);
	rc = settle(ss, &marked, &failed, err);
	if (rc != 0)
		goto cleanup;
	/* never produce a signal that is still in flight a second time */
	skip_add(&skip, "{");
	for (s = ss->inflight; s != NULL; s = s->next) {
		if (s != ss->inflight)
			skip_add(&skip, ",");
		skip_add(&skip, s->signal_id);
	}
	skip_add(&skip, "}");
	rc = ex(ss, &res, err,
		"SELECT tenant_id::text, signal_id::text, kind, payload::text "
		"FROM billing_signals_outbox WHERE published_at IS NULL "
		"AND signal_id <> ALL ($1::uuid[]) "
		"ORDER BY created_at, signal_id LIMIT 1000", 1, skip.p);
	if (rc != 0)
		goto cleanup;
	rows = PQntuples(res);
	for (i = 0; i < rows; i++) {
		const char *tid = PQgetvalue(res, i, 0);
		const char *val = PQgetvalue(res, i, 3);
		rd_kafka_resp_err_t ke;

		s = tally_xcalloc(1, sizeof(*s));
		s->magic = SLOT_MAGIC;
		cpy(s->tenant_id, sizeof(s->tenant_id), tid);
		cpy(s->signal_id, sizeof(s->signal_id), PQgetvalue(res, i, 1));
		ke = rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(topic),
			RD_KAFKA_V_KEY(tid, strlen(tid)),
			RD_KAFKA_V_VALUE((void *)val, strlen(val)),
			RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			RD_KAFKA_V_OPAQUE(s),
			RD_KAFKA_V_HEADER("content-type", "application/json",
					  -1),
			RD_KAFKA_V_HEADER("signal-id", s->signal_id, -1),
			RD_KAFKA_V_HEADER("signal-kind", PQgetvalue(res, i, 2),
					  -1),
			RD_KAFKA_V_END);
		if (ke != RD_KAFKA_RESP_ERR_NO_ERROR) {
			free(s);
			rc = tally_error_set(err, TALLY_ETRANSIENT,
					     "signals: produce: %s",
					     rd_kafka_err2str(ke));
			break;
		}
		s->next = ss->inflight; /* now owned by the in-flight list */
		ss->inflight = s;
		ss->ninflight++;
	}
	/* wait for the delivery reports of everything in flight */
	deadline = tally_mono_ns() + (int64_t)ss->publish_wait_ms * 1000000;
	for (;;) {
		bool pending = false;

		for (s = ss->inflight; s != NULL && !pending; s = s->next)
			pending = s->state == 0;
		if (!pending || tally_mono_ns() >= deadline)
			break;
		rd_kafka_poll(producer, 50);
	}
	{
		int rc2 = settle(ss, &marked, &failed,
				 rc == 0 ? err : NULL);

		if (rc == 0)
			rc = rc2;
	}
	if (rc == 0 && (failed > 0 || ss->ninflight > 0))
		rc = tally_error_set(err, TALLY_ETRANSIENT,
				     "signals: %d deliveries failed, %d not "
				     "confirmed yet", failed, ss->ninflight);
cleanup:
	if (n)
		*n = marked;
	free(skip.p);
	PQclear(res);
	return rc;
}

int tally_stripe_sync_signals_in_flight(const tally_stripe_sync *ss)
{
	return ss->ninflight;
}
