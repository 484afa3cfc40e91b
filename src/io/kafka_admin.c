/*
 * kafka_admin.c - topics through librdkafka's admin API: create them if
 * missing and wait until every partition has a leader.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/kafka.h"
#include "tally/pg.h"

#include <stdbool.h>

/*
 * A topic that CreateTopics just acknowledged may not have a leader for
 * every partition yet (NOT_LEADER_FOR_PARTITION on the first request): wait,
 * up to 30 s, until the metadata shows a leader everywhere.
 */
static int wait_for_leaders(rd_kafka_t *rk, const char **topics, int n,
			    tally_error *err)
{
	int64_t deadline = tally_mono_ns() + INT64_C(30000000000);
	int i;

	for (i = 0; i < n; i++) {
		for (;;) {
			const struct rd_kafka_metadata *md = NULL;
			rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topics[i],
								   NULL);
			rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 0, rkt, &md,
								  5000);
			bool ready = false;
			int p;

			if (e == RD_KAFKA_RESP_ERR_NO_ERROR && md->topic_cnt == 1 &&
			    md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR &&
			    md->topics[0].partition_cnt > 0) {
				ready = true;
				for (p = 0; p < md->topics[0].partition_cnt; p++)
					if (md->topics[0].partitions[p].leader < 0 ||
					    md->topics[0].partitions[p].err != 0)
						ready = false;
			}
			if (md != NULL)
				rd_kafka_metadata_destroy(md);
			rd_kafka_topic_destroy(rkt);
			if (ready)
				break;
			if (tally_mono_ns() > deadline)
				return tally_error_set(err, TALLY_ETRANSIENT,
						       "topic %s: no leader after "
						       "30 s", topics[i]);
			tally_sleep_ms(100);
		}
	}
	return 0;
}

int tally_kafka_create_topics(rd_kafka_t *rk, const char **topics,
			      int partitions, tally_error *err)
{
	rd_kafka_NewTopic_t *nt[64];
	rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
	rd_kafka_event_t *ev;
	char errstr[256];
	int n, i, rc = 0;

	for (n = 0; topics[n] != NULL && n < 64; n++)
		nt[n] = rd_kafka_NewTopic_new(topics[n], partitions, 1, errstr,
					      sizeof(errstr));
	rd_kafka_CreateTopics(rk, nt, (size_t)n, NULL, q);
	ev = rd_kafka_queue_poll(q, 30000);
	if (ev == NULL) {
		rc = tally_error_set(err, TALLY_ETRANSIENT,
				     "create topics: timed out");
	} else {
		const rd_kafka_CreateTopics_result_t *res =
			rd_kafka_event_CreateTopics_result(ev);
		size_t cnt = 0;
		const rd_kafka_topic_result_t **tr =
			res ? rd_kafka_CreateTopics_result_topics(res, &cnt) : NULL;
		if (res == NULL)
			rc = tally_error_set(err, TALLY_ERROR, "create topics: %s",
					     rd_kafka_event_error_string(ev));
		for (i = 0; rc == 0 && i < (int)cnt; i++) {
			rd_kafka_resp_err_t te = rd_kafka_topic_result_error(tr[i]);
			if (te != RD_KAFKA_RESP_ERR_NO_ERROR &&
			    te != RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
				rc = tally_error_set(err, TALLY_ERROR,
						     "create topic %s: %s",
						     rd_kafka_topic_result_name(tr[i]),
						     rd_kafka_err2str(te));
		}
		rd_kafka_event_destroy(ev);
	}
	for (i = 0; i < n; i++)
		rd_kafka_NewTopic_destroy(nt[i]);
	rd_kafka_queue_destroy(q);
	if (rc == 0)
		rc = wait_for_leaders(rk, topics, n, err);
	return rc;
}
