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

static int run(tally_cli *cli, const dlq_opts *o)
{
	tally_config *cfg;
	rd_kafka_conf_t *conf;
	rd_kafka_t *rk = NULL, *producer = NULL;
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_topic_partition_list_t *parts = NULL;
	tally_pg *pg = NULL;
	tally_error err;
	char errstr[256];
	int64_t *hw = NULL, seen = 0, replayed = 0, skipped = 0;
	int np = 0, i, rc = 1, done_parts = 0;
	bool *done = NULL;
	json_t *arr = o->json ? json_array() : NULL;

	if (tally_cli_config(cli, &cfg) != 0)
		return 1;
	tally_error_clear(&err);
	conf = tally_kafka_conf(cfg);
	if (tally_kafka_conf_set(conf, "group.id", "tally-dlq-cli", &err) != 0 ||
	    tally_kafka_conf_set(conf, "enable.auto.commit", "false", &err) != 0 ||
	    tally_kafka_conf_set(conf, "enable.partition.eof", "true", &err) != 0) {
		fprintf(stderr, "tally dlq: %s\n", err.msg);
		rd_kafka_conf_destroy(conf);
		return 1;
	}
	rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (rk == NULL) {
		fprintf(stderr, "tally dlq: %s\n", errstr);
		rd_kafka_conf_destroy(conf);
		return 1;
	}
	{
		rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, o->topic, NULL);
		rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md, 10000);
		rd_kafka_topic_destroy(rkt);
		if (e != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 ||
		    md->topics[0].err != RD_KAFKA_RESP_ERR_NO_ERROR) {
			fprintf(stderr, "tally dlq: topic %s: %s\n", o->topic,
				rd_kafka_err2str(e ? e : md ? md->topics[0].err : e));
			goto cleanup;
		}
	}
	np = md->topics[0].partition_cnt;
	hw = tally_xcalloc((size_t)np, sizeof(*hw));
	done = tally_xcalloc((size_t)np, sizeof(*done));
	parts = rd_kafka_topic_partition_list_new(np);
	for (i = 0; i < np; i++) {
		int64_t lo = 0;
		int32_t pid = md->topics[0].partitions[i].id;
		if (rd_kafka_query_watermark_offsets(rk, o->topic, pid, &lo,
						     &hw[i], 10000) !=
		    RD_KAFKA_RESP_ERR_NO_ERROR) {
			fprintf(stderr, "tally dlq: watermarks of %s [%d]\n",
				o->topic, pid);
			goto cleanup;
		}
		if (hw[i] <= lo) {
			done[i] = true;
			done_parts++;
		}
		rd_kafka_topic_partition_list_add(parts, o->topic, pid)->offset =
			RD_KAFKA_OFFSET_BEGINNING;
	}
	if (o->mirror && tally_cli_pg(cli, &pg) != 0)
		goto cleanup;
	if (o->replay && !o->dry_run &&
	    tally_kafka_producer_new(&producer, tally_kafka_conf(cfg), &err) != 0) {
		fprintf(stderr, "tally dlq: %s\n", err.msg);
		goto cleanup;
	}
	rd_kafka_assign(rk, parts);
	if (!o->json && !o->replay)
		printf("%-4s %-10s %-22s %-36s %s\n", "part", "offset", "reason",
		       "source", "detail");
	while (done_parts < np && (o->limit <= 0 || seen < o->limit)) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 1000);
		rd_kafka_headers_t *h = NULL;
		char reason[64], detail[256], src[256], srcp[16], srco[24],
			consumer[64];

		if (m == NULL)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF ||
		    (m->err == 0 && m->offset + 1 >= hw[m->partition])) {
			if (!done[m->partition]) {
				done[m->partition] = true;
				done_parts++;
			}
			if (m->err != 0) {
				rd_kafka_message_destroy(m);
				continue;
			}
		} else if (m->err != 0) {
			fprintf(stderr, "tally dlq: %s\n",
				rd_kafka_message_errstr(m));
			rd_kafka_message_destroy(m);
			continue;
		}
		if (m->offset >= hw[m->partition]) {
			rd_kafka_message_destroy(m);
			continue;
		}
		seen++;
		if (rd_kafka_message_headers(m, &h) != RD_KAFKA_RESP_ERR_NO_ERROR)
			h = NULL;
		header_str(h, "x-tally-reason", reason, sizeof(reason));
		header_str(h, "x-tally-detail", detail, sizeof(detail));
		header_str(h, "x-tally-source-topic", src, sizeof(src));
		header_str(h, "x-tally-source-partition", srcp, sizeof(srcp));
		header_str(h, "x-tally-source-offset", srco, sizeof(srco));
		header_str(h, "x-tally-consumer", consumer, sizeof(consumer));
		if (o->reason != NULL && strcmp(o->reason, reason) != 0) {
			skipped++;
			rd_kafka_message_destroy(m);
			continue;
		}
		if (arr != NULL) {
			json_array_append_new(arr, json_pack(
				"{s:i,s:I,s:s,s:s,s:s,s:s,s:s,s:s}", "partition",
				(int)m->partition, "offset", (json_int_t)m->offset,
				"reason", reason, "detail", detail, "source_topic",
				src, "source_partition", srcp, "source_offset",
				srco, "consumer", consumer));
		} else if (!o->replay) {
			char where[300];
			snprintf(where, sizeof(where), "%s[%s]@%s", src, srcp, srco);
			printf("%-4d %-10lld %-22s %-36s %s\n", (int)m->partition,
			       (long long)m->offset, reason, where, detail);
		}
		if (pg != NULL &&
		    mirror_row(pg, m, o->topic, reason, detail, consumer, &err) != 0) {
			fprintf(stderr, "tally dlq: mirror: %s\n", err.msg);
			rd_kafka_message_destroy(m);
			goto cleanup;
		}
		if (o->replay) {
			if (src[0] == '\0') {
				fprintf(stderr, "tally dlq: %s [%d] @%lld has no "
						"x-tally-source-topic; skipped\n",
					o->topic, (int)m->partition,
					(long long)m->offset);
				skipped++;
			} else if (o->dry_run) {
				printf("would replay %s [%d] @%lld -> %s (%s)\n",
				       o->topic, (int)m->partition,
				       (long long)m->offset, src, reason);
				replayed++;
			} else {
				rd_kafka_headers_t *nh = rd_kafka_headers_new(8);
				char from[320];
				size_t idx = 0;
				const char *hn;
				const void *hv;
				size_t hl;

				while (h != NULL &&
				       rd_kafka_header_get_all(h, idx++, &hn, &hv,
							       &hl) == 0)
					if (strncmp(hn, "x-tally-", 8) != 0)
						rd_kafka_header_add(nh, hn, -1, hv,
								    (ssize_t)hl);
				snprintf(from, sizeof(from), "%s/%d/%lld",
					 o->topic, (int)m->partition,
					 (long long)m->offset);
				rd_kafka_header_add(nh, "x-tally-replayed-from", -1,
						    from, -1);
				if (rd_kafka_producev(producer,
					RD_KAFKA_V_TOPIC(src),
					RD_KAFKA_V_KEY(m->key, m->key_len),
					RD_KAFKA_V_VALUE(m->payload, m->len),
					RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
					RD_KAFKA_V_HEADERS(nh),
					RD_KAFKA_V_END) != 0) {
					rd_kafka_headers_destroy(nh);
					fprintf(stderr, "tally dlq: produce to %s "
							"failed\n", src);
					rd_kafka_message_destroy(m);
					goto cleanup;
				}
				rd_kafka_poll(producer, 0);
				replayed++;
			}
		}
		rd_kafka_message_destroy(m);
	}
	if (producer != NULL && rd_kafka_flush(producer, 30000) != 0) {
		fprintf(stderr, "tally dlq: not every replayed message was "
				"acknowledged\n");
		goto cleanup;
	}
	if (arr != NULL) {
		char *s = json_dumps(arr, JSON_INDENT(2));
		printf("%s\n", s);
		free(s);
	}
	if (o->replay)
		fprintf(stderr, "tally dlq: %lld replayed, %lld skipped of %lld\n",
			(long long)replayed, (long long)skipped, (long long)seen);
	else
		fprintf(stderr, "tally dlq: %lld dead letters in %s\n",
			(long long)(seen - skipped), o->topic);
	rc = 0;
cleanup:
	json_decref(arr);
	if (producer != NULL)
		rd_kafka_destroy(producer);
	if (parts != NULL)
		rd_kafka_topic_partition_list_destroy(parts);
	if (md != NULL)
		rd_kafka_metadata_destroy(md);
	free(hw);
	free(done);
	tally_pg_free(pg);
	rd_kafka_consumer_close(rk);
	rd_kafka_destroy(rk);
	return rc;
}

int tally_cmd_dlq(tally_cli *cli, int argc, char **argv)
{
	dlq_opts o;
	tally_config *cfg;
	char deftopic[256];
	int i;

	memset(&o, 0, sizeof(o));
	if (argc < 2 || (strcmp(argv[1], "list") != 0 &&
			 strcmp(argv[1], "replay") != 0)) {
		fprintf(stderr, "usage: tally dlq list [--topic T] [--limit N] "
				"[--json] [--mirror]\n"
				"       tally dlq replay [--topic T] [--reason R] "
				"[--dry-run]\n"
				"T defaults to topics.usage + kafka.dlq_suffix\n");
		return 2;
	}
	o.replay = strcmp(argv[1], "replay") == 0;
	for (i = 2; i < argc; i++) {
		if (strcmp(argv[i], "--topic") == 0 && i + 1 < argc)
			o.topic = argv[++i];
		else if (strcmp(argv[i], "--reason") == 0 && i + 1 < argc)
			o.reason = argv[++i];
		else if (strcmp(argv[i], "--limit") == 0 && i + 1 < argc) {
			if (tally_parse_i64(&o.limit, argv[++i]) != 0 ||
			    o.limit < 0) {
				fprintf(stderr, "tally dlq: bad --limit\n");
				return 2;
			}
		} else if (strcmp(argv[i], "--mirror") == 0)
			o.mirror = true;
		else if (strcmp(argv[i], "--json") == 0)
			o.json = true;
		else if (strcmp(argv[i], "--dry-run") == 0)
			o.dry_run = true;
		else {
			fprintf(stderr, "tally dlq: unknown argument %s\n", argv[i]);
			return 2;
		}
	}
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
