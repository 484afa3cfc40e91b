/*
 * offsets.c - the batch's Kafka partitions: positions in consumer_offsets,
 * the fence, and offsets that retention deleted before they were read.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int tally_agg_assign(tally_agg *agg, rd_kafka_topic_partition_list_t *parts,
		     tally_error *err)
{
	return tally_positions_assign(agg->pos, agg->pg, parts, err);
}

void tally_agg_revoke(tally_agg *agg,
		      const rd_kafka_topic_partition_list_t *parts)
{
	tally_positions_revoke(agg->pos, parts);
}

int tally_agg_reseek(tally_agg *agg, rd_kafka_t *rk,
		     const tally_agg_msg *msgs, size_t n, tally_error *err)
{
	return tally_positions_reseek(agg->pos, agg->pg, rk, msgs, n, err);
}

/* The batch's partitions as the positions module takes them. */
size_t agg_batch_positions(const tally_agg *agg, tally_position *out)
{
	size_t k;

	for (k = 0; k < agg->nparts; k++) {
		out[k].topic = agg->parts[k].topic;
		out[k].partition = agg->parts[k].partition;
		out[k].next = agg->parts[k].next;
	}
	return agg->nparts;
}

void agg_collect_parts(tally_agg *agg)
{
	size_t i, k;

	agg->nparts = 0;
	for (i = 0; i < agg->n; i++) {
		const tally_agg_msg *m = &agg->msgs[i];

		for (k = 0; k < agg->nparts; k++)
			if (agg->parts[k].partition == m->partition &&
			    strcmp(agg->parts[k].topic, m->topic) == 0)
				break;
		if (k == agg->nparts) {
			if (agg->nparts == agg->capparts) {
				agg->capparts = agg->capparts ?
						agg->capparts * 2 : 16;
				agg->parts = tally_xrealloc(
					agg->parts,
					agg->capparts * sizeof(*agg->parts));
				agg->posbuf = tally_xrealloc(
					agg->posbuf,
					agg->capparts * sizeof(*agg->posbuf));
			}
			agg->parts[k].topic = m->topic;
			agg->parts[k].partition = m->partition;
			agg->parts[k].first = m->offset;
			agg->parts[k].gap_from = agg->parts[k].gap_to = 0;
			agg->nparts++;
		}
		agg->parts[k].next = m->offset + 1;
	}
}

/*
 * Offsets that Kafka deleted (retention) before we read them: the batch
 * starts after our expected position and the log now starts after it too.
 * librdkafka resumes at the log start (auto.offset.reset=earliest); the
 * skipped range is never silent: logged as an error, counted, and recorded
 * in consumer_offset_gaps in the batch's transaction. Gaps that are only
 * transaction markers or aborted messages are not flagged: there the log
 * start is still at or below our position.
 */
void agg_detect_gaps(tally_agg *agg)
{
	size_t k;

	agg->st.gaps = 0;
	if (agg->consumer_rk == NULL)
		return;
	for (k = 0; k < agg->nparts; k++) {
		batch_part *bp = &agg->parts[k];
		int64_t lo = -1, hi = -1, expected = -1;

		if (!tally_positions_get(agg->pos, bp->topic, bp->partition,
					 &expected) ||
		    expected < 0 || bp->first <= expected)
			continue;
		if (rd_kafka_get_watermark_offsets(agg->consumer_rk, bp->topic,
						   bp->partition, &lo, &hi) !=
		    RD_KAFKA_RESP_ERR_NO_ERROR || lo < 0)
			continue;
		if (lo <= expected)
			continue;
		bp->gap_from = expected;
		bp->gap_to = lo < bp->first ? lo : bp->first;
		agg->st.gaps++;
		tally_log(TALLY_ERR, "aggregate.offset_gap",
			  TALLY_KV_STR("topic", bp->topic),
			  TALLY_KV_INT("partition", bp->partition),
			  TALLY_KV_INT("stored_offset", expected),
			  TALLY_KV_INT("log_start_offset", lo),
			  TALLY_KV_INT("resumed_at", bp->first));
	}
}

int agg_record_gaps(tally_agg *agg, tally_error *err)
{
	char p[16], f[24], t[24];
	const char *params[5];
	size_t k;
	int rc = 0;

	for (k = 0; k < agg->nparts && rc == 0; k++) {
		batch_part *bp = &agg->parts[k];

		if (bp->gap_to <= bp->gap_from)
			continue;
		snprintf(p, sizeof(p), "%d", (int)bp->partition);
		snprintf(f, sizeof(f), "%" PRId64, bp->gap_from);
		snprintf(t, sizeof(t), "%" PRId64, bp->gap_to);
		params[0] = agg->group;
		params[1] = bp->topic;
		params[2] = p;
		params[3] = f;
		params[4] = t;
		rc = tally_pg_exec(agg->pg, NULL,
				   "INSERT INTO consumer_offset_gaps (consumer_group,"
				   " topic, partition, from_offset, to_offset)"
				   " VALUES ($1, $2, $3, $4, $5)"
				   " ON CONFLICT DO NOTHING", 5, params, err);
	}
	return rc;
}

void tally_agg_set_consumer(tally_agg *agg, rd_kafka_t *rk)
{
	agg->consumer_rk = rk;
}

int agg_fence(tally_agg *agg, tally_error *err)
{
	return tally_positions_fence(agg->pos, agg->pg, agg->posbuf,
				     agg_batch_positions(agg, agg->posbuf), err);
}
