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

typedef struct rate_opts {
	const char *prices;   /* --prices FILE; NULL: the book in PostgreSQL */
	const char *unpriced; /* --unpriced, else rate.unpriced */
	int64_t bench;        /* --bench N; 0: print rated lines */
	bool zero;            /* unpriced events cost zero */
} rate_opts;

/* One run over stdin: the book and the counts (and --bench's events). */
typedef struct rate_run {
	const rate_opts *o;
	tally_pricebook *pb;
	tally_rate_ctx *ctx;
	int64_t lineno, bad;
	bench_ev *evs;
	size_t nbench, capbench;
} rate_run;

/* argv into o; 0, or 2 once the error is printed. */
static int parse_args(rate_opts *o, int argc, char **argv)
{
	int i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--prices") == 0 && i + 1 < argc) {
			o->prices = argv[++i];
		} else if (strcmp(argv[i], "--unpriced") == 0 && i + 1 < argc) {
			o->unpriced = argv[++i];
		} else if (strcmp(argv[i], "--bench") == 0 && i + 1 < argc) {
			if (tally_parse_i64(&o->bench, argv[++i]) != 0 ||
			    o->bench < 2) {
				fprintf(stderr, "tally rate: bad --bench\n");
				return 2;
			}
		} else {
			fprintf(stderr, "usage: tally rate %s\n",
				tally_cmd_rate_help);
			return 2;
		}
	}
	return 0;
}

/* --unpriced, else the config's: dead_letter or zero; 0, or 2. */
static int check_unpriced(rate_opts *o, tally_config *cfg)
{
	if (o->unpriced == NULL)
		o->unpriced = tally_config_str(cfg, "rate.unpriced");
	if (strcmp(o->unpriced, "zero") != 0 &&
	    strcmp(o->unpriced, "dead_letter") != 0) {
		fprintf(stderr, "tally rate: rate.unpriced must be "
				"dead_letter or zero\n");
		return 2;
	}
	o->zero = strcmp(o->unpriced, "zero") == 0;
	return 0;
}

/* The book from --prices, else from PostgreSQL; 0 or 1 (printed). */
static int load_book(tally_cli *cli, const rate_opts *o, tally_pricebook **pb)
{
	tally_error err;
	int rc;

	tally_error_clear(&err);
	if (o->prices != NULL) {
		rc = tally_pricebook_load_genai_file(pb, o->prices, &err);
	} else {
		tally_pg *pg = NULL;

		if (tally_cli_pg(cli, &pg) != 0)
			return 1;
		rc = tally_pricebook_load_pg(pb, pg, &err);
		tally_pg_free(pg);
	}
	if (rc != 0) {
		fprintf(stderr, "tally rate: price book: %s\n", err.msg);
		return 1;
	}
	return 0;
}

/* One line into a usage event that borrows from *obj; a bad line is
 * reported and counted (-1). */
static int read_event(rate_run *r, const char *line, size_t len,
		      json_t **obj, tally_usage_event *ev)
{
	json_error_t jerr;
	tally_codec_error cerr;

	*obj = json_loadb(line, len, 0, &jerr);
	if (*obj == NULL) {
		fprintf(stderr, "line %" PRId64 ": invalid JSON: %s\n",
			r->lineno, jerr.text);
		r->bad++;
		return -1;
	}
	memset(&cerr, 0, sizeof(cerr));
	if (tally_codec_usage_from_json(ev, *obj, &cerr) != 0) {
		fprintf(stderr, "line %" PRId64 ": %s: %s %s\n", r->lineno,
			cerr.reason, cerr.field, cerr.detail);
		json_decref(*obj);
		r->bad++;
		return -1;
	}
	return 0;
}

/* --bench: keeps obj and the event borrowing from it for the rounds. */
static void keep_for_bench(rate_run *r, json_t *obj,
			   const tally_usage_event *ev)
{
	if (r->nbench == r->capbench) {
		r->capbench = r->capbench ? r->capbench * 2 : 1024;
		r->evs = tally_xrealloc(r->evs, r->capbench * sizeof(*r->evs));
	}
	r->evs[r->nbench].obj = obj; /* ev borrows from obj */
	r->evs[r->nbench++].ev = *ev;
}

/* The rating's result added to the event's JSON object. */
static void add_rating(json_t *obj, const tally_rated_event *re,
		       const tally_rate_detail *det)
{
	json_t *comps = json_object();
	char pm[600];
	int k;

	set_money(obj, "cost", re->cost);
	json_object_set_new(obj, "currency", json_string(re->currency));
	json_object_set_new(obj, "price_id",
			    json_integer((json_int_t)re->price_id));
	for (k = 0; k < TALLY_COMP_N; k++)
		if (re->components[k] != 0)
			set_money(comps, comp_names[k], re->components[k]);
	json_object_set_new(obj, "components", comps);
	if (det->model_id != NULL) {
		snprintf(pm, sizeof(pm), "%s:%s", det->provider_id,
			 det->model_id);
		json_object_set_new(obj, "price_model", json_string(pm));
	}
	if (det->override_id != 0)
		json_object_set_new(obj, "override_id",
				    json_integer(det->override_id));
	if (re->unpriced)
		json_object_set_new(obj, "unpriced", json_true());
}

/* Rates ev and prints obj with its cost, or reports and counts the line;
 * takes obj. */
static void rate_line(rate_run *r, json_t *obj, const tally_usage_event *ev)
{
	tally_rated_event re;
	tally_rate_detail det;
	tally_error err;
	char *s;
	int rc;

	tally_error_clear(&err);
	rc = tally_rate_event_ex(&re, &det, r->pb, ev, r->ctx, &err);
	if (rc != 0 && !(rc == TALLY_ENOTFOUND && r->o->zero)) {
		fprintf(stderr, "line %" PRId64 ": %s: %s\n", r->lineno,
			rc == TALLY_ENOTFOUND ? "unpriced" : tally_err_name(rc),
			err.msg);
		json_decref(obj);
		r->bad++;
		return;
	}
	add_rating(obj, &re, &det);
	s = json_dumps(obj, JSON_COMPACT | JSON_PRESERVE_ORDER);
	fputs(s, stdout);
	fputc('\n', stdout);
	free(s);
	json_decref(obj);
}

/* Every line of stdin: rated and printed, or kept for --bench. */
static void rate_lines(rate_run *r)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t len;

	while ((len = getline(&line, &cap, stdin)) >= 0) {
		json_t *obj;
		tally_usage_event ev;

		r->lineno++;
		while (len > 0 && (line[len - 1] == '\n' || line[len - 1] == '\r'))
			line[--len] = '\0';
		if (len == 0)
			continue;
		if (read_event(r, line, (size_t)len, &obj, &ev) != 0)
			continue;
		if (r->o->bench > 0)
			keep_for_bench(r, obj, &ev);
		else
			rate_line(r, obj, &ev);
	}
	free(line);
}

/* --bench: the rounds over the kept events, then frees them; rc so far
 * or the bench's. */
static int bench_kept(rate_run *r, int rc)
{
	size_t i;

	if (r->nbench == 0) {
		fprintf(stderr, "tally rate: --bench: no events\n");
		rc = 1;
	} else {
		int brc = run_bench(r->pb, r->evs, r->nbench, r->o->bench);
		if (brc != 0)
			rc = brc;
	}
	for (i = 0; i < r->nbench; i++)
		json_decref(r->evs[i].obj);
	free(r->evs);
	return rc;
}

int tally_cmd_rate(tally_cli *cli, int argc, char **argv)
{
	rate_opts o = { 0 };
	rate_run r;
	tally_config *cfg = NULL;
	int rc;

	rc = parse_args(&o, argc, argv);
	if (rc != 0)
		return rc;
	if (tally_cli_config(cli, &cfg) != 0)
		return 1;
	rc = check_unpriced(&o, cfg);
	if (rc != 0)
		return rc;
	memset(&r, 0, sizeof(r));
	r.o = &o;
	if (load_book(cli, &o, &r.pb) != 0)
		return 1;
	r.ctx = tally_rate_ctx_new();
	rate_lines(&r);
	rc = r.bad > 0 ? 1 : 0;
	if (o.bench > 0)
		rc = bench_kept(&r, rc);
	if (r.bad > 0)
		fprintf(stderr, "tally rate: %" PRId64 " bad line(s) of %" PRId64
				"\n", r.bad, r.lineno);
	tally_rate_ctx_free(r.ctx);
	tally_pricebook_free(r.pb);
	return rc;
}
