/*
 * cmd_rate.c - `tally rate [--prices FILE] [--unpriced dead_letter|zero]
 * [--bench N]`: usage events as JSON lines on stdin -> the same lines plus
 * `cost` (exact decimal string), `currency`, `price_id`, `components` and
 * `price_model` (provider:model the price came from). Bad lines are
 * reported on stderr with their line number and skipped; exit 1 if any.
 * Without --prices the book is loaded from PostgreSQL (database.url).
 * --bench N rates the input N times in memory and reports events/s on one
 * core instead of printing lines.
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"
#include "tally/codec_json.h"
#include "tally/money.h"
#include "tally/pricebook_pg.h"
#include "tally/rating.h"

#include <inttypes.h>
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char tally_cmd_rate_help[] =
	"rate usage JSON lines from stdin [--prices GENAI_JSON] "
	"[--unpriced dead_letter|zero] [--bench N]";

static const char *const comp_names[TALLY_COMP_N] = {
	"input", "cache_read", "cache_write", "output", "reasoning",
	"requests", "units",
};

static void set_money(json_t *o, const char *k, int64_t pico)
{
	char buf[48];

	tally_money_fmt(buf, sizeof(buf), pico);
	json_object_set_new(o, k, json_string(buf));
}

typedef struct bench_ev {
	json_t *obj;
	tally_usage_event ev;
} bench_ev;

static int run_bench(const tally_pricebook *pb, bench_ev *evs, size_t n,
		     int64_t rounds)
{
	tally_rate_ctx *ctx = tally_rate_ctx_new();
	tally_rated_event out;
	int64_t r, t0 = 0, t1, total = 0, sum = 0;
	size_t i;

	for (r = 0; r < rounds; r++) {
		if (r == 1)
			t0 = tally_mono_ns();
		for (i = 0; i < n; i++) {
			if (tally_rate_event(&out, pb, &evs[i].ev, ctx, NULL) ==
			    0)
				sum += out.cost;
			if (r > 0)
				total++;
		}
	}
	if (rounds < 2) {
		fprintf(stderr, "tally rate: --bench needs N >= 2\n");
		tally_rate_ctx_free(ctx);
		return 2;
	}
	t1 = tally_mono_ns();
	printf("{\"events\":%" PRId64 ",\"seconds\":%" PRId64 ".%03" PRId64
	       ",\"events_per_s\":%" PRId64 ",\"checksum\":%" PRId64 "}\n",
	       total, (t1 - t0) / 1000000000, (t1 - t0) / 1000000 % 1000,
	       t1 > t0 ? (int64_t)((__int128)total * 1000000000 / (t1 - t0))
		       : 0,
	       sum);
	tally_rate_ctx_free(ctx);
	return 0;
}

int tally_cmd_rate(tally_cli *cli, int argc, char **argv)
{
	const char *prices = NULL, *unpriced = NULL;
	tally_pricebook *pb = NULL;
	tally_rate_ctx *ctx = NULL;
	tally_config *cfg = NULL;
	tally_error err;
	char *line = NULL;
	size_t cap = 0, nbench = 0, capbench = 0, i;
	ssize_t len;
	int64_t lineno = 0, bad = 0, bench = 0;
	bench_ev *evs = NULL;
	bool zero;
	int rc = 0;

	for (i = 1; i < (size_t)argc; i++) {
		if (strcmp(argv[i], "--prices") == 0 && i + 1 < (size_t)argc) {
			prices = argv[++i];
		} else if (strcmp(argv[i], "--unpriced") == 0 &&
			   i + 1 < (size_t)argc) {
			unpriced = argv[++i];
		} else if (strcmp(argv[i], "--bench") == 0 &&
			   i + 1 < (size_t)argc) {
			if (tally_parse_i64(&bench, argv[++i]) != 0 ||
			    bench < 2) {
				fprintf(stderr, "tally rate: bad --bench\n");
				return 2;
			}
		} else {
			fprintf(stderr, "usage: tally rate %s\n",
				tally_cmd_rate_help);
			return 2;
		}
	}
	if (tally_cli_config(cli, &cfg) != 0)
		return 1;
	if (unpriced == NULL)
		unpriced = tally_config_str(cfg, "rate.unpriced");
	if (strcmp(unpriced, "zero") != 0 &&
	    strcmp(unpriced, "dead_letter") != 0) {
		fprintf(stderr, "tally rate: rate.unpriced must be "
				"dead_letter or zero\n");
		return 2;
	}
	zero = strcmp(unpriced, "zero") == 0;
	tally_error_clear(&err);
	if (prices != NULL) {
		rc = tally_pricebook_load_genai_file(&pb, prices, &err);
	} else {
		tally_pg *pg = NULL;

		if (tally_cli_pg(cli, &pg) != 0)
			return 1;
		rc = tally_pricebook_load_pg(&pb, pg, &err);
		tally_pg_free(pg);
	}
	if (rc != 0) {
		fprintf(stderr, "tally rate: price book: %s\n", err.msg);
		return 1;
	}
	ctx = tally_rate_ctx_new();
	while ((len = getline(&line, &cap, stdin)) >= 0) {
		json_t *obj;
		json_error_t jerr;
		tally_usage_event ev;
		tally_codec_error cerr;
		tally_rated_event re;
		tally_rate_detail det;
		json_t *comps;
		char pm[600];
		int k;

		lineno++;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (len == 0)
			continue;
		obj = json_loadb(line, (size_t)len, 0, &jerr);
		if (obj == NULL) {
			fprintf(stderr, "line %" PRId64 ": invalid JSON: %s\n",
				lineno, jerr.text);
			bad++;
			continue;
		}
		memset(&cerr, 0, sizeof(cerr));
		if (tally_codec_usage_from_json(&ev, obj, &cerr) != 0) {
			fprintf(stderr, "line %" PRId64 ": %s: %s %s\n", lineno,
				cerr.reason, cerr.field, cerr.detail);
			json_decref(obj);
			bad++;
			continue;
		}
		if (bench > 0) {
			if (nbench == capbench) {
				capbench = capbench ? capbench * 2 : 1024;
				evs = tally_xrealloc(evs,
						     capbench * sizeof(*evs));
			}
			evs[nbench].obj = obj; /* ev borrows from obj */
			evs[nbench++].ev = ev;
			continue;
		}
		tally_error_clear(&err);
		rc = tally_rate_event_ex(&re, &det, pb, &ev, ctx, &err);
		if (rc != 0 && !(rc == TALLY_ENOTFOUND && zero)) {
			fprintf(stderr, "line %" PRId64 ": %s: %s\n", lineno,
				rc == TALLY_ENOTFOUND ? "unpriced"
						      : tally_err_name(rc),
				err.msg);
			json_decref(obj);
			bad++;
			continue;
		}
		set_money(obj, "cost", re.cost);
		json_object_set_new(obj, "currency", json_string(re.currency));
		json_object_set_new(obj, "price_id",
				    json_integer((json_int_t)re.price_id));
		comps = json_object();
		for (k = 0; k < TALLY_COMP_N; k++)
			if (re.components[k] != 0)
				set_money(comps, comp_names[k],
					  re.components[k]);
		json_object_set_new(obj, "components", comps);
		if (det.model_id != NULL) {
			snprintf(pm, sizeof(pm), "%s:%s", det.provider_id,
				 det.model_id);
			json_object_set_new(obj, "price_model", json_string(pm));
		}
		if (det.override_id != 0)
			json_object_set_new(obj, "override_id",
					    json_integer(det.override_id));
		if (re.unpriced)
			json_object_set_new(obj, "unpriced", json_true());
		{
			char *s = json_dumps(obj, JSON_COMPACT |
							  JSON_PRESERVE_ORDER);
			fputs(s, stdout);
			fputc('\n', stdout);
			free(s);
		}
		json_decref(obj);
	}
	rc = bad > 0 ? 1 : 0;
	if (bench > 0) {
		if (nbench == 0) {
			fprintf(stderr, "tally rate: --bench: no events\n");
			rc = 1;
		} else {
			int brc = run_bench(pb, evs, nbench, bench);
			if (brc != 0)
				rc = brc;
		}
		for (i = 0; i < nbench; i++)
			json_decref(evs[i].obj);
		free(evs);
	}
	if (bad > 0)
		fprintf(stderr, "tally rate: %" PRId64 " bad line(s) of %" PRId64
				"\n", bad, lineno);
	free(line);
	tally_rate_ctx_free(ctx);
	tally_pricebook_free(pb);
	return rc;
}
