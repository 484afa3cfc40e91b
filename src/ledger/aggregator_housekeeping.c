/*
 * aggregator_housekeeping.c - what tally-aggregate does besides batches:
 * ledger maintenance, the storage rollover, price reloads, the totals
 * outbox of every lane, health and metrics.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregator_int.h"
#include "tally/log.h"
#include "tally/pricebook_pg.h"

#include <stdio.h>

int tally_aggregator_health(char *detail, size_t len, void *payload)
{
	tally_aggregator *a = payload;
	int ok = atomic_load(&a->pg_ok);

	snprintf(detail, len, "%s", ok ? "ok" : "postgres unavailable");
	return ok ? 0 : 1;
}

/* the reloadable maintenance settings (poll thread: start, SIGHUP) */
void aggr_maint_settings(tally_aggregator *a)
{
	atomic_store(&a->ahead_days, (int)tally_config_int(
			     a->cfg, "aggregate.partitions_ahead_days"));
	atomic_store(&a->retention_days, (int)tally_config_int(
			     a->cfg, "aggregate.retention_days"));
}

int aggr_maintain(tally_aggregator *a, tally_pg *pg)
{
	tally_error err;
	/* runs on a lane's thread too: no config reads (a reload frees
	 * values), only what the poll thread copied */
	int rc = tally_agg_maintain(pg, a->lateness_days,
				    atomic_load(&a->ahead_days),
				    atomic_load(&a->retention_days), &err);

	if (rc != 0)
		tally_log(TALLY_ERR, "aggregate.maintain_failed",
			  TALLY_KV_STR("error", err.msg));
	return rc;
}

/*
 * Storage of periods no event has reached (docs/aggregate.md, "Storage:
 * GB-months"): lane 0's aggregator writes them, so only while the lanes
 * are idle (poll thread, between aggr_finish_batch and aggr_start_batch). A failure
 * is logged; the next run (an hour later) does it.
 */
void aggr_storage_rollover(tally_aggregator *a)
{
	tally_error err;
	size_t rows = 0;

	if (tally_agg_storage_rollover(a->lanes[0].agg, tally_now_ms(), &rows,
				       &err) != 0)
		tally_log(TALLY_ERR, "aggregate.storage_rollover_failed",
			  TALLY_KV_INT("rows", rows),
			  TALLY_KV_STR("error", err.msg));
	else
		tally_log(TALLY_INFO, "aggregate.aggr_storage_rollover",
			  TALLY_KV_INT("rows", rows));
}

/* Load (or reload when its version moved) the book for storage prices;
 * the lanes are idle. */
int aggr_load_prices(tally_aggregator *a)
{
	tally_pricebook *pb = NULL;
	tally_error err;
	int64_t v = 0;

	if (tally_pricebook_pg_version(&v, a->pg, &err) != 0)
		goto fail;
	if (a->pb != NULL && v == a->pb_version)
		return 0;
	if (tally_pricebook_load_pg(&pb, a->pg, &err) != 0)
		goto fail;
	for (int l = 0; l < a->nlanes; l++)
		if (a->lanes[l].agg != NULL)
			tally_agg_set_pricebook(a->lanes[l].agg, pb);
	tally_pricebook_free(a->pb);
	a->pb = pb;
	a->pb_version = v;
	tally_log(TALLY_INFO, "aggregate.prices_loaded",
		  TALLY_KV_INT("version", v));
	return 0;
fail:
	tally_log(TALLY_WARN, "aggregate.prices_failed",
		  TALLY_KV_STR("error", err.msg));
	return -1;
}

/*
 * The totals outbox of every lane (the lanes are idle): acknowledged
 * versions are marked by each lane; the sweep that publishes again what
 * is unpublished covers every tenant, so one lane does it, and only when
 * no lane has totals in flight (or it would send those twice).
 */
void aggr_outbox_all(tally_aggregator *a, bool republish)
{
	tally_error err;
	size_t inflight = 0;
	int l;

	for (l = a->nlanes - 1; l >= 0; l--) {
		lane *ln = &a->lanes[l];

		if (ln->agg == NULL)
			continue;
		if (l == 0)
			republish = republish && inflight == 0;
		if (tally_agg_outbox(ln->agg, l == 0 && republish, &err) != 0)
			tally_log(TALLY_WARN, "aggregate.outbox_failed",
				  TALLY_KV_INT("lane", l),
				  TALLY_KV_STR("error", err.msg));
		inflight += tally_agg_inflight(ln->agg);
	}
}

void aggr_register_metrics(tally_aggregator *a)
{
	const tally_metric_def defs[] = {
		{ "tally_aggregate_events_total", "outcome=\"accepted\"",
		  "Rated events by outcome", &a->c_accepted },
		{ "tally_aggregate_events_total", "outcome=\"duplicate\"", NULL,
		  &a->c_dup },
		{ "tally_aggregate_events_total", "outcome=\"dead_letter\"",
		  NULL, &a->c_dlq },
		{ "tally_aggregate_adjustments_total", NULL,
		  "Accepted events that went to a closed period", &a->c_adj },
		TALLY_LOOP_METRIC_DEFS("aggregate", &a->c_batches,
				       &a->c_fenced, &a->c_retries),
		{ "tally_aggregate_offset_gaps_total", NULL,
		  "Partitions resumed at the log start after retention"
		  " deleted unread offsets (recorded in consumer_offset_gaps)",
		  &a->c_gaps },
		{ "tally_aggregate_dedupe_fallbacks_total", NULL,
		  "Batches whose plain dedupe insert met a key already in"
		  " PostgreSQL and were deduplicated with ON CONFLICT instead",
		  &a->c_fallbacks },
		{ "tally_aggregate_known_keys_skipped_total", NULL,
		  "Distinct workflows and users not sent to PostgreSQL because"
		  " this instance saw them committed (aggregate.known_keys)",
		  &a->c_known },
		{ "tally_aggregate_batch_seconds", NULL,
		  "Time to process and commit one batch",
		  .histogram = &a->h_batch },
	};

	if (a->m == NULL) {
		a->m = tally_metrics_new();
		a->own_m = true;
	}
	TALLY_METRICS_REGISTER(a->m, defs);
	a->h_event_lag = tally_metrics_event_to_commit(a->m, "aggregate");
}

/*
 * Between batches (the lanes idle): delivery reports; every 10 s price
 * changes and the totals outbox; hourly ledger maintenance and the
 * storage rollover.
 */
void aggr_housekeeping(tally_aggregator *a)
{
	int l;

	for (l = 0; l < a->nlanes; l++)
		rd_kafka_poll(a->lanes[l].producer, 0);
	if ((tally_mono_ns() - a->last_tick) / 1000000 > 10000) {
		(void)aggr_load_prices(a);
		aggr_outbox_all(a, true);
		a->last_tick = tally_mono_ns();
	}
	if ((tally_mono_ns() - a->last_maint) / 1000000 > 3600000) {
		(void)aggr_maintain(a, a->pg);
		aggr_storage_rollover(a);
		a->last_maint = tally_mono_ns();
	}
}
