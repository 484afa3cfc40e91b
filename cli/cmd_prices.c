/*
 * cmd_prices.c - `tally prices import FILE [--source NAME]` (genai-prices
 * data file into the versioned price book; idempotent) and
 * `tally prices list [--provider P]` (the prices in force now).
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"
#include "tally/pricebook_pg.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char tally_cmd_prices_help[] =
	"price book: import FILE [--source NAME] | list [--provider P]";

static char *read_file(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	char *buf = NULL;
	size_t cap = 0, n;

	*len = 0;
	if (fp == NULL)
		return NULL;
	for (;;) {
		if (*len + 65536 > cap) {
			cap = cap ? cap * 2 : 1 << 20;
			buf = tally_xrealloc(buf, cap);
		}
		n = fread(buf + *len, 1, cap - *len, fp);
		*len += n;
		if (n == 0)
			break;
	}
	fclose(fp);
	return buf;
}

static int cmd_import(tally_cli *cli, int argc, char **argv)
{
	const char *file = NULL, *source = "genai-prices";
	tally_price_import_stats st;
	tally_pg *pg = NULL;
	tally_error err;
	char *text;
	size_t len;
	int i, rc;

	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--source") == 0 && i + 1 < argc)
			source = argv[++i];
		else if (file == NULL && argv[i][0] != '-')
			file = argv[i];
		else
			goto usage;
	}
	if (file == NULL)
		goto usage;
	text = read_file(file, &len);
	if (text == NULL) {
		fprintf(stderr, "tally prices import: cannot read %s\n", file);
		return 1;
	}
	if (tally_cli_pg(cli, &pg) != 0) {
		free(text);
		return 1;
	}
	tally_error_clear(&err);
	rc = tally_pricebook_import_genai(pg, text, len, source, tally_now_ms(),
					  &st, &err);
	free(text);
	tally_pg_free(pg);
	if (rc != 0) {
		fprintf(stderr, "tally prices import: %s\n", err.msg);
		return 1;
	}
	printf("prices import: providers changed %d, models new %d, "
	       "changed %d, unchanged %d, closed %d\n",
	       st.providers_changed, st.models_new, st.models_changed,
	       st.models_unchanged, st.models_closed);
	return 0;
usage:
	fprintf(stderr, "usage: tally prices import FILE [--source NAME]\n");
	return 2;
}

static int cmd_list(tally_cli *cli, int argc, char **argv)
{
	const char *provider = NULL;
	tally_pg *pg = NULL;
	PGresult *res = NULL;
	tally_error err;
	int i, r, c, rc;

	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--provider") == 0 && i + 1 < argc) {
			provider = argv[++i];
		} else {
			fprintf(stderr, "usage: tally prices list "
					"[--provider P]\n");
			return 2;
		}
	}
	if (tally_cli_pg(cli, &pg) != 0)
		return 1;
	tally_error_clear(&err);
	{
		const char *params[1] = { provider };
		rc = tally_pg_exec(
			pg, &res,
			"SELECT m.id, m.provider, m.model, m.constraint_type "
			"|| coalesce(' ' || to_char(m.start_at AT TIME ZONE "
			"'UTC', 'YYYY-MM-DD'), '') || coalesce(' ' || "
			"m.time_start || '-' || m.time_end, ''), m.currency, "
			"coalesce(m.input_mtok::text, '-'), "
			"coalesce(m.cache_read_mtok::text, '-'), "
			"coalesce(m.cache_write_mtok::text, '-'), "
			"coalesce(m.output_mtok::text, '-'), "
			"coalesce(m.requests_kcount::text, '-'), "
			"CASE WHEN m.tiers IS NULL THEN '' ELSE 'tiers' END "
			"FROM model_prices m JOIN price_providers p USING "
			"(provider) WHERE m.effective_to = 'infinity' AND "
			"($1::text IS NULL OR m.provider = $1) ORDER BY "
			"p.position, m.model_position, m.cond_position",
			1, params, &err);
	}
	if (rc != 0)
		goto fail;
	printf("price_id\tprovider\tmodel\tcondition\tcurrency\tinput_mtok\t"
	       "cache_read_mtok\tcache_write_mtok\toutput_mtok\t"
	       "requests_kcount\tnote\n");
	for (r = 0; r < PQntuples(res); r++)
		for (c = 0; c < PQnfields(res); c++)
			printf("%s%c", PQgetvalue(res, r, c),
			       c + 1 < PQnfields(res) ? '\t' : '\n');
	PQclear(res);
	res = NULL;
	rc = tally_pg_exec(pg, &res,
			   "SELECT id, meter, unit, price::text, currency "
			   "FROM unit_prices WHERE effective_to = 'infinity' "
			   "ORDER BY meter", 0, NULL, &err);
	if (rc != 0)
		goto fail;
	printf("\nprice_id\tmeter\tunit\tprice\tcurrency\n");
	for (r = 0; r < PQntuples(res); r++)
		printf("%s\t%s\t%s\t%s\t%s\n", PQgetvalue(res, r, 0),
		       PQgetvalue(res, r, 1), PQgetvalue(res, r, 2),
		       PQgetvalue(res, r, 3), PQgetvalue(res, r, 4));
	PQclear(res);
	tally_pg_free(pg);
	return 0;
fail:
	fprintf(stderr, "tally prices list: %s\n", err.msg);
	PQclear(res);
	tally_pg_free(pg);
	return 1;
}

int tally_cmd_prices(tally_cli *cli, int argc, char **argv)
{
	if (argc >= 2 && strcmp(argv[1], "import") == 0)
		return cmd_import(cli, argc, argv);
	if (argc >= 2 && strcmp(argv[1], "list") == 0)
		return cmd_list(cli, argc, argv);
	fprintf(stderr, "usage: tally prices import FILE | list\n");
	return 2;
}
