/*
 * period_close.c - close a tenant's billing period for an invoice.
 */
#include "tally/period_close.h"

#include <inttypes.h>
#include <stdio.h>

int tally_period_close(tally_pg *pg, const char *tenant_id,
		       int64_t period_start, int64_t period_end,
		       const char *invoice_id, tally_error *err)
{
	char ps[24], pe[24];
	const char *prm[4] = { tenant_id, ps, pe, invoice_id };

	if (period_end <= period_start)
		return tally_error_set(err, TALLY_EINVALID,
				       "period close: end %" PRId64
				       " not after start %" PRId64,
				       period_end, period_start);
	snprintf(ps, sizeof(ps), "%" PRId64, period_start);
	snprintf(pe, sizeof(pe), "%" PRId64, period_end);
	return tally_pg_exec(pg, NULL,
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
		"WHERE b.status = 'open'", 4, prm, err);
}
