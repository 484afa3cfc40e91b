/*
 * sync_int.h - what the files of the Stripe sync (tally_stripe_sync) share:
 * its state, the tenant row, a decoded subscription, one webhook event and
 * one billing command in progress, and the functions one file offers the
 * others (prefix tally_ss__).
 */
#ifndef TALLY_STRIPE_SYNC_INT_H
#define TALLY_STRIPE_SYNC_INT_H

#include "tally/plan_setup.h"
#include "tally/stripe_sync.h"

#include <jansson.h>
#include <libpq-fe.h>

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
	struct tally_outbox *signals;   /* made by the first publish */
	rd_kafka_t *signals_producer;   /* borrowed: the one it publishes with */
	char *signals_topic;
	size_t signals_failed;          /* failures counted by the last publish */
	tally_plan_prices *plan_prices; /* from `tally stripe setup` */
};

#define MAXP 32
/* as_of_rank of an object read from the API (command answers, reconcile):
 * above every event rank of the same second */
#define API_READ_RANK 9

typedef char ss_numbuf[24];

/* A tenant row (sync_tenants.c). */
typedef struct ss_tenant {
	bool found;
	char id[37];
	char name[256];
	char slug[128];
	char status[24];
	char plan[64];
	int rank;
	char customer[256];
	char subscription[256];
	char email[260];        /* billing_email, "" when none */
} ss_tenant;

/* The fields of a Stripe subscription the mirror stores; p* point into the
 * number buffers, or are NULL when absent (sync_subscriptions.c). */
typedef struct ss_sub_view {
	const char *id, *customer, *status, *price, *item, *plan;
	ss_numbuf qty, cps, cpe, ts, te, cancel_at, canceled_at, ended_at,
		created;
	const char *pqty, *pcps, *pcpe, *pts, *pte, *pcancel_at,
		*pcanceled_at, *pended_at, *pcreated;
	bool cancel_at_period_end;
	int64_t cpe_s;
} ss_sub_view;

/* One webhook event being applied (sync_events.c). */
typedef struct ss_event {
	tally_stripe_sync *ss;
	json_t *ev;
	const json_t *obj;
	json_t *lines; /* all invoice lines when the event's were paged */
	const char *id, *type, *object;
	int64_t created;
	tally_stripe_family family;
	const char *outcome;
	char tenant_id[37];
	/* a dispute's charge as fetched from Stripe (fallback) */
	char charge_customer[256];
	char charge_tenant[37];
} ss_event;

/* One billing command being run (sync_commands.c). */
typedef struct ss_cmd {
	tally_stripe_sync *ss;
	const tally_command *cmd;
	char id[160];
	char tenant_id[37];
	char plan[TALLY_PLAN_MAX + 1];
	char pm[260];
	char email[260];
	char name[260];
	ss_tenant t;
	tally_stripe_error se;
	json_t *result; /* owned */
	char object_id[256];
	/* billing_commands.idempotency_key: each step's key is it + "-step" */
	char base_key[256];
} ss_cmd;

void tally_ss__cmd_key(const ss_cmd *c, const char *step, char key[256]);

/* helpers and config (stripe_sync.c) */
void tally_ss__cpy(char *dst, size_t size, const char *src);
int64_t tally_ss__now_ms(tally_stripe_sync *ss);
/* Run sql with n text parameters given as const char * varargs. */
int tally_ss__ex(tally_stripe_sync *ss, PGresult **out, tally_error *err,
		 const char *sql, int n, ...);
const char *tally_ss__i64s(ss_numbuf b, int64_t v);
/* The audit trail's source and reason (tally.audit_source/_reason) for
 * what follows: transaction-local, or for the session ("" clears). */
int tally_ss__audit_why(tally_stripe_sync *ss, const char *source,
			const char *reason, bool local, tally_error *err);
/* Integer field as text, or NULL (SQL NULL) when absent/null. */
const char *tally_ss__jnum(ss_numbuf b, const json_t *o, const char *k);
int64_t tally_ss__to_i64(const char *s);
const json_t *tally_ss__jpath(const json_t *o, const char *a,
			      const char *b);
const char *tally_ss__jpstr(const json_t *o, const char *a, const char *b);
/* The configured Stripe price of a plan ("" when none) and back. */
const char *tally_ss__price_for_plan(tally_stripe_sync *ss,
				     const char *plan);
const char *tally_ss__plan_for_price(tally_stripe_sync *ss,
				     const char *price);

/* tenants (sync_tenants.c) */
/* where: "WHERE t.id = $1" etc. lock: append FOR UPDATE OF t. */
int tally_ss__tenant_load(tally_stripe_sync *ss, ss_tenant *t,
			  const char *where, const char *arg, bool lock,
			  tally_error *err);
int tally_ss__rank_of(tally_stripe_sync *ss, const char *plan, int *out,
		      tally_error *err);
/* Move a tenant to status `to`, once per (cause, to), and signal it. */
int tally_ss__transition(tally_stripe_sync *ss, ss_tenant *t, const char *to,
			 const char *reason, const char *cause, int64_t at_s,
			 tally_error *err);
/* Open invoices whose payment failed and that are still unpaid. */
int tally_ss__failed_open_invoices(tally_stripe_sync *ss,
				   const char *tenant_id, const char *except,
				   int64_t *n, tally_error *err);

/* signals outbox (sync_signals.c); fields is stolen */
int tally_ss__signal_emit(tally_stripe_sync *ss, const char *tenant_id,
			  const char *kind, const char *cause, int64_t time_s,
			  json_t *fields, tally_error *err);

/* subscriptions mirror (sync_subscriptions.c) */
void tally_ss__sub_view_of(tally_stripe_sync *ss, ss_sub_view *v,
			   const json_t *sub);
int tally_ss__mirror_subscription(tally_stripe_sync *ss, ss_tenant *t,
				  const json_t *sub, int64_t as_of, int rank,
				  const char *event_id, bool *applied,
				  tally_error *err);
/* Record a subscription version with its items and discounts for
 * finance, once, whether or not it is the newest (sync_sub_versions.c). */
int tally_ss__record_sub_version(tally_stripe_sync *ss, const ss_tenant *t,
				 const json_t *sub, int64_t as_of, int rank,
				 tally_error *err);
/* Before the transaction: the objects of the discounts sub names only by
 * id, read from Stripe (sync_sub_versions.c); event_id NULL for an API
 * answer. */
int tally_ss__expand_sub_discounts(tally_stripe_sync *ss, json_t *sub,
				   const char *event_id, tally_error *err);
/* A customer.subscription.* event for tenant t. */
int tally_ss__subscription_event(ss_event *x, ss_tenant *t, bool *applied,
				 tally_error *err);

/* invoices mirror (sync_invoices.c) */
int tally_ss__close_period(tally_stripe_sync *ss, const ss_tenant *t,
			   const json_t *inv, const char *invoice_id,
			   tally_error *err);
int tally_ss__mirror_invoice(tally_stripe_sync *ss, ss_tenant *t,
			     const json_t *inv, int64_t as_of, int rank,
			     const char *event_id, bool failed_event,
			     const json_t *all_lines, bool *applied,
			     tally_error *err);
/* An invoice.* event for tenant t (invoice.upcoming: "ignored"). */
int tally_ss__invoice_event(ss_event *x, ss_tenant *t, bool *applied,
			    tally_error *err);

/* dunning (sync_dunning.c): reaction to a newer invoice version */
int tally_ss__invoice_dunning(tally_stripe_sync *ss, ss_tenant *t,
			      const json_t *inv, const char *type,
			      int64_t as_of, const char *event_id,
			      tally_error *err);

/* payments mirror (sync_payments.c) */
int tally_ss__mirror_payment(tally_stripe_sync *ss, ss_tenant *t,
			     const json_t *o, const char *object,
			     const char *type, int64_t as_of,
			     const char *event_id, bool *applied,
			     tally_error *err);
/* A payment_intent.* or charge.* event (disputes included) for tenant t. */
int tally_ss__payment_event(ss_event *x, ss_tenant *t, bool *applied,
			    tally_error *err);
/* Before the transaction: a dispute's charge from Stripe when unknown. */
int tally_ss__dispute_charge(ss_event *x, tally_error *err);

/* commands (sync_commands.c) */
const char *tally_ss__proration_name(tally_proration p);
/* Record a final failure; fail_done returns 1 (done) or an error. */
int tally_ss__cmd_fail(ss_cmd *c, const char *code, const char *msg,
		       tally_error *err);
int tally_ss__fail_done(ss_cmd *c, const char *code, const char *msg,
			tally_error *err);
/* A Stripe call's error: final ones recorded (1), transient returned. */
int tally_ss__cmd_stripe_error(ss_cmd *c, int rc, tally_error *err);
/* POST once per (command, step). @return 0 (*out set), 1, or an error */
int tally_ss__step_post(ss_cmd *c, const char *step, const char *method,
			const char *path, const json_t *params,
			const char *get_prefix, json_t **out,
			tally_error *err);
int tally_ss__step_done(ss_cmd *c, const char *step, bool *done,
			tally_error *err);
int tally_ss__ensure_customer(ss_cmd *c, tally_error *err);
int tally_ss__adopt_subscription(ss_cmd *c, const json_t *sub,
				 tally_error *err);

/* subscription commands (sync_subscription_commands.c) */
int tally_ss__do_create_subscription(ss_cmd *c, tally_error *err);
int tally_ss__do_change_plan(ss_cmd *c, tally_error *err);
int tally_ss__do_cancel(ss_cmd *c, tally_error *err);
int tally_ss__do_sync_tenant(ss_cmd *c, tally_error *err);

#endif /* TALLY_STRIPE_SYNC_INT_H */
