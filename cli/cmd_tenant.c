/*
 * cmd_tenant.c - `tally tenant create|update|suspend|resume|show|list`;
 * `export` and `erase` are dispatched to tenant_data.c.
 *
 * The CLI writes to PostgreSQL directly, through the same
 * tally_tenant_run() (tally/tenant_admin.h) that tally-stripe runs for the
 * provisioning commands of billing.commands: one set of rules, one
 * billing_commands row per command id, an answer the operator sees at
 * once. `create --stripe` then queues create_customer and
 * create_subscription on billing.commands for tally-stripe.
 * Exit status: 0 done (or done before), 3 refused (recorded), 2 usage,
 * 1 error.
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"
#include "tally/command.h"
#include "tally/event.h"
#include "tally/tenant_admin.h"
#include "tenant_data.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <uuid/uuid.h>

const char tally_cmd_tenant_help[] =
	"tenants: create | update | suspend | resume | show | list | "
	"export <tenant> --out DIR | erase <tenant> | erase --pending";

static const char usage_text[] =
	"usage: tally tenant create --name N --slug S --domain D --plan P "
	"--email E\n"
	"                           [--budget B] [--trial-days N] [--id CMD]\n"
	"                           [--tenant-id UUID] [--stripe]\n"
	"       tally tenant update TENANT [--plan P] [--budget B] [--id CMD]\n"
	"       tally tenant suspend|resume TENANT [--id CMD]\n"
	"       tally tenant show TENANT\n"
	"       tally tenant list [--status S]\n"
	"       tally tenant export TENANT --out DIR\n"
	"       tally tenant erase TENANT | --pending\n"
	"TENANT is a tenant id or slug; --id makes a retry idempotent.\n";

typedef struct tenant_args {
	tally_tenant_spec spec;
	const char *target, *status, *tenant_id;
	bool stripe;
	char cmd_id[64];
	char tid[37];
	char reason[256];
} tenant_args;

static int usage(void)
{
	fputs(usage_text, stderr);
	return 2;
}

/* Options of argv[2..]; returns 0 or 2 (usage). */
static int parse(tenant_args *a, int argc, char **argv)
{
	tally_tenant_spec *s = &a->spec;
	int i;

	s->trial_days = -1;
	for (i = 2; i < argc; i++) {
		const char *o = argv[i], *v = i + 1 < argc ? argv[i + 1] : NULL;
		const char **slot = NULL;

		if (strcmp(o, "--stripe") == 0) {
			a->stripe = true;
			continue;
		}
		if (o[0] != '-') {
			if (a->target != NULL)
				return usage();
			a->target = o;
			continue;
		}
		if (strcmp(o, "--name") == 0) slot = &s->name;
		else if (strcmp(o, "--slug") == 0) slot = &s->slug;
		else if (strcmp(o, "--domain") == 0) slot = &s->domain;
		else if (strcmp(o, "--plan") == 0) slot = &s->plan;
		else if (strcmp(o, "--email") == 0) slot = &s->email;
		else if (strcmp(o, "--budget") == 0) slot = &s->budget;
		else if (strcmp(o, "--id") == 0) slot = &s->command_id;
		else if (strcmp(o, "--tenant-id") == 0) slot = &a->tenant_id;
		else if (strcmp(o, "--status") == 0) slot = &a->status;
		else if (strcmp(o, "--trial-days") == 0 && v != NULL) {
			if (tally_parse_i64(&s->trial_days, v) != 0 ||
			    s->trial_days < 0) {
				fprintf(stderr, "tally tenant: bad "
						"--trial-days %s\n", v);
				return 2;
			}
			i++;
			continue;
		}
		if (slot == NULL || v == NULL)
			return usage();
		*slot = v;
		i++;
	}
	return 0;
}

/* TENANT (id or slug) -> id; prints the error. 0, 1 (error), 3 (none) */
static int resolve(tally_pg *pg, const char *target, char out[37])
{
	PGresult *res = NULL;
	const char *p[1] = { target };
	tally_error err;
	int rc;

	tally_error_clear(&err);
	rc = tally_pg_exec(pg, &res, "SELECT id::text FROM tenants WHERE "
			   "id::text = $1 OR slug = $1", 1, p, &err);
	if (rc != 0) {
		fprintf(stderr, "tally tenant: %s\n", err.msg);
		return 1;
	}
	rc = PQntuples(res) == 1 ? 0 : 3;
	if (rc == 0)
		snprintf(out, 37, "%s", PQgetvalue(res, 0, 0));
	else
		fprintf(stderr, "tally tenant: no tenant %s\n", target);
	PQclear(res);
	return rc;
}

/* Queue create_customer and create_subscription for tally-stripe. */
static int enqueue_stripe(tally_cli *cli, const tenant_args *a)
{
	tally_config *cfg;
	tally_producer *p = NULL;
	tally_producer_opts po = { 0 };
	tally_command c[2];
	char ids[2][160];
	tally_error err;
	int i, rc = 1;

	if (tally_cli_config(cli, &cfg) != 0)
		return 1;
	memset(c, 0, sizeof(c));
	snprintf(ids[0], sizeof(ids[0]), "%s-customer", a->spec.command_id);
	snprintf(ids[1], sizeof(ids[1]), "%s-subscription",
		 a->spec.command_id);
	for (i = 0; i < 2; i++) {
		c[i].id.ptr = ids[i];
		c[i].id.len = (uint32_t)strlen(ids[i]);
		c[i].time_ms = tally_now_ms();
		c[i].trial_days = -1;
		if (tally_uuid_parse(c[i].tenant_id, a->tid, 36) != 0)
			return 1;
	}
	c[0].type = TALLY_CMD_CREATE_CUSTOMER;
	c[1].type = TALLY_CMD_CREATE_SUBSCRIPTION;
	c[1].plan.ptr = a->spec.plan;
	c[1].plan.len = (uint32_t)strlen(a->spec.plan);
	c[1].trial_days = a->spec.trial_days;
	po.topic = tally_config_str(cfg, "topics.commands");
	po.ce_source = "tally-tenant";
	tally_error_clear(&err);
	if (tally_producer_new(&p, cfg, &po, &err) != 0)
		goto done;
	for (i = 0; i < 2; i++)
		if (tally_producer_send_command(p, &c[i], NULL, &err) != 0)
			goto done;
	if (tally_cli_drain(p, "tenant") != 0) {
		tally_producer_free(p);
		return 1;
	}
	printf("queued %s and %s on %s\n", ids[0], ids[1], po.topic);
	rc = 0;
done:
	if (rc != 0)
		fprintf(stderr, "tally tenant: %s\n", err.msg);
	tally_producer_free(p);
	return rc;
}

/* The audit reason: the invocation without personal values. */
static void set_reason(tenant_args *a, const char *sub)
{
	const tally_tenant_spec *s = &a->spec;
	int n = snprintf(a->reason, sizeof(a->reason), "tally tenant %s", sub);

	if (s->plan && n > 0 && (size_t)n < sizeof(a->reason))
		n += snprintf(a->reason + n, sizeof(a->reason) - (size_t)n,
			      " --plan %s", s->plan);
	if (s->budget && n > 0 && (size_t)n < sizeof(a->reason))
		n += snprintf(a->reason + n, sizeof(a->reason) - (size_t)n,
			      " --budget %s", s->budget);
	if (n > 0 && (size_t)n < sizeof(a->reason))
		snprintf(a->reason + n, sizeof(a->reason) - (size_t)n,
			 " (command %s)", s->command_id);
}

static int run_op(tally_cli *cli, tally_pg *pg, tenant_args *a,
		  const char *sub)
{
	tally_tenant_outcome o;
	tally_error err;
	int rc;

	if (a->spec.command_id == NULL) {
		uuid_t u;

		uuid_generate_random(u);
		memcpy(a->cmd_id, "cli-", 4);
		uuid_unparse_lower(u, a->cmd_id + 4);
		a->spec.command_id = a->cmd_id;
	}
	if (a->spec.kind == TALLY_TENANT_CREATE) {
		if (a->tenant_id != NULL)
			snprintf(a->tid, sizeof(a->tid), "%s", a->tenant_id);
		else
			tally_tenant_id_for_command(a->tid,
						    a->spec.command_id);
	} else if (a->target == NULL) {
		return usage();
	} else if ((rc = resolve(pg, a->target, a->tid)) != 0) {
		return rc;
	}
	a->spec.tenant_id = a->tid;
	set_reason(a, sub);
	tally_error_clear(&err);
	rc = tally_tenant_run(pg, &a->spec, "tally-cli", a->reason, &o, &err);
	if (rc != 0) {
		fprintf(stderr, "tally tenant %s: %s\n", sub, err.msg);
		return 1;
	}
	if (!o.succeeded) {
		fprintf(stderr, "tally tenant %s: refused%s: %s: %s\n", sub,
			o.duplicate ? " (before)" : "", o.code, o.message);
		return 3;
	}
	printf("tenant %s %s%s (command %s, status %s)\n", a->tid,
	       a->spec.kind == TALLY_TENANT_CREATE ? "created" : sub,
	       o.duplicate ? " before" : "", a->spec.command_id, o.status);
	if (a->stripe && a->spec.kind == TALLY_TENANT_CREATE)
		return enqueue_stripe(cli, a);
	return 0;
}

static void print_rows(PGresult *res, bool vertical)
{
	int i, j;

	if (vertical) {
		for (j = 0; j < PQnfields(res) && PQntuples(res) == 1; j++)
			printf("%-26s %s\n", PQfname(res, j),
			       PQgetvalue(res, 0, j));
		return;
	}
	for (j = 0; j < PQnfields(res); j++)
		printf("%s%s", j ? "\t" : "", PQfname(res, j));
	printf("\n");
	for (i = 0; i < PQntuples(res); i++)
		for (j = 0; j < PQnfields(res); j++)
			printf("%s%s", PQgetvalue(res, i, j),
			       j + 1 < PQnfields(res) ? "\t" : "\n");
}

static int show(tally_pg *pg, const tenant_args *a, bool one)
{
	char tid[37];
	const char *p[1];
	PGresult *res = NULL;
	tally_error err;
	int rc;

	if (one && (rc = resolve(pg, a->target ? a->target : "", tid)) != 0)
		return rc;
	p[0] = one ? tid : a->status;
	tally_error_clear(&err);
	rc = tally_pg_exec(pg, &res, one ?
		"SELECT id, name, slug, domain, billing_email, "
		"subscription_plan AS plan, status, monthly_budget, currency, "
		"max_users, max_workflows, max_ai_requests_per_month, "
		"trial_end, coalesce(stripe_customer_id, '') AS "
		"stripe_customer_id, coalesce(stripe_subscription_id, '') AS "
		"stripe_subscription_id, created_at, updated_at "
		"FROM tenants WHERE id = $1::uuid" :
		"SELECT id, slug, subscription_plan AS plan, status, "
		"monthly_budget, currency FROM tenants "
		"WHERE $1::text IS NULL OR status = $1 ORDER BY slug",
		1, p, &err);
	if (rc != 0) {
		fprintf(stderr, "tally tenant: %s\n", err.msg);
		return 1;
	}
	print_rows(res, one);
	PQclear(res);
	return 0;
}

int tally_cmd_tenant(tally_cli *cli, int argc, char **argv)
{
	static const struct {
		const char *name;
		tally_tenant_op_kind kind;
	} ops[] = {
		{ "create", TALLY_TENANT_CREATE },
		{ "update", TALLY_TENANT_UPDATE },
		{ "suspend", TALLY_TENANT_SUSPEND },
		{ "resume", TALLY_TENANT_RESUME },
		{ "show", 0 },
		{ "list", 0 },
	};
	tenant_args a;
	tally_pg *pg = NULL;
	const char *sub = argc > 1 ? argv[1] : "";
	size_t i;
	int rc;

	if (strcmp(sub, "export") == 0)
		return tally_cli_tenant_export(cli, argc - 1, argv + 1);
	if (strcmp(sub, "erase") == 0)
		return tally_cli_tenant_erase(cli, argc - 1, argv + 1);
	memset(&a, 0, sizeof(a));
	for (i = 0; i < sizeof(ops) / sizeof(ops[0]); i++)
		if (strcmp(sub, ops[i].name) == 0)
			break;
	if (i == sizeof(ops) / sizeof(ops[0]) || parse(&a, argc, argv) != 0)
		return usage();
	a.spec.kind = ops[i].kind;
	if (tally_cli_pg(cli, &pg) != 0)
		return 1;
	if (a.spec.kind != 0)
		rc = run_op(cli, pg, &a, sub);
	else
		rc = show(pg, &a, strcmp(sub, "show") == 0);
	tally_pg_free(pg);
	return rc;
}
