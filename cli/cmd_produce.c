/*
 * cmd_produce.c - `tally produce --topic T [FILE]`: JSON lines in, strictly
 * validated msgpack out. The schema follows the topic (topics.commands ->
 * command, topics.rated -> rated usage, anything else -> usage event) unless
 * --schema says otherwise. A bad line is counted and reported with its line
 * number and reason and never stops the run; the exit status says whether
 * everything was produced and acknowledged.
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"
#include "tally/codec_json.h"
#include "tally/kafka.h"
#include "tally/producer.h"

#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char tally_cmd_produce_help[] =
	"JSON lines -> validated msgpack on a topic: --topic T [FILE] "
	"[--skip-invalid] [--schema usage|rated|command] "
	"[--create-topic PARTITIONS]";

#define MAX_REPORTED 1000

typedef struct produce_ctx {
	uint64_t failed;
	uint64_t reported;
} produce_ctx;

static void on_delivery(const tally_delivery *dr, void *payload)
{
	produce_ctx *ctx = payload;

	if (dr->code == 0)
		return;
	ctx->failed++;
	if (ctx->reported++ < MAX_REPORTED)
		fprintf(stderr, "line %llu: delivery failed: %s\n",
			(unsigned long long)(uintptr_t)dr->opaque, dr->errstr);
}

static void usage_msg(void)
{
	fprintf(stderr, "usage: tally produce --topic T [FILE] "
			"[--skip-invalid] [--schema usage|rated|command]\n"
			"       [--create-topic PARTITIONS]\n");
}

int tally_cmd_produce(tally_cli *cli, int argc, char **argv)
{
	const char *topic = NULL, *file = NULL, *schema = NULL;
	bool skip_invalid = false;
	tally_config *cfg;
	tally_producer *p = NULL;
	tally_producer_opts opts = { 0 };
	produce_ctx ctx = { 0 };
	tally_error err;
	FILE *in = stdin;
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	uint64_t lineno = 0, produced = 0, rejected = 0, reported = 0;
	uint64_t delivered = 0, dfailed = 0;
	int64_t t0;
	int64_t partitions = 0;
	int i, rc = 1;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc)
			topic = argv[++i];
		else if (strcmp(argv[i], "--schema") == 0 && i + 1 < argc)
			schema = argv[++i];
		else if (strcmp(argv[i], "--create-topic") == 0 &&
			 i + 1 < argc) {
			if (tally_parse_i64(&partitions, argv[++i]) != 0 ||
			    partitions < 1 || partitions > 1000) {
				usage_msg();
				return 2;
			}
		} else if (strcmp(argv[i], "--skip-invalid") == 0)
			skip_invalid = true;
		else if (argv[i][0] != '-' && file == NULL)
			file = argv[i];
		else if (strcmp(argv[i], "-") == 0 && file == NULL)
			file = NULL;
		else {
			usage_msg();
			return 2;
		}
	}
	if (topic == NULL) {
		usage_msg();
		return 2;
	}
	if (tally_cli_config(cli, &cfg) != 0)
		return 1;
	if (schema == NULL) {
		if (strcmp(topic, tally_config_str(cfg, "topics.commands")) == 0)
			schema = "command";
		else if (strcmp(topic, tally_config_str(cfg, "topics.rated")) ==
			 0)
			schema = "rated";
		else
			schema = "usage";
	}
	if (strcmp(schema, "usage") != 0 && strcmp(schema, "rated") != 0 &&
	    strcmp(schema, "command") != 0) {
		usage_msg();
		return 2;
	}
	if (file != NULL) {
		in = fopen(file, "r");
		if (in == NULL) {
			fprintf(stderr, "tally produce: cannot open %s\n", file);
			return 1;
		}
	}
	tally_error_clear(&err);
	opts.topic = topic;
	opts.on_delivery = on_delivery;
	opts.payload = &ctx;
	opts.ce_source = "tally-produce";
	if (tally_producer_new(&p, cfg, &opts, &err) != 0) {
		fprintf(stderr, "tally produce: %s\n", err.msg);
		goto cleanup;
	}
	if (partitions > 0) {
		const char *topics[2] = { topic, NULL };

		if (tally_kafka_create_topics(tally_producer_rk(p), topics,
					      (int)partitions, &err) != 0) {
			fprintf(stderr, "tally produce: %s\n", err.msg);
			goto cleanup;
		}
	}
	t0 = tally_now_ms();
	while ((n = getline(&line, &cap, in)) >= 0) {
		json_error_t jerr;
		json_t *j;
		tally_codec_error ce;
		union {
			tally_usage_event u;
			tally_rated_event r;
			tally_command c;
		} ev;
		int vrc;
		void *opaque;

		lineno++;
		opaque = (void *)(uintptr_t)lineno;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			n--;
		if (n == 0)
			continue;
		if (lineno % 100000 == 0)
			fprintf(stderr, "produce: %llu lines, %llu produced, "
				"%llu rejected, %lld ms\n",
				(unsigned long long)lineno,
				(unsigned long long)produced,
				(unsigned long long)rejected,
				(long long)(tally_now_ms() - t0));
		j = json_loadb(line, (size_t)n, JSON_REJECT_DUPLICATES, &jerr);
		if (j == NULL) {
			rejected++;
			if (reported++ < MAX_REPORTED)
				fprintf(stderr, "line %llu: rejected: bad_json: "
					"%s\n", (unsigned long long)lineno,
					jerr.text);
			continue;
		}
		if (schema[0] == 'c')
			vrc = tally_codec_command_from_json(&ev.c, j, &ce);
		else if (schema[0] == 'r')
			vrc = tally_codec_rated_from_json(&ev.r, j, &ce);
		else
			vrc = tally_codec_usage_from_json(&ev.u, j, &ce);
		if (vrc != 0) {
			rejected++;
			if (reported++ < MAX_REPORTED)
				fprintf(stderr, "line %llu: rejected: %s %s: "
					"%s\n", (unsigned long long)lineno,
					ce.reason, ce.field[0] ? ce.field : "-",
					ce.detail);
			json_decref(j);
			continue;
		}
		if (schema[0] == 'c')
			vrc = tally_producer_send_command(p, &ev.c, opaque,
							  &err);
		else if (schema[0] == 'r')
			vrc = tally_producer_send_rated(p, &ev.r, opaque, &err);
		else
			vrc = tally_producer_send_usage(p, &ev.u, opaque, &err);
		json_decref(j);
		if (vrc == TALLY_EINVALID) {
			rejected++;
			if (reported++ < MAX_REPORTED)
				fprintf(stderr, "line %llu: rejected: %s\n",
					(unsigned long long)lineno, err.msg);
			continue;
		}
		if (vrc != 0) {
			fprintf(stderr, "line %llu: %s\n",
				(unsigned long long)lineno, err.msg);
			goto cleanup;
		}
		produced++;
		if (produced % 1024 == 0)
			tally_producer_poll(p, 0);
	}
	if (reported > MAX_REPORTED)
		fprintf(stderr, "produce: %llu more rejections not shown\n",
			(unsigned long long)(reported - MAX_REPORTED));
	/* every delivery report, not just the queue drained */
	while (tally_producer_outstanding(p) > 0) {
		if (tally_producer_flush(p, 60000, &err) != 0) {
			fprintf(stderr, "tally produce: %s\n", err.msg);
			goto cleanup;
		}
	}
	tally_producer_counts(p, &delivered, &dfailed);
	{
		int64_t ms = tally_now_ms() - t0;

		printf("produce: topic %s, %llu lines, %llu produced, "
		       "%llu delivered, %llu failed, %llu rejected, "
		       "%lld ms (%lld events/s)\n",
		       topic, (unsigned long long)lineno,
		       (unsigned long long)produced,
		       (unsigned long long)delivered,
		       (unsigned long long)dfailed,
		       (unsigned long long)rejected, (long long)ms,
		       (long long)(ms > 0 ? (int64_t)delivered * 1000 / ms :
					    (int64_t)delivered));
	}
	rc = (dfailed > 0 || delivered != produced ||
	      (rejected > 0 && !skip_invalid)) ? 1 : 0;
cleanup:
	tally_producer_free(p);
	free(line);
	if (in != stdin)
		fclose(in);
	return rc;
}
