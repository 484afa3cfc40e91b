#ifndef TALLY_STRIPE_INVOICE_USAGE_H
#define TALLY_STRIPE_INVOICE_USAGE_H
/*
 * invoice_usage.h - private: the invoice a usage period is billed on, and
 * the computation of its lines in PostgreSQL (invoice_usage.c).
 */
#include <stdbool.h>
#include <stdint.h>
#include "tally/pg.h"
#include "tally/usage_lines.h"

/* A subscription_cycle invoice and the usage period it bills. */
typedef struct invoice_period {
	char tenant_id[37];
	char customer[256];
	char invoice_id[256];
	char currency[4];   /* upper case */
	int64_t period_start, period_end; /* unix seconds */
} invoice_period;

/* What invoice_usage_compute did. */
typedef struct invoice_usage_run {
	bool fresh;    /* this call recorded the run */
	bool mismatch; /* the run is currency_mismatch: no line */
	char tenant_currency[4]; /* upper case; "" when the run existed */
} invoice_usage_run;

/*
 * In one transaction, the tenant row locked FOR UPDATE (the closer's
 * protocol, docs/aggregate.md "Closing a period"): close the period
 * (billing_periods 'invoiced'), compute its charges, take every adjustment
 * not yet invoiced (marked with this invoice), build the lines and record
 * them (pending, or zero) with an invoice_usage_runs row. Done once per
 * (tenant, invoice): when the run exists nothing is recomputed.
 * An invoice whose currency is not the tenant's (tenants.currency: the
 * currency its usage is priced in; nothing is converted) gets a
 * currency_mismatch run, no line, and takes no adjustment.
 */
int invoice_usage_compute(tally_pg *pg, const invoice_period *p,
			  tally_usage_grouping g, invoice_usage_run *out,
			  tally_error *err);

/*
 * Compute the lines of a currency_mismatch run of (tenant, invoice) now
 * that the tenant's currency may be the invoice's (reconcile --apply), as
 * invoice_usage_compute would have; *out tells what happened (fresh: the
 * lines are recorded; mismatch: the currencies still differ).
 */
int invoice_usage_redo(tally_pg *pg, const char *tenant_id,
		       const char *invoice_id, invoice_usage_run *out,
		       tally_error *err);

/* The tenant of a Stripe customer: tenant_id[0] = '\0' when none. */
int invoice_usage_tenant(tally_pg *pg, const char *customer,
			 char tenant_id[37], tally_error *err);

#endif /* TALLY_STRIPE_INVOICE_USAGE_H */
