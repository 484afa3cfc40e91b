/*
 * cmd_stripe.c - `tally stripe reconcile [--apply]`: page through Stripe's
 * subscriptions and invoices and print every difference from PostgreSQL
 * (tab-separated: kind, id, what, postgres=…, stripe=…); with --apply,
 * PostgreSQL is fixed from Stripe. `tally stripe meters` reports pending
 * usage to Stripe meters once; `tally stripe dunning` runs one dunning tick;
 * `tally stripe setup` creates a Product and monthly Price per plan.
 * Exit status: 0 no difference (or applied), 3 differences found, 1 error.
 */
#include "cli.h"
#include "tally/invoice_sync.h"
#include "tally/plan_setup.h"
#include "tally/stripe.h"
#include "tally/stripe_sync.h"

#include <stdio.h>
#include <string.h>

const char tally_cmd_stripe_help[] =
	"Stripe: reconcile [--apply] | meters | dunning | setup";

int tally_cmd_stripe(tally_cli *cli, int argc, char **argv)
{
	tally_config *cfg = NULL;
	tally_pg *pg = NULL;
	tally_stripe *stripe = NULL;
	tally_stripe_sync *ss = NULL;
	tally_stripe_sync_opts so = { 0 };
	tally_error err;
	bool apply = false;
	int rc = 1, n = 0, i;
	const char *sub = argc > 1 ? argv[1] : "";

	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--apply") == 0 &&
		    strcmp(sub, "reconcile") == 0) {
			apply = true;
		} else {
			sub = "";
			break;
		}
	}
	if (strcmp(sub, "reconcile") != 0 && strcmp(sub, "meters") != 0 &&
	    strcmp(sub, "dunning") != 0 && strcmp(sub, "setup") != 0) {
		fprintf(stderr, "usage: tally stripe reconcile [--apply]\n"
				"       tally stripe meters\n"
				"       tally stripe dunning\n"
				"       tally stripe setup\n");
		return 2;
	}
	if (tally_cli_config(cli, &cfg) != 0 || tally_cli_pg(cli, &pg) != 0)
		return 1;
	tally_error_clear(&err);
	if (tally_stripe_new_from_config(&stripe, cfg, &err) != 0)
		goto done;
	so.pg = pg;
	so.stripe = stripe;
	so.cfg = cfg;
	if (tally_stripe_sync_new(&ss, &so, &err) != 0)
		goto done;
	if (strcmp(sub, "reconcile") == 0) {
		int m = 0;

		if (tally_stripe_sync_reconcile(ss, apply, stdout, &n,
						&err) != 0)
			goto done;
		/* usage lines on invoices (docs/stripe.md) */
		if (tally_usage_billing_of(cfg) ==
			    TALLY_USAGE_BILLING_INVOICE_ITEMS &&
		    tally_invoice_reconcile(pg, stripe, apply, stdout, &m,
					    &err) != 0)
			goto done;
		n += m;
		fprintf(stderr, "reconcile: %d difference(s)%s\n", n,
			apply ? ", applied" : "");
		rc = (n > 0 && !apply) ? 3 : 0;
	} else if (strcmp(sub, "setup") == 0) {
		if (tally_plan_setup(pg, stripe, stdout, &n, &err) != 0)
			goto done;
		fprintf(stderr, "setup: %d Stripe object(s) created\n", n);
		rc = 0;
	} else if (strcmp(sub, "meters") == 0) {
		if (tally_stripe_sync_report_meters(ss, &n, &err) != 0)
			goto done;
		printf("meters: %d event(s) sent\n", n);
		rc = 0;
	} else {
		if (tally_stripe_sync_dunning(ss, &n, &err) != 0)
			goto done;
		printf("dunning: %d transition(s)\n", n);
		rc = 0;
	}
done:
	if (rc == 1)
		fprintf(stderr, "tally stripe %s: %s\n", sub, err.msg);
	tally_stripe_sync_free(ss);
	tally_stripe_free(stripe);
	tally_pg_free(pg);
	return rc;
}
