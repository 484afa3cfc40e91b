/*
 * tenant_admin.c - provisioning in PostgreSQL (tally/tenant_admin.h): the
 * billing_commands row, the checks that need the database, the tenant
 * change and the outcome, in one transaction.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/tenant_admin.h"
#include "tally/log.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct run_ctx {
	const tally_tenant_spec *s;
	const char *source, *reason;
	tally_tenant_outcome *out;
	char budget[32];           /* canonical, "" = not given */
	tally_tenant_reject pre;   /* refusal of the pure rules, if any */
	bool refused_early;
} run_ctx;

static const char *opt(const char *s)
{
	return s != NULL && s[0] != '\0' ? s : NULL;
}

/* Set out to a refusal (recorded by finish()). */
__attribute__((format(printf, 3, 4)))
static int refuse(run_ctx *x, const char *code, const char *fmt, ...)
{
	va_list ap;

	x->out->succeeded = false;
	snprintf(x->out->code, sizeof(x->out->code), "%s", code);
	va_start(ap, fmt);
	vsnprintf(x->out->message, sizeof(x->out->message), fmt, ap);
	va_end(ap);
	return 0;
}

/* The billing_commands row. Payload: what is not personal data (the
 * tenant row holds names and addresses, where erasure finds them).
 * @return 0 (new: run it), 1 (ran before: outcome filled), or an error */
static int record(tally_pg *pg, run_ctx *x, tally_error *err)
{
	const tally_tenant_spec *s = x->s;
	json_t *payload = json_object();
	char *ptext;
	PGresult *res = NULL;
	const char *p[5];
	int rc;

	if (opt(s->plan))
		json_object_set_new(payload, "plan", json_string(s->plan));
	if (x->budget[0])
		json_object_set_new(payload, "budget", json_string(x->budget));
	if (s->kind == TALLY_TENANT_CREATE && s->trial_days >= 0)
		json_object_set_new(payload, "trial_days",
				    json_integer(s->trial_days));
	json_object_set_new(payload, "source", json_string(x->source));
	ptext = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS);
	json_decref(payload);
	p[0] = s->tenant_id;
	p[1] = s->command_id;
	p[2] = tally_tenant_op_name(s->kind);
	p[3] = ptext;
	rc = tally_pg_exec(pg, &res,
		"INSERT INTO billing_commands (tenant_id, command_id, type, "
		"idempotency_key, payload, command_time, attempts) VALUES "
		"($1::uuid, $2, $3, 'tenant-' || $2, $4::jsonb, now(), 1) "
		"ON CONFLICT (tenant_id, command_id) DO NOTHING RETURNING 1",
		4, p, err);
	free(ptext);
	if (rc != 0 || PQntuples(res) == 1) {
		PQclear(res);
		return rc;
	}
	PQclear(res);
	rc = tally_pg_exec(pg, &res,
		"SELECT b.status, coalesce(b.error_code, ''), "
		"coalesce(b.error_message, ''), coalesce(t.status, '') "
		"FROM billing_commands b LEFT JOIN tenants t ON t.id = "
		"b.tenant_id WHERE b.tenant_id = $1::uuid AND "
		"b.command_id = $2", 2, p, err);
	if (rc == 0 && PQntuples(res) == 1) {
		x->out->duplicate = true;
		x->out->succeeded =
			strcmp(PQgetvalue(res, 0, 0), "succeeded") == 0;
		snprintf(x->out->code, sizeof(x->out->code), "%s",
			 PQgetvalue(res, 0, 1));
		snprintf(x->out->message, sizeof(x->out->message), "%s",
			 PQgetvalue(res, 0, 2));
		snprintf(x->out->status, sizeof(x->out->status), "%s",
			 PQgetvalue(res, 0, 3));
		rc = 1;
	}
	PQclear(res);
	return rc;
}

/* The tenant's status and whether it has a subscription, locked.
 * @return 0, 1 (no such tenant: refused) or an error */
static int load(tally_pg *pg, run_ctx *x, char *plan, size_t plansize,
		bool *subscribed, tally_error *err)
{
	PGresult *res = NULL;
	const char *p[1] = { x->s->tenant_id };
	int rc;

	x->out->status[0] = '\0';
	rc = tally_pg_exec(pg, &res,
		"SELECT status, subscription_plan, "
		"stripe_subscription_id IS NOT NULL FROM tenants "
		"WHERE id = $1::uuid FOR UPDATE", 1, p, err);
	if (rc == 0 && PQntuples(res) == 1) {
		snprintf(x->out->status, sizeof(x->out->status), "%s",
			 PQgetvalue(res, 0, 0));
		snprintf(plan, plansize, "%s", PQgetvalue(res, 0, 1));
		*subscribed = strcmp(PQgetvalue(res, 0, 2), "t") == 0;
	}
	PQclear(res);
	if (rc == 0 && !x->out->status[0]) {
		refuse(x, "unknown_tenant", "tenant %s not found",
		       x->s->tenant_id);
		rc = 1;
	}
	return rc;
}

/* One-row probe: 1 when sql returns a row, 0 when not, or an error. */
static int exists(tally_pg *pg, const char *sql, int n, const char **p,
		  tally_error *err)
{
	PGresult *res = NULL;
	int rc = tally_pg_exec(pg, &res, sql, n, p, err);

	if (rc == 0)
		rc = PQntuples(res) > 0;
	PQclear(res);
	return rc;
}

/* @return 0 (the plan exists), 1 (refused: unknown_plan) or an error */
static int plan_known(tally_pg *pg, run_ctx *x, const char *plan,
		      tally_error *err)
{
	const char *p[1] = { plan };
	int rc = exists(pg, "SELECT 1 FROM plans WHERE id = $1", 1, p, err);

	if (rc == 0)
		refuse(x, "unknown_plan", "plan %s is not in plans", plan);
	return rc < 0 ? rc : !rc;
}

static int create(tally_pg *pg, run_ctx *x, tally_error *err)
{
	const tally_tenant_spec *s = x->s;
	char trial[24];
	const char *p[8];
	int rc;

	p[0] = s->tenant_id;
	rc = exists(pg, "SELECT 1 FROM tenants WHERE id = $1::uuid", 1, p,
		    err);
	if (rc != 0)
		return rc < 0 ? rc
			      : refuse(x, "tenant_exists",
				       "tenant %s exists already", s->tenant_id);
	rc = plan_known(pg, x, s->plan, err);
	if (rc != 0)
		return rc < 0 ? rc : 0;
	p[0] = s->slug;
	rc = exists(pg, "SELECT 1 FROM tenants WHERE slug = $1", 1, p, err);
	if (rc != 0)
		return rc < 0 ? rc : refuse(x, "duplicate_slug",
					    "slug %s is taken", s->slug);
	p[0] = s->domain;
	rc = exists(pg, "SELECT 1 FROM tenants WHERE domain = $1", 1, p, err);
	if (rc != 0)
		return rc < 0 ? rc : refuse(x, "duplicate_domain",
					    "domain %s is taken", s->domain);
	snprintf(trial, sizeof(trial), "%" PRId64,
		 s->trial_days > 0 ? s->trial_days : 0);
	p[0] = s->tenant_id;
	p[1] = s->name;
	p[2] = s->slug;
	p[3] = s->domain;
	p[4] = s->plan;
	p[5] = s->email;
	p[6] = opt(x->budget);
	p[7] = trial;
	rc = tally_pg_exec_script(pg, "SAVEPOINT tenant_insert", err);
	if (rc != 0)
		return rc;
	rc = tally_pg_exec(pg, NULL,
		"INSERT INTO tenants (id, name, slug, domain, "
		"subscription_plan, billing_email, currency, max_users, "
		"max_workflows, max_ai_requests_per_month, monthly_budget, "
		"trial_end, status) SELECT $1::uuid, $2, $3, $4, p.id, $6, "
		"p.currency, coalesce(p.max_users, -1), "
		"coalesce(p.max_workflows, -1), p.max_ai_requests_per_month, "
		"coalesce($7::numeric, p.monthly_price), CASE WHEN $8::int > 0 "
		"THEN now() + make_interval(days => $8::int) END, CASE WHEN "
		"$8::int > 0 THEN 'trialing' ELSE 'active' END "
		"FROM plans p WHERE p.id = $5", 8, p, err);
	/* a slug or domain taken since the checks (unique_violation): run
	 * again, the checks then refuse it; any other refused row is final
	 * and recorded (the SQLSTATE only: the message may quote the row) */
	if (rc == TALLY_EINVALID &&
	    strncmp(err->msg, "postgres 23505", 14) == 0)
		return TALLY_ETRANSIENT;
	if (rc == TALLY_EINVALID) {
		char st[6] = "";

		if (strncmp(err->msg, "postgres ", 9) == 0)
			snprintf(st, sizeof(st), "%.5s", err->msg + 9);
		rc = tally_pg_exec_script(pg, "ROLLBACK TO SAVEPOINT "
					  "tenant_insert", err);
		return rc != 0 ? rc : refuse(x, "invalid_tenant",
			"the tenants row was refused (SQLSTATE %s)", st);
	}
	if (rc == 0)
		snprintf(x->out->status, sizeof(x->out->status), "%s",
			 s->trial_days > 0 ? "trialing" : "active");
	return rc;
}

static int update(tally_pg *pg, run_ctx *x, tally_error *err)
{
	const tally_tenant_spec *s = x->s;
	char plan[TALLY_PLAN_MAX + 1] = "";
	bool subscribed = false;
	const char *p[3];
	int rc = load(pg, x, plan, sizeof(plan), &subscribed, err);

	if (rc != 0)
		return rc < 0 ? rc : 0;
	if (opt(s->plan) && strcmp(s->plan, plan) != 0) {
		rc = plan_known(pg, x, s->plan, err);
		if (rc != 0)
			return rc < 0 ? rc : 0;
		if (subscribed)
			return refuse(x, "has_subscription",
				      "%s: the plan of a subscribed tenant "
				      "changes through change_plan", s->plan);
	}
	p[0] = s->tenant_id;
	p[1] = opt(s->plan);
	p[2] = opt(x->budget);
	/* a new plan brings its limits and, unless one is given, its price
	 * as the budget (as a plan change through Stripe does) */
	return tally_pg_exec(pg, NULL,
		"UPDATE tenants t SET subscription_plan = p.id, "
		"max_users = CASE WHEN p.id = t.subscription_plan THEN "
		"  t.max_users ELSE coalesce(p.max_users, -1) END, "
		"max_workflows = CASE WHEN p.id = t.subscription_plan THEN "
		"  t.max_workflows ELSE coalesce(p.max_workflows, -1) END, "
		"max_ai_requests_per_month = CASE WHEN p.id = "
		"  t.subscription_plan THEN t.max_ai_requests_per_month "
		"  ELSE p.max_ai_requests_per_month END, "
		"monthly_budget = coalesce($3::numeric, CASE WHEN p.id = "
		"  t.subscription_plan THEN t.monthly_budget "
		"  ELSE p.monthly_price END), updated_at = now() "
		"FROM plans p WHERE t.id = $1::uuid AND "
		"p.id = coalesce($2, t.subscription_plan)", 3, p, err);
}

/* suspend or resume: a tenant already in the asked state is left as is */
static int set_status(tally_pg *pg, run_ctx *x, tally_error *err)
{
	const tally_tenant_spec *s = x->s;
	bool suspend = s->kind == TALLY_TENANT_SUSPEND, subscribed;
	char plan[TALLY_PLAN_MAX + 1];
	PGresult *res = NULL;
	const char *p[2];
	int rc = load(pg, x, plan, sizeof(plan), &subscribed, err);

	if (rc != 0)
		return rc < 0 ? rc : 0;
	if (strcmp(x->out->status, "cancelled") == 0)
		return refuse(x, "cancelled", "tenant %s is cancelled",
			      s->tenant_id);
	if (suspend == (strcmp(x->out->status, "suspended") == 0))
		return 0;
	p[0] = s->tenant_id;
	p[1] = suspend ? "t" : "f";
	rc = tally_pg_exec(pg, &res,
		"UPDATE tenants SET status = CASE WHEN $2::boolean THEN "
		"'suspended' WHEN trial_end > now() THEN 'trialing' ELSE "
		"'active' END, updated_at = now() WHERE id = $1::uuid "
		"RETURNING status", 2, p, err);
	if (rc == 0 && PQntuples(res) == 1)
		snprintf(x->out->status, sizeof(x->out->status), "%s",
			 PQgetvalue(res, 0, 0));
	PQclear(res);
	return rc;
}

/* The outcome on the billing_commands row. */
static int finish(tally_pg *pg, run_ctx *x, tally_error *err)
{
	const char *p[5] = { x->s->tenant_id, x->s->command_id,
			     x->out->succeeded ? "succeeded" : "failed",
			     opt(x->out->code), opt(x->out->message) };
	json_t *r = json_pack("{s:s}", "status", x->out->status);
	char *rtext = json_dumps(r, JSON_COMPACT);
	const char *q[6] = { p[0], p[1], p[2], p[3], p[4], rtext };
	int rc;

	rc = tally_pg_exec(pg, NULL,
		"UPDATE billing_commands SET status = $3, error_type = "
		"CASE WHEN $3 = 'failed' THEN 'tally_error' END, error_code = "
		"$4, error_message = $5, result = CASE WHEN $3 = 'succeeded' "
		"THEN $6::jsonb END, completed_at = now() "
		"WHERE tenant_id = $1::uuid AND command_id = $2", 6, q, err);
	free(rtext);
	json_decref(r);
	return rc;
}

static int run_txn(tally_pg *pg, void *payload, tally_error *err)
{
	run_ctx *x = payload;
	const char *p[2] = { x->source, x->reason };
	int rc;

	memset(x->out, 0, sizeof(*x->out));
	x->out->succeeded = true;
	rc = tally_pg_exec(pg, NULL,
		"SELECT set_config('tally.audit_source', $1, true), "
		"set_config('tally.audit_reason', $2, true)", 2, p, err);
	if (rc == 0)
		rc = record(pg, x, err);
	if (rc != 0)
		return rc == 1 ? 0 : rc;
	if (x->refused_early)
		rc = refuse(x, x->pre.code, "%s", x->pre.message);
	else if (x->s->kind == TALLY_TENANT_CREATE)
		rc = create(pg, x, err);
	else if (x->s->kind == TALLY_TENANT_UPDATE)
		rc = update(pg, x, err);
	else
		rc = set_status(pg, x, err);
	if (rc == 0)
		rc = finish(pg, x, err);
	return rc;
}

int tally_tenant_run(tally_pg *pg, const tally_tenant_spec *spec,
		     const char *source, const char *reason,
		     tally_tenant_outcome *out, tally_error *err)
{
	run_ctx x;
	int rc;

	memset(&x, 0, sizeof(x));
	x.s = spec;
	x.source = source;
	x.reason = reason;
	x.out = out;
	if (tally_tenant_spec_check(spec, x.budget, sizeof(x.budget),
				    &x.pre) != 0) {
		/* without a command id and tenant there is no row to
		 * record the refusal on */
		if (strcmp(x.pre.code, "bad_command_id") == 0 ||
		    strcmp(x.pre.code, "bad_tenant_id") == 0 ||
		    strcmp(x.pre.code, "bad_command") == 0)
			return tally_error_set(err, TALLY_EINVALID, "%s: %s",
					       x.pre.code, x.pre.message);
		x.refused_early = true;
		x.budget[0] = '\0';
	}
	rc = tally_pg_txn(pg, run_txn, &x, 5, err);
	if (rc == 0)
		tally_log(out->succeeded ? TALLY_INFO : TALLY_WARN,
			  out->duplicate ? "tenant.command_duplicate"
					 : "tenant.command_done",
			  TALLY_KV_STR("command_id", spec->command_id),
			  TALLY_KV_STR("tenant_id", spec->tenant_id),
			  TALLY_KV_STR("type", tally_tenant_op_name(spec->kind)),
			  TALLY_KV_STR("outcome", out->succeeded ? "succeeded"
							     : out->code));
	return rc;
}
