#ifndef TALLY_TENANT_SPEC_H
#define TALLY_TENANT_SPEC_H

/**
 * @file tally/tenant_spec.h
 * @brief Provisioning input (create, update, suspend, resume a tenant) and
 *        its rules, shared by `tally tenant` and the provisioning commands
 *        of billing.commands. Pure: no I/O. What needs the database (the
 *        plan exists, slug and domain are free) is checked by
 *        tally/tenant_admin.h.
 */

#include <stdint.h>

#include "tally/command.h"
#include "tally/common.h"

typedef enum {
	TALLY_TENANT_CREATE = 1,
	TALLY_TENANT_UPDATE = 2,
	TALLY_TENANT_SUSPEND = 3,
	TALLY_TENANT_RESUME = 4,
} tally_tenant_op_kind;

/* Bounds of the tenants columns (migrations/0001, 0021). */
#define TALLY_TENANT_NAME_MAX 255
#define TALLY_TENANT_SLUG_MAX 100
#define TALLY_TENANT_DOMAIN_MAX 253
#define TALLY_TENANT_EMAIL_MAX 254
#define TALLY_TENANT_TRIAL_DAYS_MAX 730

/** One provisioning operation; NULL or "" = not given. Strings borrowed. */
typedef struct tally_tenant_spec {
	tally_tenant_op_kind kind;
	const char *command_id;  /* 1..128 bytes: the idempotency key */
	const char *tenant_id;   /* UUID text */
	const char *name;        /* create */
	const char *slug;        /* create */
	const char *domain;      /* create */
	const char *plan;        /* create (required), update */
	const char *email;       /* create (required): the billing email */
	const char *budget;      /* create, update: monthly budget, decimal */
	int64_t trial_days;      /* create; -1 = none */
} tally_tenant_spec;

/** Why an operation was refused: a stable code and a sentence. */
typedef struct tally_tenant_reject {
	const char *code; /* bad_name, bad_slug, bad_domain, bad_email,
			   * bad_plan, bad_budget, bad_trial_days,
			   * bad_command_id, bad_tenant_id, nothing_to_update,
			   * and from the database: unknown_plan,
			   * duplicate_slug, duplicate_domain, tenant_exists,
			   * unknown_tenant, has_subscription, cancelled */
	char message[160];
} tally_tenant_reject;

/** "create_tenant" etc. (the billing_commands type), or NULL. */
const char *tally_tenant_op_name(tally_tenant_op_kind kind);

/**
 * Check every rule that needs no database. On success, budget_out (at least
 * 32 bytes) holds the budget in canonical form ("250", "99.5") or "" when
 * none was given.
 * @return 0, or TALLY_EINVALID with why filled
 */
int tally_tenant_spec_check(const tally_tenant_spec *s, char *budget_out,
			    size_t budget_size, tally_tenant_reject *why)
	TALLY_MUSTCHECK;

/**
 * The spec of a provisioning command (types create_tenant ..
 * resume_tenant). Strings are copied into buf (at least 2 KiB), since a
 * command's strings are not NUL-terminated.
 * @return 0, or TALLY_EINVALID when cmd is not a provisioning command
 */
int tally_tenant_spec_of_command(tally_tenant_spec *out, const tally_command *cmd,
				 char *buf, size_t bufsize) TALLY_MUSTCHECK;

/** A tenant id derived from a command id (SHA-256, RFC 4122 layout), so
 *  the same create command names the same tenant every time it runs. */
void tally_tenant_id_for_command(char out[37], const char *command_id);

#endif /* TALLY_TENANT_SPEC_H */
