/*
 * cmd_rerate.c - `tally rerate --from T1 --to T2 [--tenant T] [--model M]`:
 * price the ledger rows of [T1, T2) again with the current book (the price
 * book in PostgreSQL: fix a price with `tally prices import` or the tables,
 * then rerate) and move the differences into the aggregates
 * (docs/aggregate.md). Idempotent.
 */
#include "cli.h"
#include "tally/aggregate.h"
#include "tally/event.h"
#include "tally/gen.h"
#include "tally/pricebook_pg.h"

#include <stdio.h>
#include <string.h>

const char tally_cmd_rerate_help[] =
	"re-price ledger rows with the current book: --from T1 --to T2 "
	"[--tenant UUID] [--model NAME]";

/*
 * Unix ms, YYYY-MM-DD (midnight UTC) or RFC 3339 with Z or an offset (a
 * time without one is refused, never read in some server's time zone);
 * 1970..9999. Parsed here, not by PostgreSQL.
 */
static int parse_time(const char *opt, const char *s, int64_t *out)
{
	if (tally_gen_parse_time(out, s) == 0 && *out <= TALLY_RERATE_TIME_MAX)
		return 0;
	fprintf(stderr, "tally rerate: bad %s '%s': unix ms, YYYY-MM-DD (UTC)"
		" or RFC 3339 with Z or an offset, 1970..9999\n", opt, s);
	return -1;
}

int tally_cmd_rerate(tally_cli *cli, int argc, char **argv)
{
	const char *from = NULL, *to = NULL, *tenant = NULL;
	tally_rerate_opts o = { 0 };
	tally_rerate_stats st;
	tally_pricebook *pb = NULL;
	tally_pg *pg = NULL;
	tally_error err;
	uint8_t tid[16];
	int i, rc = 1;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--from") == 0 && i + 1 < argc)
			from = argv[++i];
		else if (strcmp(argv[i], "--to") == 0 && i + 1 < argc)
			to = argv[++i];
		else if (strcmp(argv[i], "--tenant") == 0 && i + 1 < argc)
			tenant = argv[++i];
		else if (strcmp(argv[i], "--model") == 0 && i + 1 < argc)
			o.model = argv[++i];
		else
			goto usage;
	}
	if (from == NULL || to == NULL)
		goto usage;
	if (parse_time("--from", from, &o.from_ms) != 0 ||
	    parse_time("--to", to, &o.to_ms) != 0)
		return 2;
	if (o.from_ms >= o.to_ms) {
		fprintf(stderr, "tally rerate: --from (%s) must be earlier than"
			" --to (%s)\n", from, to);
		return 2;
	}
	if (tenant != NULL) {
		if (tally_uuid_parse(tid, tenant, (uint32_t)strlen(tenant)) != 0) {
			fprintf(stderr, "tally rerate: bad tenant id\n");
			return 2;
		}
		o.tenant_id = tid;
	}
	if (tally_cli_pg(cli, &pg) != 0)
		return 1;
	tally_error_clear(&err);
	rc = tally_pricebook_load_pg(&pb, pg, &err);
	if (rc != 0) {
		fprintf(stderr, "tally rerate: price book: %s\n", err.msg);
		rc = 1;
		goto cleanup;
	}
	rc = tally_agg_rerate(pg, pb, &o, &st, &err);
	if (rc != 0) {
		fprintf(stderr, "tally rerate: %s\n", err.msg);
		rc = 1;
		goto cleanup;
	}
	printf("rerate: %lld rows seen, %lld re-priced (%lld in closed "
	       "periods -> adjustments), %lld without a price (unchanged), "
	       "cost delta %s\n", (long long)st.rows_seen,
	       (long long)st.rows_changed, (long long)st.adjusted,
	       (long long)st.unpriced, st.cost_delta);
	if (o.model == NULL)
		printf("rerate: storage: %lld periods' charges moved (%lld "
		       "closed -> adjustments), %lld without a price "
		       "(unchanged), %lld before the retention bound "
		       "(unchanged), cost delta %s\n",
		       (long long)st.storage_periods,
		       (long long)st.storage_adjusted,
		       (long long)st.storage_unpriced,
		       (long long)st.storage_too_old, st.storage_delta);
	rc = 0;
cleanup:
	tally_pricebook_free(pb);
	tally_pg_free(pg);
	return rc;
usage:
	fprintf(stderr, "usage: tally rerate --from T1 --to T2 [--tenant UUID]"
			" [--model NAME]\n"
			"  T: unix ms, YYYY-MM-DD (UTC) or RFC 3339 with Z or"
			" an offset; --from < --to\n");
	return 2;
}
