/*
 * cmd_gen.c - `tally gen`: the deterministic workload generator. Prints
 * JSON lines (for `tally produce`, files, the demo) or, with --topic,
 * produces msgpack straight to Kafka through the producer API (the
 * benchmark's fast path). --expected FILE writes the exact per-tenant
 * totals of the unique events.
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"
#include "tally/gen.h"
#include "tally/kafka.h"
#include "tally/producer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char tally_cmd_gen_help[] =
	"deterministic workload: --events N --tenants T --from --to --seed "
	"--dup-frac --ooo-frac --late-frac --models --mix --expected --topic";

static void usage_msg(void)
{
	fprintf(stderr,
		"usage: tally gen [--events N] [--tenants T] [--from ISO] "
		"[--to ISO] [--seed S]\n"
		"                 [--dup-frac F] [--ooo-frac F] [--late-frac F]\n"
		"                 [--models FILE|provider:model,...] "
		"[--mix ai=70,workflow=20,storage=2,api=8]\n"
		"                 [--expected FILE] [--topic T "
		"[--create-topic PARTITIONS]]\n");
}

/* --models: a file with one provider:model per line, or a comma list. */
static int load_models(const char *arg, char ***out, size_t *n)
{
	FILE *fp = fopen(arg, "r");
	char **list = NULL, *line = NULL, *copy, *tok, *save = NULL;
	size_t cap = 0, cnt = 0;
	ssize_t len;

	if (fp != NULL) {
		while ((len = getline(&line, &cap, fp)) >= 0) {
			while (len > 0 && (line[len - 1] == '\n' ||
					   line[len - 1] == '\r' ||
					   line[len - 1] == ' '))
				line[--len] = '\0';
			if (len == 0 || line[0] == '#')
				continue;
			list = tally_xrealloc(list, (cnt + 1) * sizeof(*list));
			list[cnt++] = tally_xstrdup(line);
		}
		free(line);
		fclose(fp);
	} else {
		copy = tally_xstrdup(arg);
		for (tok = strtok_r(copy, ",", &save); tok != NULL;
		     tok = strtok_r(NULL, ",", &save)) {
			list = tally_xrealloc(list, (cnt + 1) * sizeof(*list));
			list[cnt++] = tally_xstrdup(tok);
		}
		free(copy);
	}
	*out = list;
	*n = cnt;
	for (cap = 0; cap < cnt; cap++)
		if (!tally_gen_model_ok(list[cap])) {
			fprintf(stderr, "tally gen: bad model '%s' (want "
				"provider:model)\n", list[cap]);
			return -1;
		}
	return cnt > 0 ? 0 : -1;
}

typedef struct gen_args {
	tally_gen_opts o;
	const char *expected, *topic;
	char **models; /* --models, owned */
	size_t nmodels;
	int64_t partitions; /* --create-topic; 0: none */
} gen_args;

/* One option and its value into a; whether the value is bad. */
static bool parse_option(gen_args *a, const char *name, const char *val)
{
	tally_gen_opts *o = &a->o;
	int64_t v;

	if (strcmp(name, "--events") == 0)
		return tally_parse_i64(&v, val) != 0 || v < 0 ||
		       !((o->events = (uint64_t)v), 1);
	if (strcmp(name, "--tenants") == 0)
		return tally_parse_i64(&v, val) != 0 || v < 1 || v > 10000000 ||
		       !((o->tenants = (uint32_t)v), 1);
	if (strcmp(name, "--seed") == 0)
		return tally_parse_i64(&v, val) != 0 ||
		       !((o->seed = (uint64_t)v), 1);
	if (strcmp(name, "--from") == 0)
		return tally_gen_parse_time(&o->from_ms, val) != 0;
	if (strcmp(name, "--to") == 0)
		return tally_gen_parse_time(&o->to_ms, val) != 0;
	if (strcmp(name, "--dup-frac") == 0)
		return tally_gen_parse_frac(&o->dup_frac, val) != 0;
	if (strcmp(name, "--ooo-frac") == 0)
		return tally_gen_parse_frac(&o->ooo_frac, val) != 0;
	if (strcmp(name, "--late-frac") == 0)
		return tally_gen_parse_frac(&o->late_frac, val) != 0;
	if (strcmp(name, "--mix") == 0)
		return tally_gen_parse_mix(o->mix, val) != 0;
	if (strcmp(name, "--models") == 0)
		return a->models != NULL ||
		       load_models(val, &a->models, &a->nmodels) != 0;
	if (strcmp(name, "--expected") == 0) {
		a->expected = val;
		return false;
	}
	if (strcmp(name, "--topic") == 0) {
		a->topic = val;
		return false;
	}
	if (strcmp(name, "--create-topic") == 0)
		return !tally_cli_parse_partitions(&a->partitions, val);
	return true;
}

/* argv (every option takes a value) into a; 0, or 2 once reported. */
static int parse_args(gen_args *a, int argc, char **argv)
{
	int i;

	tally_gen_opts_init(&a->o);
	for (i = 1; i < argc; i += 2) {
		if (i + 1 >= argc) {
			usage_msg();
			return 2;
		}
		if (parse_option(a, argv[i], argv[i + 1])) {
			fprintf(stderr, "tally gen: bad %s %s\n", argv[i],
				argv[i + 1]);
			usage_msg();
			return 2;
		}
	}
	a->o.models = (const char **)a->models;
	a->o.nmodels = a->nmodels;
	return 0;
}

/* --topic: the producer (and the topic); else a buffered stdout. */
static int open_sink(tally_cli *cli, const gen_args *a, tally_producer **p)
{
	static char obuf[1 << 16];
	tally_producer_opts popts = { 0 };
	tally_config *cfg;
	tally_error err;

	if (a->topic == NULL) {
		setvbuf(stdout, obuf, _IOFBF, sizeof(obuf));
		return 0;
	}
	if (tally_cli_config(cli, &cfg) != 0)
		return 1;
	tally_error_clear(&err);
	popts.topic = a->topic;
	popts.linger_ms = 20;
	if (tally_producer_new(p, cfg, &popts, &err) != 0) {
		fprintf(stderr, "tally gen: %s\n", err.msg);
		return 1;
	}
	return tally_cli_create_topic(*p, a->topic, a->partitions, "gen");
}

/* Every event of g to p, or as a JSON line to stdout; 1 on an error. */
static int emit_events(tally_gen *g, tally_producer *p, int64_t t0,
		       uint64_t *count)
{
	tally_usage_event ev;
	tally_error err;
	char line[2048];

	tally_error_clear(&err);
	while (tally_gen_next(g, &ev, NULL)) {
		(*count)++;
		if (p != NULL) {
			if (tally_producer_send_usage(p, &ev, NULL, &err) != 0) {
				fprintf(stderr, "tally gen: %s\n", err.msg);
				return 1;
			}
			if ((*count & 1023) == 0)
				tally_producer_poll(p, 0);
		} else {
			size_t n = tally_gen_format_json(line, sizeof(line) - 1,
							 &ev);

			line[n++] = '\n';
			fwrite(line, 1, n, stdout);
		}
		if (*count % 500000 == 0)
			fprintf(stderr, "gen: %llu events, %lld ms\n",
				(unsigned long long)*count,
				(long long)(tally_now_ms() - t0));
	}
	return 0;
}

/* --topic: waits for every delivery and reports; 1 if any failed. */
static int finish_topic(tally_producer *p, const char *topic, uint64_t count,
			int64_t t0)
{
	uint64_t delivered = 0, failed = 0;

	if (tally_cli_drain(p, "gen") != 0)
		return 1;
	tally_producer_counts(p, &delivered, &failed);
	fprintf(stderr, "gen: %llu events to %s, %llu delivered, "
		"%llu failed, %lld ms\n", (unsigned long long)count,
		topic, (unsigned long long)delivered,
		(unsigned long long)failed, (long long)(tally_now_ms() - t0));
	return failed > 0 ? 1 : 0;
}

/* --expected FILE: the exact per-tenant totals of the unique events. */
static int write_expected(tally_gen *g, const char *path)
{
	json_t *tot = tally_gen_totals_json(g);
	int rc = 0;

	if (json_dump_file(tot, path, JSON_INDENT(1)) != 0) {
		fprintf(stderr, "tally gen: cannot write %s\n", path);
		rc = 1;
	}
	json_decref(tot);
	return rc;
}

int tally_cmd_gen(tally_cli *cli, int argc, char **argv)
{
	gen_args a;
	tally_gen *g = NULL;
	tally_producer *p = NULL;
	tally_error err;
	int64_t t0 = tally_now_ms();
	uint64_t count = 0;
	size_t k;
	int rc;

	memset(&a, 0, sizeof(a));
	rc = parse_args(&a, argc, argv);
	if (rc != 0)
		goto cleanup;
	tally_error_clear(&err);
	if (tally_gen_new(&g, &a.o, &err) != 0) {
		fprintf(stderr, "tally gen: %s\n", err.msg);
		rc = 2;
		goto cleanup;
	}
	rc = 1;
	if (open_sink(cli, &a, &p) != 0 || emit_events(g, p, t0, &count) != 0)
		goto cleanup;
	if (p != NULL && finish_topic(p, a.topic, count, t0) != 0)
		goto cleanup;
	fflush(stdout);
	if (a.expected != NULL && write_expected(g, a.expected) != 0)
		goto cleanup;
	rc = 0;
cleanup:
	tally_producer_free(p);
	tally_gen_free(g);
	for (k = 0; k < a.nmodels; k++)
		free(a.models[k]);
	free(a.models);
	return rc;
}
