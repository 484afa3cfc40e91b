/*
 * tally-bench group-ready: wait until a consumer group is Stable and its
 * members hold every partition of a topic, so that a paced measurement
 * starts its clock on consumers that have joined, not on their start-up.
 */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include "tally/pg.h"

#include <stdio.h>
#include <string.h>

/* partitions of `topic` the members of the Stable group hold; -1: not Stable
 * or not described */
static int held_partitions(rd_kafka_t *rk, const char *group,
			   const char *topic)
{
	rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
	rd_kafka_event_t *ev;
	const rd_kafka_DescribeConsumerGroups_result_t *res;
	const rd_kafka_ConsumerGroupDescription_t **gs = NULL;
	size_t ngs = 0, i, m;
	int held = -1;

	rd_kafka_DescribeConsumerGroups(rk, &group, 1, NULL, q);
	ev = rd_kafka_queue_poll(q, 10000);
	res = ev != NULL ? rd_kafka_event_DescribeConsumerGroups_result(ev)
			 : NULL;
	if (res != NULL)
		gs = rd_kafka_DescribeConsumerGroups_result_groups(res, &ngs);
	for (i = 0; i < ngs; i++) {
		const rd_kafka_ConsumerGroupDescription_t *g = gs[i];

		if (rd_kafka_ConsumerGroupDescription_error(g) != NULL ||
		    rd_kafka_ConsumerGroupDescription_state(g) !=
			    RD_KAFKA_CONSUMER_GROUP_STATE_STABLE)
			continue;
		held = 0;
		for (m = 0; m < rd_kafka_ConsumerGroupDescription_member_count(g);
		     m++) {
			const rd_kafka_topic_partition_list_t *l =
				rd_kafka_MemberAssignment_partitions(
					rd_kafka_MemberDescription_assignment(
						rd_kafka_ConsumerGroupDescription_member(
							g, m)));

			for (int k = 0; l != NULL && k < l->cnt; k++)
				held += strcmp(l->elems[k].topic, topic) == 0;
		}
	}
	if (ev != NULL)
		rd_kafka_event_destroy(ev);
	rd_kafka_queue_destroy(q);
	return held;
}

/* tally-bench group-ready -b B --group G --topic T [--timeout-s S]:
 * exit 0 once the group holds every partition of T, 1 at the timeout */
int cmd_group_ready(int argc, char **argv)
{
	const char *group = need(argc, argv, "--group");
	const char *topic = need(argc, argv, "--topic");
	int64_t deadline = now_ms() + 1000 * opt_i(argc, argv, "--timeout-s", 60);
	rd_kafka_t *rk = mk_client(RD_KAFKA_PRODUCER,
				   need(argc, argv, "-b"), NULL);
	int want = npartitions(rk, topic), held = -1;

	while (want > 0 && now_ms() < deadline) {
		held = held_partitions(rk, group, topic);
		if (held >= want)
			break;
		tally_sleep_ms(100);
	}
	rd_kafka_destroy(rk);
	printf("{\"group\": \"%s\", \"partitions\": %d, \"held\": %d}\n",
	       group, want, held);
	return want > 0 && held >= want ? 0 : 1;
}
