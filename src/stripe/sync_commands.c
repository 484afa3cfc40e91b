/*
 * sync_commands.c - billing commands: the billing_commands row (dedupe and
 * outcome), Stripe steps recorded once per (command, step) in
 * stripe_requests, the customer and the dispatch by command type.
 */
#define _POSIX_C_SOURCE 200809L
#include "stripe/sync_int.h"
#include "tally/event.h"
#include "tally/log.h"
#include "tally/tenant_admin.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

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

const char *tally_ss__proration_name(tally_proration p)
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
int tally_ss__cmd_fail(ss_cmd *c, const char *code, const char *msg,
		    tally_error *err)
{
	ss_numbuf hs;
	const tally_stripe_error *se = &c->se;

	tally_log(TALLY_WARN, "stripe.command_failed",
		  TALLY_KV_STR("command_id", c->id),
		  TALLY_KV_STR("tenant_id", c->tenant_id),
		  TALLY_KV_STR("type", se->type),
		  TALLY_KV_STR("code", code ? code : se->code),
		  TALLY_KV_INT("http_status", se->http_status));
	return tally_ss__ex(c->ss, NULL, err,
		  "UPDATE billing_commands SET status = 'failed', "
		  "error_type = nullif($3, ''), error_code = nullif($4, ''), "
		  "error_message = $5, error_param = nullif($6, ''), "
		  "http_status = nullif($7, '0')::integer, "
		  "stripe_request_id = nullif($8, ''), completed_at = now() "
		  "WHERE tenant_id = $1 AND command_id = $2", 8, c->tenant_id,
		  c->id, code ? "tally_error" : se->type,
		  code ? code : se->code, msg ? msg : se->message, se->param,
		  tally_ss__i64s(hs, se->http_status), se->request_id);
}

/* cmd_fail for a final failure found by tally: 1 (done) or an error. */
int tally_ss__fail_done(ss_cmd *c, const char *code, const char *msg,
		     tally_error *err)
{
	int rc = tally_ss__cmd_fail(c, code, msg, err);

	return rc != 0 ? rc : 1;
}

/* A Stripe call's error: final ones are recorded, transient ones returned. */
int tally_ss__cmd_stripe_error(ss_cmd *c, int rc, tally_error *err)
{
	/* a rejected API key is tally's configuration, not the command:
	 * keep it pending (retried) instead of failing every command */
	if (rc == TALLY_EINVALID && c->se.http_status == 401)
		return TALLY_ETRANSIENT;
	if (rc == TALLY_EINVALID || rc == TALLY_ENOTFOUND) {
		int rc2 = tally_ss__cmd_fail(c, NULL, NULL, err);

		return rc2 != 0 ? rc2 : 1; /* 1: done, failed */
	}
	return rc;
}

/* A step's Idempotency-Key: the command's recorded base key + "-step". */
void tally_ss__cmd_key(const ss_cmd *c, const char *step, char key[256])
{
	if (snprintf(key, 256, "%s-%s", c->base_key, step) >= 256)
		tally_stripe_idempotency_key(key, "cmd", c->base_key, step);
}

/*
 * POST once per (command, step): if stripe_requests already holds the
 * object this step produced, GET it (lookup by recorded id) instead of
 * creating it again; otherwise POST with the derived Idempotency-Key and
 * record the object id as soon as Stripe answers.
 * @return 0 (*out set), 1 (failed and recorded), or an error
 */
int tally_ss__step_post(ss_cmd *c, const char *step, const char *method,
		     const char *path, const json_t *params,
		     const char *get_prefix, json_t **out, tally_error *err)
{
	tally_stripe_sync *ss = c->ss;
	PGresult *res = NULL;
	char key[256], getpath[400];
	ss_numbuf hs;
	int rc;

	*out = NULL;
	tally_ss__cmd_key(c, step, key);
	rc = tally_ss__ex(ss, &res, err,
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
			rc = tally_ss__cmd_stripe_error(c, rc, err);
		goto cleanup;
	}
	PQclear(res);
	res = NULL;
	rc = tally_ss__ex(ss, NULL, err,
		"INSERT INTO stripe_requests (tenant_id, idempotency_key, "
		"command_id, method, path) VALUES ($1, $2, $3, $4, $5) "
		"ON CONFLICT DO NOTHING", 5, c->tenant_id, key, c->id, method,
		path);
	if (rc != 0)
		goto cleanup;
	rc = tally_stripe_request(ss->stripe, out, method, path, params, key,
				  &c->se, err);
	if (rc != 0) {
		rc = tally_ss__cmd_stripe_error(c, rc, err);
		goto cleanup;
	}
	rc = tally_ss__ex(
	    ss, NULL, err,
	    "UPDATE stripe_requests SET object_id = $3, http_status = "
	    "$4::integer, stripe_request_id = nullif($5, ''), "
	    "completed_at = now() WHERE tenant_id = $1 AND "
	    "idempotency_key = $2",
	    5, c->tenant_id, key, tally_stripe_jstr(*out, "id"),
	    tally_ss__i64s(hs, c->se.http_status), c->se.request_id);
cleanup:
	PQclear(res);
	if (rc != 0) {
		json_decref(*out);
		*out = NULL;
	}
	return rc;
}

/* Whether this command already recorded an object for step. */
int tally_ss__step_done(ss_cmd *c, const char *step, bool *done,
		     tally_error *err)
{
	PGresult *res = NULL;
	char key[256];
	int rc;

	tally_ss__cmd_key(c, step, key);
	rc = tally_ss__ex(c->ss, &res, err,
		"SELECT 1 FROM stripe_requests WHERE tenant_id = $1 AND "
		"idempotency_key = $2 AND object_id IS NOT NULL", 2,
		c->tenant_id, key);
	*done = rc == 0 && PQntuples(res) == 1;
	PQclear(res);
	return rc;
}

int tally_ss__ensure_customer(ss_cmd *c, tally_error *err)
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
			return tally_ss__cmd_stripe_error(c, rc, err);
	}
	p = json_pack("{s:s, s:{s:s, s:s}}", "name",
		      c->name[0] ? c->name : c->t.name, "metadata",
		      "tenant_id", c->tenant_id, "slug", c->t.slug);
	/* the command's email, else the tenant's billing email */
	if (c->email[0] || c->t.email[0])
		json_object_set_new(p, "email", json_string(
			c->email[0] ? c->email : c->t.email));
	rc = tally_ss__step_post(c, "customer", "POST", "/v1/customers", p,
		       "/v1/customers/", &cus, err);
	json_decref(p);
	if (rc != 0)
		return rc;
	tally_ss__cpy(c->t.customer, sizeof(c->t.customer),
	    tally_stripe_jstr(cus, "id"));
	json_decref(cus);
	return tally_ss__ex(c->ss, NULL, err,
		  "UPDATE tenants SET stripe_customer_id = $2, updated_at = "
		  "now() WHERE id = $1", 2, c->tenant_id, c->t.customer);
}

/* Mirror a subscription the API returned (as of now) onto the tenant,
 * its discounts read expanded when the answer names them by id. */
int tally_ss__adopt_subscription(ss_cmd *c, const json_t *answer,
			      tally_error *err)
{
	json_t *sub = json_deep_copy(answer);
	bool applied;
	int rc;

	if (sub == NULL)
		return tally_error_set(err, TALLY_ERROR, "out of memory");
	rc = tally_ss__expand_sub_discounts(c->ss, sub, NULL, err);
	if (rc == 0)
		rc = tally_ss__mirror_subscription(
		    c->ss, &c->t, sub, tally_ss__now_ms(c->ss) / 1000,
		    API_READ_RANK, NULL, &applied, err);
	json_decref(sub);
	if (rc == 0 && !applied)
		tally_log(TALLY_DEBUG, "stripe.subscription_stale",
			  TALLY_KV_STR("command_id", c->id));
	return rc;
}

/* The command's billing_commands row: inserted, or its attempts counted.
 * @return 0 (pending: run it), TALLY_EDUPLICATE (done before) or an error */
static int record_command(ss_cmd *c, const char *tname, tally_error *err)
{
	const tally_command *cmd = c->cmd;
	PGresult *res = NULL;
	json_t *payload;
	char key[256], *ptext;
	ss_numbuf tms;
	int rc;

	{
		/* command ids are unique per tenant only: the key names both */
		char tid[sizeof(c->tenant_id) + sizeof(c->id) + 1];

		snprintf(tid, sizeof(tid), "%s-%s", c->tenant_id, c->id);
		tally_stripe_idempotency_key(key, "cmd", tid, "");
		key[strlen(key) - 1] = '\0'; /* base key, without the step */
	}
	payload = json_pack("{s:s, s:I}", "type", tname, "time",
			    (json_int_t)cmd->time_ms);
	if (c->plan[0])
		json_object_set_new(payload, "plan", json_string(c->plan));
	if (cmd->trial_days >= 0)
		json_object_set_new(payload, "trial_days",
				    json_integer(cmd->trial_days));
	if (c->pm[0])
		json_object_set_new(payload, "payment_method_id",
				    json_string(c->pm));
	if (cmd->type == TALLY_CMD_CHANGE_PLAN)
		json_object_set_new(payload, "proration",
			json_string(tally_ss__proration_name(cmd->proration)));
	if (cmd->has_at_period_end)
		json_object_set_new(payload, "at_period_end",
				    json_boolean(cmd->at_period_end));
	ptext = json_dumps(payload, JSON_COMPACT | JSON_SORT_KEYS);
	rc = tally_ss__ex(c->ss, &res, err,
		"INSERT INTO billing_commands AS b (tenant_id, command_id, "
		"type, idempotency_key, payload, command_time) VALUES ($1, $2,"
		" $3, $4, $5::jsonb, to_timestamp($6::bigint / 1000.0)) "
		"ON CONFLICT (tenant_id, command_id) DO UPDATE SET "
		"attempts = b.attempts + 1 "
		"RETURNING status, attempts, idempotency_key", 6,
		c->tenant_id, c->id, tname, key, ptext,
		tally_ss__i64s(tms, cmd->time_ms));
	/* a command recorded earlier keeps the key it was first sent with */
	if (rc == 0)
		tally_ss__cpy(c->base_key, sizeof(c->base_key),
			      PQgetvalue(res, 0, 2));
	if (rc == 0 && strcmp(PQgetvalue(res, 0, 0), "pending") != 0) {
		rc = TALLY_EDUPLICATE;
		tally_log(TALLY_INFO, "stripe.command_duplicate",
			  TALLY_KV_STR("command_id", c->id),
			  TALLY_KV_STR("status", PQgetvalue(res, 0, 0)));
	}
	PQclear(res);
	free(ptext);
	json_decref(payload);
	return rc;
}

/* Run the command's Stripe steps. @return 0, 1 (failed, recorded), error */
static int run_command(ss_cmd *c, tally_error *err)
{
	int rc;

	switch (c->cmd->type) {
	case TALLY_CMD_CREATE_CUSTOMER:
		rc = tally_ss__ensure_customer(c, err);
		if (rc == 0) {
			tally_ss__cpy(c->object_id, sizeof(c->object_id),
				      c->t.customer);
			c->result = json_pack("{s:s}", "customer_id",
					      c->t.customer);
		}
		return rc;
	case TALLY_CMD_CREATE_SUBSCRIPTION:
		return tally_ss__do_create_subscription(c, err);
	case TALLY_CMD_CHANGE_PLAN:
		return tally_ss__do_change_plan(c, err);
	case TALLY_CMD_CANCEL_SUBSCRIPTION:
		return tally_ss__do_cancel(c, err);
	case TALLY_CMD_SYNC_TENANT:
		return tally_ss__do_sync_tenant(c, err);
	default:
		return TALLY_EINVALID;
	}
}

static int record_success(ss_cmd *c, const char *tname, tally_error *err)
{
	char *rtext = c->result ? json_dumps(c->result, JSON_COMPACT |
						       JSON_SORT_KEYS)
				: NULL;
	int rc = tally_ss__ex(c->ss, NULL, err,
		"UPDATE billing_commands SET status = 'succeeded', "
		"stripe_object_id = nullif($3, ''), result = $4::jsonb, "
		"stripe_request_id = nullif($5, ''), completed_at = now() "
		"WHERE tenant_id = $1 AND command_id = $2", 5, c->tenant_id,
		c->id, c->object_id, rtext, c->se.request_id);

	if (rc == 0)
		tally_log(TALLY_INFO, "stripe.command_done",
			  TALLY_KV_STR("command_id", c->id),
			  TALLY_KV_STR("type", tname),
			  TALLY_KV_STR("tenant_id", c->tenant_id));
	free(rtext);
	return rc;
}

/* A provisioning command: PostgreSQL only (tally/tenant_admin.h). */
static int tenant_command(tally_stripe_sync *ss, const tally_command *cmd,
			  tally_error *err)
{
	tally_tenant_spec s;
	tally_tenant_outcome o;
	char buf[4096], reason[160];
	int rc;

	if (tally_tenant_spec_of_command(&s, cmd, buf, sizeof(buf)) != 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "command: not a provisioning command");
	snprintf(reason, sizeof(reason), "command %s", s.command_id);
	rc = tally_tenant_run(ss->pg, &s, "billing.commands", reason, &o, err);
	if (rc == 0 && o.duplicate)
		return TALLY_EDUPLICATE;
	return rc;
}

int tally_stripe_sync_command(tally_stripe_sync *ss, const tally_command *cmd,
			      tally_error *err)
{
	ss_cmd c;
	const char *tname = cmd_type_name(cmd->type);
	int rc;

	if (cmd->type >= TALLY_CMD_CREATE_TENANT &&
	    cmd->type <= TALLY_CMD_RESUME_TENANT)
		return tenant_command(ss, cmd, err);
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
	{
		char why[200];

		/* the steps run in statements of their own: the reason is
		 * the session's until the command is done */
		snprintf(why, sizeof(why), "command %s", c.id);
		rc = tally_ss__audit_why(ss, "billing.commands", why, false,
					 err);
	}
	if (rc == 0)
		rc = record_command(&c, tname, err);
	if (rc != 0)
		goto cleanup;
	rc = tally_ss__tenant_load(ss, &c.t, "WHERE t.id = $1::uuid",
				   c.tenant_id, false, err);
	if (rc != 0)
		goto cleanup;
	if (!c.t.found) {
		rc = tally_ss__cmd_fail(&c, "unknown_tenant",
					"tenant not found", err);
		goto cleanup;
	}
	if (ss->stripe == NULL) {
		rc = tally_error_set(err, TALLY_ETRANSIENT,
				     "command: no Stripe client");
		goto cleanup;
	}
	rc = run_command(&c, err);
	if (rc == 1) /* failed, already recorded */
		rc = 0;
	else if (rc == 0)
		rc = record_success(&c, tname, err);
cleanup:
	json_decref(c.result);
	{
		tally_error e2;

		/* a failure here leaves a stale reason on a connection that
		 * is itself failing; the next command sets its own */
		if (tally_ss__audit_why(ss, "", "", false, &e2) != 0)
			tally_log(TALLY_DEBUG, "stripe.audit_reset_failed",
				  TALLY_KV_STR("error", e2.msg));
	}
	return rc;
}
