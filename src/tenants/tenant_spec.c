/*
 * tenant_spec.c - the rules of provisioning input (tally/tenant_spec.h):
 * names, slugs, domains, billing emails, budgets, trial days. Pure.
 */
#include "tally/tenant_spec.h"
#include "tally/event.h"
#include "tally/money.h"

#include <openssl/sha.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <string.h>

/* The largest budget numeric(12,2) holds, in whole units. */
#define BUDGET_MAX_UNITS INT64_C(9999999999)

const char *tally_tenant_op_name(tally_tenant_op_kind kind)
{
	switch (kind) {
	case TALLY_TENANT_CREATE: return "create_tenant";
	case TALLY_TENANT_UPDATE: return "update_tenant";
	case TALLY_TENANT_SUSPEND: return "suspend_tenant";
	case TALLY_TENANT_RESUME: return "resume_tenant";
	default: return NULL;
	}
}

static int reject(tally_tenant_reject *why, const char *code,
		  const char *fmt, ...)
{
	va_list ap;

	why->code = code;
	va_start(ap, fmt);
	vsnprintf(why->message, sizeof(why->message), fmt, ap);
	va_end(ap);
	return TALLY_EINVALID;
}

static bool given(const char *s)
{
	return s != NULL && s[0] != '\0';
}

static bool is_lower_alnum(char c)
{
	return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

/* printable text: no control characters (bytes >= 0x80 are UTF-8) */
static bool printable(const char *s)
{
	for (; *s; s++)
		if ((unsigned char)*s < 0x20 || *s == 0x7f)
			return false;
	return true;
}

/* a-z 0-9 and inner '-' */
static bool slug_ok(const char *s)
{
	size_t n = strlen(s), i;

	if (n == 0 || n > TALLY_TENANT_SLUG_MAX || s[0] == '-' ||
	    s[n - 1] == '-')
		return false;
	for (i = 0; i < n; i++)
		if (!is_lower_alnum(s[i]) && s[i] != '-')
			return false;
	return true;
}

/* A host name of two labels or more: 1..63 letters, digits and inner
 * hyphens each; upper case only when fold is set (an email's domain). */
static bool host_ok(const char *s, size_t n, bool fold)
{
	size_t i, label = 0, labels = 1;

	if (n == 0 || n > TALLY_TENANT_DOMAIN_MAX)
		return false;
	for (i = 0; i < n; i++) {
		char c = s[i];

		if (fold && c >= 'A' && c <= 'Z')
			c = (char)(c - 'A' + 'a');
		if (c == '.') {
			if (label == 0 || s[i - 1] == '-')
				return false;
			label = 0;
			labels++;
			continue;
		}
		if (!is_lower_alnum(c) && c != '-')
			return false;
		if (c == '-' && label == 0)
			return false;
		if (++label > 63)
			return false;
	}
	return label > 0 && s[n - 1] != '-' && labels >= 2;
}

/* local@domain: an unquoted local part of RFC 5322 atoms, a host name */
static bool email_ok(const char *s)
{
	static const char atext[] = "!#$%&'*+/=?^_`{|}~-";
	const char *at = strchr(s, '@');
	size_t n = strlen(s), local, i;

	if (at == NULL || strchr(at + 1, '@') != NULL ||
	    n > TALLY_TENANT_EMAIL_MAX)
		return false;
	local = (size_t)(at - s);
	if (local == 0 || local > 64 || s[0] == '.' || s[local - 1] == '.')
		return false;
	for (i = 0; i < local; i++) {
		char c = s[i];
		bool alnum = (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') ||
			     (c >= '0' && c <= '9');

		if (c == '.' && s[i + 1] == '.')
			return false;
		if (!alnum && c != '.' && (c == '\0' || !strchr(atext, c)))
			return false;
	}
	return host_ok(at + 1, n - local - 1, true);
}

static bool plan_ok(const char *s)
{
	size_t n = strlen(s), i;

	if (n == 0 || n > TALLY_PLAN_MAX)
		return false;
	for (i = 0; i < n; i++)
		if (!is_lower_alnum(s[i]) && s[i] != '_')
			return false;
	return true;
}

/* A budget: exact, >= 0, at most 2 decimals, fits numeric(12,2). */
static int budget_check(const char *s, char *out, size_t outsize,
			tally_tenant_reject *why)
{
	int64_t pico = 0;

	if (tally_money_parse(&pico, s, strlen(s)) != 0)
		return reject(why, "bad_budget",
			      "budget is not an exact decimal amount");
	if (pico < 0)
		return reject(why, "bad_budget", "budget is negative");
	if (pico % (TALLY_PICO_PER_UNIT / 100) != 0)
		return reject(why, "bad_budget",
			      "budget has more than 2 decimals");
	if (pico / TALLY_PICO_PER_UNIT > BUDGET_MAX_UNITS)
		return reject(why, "bad_budget", "budget is too large");
	tally_money_fmt(out, outsize, pico);
	return 0;
}

static int check_create(const tally_tenant_spec *s, tally_tenant_reject *why)
{
	if (!given(s->name) || strlen(s->name) > TALLY_TENANT_NAME_MAX ||
	    !printable(s->name))
		return reject(why, "bad_name",
			      "name must be 1..%d printable bytes",
			      TALLY_TENANT_NAME_MAX);
	if (!given(s->slug) || !slug_ok(s->slug))
		return reject(why, "bad_slug",
			      "slug must be 1..%d of a-z, 0-9 and inner '-'",
			      TALLY_TENANT_SLUG_MAX);
	if (!given(s->domain) || !host_ok(s->domain, strlen(s->domain), false))
		return reject(why, "bad_domain",
			      "domain must be a lower-case host name such as "
			      "acme.example.com");
	if (!given(s->email) || !email_ok(s->email))
		return reject(why, "bad_email",
			      "email must be an address such as "
			      "billing@acme.example.com");
	if (!given(s->plan))
		return reject(why, "bad_plan", "plan is required");
	if (s->trial_days < -1 || s->trial_days > TALLY_TENANT_TRIAL_DAYS_MAX)
		return reject(why, "bad_trial_days",
			      "trial days must be 0..%d",
			      TALLY_TENANT_TRIAL_DAYS_MAX);
	return 0;
}

int tally_tenant_spec_check(const tally_tenant_spec *s, char *budget_out,
			    size_t budget_size, tally_tenant_reject *why)
{
	uint8_t uuid[16];
	int rc;

	memset(why, 0, sizeof(*why));
	if (budget_size > 0)
		budget_out[0] = '\0';
	if (tally_tenant_op_name(s->kind) == NULL)
		return reject(why, "bad_command", "unknown operation");
	if (!given(s->command_id) || strlen(s->command_id) > 128 ||
	    !printable(s->command_id))
		return reject(why, "bad_command_id",
			      "command id must be 1..128 printable bytes");
	if (!given(s->tenant_id) ||
	    tally_uuid_parse(uuid, s->tenant_id, (uint32_t)strlen(s->tenant_id))
		    != 0)
		return reject(why, "bad_tenant_id", "tenant id is not a UUID");
	/* the nil UUID stands for the business as a whole (alerts), never
	 * a tenant */
	if (memcmp(uuid, (const uint8_t[16]){ 0 }, 16) == 0)
		return reject(why, "bad_tenant_id", "tenant id is the nil UUID");
	if (s->kind == TALLY_TENANT_CREATE) {
		rc = check_create(s, why);
		if (rc != 0)
			return rc;
	}
	if (s->kind == TALLY_TENANT_UPDATE && !given(s->plan) &&
	    !given(s->budget))
		return reject(why, "nothing_to_update",
			      "update needs a plan or a budget");
	if (given(s->plan) && !plan_ok(s->plan))
		return reject(why, "bad_plan",
			      "plan must be 1..%d of a-z, 0-9 and '_'",
			      TALLY_PLAN_MAX);
	if ((s->kind == TALLY_TENANT_CREATE || s->kind == TALLY_TENANT_UPDATE)
	    && given(s->budget))
		return budget_check(s->budget, budget_out, budget_size, why);
	return 0;
}

/* Copy a command string into buf as a C string; "" when absent. */
static const char *take(char **p, char *end, tally_str v)
{
	char *s = *p;

	if ((size_t)(end - s) < v.len + 1)
		return "";
	if (v.len)
		memcpy(s, v.ptr, v.len);
	s[v.len] = '\0';
	*p = s + v.len + 1;
	return s;
}

int tally_tenant_spec_of_command(tally_tenant_spec *out, const tally_command *cmd,
				 char *buf, size_t bufsize)
{
	char *p = buf, *end = buf + bufsize;
	char *tid;

	memset(out, 0, sizeof(*out));
	switch (cmd->type) {
	case TALLY_CMD_CREATE_TENANT: out->kind = TALLY_TENANT_CREATE; break;
	case TALLY_CMD_UPDATE_TENANT: out->kind = TALLY_TENANT_UPDATE; break;
	case TALLY_CMD_SUSPEND_TENANT: out->kind = TALLY_TENANT_SUSPEND; break;
	case TALLY_CMD_RESUME_TENANT: out->kind = TALLY_TENANT_RESUME; break;
	default: return TALLY_EINVALID;
	}
	if (bufsize < 37)
		return TALLY_EINVALID;
	tid = p;
	tally_uuid_fmt(tid, cmd->tenant_id);
	p += 37;
	out->tenant_id = tid;
	out->command_id = take(&p, end, cmd->id);
	out->name = take(&p, end, cmd->name);
	out->slug = take(&p, end, cmd->slug);
	out->domain = take(&p, end, cmd->domain);
	out->plan = take(&p, end, cmd->plan);
	out->email = take(&p, end, cmd->email);
	out->budget = take(&p, end, cmd->budget);
	out->trial_days = cmd->trial_days;
	return 0;
}

void tally_tenant_id_for_command(char out[37], const char *command_id)
{
	unsigned char md[SHA256_DIGEST_LENGTH];
	char in[160];
	int n = snprintf(in, sizeof(in), "tally-tenant:%s", command_id);

	if (n < 0 || (size_t)n >= sizeof(in))
		n = (int)sizeof(in) - 1;
	SHA256((const unsigned char *)in, (size_t)n, md);
	md[6] = (unsigned char)((md[6] & 0x0f) | 0x80); /* version 8 */
	md[8] = (unsigned char)((md[8] & 0x3f) | 0x80); /* RFC 4122 */
	tally_uuid_fmt(out, md);
}
