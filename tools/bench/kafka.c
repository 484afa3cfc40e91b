/* tally-bench: Kafka clients, partition assignment and watermarks */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include "tally/pg.h"

rd_kafka_t *mk_client(rd_kafka_type_t type, const char *brokers,
		      const char **kv)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char errstr[512];
	rd_kafka_t *rk;

	if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			      sizeof(errstr)) != RD_KAFKA_CONF_OK)
		die("%s", errstr);
	for (; kv != NULL && kv[0] != NULL; kv += 2)
		if (rd_kafka_conf_set(conf, kv[0], kv[1], errstr,
				      sizeof(errstr)) != RD_KAFKA_CONF_OK)
			die("%s", errstr);
	rk = rd_kafka_new(type, conf, errstr, sizeof(errstr));
	if (rk == NULL)
		die("%s", errstr);
	return rk;
}

rd_kafka_t *mk_consumer(const char *brokers)
{
	const char *kv[] = {"group.id", "tally-bench-unused",
			    "enable.auto.commit", "false",
			    "enable.partition.eof", "true",
			    "isolation.level", "read_committed",
			    "fetch.wait.max.ms", "10",
			    "queued.max.messages.kbytes", "65536", NULL};
	return mk_client(RD_KAFKA_CONSUMER, brokers, kv);
}

int npartitions(rd_kafka_t *rk, const char *topic)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	int n = -1;

	for (int attempt = 0; attempt < 50 && n <= 0; attempt++) {
		if (rd_kafka_metadata(rk, 0, rkt, &md, 5000) ==
		    RD_KAFKA_RESP_ERR_NO_ERROR) {
			if (md->topic_cnt == 1 && md->topics[0].err == 0)
				n = md->topics[0].partition_cnt;
			rd_kafka_metadata_destroy(md);
		}
		if (n <= 0)
			tally_sleep_ms(100);
	}
	rd_kafka_topic_destroy(rkt);
	if (n <= 0 || n > MAXPART)
		die("no such topic (or too many partitions): %s", topic);
	return n;
}

/* assign()ed consumers never joined a group: no close handshake */
void cons_destroy(rd_kafka_t *rk)
{
	rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
}

/* assign all partitions of topic from the beginning; returns count */
int assign_all(rd_kafka_t *rk, const char *topic)
{
	int n = npartitions(rk, topic);
	rd_kafka_topic_partition_list_t *l =
		rd_kafka_topic_partition_list_new(n);

	for (int p = 0; p < n; p++)
		rd_kafka_topic_partition_list_add(l, topic, p)->offset =
			RD_KAFKA_OFFSET_BEGINNING;
	if (rd_kafka_assign(rk, l) != 0)
		die("assign %s failed", topic);
	rd_kafka_topic_partition_list_destroy(l);
	return n;
}

/*
 * Every message of topic from the beginning up to the high watermark each
 * partition had when the read started, in the order the consumer delivers
 * them: fn sees each message without an error; it returns READ_KEEP when it
 * keeps the message (and destroys it later; else it is destroyed here) and
 * READ_STOP to end the read early. rk is a consumer of mk_consumer().
 */
void read_to_end(rd_kafka_t *rk, const char *topic, read_fn fn, void *ctx)
{
	int n = assign_all(rk, topic), eofs = 0, r = READ_NEXT;
	int64_t hi[MAXPART];
	bool done[MAXPART] = { false };

	watermarks(rk, topic, n, hi);
	for (int p = 0; p < n; p++)
		if (hi[p] == 0) {
			done[p] = true;
			eofs++;
		}
	while (eofs < n && !(r & READ_STOP)) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 1000);

		if (m == NULL)
			continue;
		r = READ_NEXT;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			if (!done[m->partition] && m->offset >= hi[m->partition]) {
				done[m->partition] = true;
				eofs++;
			}
		} else if (m->err == 0) {
			r = fn(m, ctx);
		}
		if (!(r & READ_KEEP))
			rd_kafka_message_destroy(m);
	}
}

/* high watermarks; partitions that are empty count as already at eof */
void watermarks(rd_kafka_t *rk, const char *topic, int n, int64_t *hi)
{
	for (int p = 0; p < n; p++) {
		int64_t lo = 0;
		hi[p] = 0;
		if (rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi[p],
						     10000) != 0)
			die("watermarks of %s failed", topic);
	}
}
