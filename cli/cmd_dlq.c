/*
 * cmd_dlq.c - `tally dlq list|replay`: what the consumers dead-lettered.
 *
 * list   reads a dead-letter topic from the beginning to its current end
 *        (no consumer group, nothing committed) and prints each message's
 *        coordinates and reason headers; --mirror also records them in the
 *        dead_letters table (idempotent on topic/partition/offset).
 * replay sends the messages (optionally only one reason) back to the topic
 *        they came from, with their original key, value and headers, plus
 *        x-tally-replayed-from. Consumers dedupe (usage on source+id,
 *        commands on id, Stripe events on event id), so a replay that is run
 *        twice counts nothing twice; a message that is still invalid simply
 *        returns to the dead-letter topic.
 */
#include "cli.h"
#include "tally/dead_letters.h"
#include "tally/kafka.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

const char tally_cmd_dlq_help[] =
	"dead letters: list [--topic T] [--mirror] | replay [--topic T] "
	"[--reason R] [--dry-run]";

typedef struct dlq_opts {
	const char *topic;
	const char *reason;
	bool mirror, replay, dry_run, json;
	int64_t limit;
} dlq_opts;

static void header_str(rd_kafka_headers_t *h, const char *name, char *out,
		       size_t n)
{
	const void *v = NULL;
	size_t len = 0;

	out[0] = '\0';
	if (h != NULL &&
	    rd_kafka_header_get_last(h, name, &v, &len) ==
		    RD_KAFKA_RESP_ERR_NO_ERROR && v != NULL) {
		if (len >= n)
			len = n - 1;
		memcpy(out, v, len);
		out[len] = '\0';
	}
}

/* The dead letter m (on the DLQ topic) into dead_letters, payload kept. */
static int mirror_row(tally_pg *pg, const rd_kafka_message_t *m,
		      const char *topic, const char *reason, const char *detail,
		      const char *consumer, tally_error *err)
{
	tally_dead_letter dl = { 0 };

	dl.topic = topic;
	dl.partition = m->partition;
	dl.offset = m->offset;
	dl.reason = reason;
	dl.detail = detail;
	dl.rkm = m;
	dl.keep_payload = true;
	return tally_dead_letter_write(pg, consumer, &dl, err);
}

/* What one run holds: the consumer, the snapshot's ends and the counts. */
typedef struct dlq_run {
	rd_kafka_t *rk, *producer;
	const struct rd_kafka_metadata *md;
	rd_kafka_topic_partition_list_t *parts;
	tally_pg *pg;
	tally_error err;
	int64_t *hw, seen, replayed, skipped;
	int np, done_parts;
	bool *done;
	json_t *arr; /* --json: the letters listed */
} dlq_run;

/* The x-tally-* headers a consumer put on a dead letter. */
typedef struct dlq_letter {
	rd_kafka_headers_t *h;
	char reason[64], detail[256], src[256], srcp[16], srco[24],
		consumer[64];
} dlq_letter;

/* A consumer that reads without a group commit and reports partition EOF. */
static int open_consumer(tally_config *cfg, dlq_run *st)
{
	rd_kafka_conf_t *conf = tally_kafka_conf(cfg);
	char errstr[256];

	if (tally_kafka_conf_set(conf, "group.id", "tally-dlq-cli",
				 &st->err) != 0 ||
	    tally_kafka_conf_set(conf, "enable.auto.commit", "false",
				 &st->err) != 0 ||
	    tally_kafka_conf_set(conf, "enable.partition.eof", "true",
				 &st->err) != 0) {
		fprintf(stderr, "tally dlq: %s\n", st->err.msg);
		rd_kafka_conf_destroy(conf);
		return 1;
	}
	st->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (st->rk == NULL) {
		fprintf(stderr, "tally dlq: %s\n", errstr);
		rd_kafka_conf_destroy(conf);
		return 1;
	}
	return 0;
}

/* The topic's partitions and their high watermarks now: what is read. */
static int snapshot_ends(dlq_run *st, const dlq_opts *o)
{
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(st->rk, o->topic, NULL);
	rd_kafka_resp_err_t e = rd_kafka_metadata(st->rk, 0, rkt, &st->md,
						  10000);
	const struct rd_kafka_metadata *md = st->md;
	int i;

	rd_kafka_topic_destroy(rkt);
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 ||
	    md->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		fprintf(stderr, "tally dlq: topic %s: %s\n", o->topic,
			rd_kafka_err2str(e ? e : md ? md->topics[0].err : e));
		return 1;
	}
	st->np = md->topics[0].partition_cnt;
	st->hw = tally_xcalloc((size_t)st->np, sizeof(*st->hw));
	st->done = tally_xcalloc((size_t)st->np, sizeof(*st->done));
	st->parts = rd_kafka_topic_partition_list_new(st->np);
	for (i = 0; i < st->np; i++) {
		int64_t lo = 0;
		int32_t pid = md->topics[0].partitions[i].id;
		if (rd_kafka_query_watermark_offsets(st->rk, o->topic, pid, &lo,
						     &st->hw[i], 10000) !=
		    RD_KAFKA_RESP_ERR_NO_ERROR) {
			fprintf(stderr, "tally dlq: watermarks of %s [%d]\n",
				o->topic, pid);
			return 1;
		}
		if (st->hw[i] <= lo) {
			st->done[i] = true;
			st->done_parts++;
		}
		rd_kafka_topic_partition_list_add(st->parts, o->topic, pid)
			->offset = RD_KAFKA_OFFSET_BEGINNING;
	}
	return 0;
}

/* --mirror: the database; replay: the producer the letters go back with. */
static int open_outputs(tally_cli *cli, tally_config *cfg, dlq_run *st,
			const dlq_opts *o)
{
	if (o->mirror && tally_cli_pg(cli, &st->pg) != 0)
		return 1;
	if (o->replay && !o->dry_run &&
	    tally_kafka_producer_new(&st->producer, tally_kafka_conf(cfg),
				     &st->err) != 0) {
		fprintf(stderr, "tally dlq: %s\n", st->err.msg);
		return 1;
	}
	return 0;
}

/* Whether m is a letter below the snapshot's end; marks ended partitions. */
static bool in_snapshot(dlq_run *st, const rd_kafka_message_t *m)
{
	if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF ||
	    (m->err == 0 && m->offset + 1 >= st->hw[m->partition])) {
		if (!st->done[m->partition]) {
			st->done[m->partition] = true;
			st->done_parts++;
		}
		if (m->err != 0)
			return false;
	} else if (m->err != 0) {
		fprintf(stderr, "tally dlq: %s\n", rd_kafka_message_errstr(m));
		return false;
	}
	return m->offset < st->hw[m->partition];
}

static void read_letter(rd_kafka_message_t *m, dlq_letter *l)
{
	if (rd_kafka_message_headers(m, &l->h) != RD_KAFKA_RESP_ERR_NO_ERROR)
		l->h = NULL;
	header_str(l->h, "x-tally-reason", l->reason, sizeof(l->reason));
	header_str(l->h, "x-tally-detail", l->detail, sizeof(l->detail));
	header_str(l->h, "x-tally-source-topic", l->src, sizeof(l->src));
	header_str(l->h, "x-tally-source-partition", l->srcp, sizeof(l->srcp));
	header_str(l->h, "x-tally-source-offset", l->srco, sizeof(l->srco));
	header_str(l->h, "x-tally-consumer", l->consumer, sizeof(l->consumer));
}

/* list: one table row, or one element of the --json array. */
static void show_letter(dlq_run *st, const dlq_opts *o,
			const rd_kafka_message_t *m, const dlq_letter *l)
{
	if (st->arr != NULL) {
		json_array_append_new(st->arr, json_pack(
			"{s:i,s:I,s:s,s:s,s:s,s:s,s:s,s:s}", "partition",
			(int)m->partition, "offset", (json_int_t)m->offset,
			"reason", l->reason, "detail", l->detail,
			"source_topic", l->src, "source_partition", l->srcp,
			"source_offset", l->srco, "consumer", l->consumer));
	} else if (!o->replay) {
		char where[300];
		snprintf(where, sizeof(where), "%s[%s]@%s", l->src, l->srcp,
			 l->srco);
		printf("%-4d %-10lld %-22s %-36s %s\n", (int)m->partition,
		       (long long)m->offset, l->reason, where, l->detail);
	}
}

/* m back to its source topic: its own headers plus x-tally-replayed-from. */
static int send_back(dlq_run *st, const dlq_opts *o,
		     const rd_kafka_message_t *m, const dlq_letter *l)
{
	rd_kafka_headers_t *nh = rd_kafka_headers_new(8);
	char from[320];
	size_t idx = 0;
	const char *hn;
	const void *hv;
	size_t hl;

	while (l->h != NULL &&
	       rd_kafka_header_get_all(l->h, idx++, &hn, &hv, &hl) == 0)
		if (strncmp(hn, "x-tally-", 8) != 0)
			rd_kafka_header_add(nh, hn, -1, hv, (ssize_t)hl);
	snprintf(from, sizeof(from), "%s/%d/%lld", o->topic, (int)m->partition,
		 (long long)m->offset);
	rd_kafka_header_add(nh, "x-tally-replayed-from", -1, from, -1);
	if (rd_kafka_producev(st->producer, RD_KAFKA_V_TOPIC(l->src),
			      RD_KAFKA_V_KEY(m->key, m->key_len),
			      RD_KAFKA_V_VALUE(m->payload, m->len),
			      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			      RD_KAFKA_V_HEADERS(nh), RD_KAFKA_V_END) != 0) {
		rd_kafka_headers_destroy(nh);
		fprintf(stderr, "tally dlq: produce to %s failed\n", l->src);
		return 1;
	}
	rd_kafka_poll(st->producer, 0);
	return 0;
}

/* replay: send m back, or with --dry-run say so; without a source skip it. */
static int replay_letter(dlq_run *st, const dlq_opts *o,
			 const rd_kafka_message_t *m, const dlq_letter *l)
{
	if (l->src[0] == '\0') {
		fprintf(stderr, "tally dlq: %s [%d] @%lld has no "
				"x-tally-source-topic; skipped\n",
			o->topic, (int)m->partition, (long long)m->offset);
		st->skipped++;
		return 0;
	}
	if (o->dry_run) {
		printf("would replay %s [%d] @%lld -> %s (%s)\n", o->topic,
		       (int)m->partition, (long long)m->offset, l->src,
		       l->reason);
	} else if (send_back(st, o, m, l) != 0) {
		return 1;
	}
	st->replayed++;
	return 0;
}

/* One letter of the snapshot: filter, show, mirror, replay; 1 stops all. */
static int handle_letter(dlq_run *st, const dlq_opts *o,
			 rd_kafka_message_t *m)
{
	dlq_letter l;

	st->seen++;
	read_letter(m, &l);
	if (o->reason != NULL && strcmp(o->reason, l.reason) != 0) {
		st->skipped++;
		return 0;
	}
	show_letter(st, o, m, &l);
	if (st->pg != NULL &&
	    mirror_row(st->pg, m, o->topic, l.reason, l.detail, l.consumer,
		       &st->err) != 0) {
		fprintf(stderr, "tally dlq: mirror: %s\n", st->err.msg);
		return 1;
	}
	if (o->replay)
		return replay_letter(st, o, m, &l);
	return 0;
}

/* Every partition up to its snapshot end (or --limit letters). */
static int read_letters(dlq_run *st, const dlq_opts *o)
{
	while (st->done_parts < st->np &&
	       (o->limit <= 0 || st->seen < o->limit)) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(st->rk, 1000);
		int rc;

		if (m == NULL)
			continue;
		rc = in_snapshot(st, m) ? handle_letter(st, o, m) : 0;
		rd_kafka_message_destroy(m);
		if (rc != 0)
			return rc;
	}
	return 0;
}

/* Waits for the replayed messages, then prints the --json array and counts. */
static int finish(dlq_run *st, const dlq_opts *o)
{
	if (st->producer != NULL && rd_kafka_flush(st->producer, 30000) != 0) {
		fprintf(stderr, "tally dlq: not every replayed message was "
				"acknowledged\n");
		return 1;
	}
	if (st->arr != NULL) {
		char *s = json_dumps(st->arr, JSON_INDENT(2));
		printf("%s\n", s);
		free(s);
	}
	if (o->replay)
		fprintf(stderr, "tally dlq: %lld replayed, %lld skipped of %lld\n",
			(long long)st->replayed, (long long)st->skipped,
			(long long)st->seen);
	else
		fprintf(stderr, "tally dlq: %lld dead letters in %s\n",
			(long long)(st->seen - st->skipped), o->topic);
	return 0;
}

static void dlq_run_free(dlq_run *st)
{
	json_decref(st->arr);
	if (st->producer != NULL)
		rd_kafka_destroy(st->producer);
	if (st->parts != NULL)
		rd_kafka_topic_partition_list_destroy(st->parts);
	if (st->md != NULL)
		rd_kafka_metadata_destroy(st->md);
	free(st->hw);
	free(st->done);
	tally_pg_free(st->pg);
	rd_kafka_consumer_close(st->rk);
	rd_kafka_destroy(st->rk);
}

static int run(tally_cli *cli, const dlq_opts *o)
{
	tally_config *cfg;
	dlq_run st;
	int rc = 1;

	memset(&st, 0, sizeof(st));
	if (tally_cli_config(cli, &cfg) != 0)
		return 1;
	tally_error_clear(&st.err);
	if (open_consumer(cfg, &st) != 0)
		return 1;
	st.arr = o->json ? json_array() : NULL;
	if (snapshot_ends(&st, o) != 0 || open_outputs(cli, cfg, &st, o) != 0)
		goto cleanup;
	rd_kafka_assign(st.rk, st.parts);
	if (!o->json && !o->replay)
		printf("%-4s %-10s %-22s %-36s %s\n", "part", "offset", "reason",
		       "source", "detail");
	if (read_letters(&st, o) != 0 || finish(&st, o) != 0)
		goto cleanup;
	rc = 0;
cleanup:
	dlq_run_free(&st);
	return rc;
}

/* list|replay and its options into o; 0, or 2 once the error is printed. */
static int parse_args(dlq_opts *o, int argc, char **argv)
{
	int i;

	if (argc < 2 || (strcmp(argv[1], "list") != 0 &&
			 strcmp(argv[1], "replay") != 0)) {
		fprintf(stderr, "usage: tally dlq list [--topic T] [--limit N] "
				"[--json] [--mirror]\n"
				"       tally dlq replay [--topic T] [--reason R] "
				"[--dry-run]\n"
				"T defaults to topics.usage + kafka.dlq_suffix\n");
		return 2;
	}
	o->replay = strcmp(argv[1], "replay") == 0;
	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc)
			o->topic = argv[++i];
		else if (strcmp(argv[i], "--reason") == 0 && i + 1 < argc)
			o->reason = argv[++i];
		else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc) {
			if (tally_parse_i64(&o->limit, argv[++i]) != 0 ||
			    o->limit < 0) {
				fprintf(stderr, "tally dlq: bad --limit\n");
				return 2;
			}
		} else if (strcmp(argv[i], "--mirror") == 0)
			o->mirror = true;
		else if (strcmp(argv[i], "--json") == 0)
			o->json = true;
		else if (strcmp(argv[i], "--dry-run") == 0)
			o->dry_run = true;
		else {
			fprintf(stderr, "tally dlq: unknown argument %s\n", argv[i]);
			return 2;
		}
	}
	return 0;
}

int tally_cmd_dlq(tally_cli *cli, int argc, char **argv)
{
	dlq_opts o;
	tally_config *cfg;
	char deftopic[256];
	int rc;

	memset(&o, 0, sizeof(o));
	rc = parse_args(&o, argc, argv);
	if (rc != 0)
		return rc;
	if (o.topic == NULL) {
		if (tally_cli_config(cli, &cfg) != 0)
			return 1;
		snprintf(deftopic, sizeof(deftopic), "%s%s",
			 tally_config_str(cfg, "topics.usage"),
			 tally_config_str(cfg, "kafka.dlq_suffix"));
		o.topic = deftopic;
	}
	return run(cli, &o);
}
