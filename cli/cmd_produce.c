/*
 * cmd_produce.c - `tally produce --topic T [FILE]`: JSON lines in, strictly
 * validated msgpack out, parsed by several threads (tally/backfill.h;
 * --threads, default one fewer than the CPUs, at least one) and produced
 * in large batches. The
 * schema follows the topic (topics.commands -> command, topics.rated ->
 * rated usage, anything else -> usage event) unless --schema says
 * otherwise. A bad line is counted and reported with its line number and
 * reason and never stops the run; progress goes to stderr at most once a
 * second; the exit status says whether everything was produced and
 * acknowledged.
 */
#define _POSIX_C_SOURCE 200809L
#include "cli.h"
#include "tally/backfill.h"
#include "tally/kafka.h"
#include "tally/producer.h"

#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

const char tally_cmd_produce_help[] =
	"JSON lines -> validated msgpack on a topic: --topic T [FILE] "
	"[--skip-invalid] [--schema usage|rated|command] "
	"[--create-topic PARTITIONS] [--threads N]";

#define MAX_REPORTED 1000

typedef struct produce_opts {
	const char *topic, *file, *schema;
	bool skip_invalid;
	int64_t partitions; /* --create-topic; 0: none */
	int64_t threads;    /* --threads; 0: the backfill's default */
} produce_opts;

/* One run: the producer and the counts. */
typedef struct produce_run {
	tally_producer *p;
	uint64_t dreported; /* failed deliveries printed (atomic: reports
			     * are served on the parser threads too) */
	tally_backfill_stats st;
	int64_t t0;
} produce_run;

static void on_delivery(const tally_delivery *dr, void *payload)
{
	produce_run *r = payload;

	if (dr->code == 0)
		return;
	if (__atomic_fetch_add(&r->dreported, 1, __ATOMIC_RELAXED) <
	    MAX_REPORTED)
		fprintf(stderr, "line %llu: delivery failed: %s\n",
			(unsigned long long)(uintptr_t)dr->opaque, dr->errstr);
}

static void usage_msg(void)
{
	fprintf(stderr, "usage: tally produce --topic T [FILE] "
			"[--skip-invalid] [--schema usage|rated|command]\n"
			"       [--create-topic PARTITIONS] [--threads N]\n");
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
		} else if (strcmp(argv[i], "--threads") == 0 && i + 1 < argc) {
			if (tally_parse_i64(&o->threads, argv[++i]) != 0 ||
			    o->threads < 1 || o->threads > 64) {
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

/* Waits for every delivery, prints the summary; the exit status. */
static int finish(produce_run *r, const produce_opts *o)
{
	uint64_t delivered = 0, dfailed = 0;
	int64_t ms;

	if (r->st.reported > MAX_REPORTED)
		fprintf(stderr, "produce: %llu more rejections not shown\n",
			(unsigned long long)(r->st.reported - MAX_REPORTED));
	if (tally_cli_drain(r->p, "produce") != 0)
		return 1;
	tally_producer_counts(r->p, &delivered, &dfailed);
	ms = tally_now_ms() - r->t0;
	printf("produce: topic %s, %llu lines, %llu produced, "
	       "%llu delivered, %llu failed, %llu rejected, "
	       "%lld ms (%lld events/s)\n",
	       o->topic, (unsigned long long)r->st.lines,
	       (unsigned long long)r->st.produced,
	       (unsigned long long)delivered, (unsigned long long)dfailed,
	       (unsigned long long)r->st.rejected, (long long)ms,
	       (long long)(ms > 0 ? (int64_t)delivered * 1000 / ms :
				    (int64_t)delivered));
	return (dfailed > 0 || delivered != r->st.produced ||
		(r->st.rejected > 0 && !o->skip_invalid)) ? 1 : 0;
}

static tally_json_schema schema_of(const produce_opts *o)
{
	if (o->schema[0] == 'c')
		return TALLY_JSON_COMMAND;
	return o->schema[0] == 'r' ? TALLY_JSON_RATED : TALLY_JSON_USAGE;
}

int tally_cmd_produce(tally_cli *cli, int argc, char **argv)
{
	produce_opts o = { 0 };
	produce_run r;
	tally_producer_opts popts = { 0 };
	tally_backfill_opts bo = { 0 };
	tally_config *cfg;
	tally_error err;
	int fd = 0, rc;

	rc = parse_args(&o, argc, argv);
	if (rc != 0)
		return rc;
	if (tally_cli_config(cli, &cfg) != 0)
		return 1;
	rc = check_schema(&o, cfg);
	if (rc != 0)
		return rc;
	if (o.file != NULL) {
		fd = open(o.file, O_RDONLY | O_CLOEXEC);
		if (fd < 0) {
			fprintf(stderr, "tally produce: cannot open %s\n", o.file);
			return 1;
		}
	}
	memset(&r, 0, sizeof(r));
	tally_error_clear(&err);
	popts.topic = o.topic;
	popts.on_delivery = on_delivery;
	popts.payload = &r;
	popts.ce_source = "tally-produce";
	popts.linger_ms = 50;
	popts.bulk = true;
	rc = 1;
	if (tally_producer_new(&r.p, cfg, &popts, &err) != 0) {
		fprintf(stderr, "tally produce: %s\n", err.msg);
		goto cleanup;
	}
	if (tally_cli_create_topic(r.p, o.topic, o.partitions, "produce") != 0)
		goto cleanup;
	bo.fd = fd;
	bo.schema = schema_of(&o);
	bo.producer = r.p;
	bo.threads = (int)o.threads;
	bo.report = stderr;
	bo.max_reported = MAX_REPORTED;
	r.t0 = tally_now_ms();
	if (tally_backfill_run(&bo, &r.st, &err) == 0)
		rc = finish(&r, &o);
	else
		fprintf(stderr, "tally produce: %s\n", err.msg);
cleanup:
	tally_producer_free(r.p);
	if (fd != 0)
		close(fd);
	return rc;
}
