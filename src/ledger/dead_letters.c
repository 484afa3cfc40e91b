/*
 * dead_letters.c - the batch's dead letters: to the DLQ topic (durable
 * before the positions move) and mirrored into dead_letters.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "tally/dead_letters.h"
#include "tally/kafka.h"
#include "tally/log.h"

#include <inttypes.h>
#include <string.h>

int agg_send_dead_letters(tally_agg *agg, tally_error *err)
{
	size_t i, sent = 0;
	int rc;

	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];

		/* once per attempt: isolate.c adds dead letters to a batch
		 * whose others were sent */
		if (it->status != ST_DLQ || it->dl_sent)
			continue;
		it->dl_sent = true;
		agg->st.dead_lettered++;
		tally_log(TALLY_WARN, "aggregate.dead_letter",
			  TALLY_KV_STR("topic", agg->msgs[i].topic),
			  TALLY_KV_INT("partition", agg->msgs[i].partition),
			  TALLY_KV_INT("offset", agg->msgs[i].offset),
			  TALLY_KV_STR("reason", it->reason));
		if (agg->producer == NULL || agg->msgs[i].rkm == NULL)
			continue;
		rc = tally_dlq_send(agg->producer, agg->dlq_topic,
				    agg->msgs[i].rkm, "tally-aggregate",
				    it->reason, agg_item_detail(agg, it), err);
		if (rc != 0)
			return rc;
		sent++;
	}
	if (sent > 0) {
		/*
		 * The dead letters must be durable before the offsets move:
		 * all of them left the queue (flush) and none failed (the
		 * delivery reports, counted by tally_agg_delivered during the
		 * flush). Otherwise the transaction is not committed and the
		 * batch, dead letters included, is done again.
		 */
		agg->dlq_failed = 0;
		rd_kafka_flush(agg->producer, 30000);
		if (rd_kafka_outq_len(agg->producer) > 0)
			return tally_error_set(err, TALLY_ETRANSIENT,
					       "dead letters not delivered");
		if (agg->dlq_failed > 0)
			return tally_error_set(err, TALLY_ETRANSIENT,
					       "%zu dead letter(s) failed delivery"
					       " to %s", agg->dlq_failed,
					       agg->dlq_topic);
	}
	return 0;
}

/* The batch's dead letters into dead_letters (in its transaction). */
int agg_mirror_dead_letters(tally_agg *agg, tally_error *err)
{
	size_t i;

	for (i = 0; i < agg->n; i++)
		if (agg->items[i].status == ST_DLQ)
			tally_dead_letters_add_msg(agg->dead, &agg->msgs[i],
				agg->items[i].reason,
				agg_item_detail(agg, &agg->items[i]), false);
	return tally_dead_letters_write(agg->dead, agg->pg, agg->group, err);
}
