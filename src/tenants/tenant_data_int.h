#ifndef TALLY_TENANT_DATA_INT_H
#define TALLY_TENANT_DATA_INT_H

/* tenant_data_int.h - shared by src/tenants/ (export and erasure). */

#include "tally/tenant_data.h"

/**
 * Record an erasure step in audit_log when that table exists (nothing,
 * *written = 0, when it does not). The row's columns are matched by name
 * (tenant_id, table, key, action, new values, role, application_name,
 * reason); other columns keep their defaults. Inside the caller's
 * transaction.
 * @param detail JSON text of what was done (no personal value)
 */
int tally_tenant__audit(tally_pg *pg, const char *tenant, const char *action,
			const char *detail, const char *why, int *written,
			tally_error *err) TALLY_MUSTCHECK;

/**
 * Delete the tenant's Stripe customer if its erasure still has one
 * pending (tenant_erasures), and record the outcome (res->stripe).
 * stripe NULL: stays pending. A Stripe failure is not an error here.
 */
int tally_tenant__erase_stripe(tally_pg *pg, struct tally_stripe *stripe,
			       const char *tenant, const char *why,
			       tally_tenant_erase_result *res,
			       tally_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_TENANT_DATA_INT_H */
