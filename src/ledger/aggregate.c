/*
 * aggregate.c - rated usage into PostgreSQL, exactly once: the aggregator's
 * public entry points (new, free, process a batch, maintenance).
 *
 * Key design decision: a batch is one transaction whose first statement is
 * a compare-and-set on consumer_offsets (the fence) and whose data goes in
 * with one COPY into a temporary staging table plus one statement of
 * chained data-modifying CTEs: the dedupe insert RETURNs exactly the rows
 * that are new, and only those reach the ledger and the aggregates. What C
 * does per event is cheap and local: decode, digest, the time window, the
 * billing period (periods of the batch's tenants are read once per batch).
 * The steps live in the files aggregate_int.h lists.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "tally/dedupe_key.h"
#include "tally/log.h"

#include <openssl/rand.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* dedupe_settings.timeled_from in ms (NULL: -infinity) */
static int read_timeled_from(tally_pg *pg, int64_t *out, tally_error *err)
{
	PGresult *res = NULL;
	int rc = tally_pg_exec(pg, &res,
			       "SELECT tally_dedupe_timeled_from_ms()", 0, NULL,
			       err);

	if (rc != 0)
		return rc;
	*out = PQgetisnull(res, 0, 0)
		       ? TALLY_DEDUPE_TIMELED_ALWAYS
		       : strtoll(PQgetvalue(res, 0, 0), NULL, 10);
	PQclear(res);
	return 0;
}

int tally_agg_new(tally_agg **out, tally_pg *pg, const tally_agg_opts *opts,
		  tally_error *err)
{
	tally_agg *agg;
	uint8_t secret[16];
	size_t opts_known = opts->known_keys;
	int64_t timeled_from;
	int rc = read_timeled_from(pg, &timeled_from, err);

	if (rc != 0)
		return rc;
	agg = tally_xcalloc(1, sizeof(*agg));
	agg->pg = pg;
	agg->timeled_from_ms = timeled_from;
	agg->own.timeled_from_ms = timeled_from;
	agg->group = tally_xstrdup(opts->group);
	agg->pos = tally_positions_new(opts->group);
	agg->dead = tally_dead_letters_new();
	agg->dlq_topic = tally_xstrdup(opts->dlq_topic ? opts->dlq_topic : "");
	agg->totals_topic =
		opts->totals_topic ? tally_xstrdup(opts->totals_topic) : NULL;
	agg->lateness_ms = opts->lateness_ms;
	agg->future_ms = opts->future_ms;
	agg->producer = opts->producer;
	agg->pb = opts->pricebook;
	agg->max_models = opts->max_models_per_tenant > 0
				  ? opts->max_models_per_tenant
				  : 1000;
	if (agg->producer != NULL && agg->totals_topic != NULL)
		agg->outbox = tally_outbox_new(agg->producer, agg->totals_topic,
					       sizeof(totals_ack));
	pthread_mutex_init(&agg->models_mu, NULL);
	agg_seen_init(&agg->seen, opts->recent_keys);
	if (RAND_bytes(secret, sizeof(secret)) != 1)
		opts_known = 0; /* no secret, no cache: every key is sent */
	tally_known_init(&agg->known, opts_known, secret);
	{
		const char *t = getenv("TALLY_AGG_TRACE");

		agg->trace = t != NULL && strcmp(t, "1") == 0;
	}
	*out = agg;
	return 0;
}

void tally_agg_free(tally_agg *agg)
{
	size_t i;

	if (agg == NULL)
		return;
	tally_positions_free(agg->pos);
	agg_models_free(agg);
	pthread_mutex_destroy(&agg->models_mu);
	agg_clear_totals(agg);
	free(agg->totals);
	free(agg->totals_key);
	free(agg->totals_ack);
	tally_outbox_free(agg->outbox);
	for (i = 0; i < agg->own.nblocks; i++)
		free(agg->own.blocks[i]);
	free(agg->own.blocks);
	free(agg->own.items);
	free(agg->own.order);
	free(agg->own.errs);
	tally_hashset_free(&agg->dedupe);
	free(agg->seen.keys);
	free(agg->seen.hashes);
	tally_known_free(&agg->known);
	tally_hashset_free(&agg->seen.h);
	tally_strbuf_free(&agg->wf_t);
	tally_strbuf_free(&agg->wf_p);
	tally_strbuf_free(&agg->wf_w);
	agg_users_free(agg);
	tally_hashset_free(&agg->tenant_h);
	free(agg->tenants);
	free(agg->bps);
	tally_strbuf_free(&agg->copy);
	tally_strbuf_free(&agg->details);
	tally_dead_letters_free(agg->dead);
	tally_strbuf_free(&agg->q1);
	tally_strbuf_free(&agg->q2);
	tally_strbuf_free(&agg->q3);
	for (i = 0; i < APPLY_COLS; i++)
		tally_strbuf_free(&agg->cols[i]);
	free(agg->sorted);
	free(agg->hourly.v);
	tally_hashset_free(&agg->hourly.h);
	free(agg->period.v);
	tally_hashset_free(&agg->period.h);
	free(agg->adj.v);
	tally_hashset_free(&agg->adj.h);
	free(agg->group);
	free(agg->dlq_topic);
	free(agg->totals_topic);
	free(agg->parts);
	free(agg->posbuf);
	free(agg);
}

/* Rounds of isolate.c per attempt at a batch (each removes >= 1 event). */
#define ISOLATE_ROUNDS 4

/*
 * The dead letters, then the batch's transaction. When PostgreSQL refuses
 * the batch's data, the events it refuses alone become dead letters too
 * (agg_isolate) and the rest is committed; any other failure is returned
 * (transient ones after tally_pg_txn's retries).
 */
static int commit_batch(tally_agg *agg, tally_error *err)
{
	tally_error e2;
	size_t found;
	int round, rc, rc2;

	for (round = 0;; round++) {
		rc = agg_send_dead_letters(agg, err);
		if (rc != 0)
			return rc;
		agg->stage_pending = false;
		agg->storage_unpriced = 0;
		rc = tally_pg_txn(agg->pg, agg_apply_txn, agg, 0, err);
		if (rc == 0)
			return 0;
		agg->stage_conn = NULL; /* created in a rolled-back txn? */
		if (round == ISOLATE_ROUNDS || !agg_refused_for_data(err))
			return rc;
		rc2 = agg_isolate(agg, &found, &e2);
		if (rc2 != 0) {
			*err = e2;
			return rc2;
		}
		if (found == 0)
			return rc;
	}
}

/* TALLY_AGG_TRACE=1: where a batch's time went (docs/aggregate.md) */
static void log_trace(tally_agg *agg, size_t n)
{
	agg_trace(agg, 7);
	/* asked for explicitly: shown whatever log.level says */
	tally_log(TALLY_WARN, "aggregate.trace",
		  TALLY_KV_INT("n", n),
		  TALLY_KV_INT("before_us", agg->phase_us[6]),
		  TALLY_KV_INT("prep_us", agg->phase_us[0]),
		  TALLY_KV_INT("copy_us", agg->phase_us[1]),
		  TALLY_KV_INT("dedupe_us", agg->phase_us[2]),
		  TALLY_KV_INT("apply_us", agg->phase_us[3]),
		  TALLY_KV_INT("storage_us", agg->phase_us[4]),
		  TALLY_KV_INT("totals_commit_us", agg->phase_us[5]),
		  TALLY_KV_INT("after_us", agg->phase_us[7]));
	memset(agg->phase_us, 0, sizeof(agg->phase_us));
}

int tally_agg_process(tally_agg *agg, const tally_agg_msg *msgs, size_t n,
		      int64_t now_ms, tally_agg_stats *stats, tally_error *err)
{
	return tally_agg_process_decoded(agg, NULL, msgs, n, now_ms, stats,
					 err);
}

int tally_agg_process_decoded(tally_agg *agg, tally_agg_decoded *dec,
			      const tally_agg_msg *msgs, size_t n,
			      int64_t now_ms, tally_agg_stats *stats,
			      tally_error *err)
{
	size_t i;
	int rc;

	memset(&agg->st, 0, sizeof(agg->st));
	if (n == 0)
		goto done;
	agg->phase_t = tally_mono_ns();
	if (dec == NULL) {
		dec = &agg->own;
		tally_agg_decode(dec, msgs, n);
	} else if (dec->msgs != msgs || dec->n != n ||
		   dec->timeled_from_ms != agg->timeled_from_ms) {
		/* its messages may be gone (tally_agg_detach_range): never re-decode */
		return tally_error_set(err, TALLY_ERROR,
				       "aggregate: decoded set is not this batch");
	}
	agg->dec = dec;
	agg->items = dec->items;
	agg->msgs = msgs;
	agg->n = n;
	agg->now_ms = now_ms;
	agg_collect_parts(agg);
	agg_classify(agg);
	agg_detect_gaps(agg);
	rc = agg_resolve_models(agg, err);
	if (rc == 0)
		rc = commit_batch(agg, err);
	if (rc != 0)
		return rc;
	agg_acks_committed(agg);
	tally_known_commit(&agg->known);
	for (i = 0; i < n; i++)
		if (agg->items[i].status == ST_OK)
			agg_seen_add(&agg->seen, &agg->items[i]);
	if (agg->dedupe_slow > 0)
		agg->dedupe_slow--;
	if (agg->stage_pending) {
		agg->stage_conn = tally_pg_conn(agg->pg);
		agg->stage_pid = PQbackendPID(agg->stage_conn);
	}
	if (agg->storage_unpriced > 0)
		tally_log(TALLY_WARN, "aggregate.storage_unpriced",
			  TALLY_KV_INT("segments", agg->storage_unpriced));
	agg_trace(agg, 5);
	/* committed: this instance's view of its positions moves on */
	tally_positions_committed(agg->pos, agg->posbuf,
				  agg_batch_positions(agg, agg->posbuf));
	for (i = 0; i < n; i++)
		if (agg->items[i].status == ST_OK ||
		    agg->items[i].status == ST_DUP)
			agg->st.duplicates++;
	agg->st.duplicates -= agg->st.accepted; /* the rest were seen before */
	agg_publish_totals(agg);
	if (agg->trace)
		log_trace(agg, n);
done:
	if (stats != NULL)
		*stats = agg->st;
	return 0;
}

int64_t tally_agg_timeled_from_ms(const tally_agg *agg)
{
	return agg->timeled_from_ms;
}

void tally_agg_set_pricebook(tally_agg *agg,
			     const struct tally_pricebook *pb)
{
	agg->pb = pb;
}

int tally_agg_maintain(tally_pg *pg, int lateness_days, int ahead_days,
		       int retention_days, tally_error *err)
{
	/* each step its own transaction: no lock of one is held during
	 * another (migrations/0024_dedupe_partitions.sql) */
	static const char *const steps[] = { "ledger", "prune", "drop",
					     "create" };
	char b[16], a[16], r[16], d[16];
	const char *params[5];
	PGresult *res = NULL;
	size_t s;
	int rc, i;

	/* dedupe window: the lateness window plus two days of margin */
	snprintf(b, sizeof(b), "%d", lateness_days + 2);
	snprintf(a, sizeof(a), "%d", ahead_days);
	snprintf(r, sizeof(r), "%d", retention_days);
	snprintf(d, sizeof(d), "%d", lateness_days + 2);
	params[0] = b;
	params[1] = a;
	params[2] = r;
	params[3] = d;
	for (s = 0; s < sizeof(steps) / sizeof(steps[0]); s++) {
		params[4] = steps[s];
		rc = tally_pg_exec(pg, &res,
				   "SELECT action, object FROM"
				   " tally_ledger_maintain_step($1::int, $2::int,"
				   " $3::int, $4::int, $5)", 5, params, err);
		if (rc != 0)
			return rc;
		for (i = 0; i < PQntuples(res); i++)
			tally_log(TALLY_INFO, "aggregate.maintain",
				  TALLY_KV_STR("action", PQgetvalue(res, i, 0)),
				  TALLY_KV_STR("object", PQgetvalue(res, i, 1)));
		PQclear(res);
	}
	return 0;
}
