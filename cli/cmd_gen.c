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

int tally_cmd_gen(tally_cli *cli, int argc, char **argv)
{
	tally_gen_opts o;
	tally_gen *g = NULL;
	tally_producer *p = NULL;
	tally_producer_opts popts = { 0 };
	tally_usage_event ev;
	tally_error err;
	const char *expected = NULL, *topic = NULL;
	char **models = NULL;
	size_t nmodels = 0, k;
	char line[2048];
	static char obuf[1 << 16];
	int64_t t0 = tally_now_ms(), v;
	uint64_t count = 0, delivered = 0, failed = 0;
	int64_t partitions = 0;
	int i, rc = 1;

	tally_gen_opts_init(&o);
	for (i = 1; i < argc; i++) {
		const char *a = argv[i], *val = i + 1 < argc ? argv[i + 1] : NULL;
		int bad = 0;

		if (val == NULL) {
			usage_msg();
			return 2;
		}
		if (strcmp(a, "--events") == 0)
			bad = tally_parse_i64(&v, val) != 0 || v < 0 ||
			      !((o.events = (uint64_t)v), 1);
		else if (strcmp(a, "--tenants") == 0)
			bad = tally_parse_i64(&v, val) != 0 || v < 1 ||
			      v > 10000000 || !((o.tenants = (uint32_t)v), 1);
		else if (strcmp(a, "--seed") == 0)
			bad = tally_parse_i64(&v, val) != 0 ||
			      !((o.seed = (uint64_t)v), 1);
		else if (strcmp(a, "--from") == 0)
			bad = tally_gen_parse_time(&o.from_ms, val) != 0;
		else if (strcmp(a, "--to") == 0)
			bad = tally_gen_parse_time(&o.to_ms, val) != 0;
		else if (strcmp(a, "--dup-frac") == 0)
			bad = tally_gen_parse_frac(&o.dup_frac, val) != 0;
		else if (strcmp(a, "--ooo-frac") == 0)
			bad = tally_gen_parse_frac(&o.ooo_frac, val) != 0;
		else if (strcmp(a, "--late-frac") == 0)
			bad = tally_gen_parse_frac(&o.late_frac, val) != 0;
		else if (strcmp(a, "--mix") == 0)
			bad = tally_gen_parse_mix(o.mix, val) != 0;
		else if (strcmp(a, "--models") == 0)
			bad = models != NULL ||
			      load_models(val, &models, &nmodels) != 0;
		else if (strcmp(a, "--expected") == 0)
			expected = val;
		else if (strcmp(a, "--topic") == 0)
			topic = val;
		else if (strcmp(a, "--create-topic") == 0)
			bad = tally_parse_i64(&partitions, val) != 0 ||
			      partitions < 1 || partitions > 1000;
		else
			bad = 1;
		if (bad) {
			fprintf(stderr, "tally gen: bad %s %s\n", a, val);
			usage_msg();
			rc = 2;
			goto cleanup;
		}
		i++;
	}
	o.models = (const char **)models;
	o.nmodels = nmodels;
	tally_error_clear(&err);
	if (tally_gen_new(&g, &o, &err) != 0) {
		fprintf(stderr, "tally gen: %s\n", err.msg);
		rc = 2;
		goto cleanup;
	}
	if (topic != NULL) {
		tally_config *cfg;

		if (tally_cli_config(cli, &cfg) != 0)
			goto cleanup;
		popts.topic = topic;
		popts.linger_ms = 20;
		if (tally_producer_new(&p, cfg, &popts, &err) != 0) {
			fprintf(stderr, "tally gen: %s\n", err.msg);
			goto cleanup;
		}
		if (partitions > 0) {
			const char *topics[2] = { topic, NULL };

			if (tally_kafka_create_topics(tally_producer_rk(p),
						      topics, (int)partitions,
						      &err) != 0) {
				fprintf(stderr, "tally gen: %s\n", err.msg);
				goto cleanup;
			}
		}
	} else {
		setvbuf(stdout, obuf, _IOFBF, sizeof(obuf));
	}
	while (tally_gen_next(g, &ev, NULL)) {
		count++;
		if (p != NULL) {
			if (tally_producer_send_usage(p, &ev, NULL, &err) != 0) {
				fprintf(stderr, "tally gen: %s\n", err.msg);
				goto cleanup;
			}
			if ((count & 1023) == 0)
				tally_producer_poll(p, 0);
		} else {
			size_t n = tally_gen_format_json(line, sizeof(line) - 1,
							 &ev);

			line[n++] = '\n';
			fwrite(line, 1, n, stdout);
		}
		if (count % 500000 == 0)
			fprintf(stderr, "gen: %llu events, %lld ms\n",
				(unsigned long long)count,
				(long long)(tally_now_ms() - t0));
	}
	if (p != NULL) {
		while (tally_producer_outstanding(p) > 0)
			if (tally_producer_flush(p, 60000, &err) != 0) {
				fprintf(stderr, "tally gen: %s\n", err.msg);
				goto cleanup;
			}
		tally_producer_counts(p, &delivered, &failed);
		fprintf(stderr, "gen: %llu events to %s, %llu delivered, "
			"%llu failed, %lld ms\n", (unsigned long long)count,
			topic, (unsigned long long)delivered,
			(unsigned long long)failed,
			(long long)(tally_now_ms() - t0));
		if (failed > 0)
			goto cleanup;
	}
	fflush(stdout);
	if (expected != NULL) {
		json_t *tot = tally_gen_totals_json(g);

		if (json_dump_file(tot, expected, JSON_INDENT(1)) != 0) {
			fprintf(stderr, "tally gen: cannot write %s\n",
				expected);
			json_decref(tot);
			goto cleanup;
		}
		json_decref(tot);
	}
	rc = 0;
cleanup:
	tally_producer_free(p);
	tally_gen_free(g);
	for (k = 0; k < nmodels; k++)
		free(models[k]);
	free(models);
	return rc;
}
