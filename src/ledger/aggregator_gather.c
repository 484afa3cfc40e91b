/*
 * aggregator_gather.c - tally-aggregate's batches: polled from Kafka into
 * the lanes' jobs, decoded as they come, the messages no longer needed
 * destroyed at once (memory), offsets stored after the commit.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregator_int.h"

#include <stdlib.h>
#include <string.h>

/* the job's copy of a topic name: views outlive their messages */
static const char *job_topic(job *j, const char *name)
{
	size_t k;

	for (k = 0; k < j->ntopics; k++)
		if (strcmp(j->topics[k], name) == 0)
			return j->topics[k];
	if (j->ntopics == sizeof(j->topics) / sizeof(j->topics[0]))
		return name; /* cannot happen: one topic is consumed */
	j->topics[j->ntopics] = tally_xstrdup(name);
	return j->topics[j->ntopics++];
}

/* append message m to the job (which has room) */
static void job_add(job *j, rd_kafka_message_t *m)
{
	size_t i = j->n++;

	j->msgs[i] = m;
	tally_kafka_msg_view(&j->views[i], m,
			     job_topic(j, rd_kafka_topic_name(m->rkt)));
}

/* destroy the messages still held (dead letters; all after a drop) */
static void job_drop(job *j)
{
	for (size_t k = 0; k < j->n; k++)
		if (j->msgs[k] != NULL)
			rd_kafka_message_destroy(j->msgs[k]);
	j->n = 0;
}

void aggr_job_clear(job *j)
{
	job_drop(j);
	for (size_t k = 0; k < j->ntopics; k++)
		free(j->topics[k]);
	j->ntopics = 0;
}

/*
 * Gather a batch (at most max messages, at most timeout_ms) into the
 * lanes' jobs[slot] in chunks, and decode each chunk as it comes, while
 * the previous batch is in its transactions. The messages whose events
 * are decoded and inside the time window are destroyed at once (the
 * strings still needed are copied by tally_agg_detach_range): a batch then
 * holds ~0.3 KiB per event instead of ~1.4 KiB with the Kafka message and
 * its share of the fetch buffer, and at most one chunk of messages is
 * alive at a time. A rebalance during the gathering drops what came before
 * it (it belongs to the old assignment).
 */
/* The batch being gathered (tally_loop_gather's ctx). */
typedef struct gathering {
	tally_aggregator *a;
	int slot;
	size_t per_lane;  /* a lane's part of the batch at most */
	int64_t now_ms;   /* the batch's clock, from its first messages */
	bool clock_set;   /* now_ms is the batch's (a continued gathering) */
} gathering;

/* a whole poll may go to one lane */
static size_t gather_room(void *ctx)
{
	gathering *g = ctx;
	size_t room = TALLY_GATHER_CHUNK;
	int l;

	for (l = 0; l < g->a->nlanes; l++)
		if (g->per_lane - g->a->lanes[l].jobs[g->slot].n < room)
			room = g->per_lane - g->a->lanes[l].jobs[g->slot].n;
	return room;
}

static void gather_drop(void *ctx)
{
	gathering *g = ctx;
	int l;

	for (l = 0; l < g->a->nlanes; l++)
		job_drop(&g->a->lanes[l].jobs[g->slot]);
}

/* Decode the lane's new messages [from, n) and destroy those not needed. */
static void job_decode(lane *ln, job *j, size_t from, int64_t now_ms)
{
	size_t i;

	j->now_ms = now_ms;
	if (from == 0)
		tally_agg_decoded_use(j->dec, ln->agg);
	tally_agg_decode_range(j->dec, j->views, from, j->n);
	(void)tally_agg_detach_range(ln->agg, j->dec, now_ms, j->keep, from,
				     j->n);
	for (i = from; i < j->n; i++) {
		if (j->keep[i])
			continue;
		rd_kafka_message_destroy(j->msgs[i]);
		j->msgs[i] = NULL;
		j->views[i].rkm = NULL;
		j->views[i].payload = NULL;
		j->views[i].len = 0;
	}
}

static void gather_take(void *ctx, rd_kafka_message_t **msgs, size_t k,
			bool first)
{
	gathering *g = ctx;
	tally_aggregator *a = g->a;
	size_t from[MAX_LANES], i;
	int l;

	if (first && !g->clock_set)
		g->now_ms = tally_now_ms();
	for (l = 0; l < a->nlanes; l++)
		from[l] = a->lanes[l].jobs[g->slot].n;
	for (i = 0; i < k; i++)
		job_add(&a->lanes[aggr_lane_of(a, msgs[i]->partition)]
				 .jobs[g->slot], msgs[i]);
	for (l = 0; l < a->nlanes; l++)
		if (a->lanes[l].jobs[g->slot].n != from[l])
			job_decode(&a->lanes[l], &a->lanes[l].jobs[g->slot],
				   from[l], g->now_ms);
}

size_t aggr_gather(tally_aggregator *a, int slot, size_t max, int timeout_ms)
{
	gathering g = { a, slot, aggr_lane_cap(a, max), 0, false };
	tally_gather_ops ops = { gather_room, gather_take, gather_drop, &g };
	int l;

	for (l = 0; l < a->nlanes; l++)
		a->lanes[l].jobs[slot].n = 0;
	return tally_loop_gather(a->consumer, &ops, timeout_ms);
}

size_t aggr_gather_more(tally_aggregator *a, int slot, size_t max,
			int timeout_ms, bool *full)
{
	gathering g = { a, slot, aggr_lane_cap(a, max), 0, false };
	tally_gather_ops ops = { gather_room, gather_take, gather_drop, &g };
	size_t n = 0;
	int l;

	/* the batch keeps the clock of its first messages */
	for (l = 0; l < a->nlanes; l++)
		if (a->lanes[l].jobs[slot].n > 0) {
			g.now_ms = a->lanes[l].jobs[slot].now_ms;
			g.clock_set = true;
		}
	*full = gather_room(&g) == 0;
	if (!*full)
		(void)tally_loop_gather(a->consumer, &ops, timeout_ms);
	for (l = 0; l < a->nlanes; l++)
		n += a->lanes[l].jobs[slot].n;
	return n;
}

/* After the commit: the lane's next offsets, for lag monitoring. */
int aggr_store_offsets(tally_aggregator *a, const job *j, tally_error *err)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
	size_t i;
	int rc;

	for (i = 0; i < j->n; i++)
		tally_offsets_note(l, j->views[i].topic, j->views[i].partition,
				   j->views[i].offset);
	rc = tally_consumer_store_list(a->consumer, l, err);
	rd_kafka_topic_partition_list_destroy(l);
	return rc;
}

/* room for a lane's part of a batch */
void aggr_job_reserve(job *j, size_t cap)
{
	if (j->dec == NULL)
		j->dec = tally_agg_decoded_new();
	if (cap <= j->cap)
		return;
	free(j->msgs);
	free(j->views);
	j->cap = cap;
	j->msgs = tally_xcalloc(cap, sizeof(*j->msgs));
	j->views = tally_xcalloc(cap, sizeof(*j->views));
	free(j->keep);
	j->keep = tally_xcalloc(cap, sizeof(*j->keep));
}

/* The job's memory (at shutdown). */
void aggr_job_free(job *j)
{
	aggr_job_clear(j);
	free(j->msgs);
	free(j->views);
	free(j->keep);
	tally_agg_decoded_free(j->dec);
	memset(j, 0, sizeof(*j));
}
