/*
 * tenant_data.c - `tally tenant export <tenant> --out DIR` (every row of
 * the tenant as JSON Lines plus a manifest; progress on stderr) and
 * `tally tenant erase <tenant>` / `tally tenant erase --pending` (GDPR
 * erasure; the Stripe customer's deletion is retried by running it again).
 * <tenant> is the tenant's id or slug. Exit status: 0 done, 3 erased but
 * the Stripe deletion is still pending, 4 refused (the tenant is not
 * cancelled), 1 error, 2 usage.
 */
#include "tenant_data.h"
#include "tally/stripe.h"
#include "tally/tenant_data.h"

#include <stdio.h>
#include <string.h>

int tally_cli_tenant_export(tally_cli *cli, int argc, char **argv)
{
	tally_tenant_export_stats st;
	tally_pg *pg = NULL;
	tally_error err;
	const char *ref = NULL, *dir = NULL;
	int i, rc;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--out") == 0 && i + 1 < argc)
			dir = argv[++i];
		else if (ref == NULL && argv[i][0] != '-')
			ref = argv[i];
		else
			ref = dir = NULL, i = argc;
	}
	if (ref == NULL || dir == NULL) {
		fprintf(stderr,
			"usage: tally tenant export <tenant> --out DIR\n");
		return 2;
	}
	if (tally_cli_pg(cli, &pg) != 0)
		return 1;
	tally_error_clear(&err);
	rc = tally_tenant_export(pg, ref, dir, stderr, &st, &err);
	tally_pg_free(pg);
	if (rc != 0) {
		fprintf(stderr, "tally tenant export: %s\n", err.msg);
		return 1;
	}
	fprintf(stderr, "export: %d table(s), %lld row(s), %lld byte(s),"
		" snapshot %s, manifest %s/manifest.json\n", st.tables,
		(long long)st.rows, (long long)st.bytes, st.snapshot_at, dir);
	return 0;
}

static const char *stripe_word(tally_erasure_stripe s)
{
	return s == TALLY_ERASURE_STRIPE_DELETED ? "deleted" :
	       s == TALLY_ERASURE_STRIPE_PENDING ? "pending" : "none";
}

/* The Stripe client, or NULL (the deletion stays pending) without a key. */
static tally_stripe *stripe_client(tally_config *cfg)
{
	tally_stripe *s = NULL;
	tally_error err;

	tally_error_clear(&err);
	if (tally_stripe_new_from_config(&s, cfg, &err) != 0) {
		fprintf(stderr, "tally tenant erase: Stripe: %s\n", err.msg);
		return NULL;
	}
	return s;
}

int tally_cli_tenant_erase(tally_cli *cli, int argc, char **argv)
{
	tally_tenant_erase_result r;
	tally_config *cfg = NULL;
	tally_stripe *stripe;
	tally_pg *pg = NULL;
	tally_error err;
	char why[512];
	int rc, done = 0, pending = 0;

	if (argc != 2 || (argv[1][0] == '-' &&
			  strcmp(argv[1], "--pending") != 0)) {
		fprintf(stderr, "usage: tally tenant erase <tenant>\n"
				"       tally tenant erase --pending\n");
		return 2;
	}
	if (tally_cli_config(cli, &cfg) != 0 || tally_cli_pg(cli, &pg) != 0)
		return 1;
	stripe = stripe_client(cfg);
	tally_error_clear(&err);
	/* not argv[1]: a slug is personal data the audit row must not keep */
	snprintf(why, sizeof(why), "tally tenant erase%s",
		 strcmp(argv[1], "--pending") == 0 ? " --pending" : "");
	if (strcmp(argv[1], "--pending") == 0) {
		rc = tally_tenant_erase_pending(pg, stripe, &done, &pending,
						&err);
		if (rc == 0)
			printf("erase: %d Stripe deletion(s) finished, %d"
			       " pending\n", done, pending);
	} else {
		rc = tally_tenant_erase(pg, stripe, argv[1], why, &r, &err);
		if (rc == 0) {
			printf("erase: tenant %s: %lld row(s) changed,"
			       " stripe customer %s%s%s\n", r.tenant_id,
			       (long long)r.rows_changed,
			       stripe_word(r.stripe),
			       r.stripe_error[0] ? ": " : "", r.stripe_error);
			pending = r.stripe == TALLY_ERASURE_STRIPE_PENDING;
			if (pending)
				printf("erase: run `tally tenant erase %s`"
				       " again to finish\n", r.tenant_id);
		}
	}
	tally_stripe_free(stripe);
	tally_pg_free(pg);
	if (rc != 0) {
		fprintf(stderr, "tally tenant erase: %s\n", err.msg);
		return rc == TALLY_EINVALID ? 4 : 1;
	}
	return pending > 0 ? 3 : 0;
}
