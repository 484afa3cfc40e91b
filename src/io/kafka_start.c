/*
 * kafka_start.c - partitions the group has never committed start at the
 * log start without librdkafka's 100 ms reset backoff (io/kafka_start.h).
 */
#include "io/kafka_start.h"
#include "tally/log.h"

int tally_kafka_start_unpositioned(rd_kafka_t *rk,
				   rd_kafka_topic_partition_list_t *parts,
				   int timeout_ms)
{
	rd_kafka_topic_partition_list_t *q;
	rd_kafka_resp_err_t e;
	int i, n = 0;

	q = rd_kafka_topic_partition_list_new(parts->cnt > 0 ? parts->cnt : 1);
	for (i = 0; i < parts->cnt; i++)
		if (parts->elems[i].offset == RD_KAFKA_OFFSET_INVALID)
			rd_kafka_topic_partition_list_add(
			    q, parts->elems[i].topic,
			    parts->elems[i].partition);
	if (q->cnt == 0) {
		rd_kafka_topic_partition_list_destroy(q);
		return 0;
	}
	e = rd_kafka_committed(rk, q, timeout_ms);
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
		/* librdkafka's own lookup still follows, as without us */
		tally_log(TALLY_WARN, "kafka.committed_unknown",
			  TALLY_KV_STR("error", rd_kafka_err2str(e)));
		rd_kafka_topic_partition_list_destroy(q);
		return 0;
	}
	for (i = 0; i < q->cnt; i++) {
		rd_kafka_topic_partition_t *c = &q->elems[i], *p;

		if (c->err != RD_KAFKA_RESP_ERR_NO_ERROR ||
		    c->offset != RD_KAFKA_OFFSET_INVALID)
			continue;
		p = rd_kafka_topic_partition_list_find(parts, c->topic,
						       c->partition);
		if (p != NULL && p->offset == RD_KAFKA_OFFSET_INVALID) {
			p->offset = RD_KAFKA_OFFSET_BEGINNING;
			n++;
		}
	}
	rd_kafka_topic_partition_list_destroy(q);
	return n;
}
