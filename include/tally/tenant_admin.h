#ifndef TALLY_TENANT_ADMIN_H
#define TALLY_TENANT_ADMIN_H

/**
 * @file tally/tenant_admin.h
 * @brief Provisioning in PostgreSQL: create a tenant, change its plan or
 *        budget, suspend and resume it. `tally tenant` and tally-stripe
 *        (the provisioning commands of billing.commands) both run
 *        tally_tenant_run(), so both apply the rules of tally/tenant_spec.h
 *        and record the operation the same way.
 *
 * One transaction per operation: the billing_commands row (type
 * create_tenant .. resume_tenant, keyed by tenant and command id), the
 * tenant change and the outcome commit together. The same command id again
 * changes nothing and returns the recorded outcome. A refused operation is
 * recorded as failed with its reason (error_code, error_message) and is
 * final: it is never retried. The transaction sets tally.audit_source and
 * tally.audit_reason, which the audit triggers copy into audit_log.
 */

#include <stdbool.h>

#include "tally/common.h"
#include "tally/pg.h"
#include "tally/tenant_spec.h"

typedef struct tally_tenant_outcome {
	bool duplicate;     /* the command id had run before: nothing done */
	bool succeeded;     /* else refused; reason in code and message */
	char code[40];      /* refusal code (tally/tenant_spec.h) */
	char message[256];
	char status[24];    /* the tenant's status afterwards ("" if none) */
} tally_tenant_outcome;

/**
 * Run one operation. source: who asked ("billing.commands", "tally-cli");
 * reason: why, for the audit trail (the command id or CLI invocation).
 * @return 0 when the outcome is final (succeeded or refused, out filled);
 *         TALLY_ETRANSIENT when PostgreSQL is unavailable (nothing
 *         recorded: run it again); another error when it cannot be recorded
 */
int tally_tenant_run(tally_pg *pg, const tally_tenant_spec *spec,
		     const char *source, const char *reason,
		     tally_tenant_outcome *out, tally_error *err)
	TALLY_MUSTCHECK;

#endif /* TALLY_TENANT_ADMIN_H */
