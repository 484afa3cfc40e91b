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

typedef struct produce_opts {
	const char *topic, *file, *schema;
	bool skip_invalid;
	int64_t partitions; /* --create-topic; 0: none */
} produce_opts;

/* One run: the producer, its delivery failures and the line counts. */
typedef struct produce_run {
	tally_producer *p;
	uint64_t failed;   /* deliveries that failed */
	uint64_t dreported; /* of them, printed */
	tally_error err;
	uint64_t lineno, produced, rejected, reported;
	int64_t t0;
} produce_run;

static void on_delivery(const tally_delivery *dr, void *payload)
{
	produce_run *r = payload;

	if (dr->code == 0)
		return;
	r->failed++;
	if (r->dreported++ < MAX_REPORTED)
		fprintf(stderr, "line %llu: delivery failed: %s\n",
			(unsigned long long)(uintptr_t)dr->opaque, dr->errstr);
}

static void usage_msg(void)
{
	fprintf(stderr, "usage: tally produce --topic T [FILE] "
			"[--skip-invalid] [--schema usage|rated|command]\n"
			"       [--create-topic PARTITIONS]\n");
}

/* argv into o; 0, or 2 once the usage is printed (also without --topic). */
static int parse_args(produce_opts *o, int argc, char **argv)
{
	int i;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc)
			o->topic = argv[++i];
		else if (strcmp(argv[i], "--schema") == 0 && i + 1 < argc)
			o->schema = argv[++i];
		else if (strcmp(argv[i], "--create-topic") == 0 &&
			 i + 1 < argc) {
			if (!tally_cli_parse_partitions(&o->partitions,
							argv[++i])) {
				usage_msg();
				return 2;
			}
		} else if (strcmp(argv[i], "--skip-invalid") == 0)
			o->skip_invalid = true;
		else if (argv[i][0] != '-' && o->file == NULL)
			o->file = argv[i];
		else if (strcmp(argv[i], "-") == 0 && o->file == NULL)
			o->file = NULL;
		else {
			usage_msg();
			return 2;
		}
	}
	if (o->topic == NULL) {
		usage_msg();
		return 2;
	}
	return 0;
}

/* The schema: --schema, else the one of the topic; 0, or 2 (usage). */
static int check_schema(produce_opts *o, tally_config *cfg)
{
	if (o->schema == NULL) {
		if (strcmp(o->topic, tally_config_str(cfg, "topics.commands")) ==
		    0)
			o->schema = "command";
		else if (strcmp(o->topic, tally_config_str(cfg, "topics.rated")) ==
			 0)
			o->schema = "rated";
		else
			o->schema = "usage";
	}
	if (strcmp(o->schema, "usage") != 0 && strcmp(o->schema, "rated") != 0 &&
	    strcmp(o->schema, "command") != 0) {
		usage_msg();
		return 2;
	}
	return 0;
}

/* Counts a rejected line; whether it is still one to print. */
static bool rejecting(produce_run *r)
{
	r->rejected++;
	return r->reported++ < MAX_REPORTED;
}

/* One JSON line: decode, validate, send; a bad line is counted and
 * reported, 1 only for an error that stops the run. */
static int produce_line(produce_run *r, char schema, const char *line,
			size_t n)
{
	void *opaque = (void *)(uintptr_t)r->lineno;
	json_t *j;
	tally_codec_error ce;
	tally_codec_msg ev;
	int vrc;

	if (tally_codec_json_line(&ev, schema, line, n, &j, &ce) != 0) {
		if (!rejecting(r))
			return 0;
		if (strcmp(ce.reason, "bad_json") == 0)
			fprintf(stderr, "line %llu: rejected: bad_json: %s\n",
				(unsigned long long)r->lineno, ce.detail);
		else
			fprintf(stderr, "line %llu: rejected: %s %s: %s\n",
				(unsigned long long)r->lineno, ce.reason,
				ce.field[0] ? ce.field : "-", ce.detail);
		return 0;
	}
	if (schema == 'c')
		vrc = tally_producer_send_command(r->p, &ev.command, opaque,
						  &r->err);
	else if (schema == 'r')
		vrc = tally_producer_send_rated(r->p, &ev.rated, opaque,
						&r->err);
	else
		vrc = tally_producer_send_usage(r->p, &ev.usage, opaque,
						&r->err);
	json_decref(j);
	if (vrc == TALLY_EINVALID) {
		if (rejecting(r))
			fprintf(stderr, "line %llu: rejected: %s\n",
				(unsigned long long)r->lineno, r->err.msg);
		return 0;
	}
	if (vrc != 0) {
		fprintf(stderr, "line %llu: %s\n", (unsigned long long)r->lineno,
			r->err.msg);
		return 1;
	}
	r->produced++;
	if (r->produced % 1024 == 0)
		tally_producer_poll(r->p, 0);
	return 0;
}

/* Every line of in, with progress on stderr; 1 when the run stops. */
static int produce_lines(produce_run *r, const produce_opts *o, FILE *in)
{
	char *line = NULL;
	size_t cap = 0;
	ssize_t n;
	int rc = 0;

	while (rc == 0 && (n = getline(&line, &cap, in)) >= 0) {
		r->lineno++;
		while (n > 0 && (line[n - 1] == '\n' || line[n - 1] == '\r'))
			n--;
		if (n == 0)
			continue;
		if (r->lineno % 100000 == 0)
			fprintf(stderr, "produce: %llu lines, %llu produced, "
				"%llu rejected, %lld ms\n",
				(unsigned long long)r->lineno,
				(unsigned long long)r->produced,
				(unsigned long long)r->rejected,
				(long long)(tally_now_ms() - r->t0));
		rc = produce_line(r, o->schema[0], line, (size_t)n);
	}
	free(line);
	return rc;
}

/* Waits for every delivery, prints the summary; the exit status. */
static int finish(produce_run *r, const produce_opts *o)
{
	uint64_t delivered = 0, dfailed = 0;
	int64_t ms;

	if (r->reported > MAX_REPORTED)
		fprintf(stderr, "produce: %llu more rejections not shown\n",
			(unsigned long long)(r->reported - MAX_REPORTED));
	if (tally_cli_drain(r->p, "produce") != 0)
		return 1;
	tally_producer_counts(r->p, &delivered, &dfailed);
	ms = tally_now_ms() - r->t0;
	printf("produce: topic %s, %llu lines, %llu produced, "
	       "%llu delivered, %llu failed, %llu rejected, "
	       "%lld ms (%lld events/s)\n",
	       o->topic, (unsigned long long)r->lineno,
	       (unsigned long long)r->produced, (unsigned long long)delivered,
	       (unsigned long long)dfailed, (unsigned long long)r->rejected,
	       (long long)ms,
	       (long long)(ms > 0 ? (int64_t)delivered * 1000 / ms :
				    (int64_t)delivered));
	return (dfailed > 0 || delivered != r->produced ||
		(r->rejected > 0 && !o->skip_invalid)) ? 1 : 0;
}

int tally_cmd_produce(tally_cli *cli, int argc, char **argv)
{
	produce_opts o = { 0 };
	produce_run r;
	tally_producer_opts popts = { 0 };
	tally_config *cfg;
	FILE *in = stdin;
	int rc;

	rc = parse_args(&o, argc, argv);
	if (rc != 0)
		return rc;
	if (tally_cli_config(cli, &cfg) != 0)
		return 1;
	rc = check_schema(&o, cfg);
	if (rc != 0)
		return rc;
	if (o.file != NULL) {
		in = fopen(o.file, "r");
		if (in == NULL) {
			fprintf(stderr, "tally produce: cannot open %s\n", o.file);
			return 1;
		}
	}
	memset(&r, 0, sizeof(r));
	tally_error_clear(&r.err);
	popts.topic = o.topic;
	popts.on_delivery = on_delivery;
	popts.payload = &r;
	popts.ce_source = "tally-produce";
	rc = 1;
	if (tally_producer_new(&r.p, cfg, &popts, &r.err) != 0) {
		fprintf(stderr, "tally produce: %s\n", r.err.msg);
		goto cleanup;
	}
	if (tally_cli_create_topic(r.p, o.topic, o.partitions, "produce") != 0)
		goto cleanup;
	r.t0 = tally_now_ms();
	if (produce_lines(&r, &o, in) == 0)
		rc = finish(&r, &o);
cleanup:
	tally_producer_free(r.p);
	if (in != stdin)
		fclose(in);
	return rc;
}
