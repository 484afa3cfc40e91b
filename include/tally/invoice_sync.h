#ifndef TALLY_INVOICE_SYNC_H
#define TALLY_INVOICE_SYNC_H
/**
 * @file tally/invoice_sync.h
 * @brief Usage charges on the tenant's Stripe invoice (docs/stripe.md,
 *        "Usage on the invoice").
 *
 * When Stripe drafts a subscription_cycle invoice (invoice.created), the
 * usage period it bills (its period_start .. period_end) is closed, its
 * charges are computed once and recorded as invoice_usage_lines, and each
 * line becomes one invoice item on the draft (POST /v1/invoiceitems). A
 * line is recorded before the call (pending) and after it (created, with
 * the item id); the Idempotency-Key is derived from (tenant, invoice,
 * line), and a line tried before is first looked up on Stripe (metadata),
 * so redeliveries, crashes and restarts leave one item per line. An
 * invoice no longer a draft gets its lines as pending invoice items (no
 * invoice: Stripe puts them on the customer's next invoice). An invoice
 * not in the tenant's currency (tenants.currency) gets no line: tally
 * converts no currency.
 */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include "tally/common.h"
#include "tally/config.h"
#include "tally/pg.h"
#include "tally/stripe.h"

/** stripe.usage_billing */
typedef enum tally_usage_billing {
	TALLY_USAGE_BILLING_INVOICE_ITEMS = 0, /* default */
	TALLY_USAGE_BILLING_METERS,            /* Stripe meter events */
	TALLY_USAGE_BILLING_OFF
} tally_usage_billing;

/** "invoice_items", "meters" or "off" ("" = invoice_items).
 *  @return 0 or TALLY_EINVALID */
int tally_usage_billing_parse(const char *s, tally_usage_billing *out)
	TALLY_MUSTCHECK;
/** The configured mode; an unknown value is logged and means off (never
 *  bill twice by guessing). NULL cfg: invoice_items. */
tally_usage_billing tally_usage_billing_of(const tally_config *cfg);

/**
 * React to a Stripe event before it is mirrored: for invoice.created of a
 * subscription_cycle invoice of a known tenant (and usage_billing =
 * invoice_items), bill the usage period (compute once, then push).
 * Other events: nothing. Stripe's rejection of a line is logged and leaves
 * the line pending (reconcile --apply sends it again). An invoice in
 * another currency than the tenant's: a currency_mismatch run, no line,
 * logged (stripe.usage_currency_mismatch), 0.
 * @return 0; TALLY_ETRANSIENT (PostgreSQL or Stripe unavailable: deliver
 *         the event again); TALLY_EINVALID (the usage cannot be computed)
 */
int tally_invoice_sync_event(tally_pg *pg, tally_stripe *stripe,
			     const tally_config *cfg, const char *type,
			     const json_t *obj, tally_error *err)
	TALLY_MUSTCHECK;

/**
 * Send the lines of (tenant, invoice) still pending: onto the invoice if
 * Stripe says it is a draft, else as pending invoice items.
 * @param[out] sent lines that became items (may be NULL)
 */
int tally_invoice_sync_push(tally_pg *pg, tally_stripe *stripe,
			    const char *tenant_id, const char *invoice_id,
			    int *sent, tally_error *err) TALLY_MUSTCHECK;

/**
 * Compare, for every invoice tally computed usage lines for, the lines
 * (amount in minor units) with the invoice items Stripe holds for them
 * (matched on metadata tenant_id, invoice_id, line_key). Each difference
 * is one tab-separated line on out: `usage_line_missing` or
 * `usage_line_amount`, tenant, invoice, line key, postgres=…, stripe=…;
 * and every currency_mismatch run: `usage_currency_mismatch`, tenant,
 * invoice, `currency`, postgres=<tenant's currency>, stripe=<invoice's>.
 * With apply, missing lines are sent again (to the draft, else as pending
 * invoice items), a currency_mismatch run whose tenant's currency is now
 * the invoice's is computed and sent; amount differences and currencies
 * that still differ are only reported.
 * @param[out] ndiff differences found (may be NULL)
 */
int tally_invoice_reconcile(tally_pg *pg, tally_stripe *stripe, bool apply,
			    FILE *out, int *ndiff, tally_error *err)
	TALLY_MUSTCHECK;

#endif /* TALLY_INVOICE_SYNC_H */
