/*
 * alerts_engine.c - the tally-alerts engine: its lifecycle, consumer
 * positions and one batch (decode, the store's transaction, then the
 * outbox). The rules are alerts_rules.c, the transaction alerts_store.c.
 */
#define _POSIX_C_SOURCE 200809L
#include "alerts/alerts_int.h"
#include "tally/log.h"

#include "events/codec_int.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static char *cat2(const char *a, const char *b)
{
	size_t la = strlen(a), lb = strlen(b);
	char *s = tally_xmalloc(la + lb + 1);

	memcpy(s, a, la);
	memcpy(s + la, b, lb + 1);
	return s;
}

static void register_metrics(tally_alerts *a)
{
	const tally_metric_def defs[] = {
		{ "tally_alerts_totals_total", NULL,
		  "billing.totals messages evaluated", &a->c_totals },
		{ "tally_alerts_totals_stale_total", NULL,
		  "totals ignored: version not newer than one seen",
		  &a->c_stale },
		{ "tally_alerts_signals_total", NULL,
		  "billing.signals messages evaluated", &a->c_signals },
		{ "tally_alerts_produced_total", NULL,
		  "alerts produced to billing.alerts", &a->c_produced },
		{ "tally_alerts_produce_failed_total", NULL,
		  "alerts whose produce failed (the sweep retries)",
		  &a->c_produce_failed },
		{ "tally_alerts_batch_seconds", NULL,
		  "time to process one batch", .histogram = &a->h_batch },
	};

	TALLY_METRICS_REGISTER(a->m, defs);
}

int tally_alerts_new(tally_alerts **out, tally_pg *pg,
		     const tally_alerts_opts *opts, tally_error *err)
{
	tally_alerts *a;
	tally_alert_thresholds th;
	const char *sfx = opts->dlq_suffix ? opts->dlq_suffix : ".dlq";
	int rc;

	rc = tally_alert_thresholds_parse(&th, opts->thresholds ?
					  opts->thresholds : "50,80,100", err);
	if (rc != 0)
		return rc;
	a = tally_xcalloc(1, sizeof(*a));
	a->pg = pg;
	a->th = th;
	a->group = tally_xstrdup(opts->group);
	a->pos = tally_positions_new(opts->group);
	a->dead = tally_dead_letters_new();
	a->totals_topic = tally_xstrdup(opts->totals_topic);
	a->signals_topic = tally_xstrdup(opts->signals_topic);
	a->alerts_topic = opts->alerts_topic ?
				  tally_xstrdup(opts->alerts_topic) : NULL;
	a->totals_dlq = cat2(opts->totals_topic, sfx);
	a->signals_dlq = cat2(opts->signals_topic, sfx);
	a->producer = opts->producer;
	if (a->producer != NULL && a->alerts_topic != NULL)
		a->outbox = tally_outbox_new(a->producer, a->alerts_topic,
					     sizeof(alert_ident));
	a->m = opts->metrics;
	tally_alert_list_init(&a->list);
	if (a->m != NULL)
		register_metrics(a);
	*out = a;
	return 0;
}

void tally_alerts__clear_batch(tally_alerts *a)
{
	size_t i;

	for (i = 0; i < a->nitems; i++)
		if (a->items[i].type == IT_SIGNAL)
			tally_signal_dispose(&a->items[i].signal);
	a->nitems = 0;
	a->nparts = 0;
	for (i = 0; i < a->nout; i++)
		free(a->out[i].json);
	a->nout = 0;
	tally_alert_list_clear(&a->list);
}

void tally_alerts_free(tally_alerts *a)
{
	if (a == NULL)
		return;
	tally_alerts__clear_batch(a);
	tally_alert_list_dispose(&a->list);
	tally_positions_free(a->pos);
	tally_outbox_free(a->outbox);
	tally_dead_letters_free(a->dead);
	free(a->parts);
	free(a->items);
	free(a->out);
	free(a->group);
	free(a->totals_topic);
	free(a->signals_topic);
	free(a->alerts_topic);
	free(a->totals_dlq);
	free(a->signals_dlq);
	free(a);
}

int tally_alerts_set_thresholds(tally_alerts *a, const char *s,
				tally_error *err)
{
	tally_alert_thresholds th;
	int rc = tally_alert_thresholds_parse(&th, s, err);

	if (rc == 0)
		a->th = th;
	return rc;
}

void tally_alerts__count(tally_alerts *a, const char *name,
			 const char *labels, const char *help)
{
	if (a->m != NULL)
		tally_counter_add(tally_metrics_counter(a->m, name, labels,
							help), 1);
}

bool tally_alerts__due(tally_alerts_timer *t, int64_t every_ms)
{
	int64_t now = tally_mono_ns();

	if (every_ms <= 0 || (t->ran && (now - t->last_ns) / 1000000 <
				      every_ms))
		return false;
	t->ran = true;
	t->last_ns = now;
	return true;
}

void tally_alerts__count_kind(tally_alerts *a, const char *kind)
{
	char labels[64];

	snprintf(labels, sizeof(labels), "kind=\"%s\"", kind);
	tally_alerts__count(a, "tally_alerts_raised_total", labels,
			    "alerts raised (inserted), by kind");
}

void tally_alerts__cadd(tally_counter *c, uint64_t n)
{
	if (c != NULL && n > 0)
		tally_counter_add(c, n);
}

void tally_alerts__out_push(tally_alerts *a, const char *tenant,
			    const char *id, const char *json)
{
	tally_alerts_outrow *o;

	if (a->nout == a->capout) {
		a->capout = a->capout ? a->capout * 2 : 16;
		a->out = tally_xrealloc(a->out, a->capout * sizeof(*a->out));
	}
	o = &a->out[a->nout++];
	snprintf(o->tenant, sizeof(o->tenant), "%s", tenant);
	snprintf(o->id, sizeof(o->id), "%s", id);
	o->json = tally_xstrdup(json);
}

/* positions ---------------------------------------------------------- */

int tally_alerts_assign(tally_alerts *a,
			rd_kafka_topic_partition_list_t *parts,
			tally_error *err)
{
	return tally_positions_assign(a->pos, a->pg, parts, err);
}

void tally_alerts_revoke(tally_alerts *a,
			 const rd_kafka_topic_partition_list_t *parts)
{
	tally_positions_revoke(a->pos, parts);
}

int tally_alerts_reseek(tally_alerts *a, rd_kafka_t *rk,
			const tally_alerts_msg *msgs, size_t n,
			tally_error *err)
{
	return tally_positions_reseek(a->pos, a->pg, rk, msgs, n, err);
}

static void add_part(tally_alerts *a, const tally_alerts_msg *m)
{
	size_t k;

	for (k = 0; k < a->nparts; k++)
		if (a->parts[k].partition == m->partition &&
		    strcmp(a->parts[k].topic, m->topic) == 0) {
			if (m->offset + 1 > a->parts[k].next)
				a->parts[k].next = m->offset + 1;
			return;
		}
	if (a->nparts == a->capparts) {
		a->capparts = a->capparts ? a->capparts * 2 : 16;
		a->parts = tally_xrealloc(a->parts,
					  a->capparts * sizeof(*a->parts));
	}
	a->parts[a->nparts].topic = m->topic;
	a->parts[a->nparts].partition = m->partition;
	a->parts[a->nparts].next = m->offset + 1;
	a->nparts++;
}

/* Decode one message into the next item; a failure makes it a dead letter
 * (produced to the DLQ now). Counts in c[0] totals, c[1] signals, c[2]
 * dead letters. */
static int decode_one(tally_alerts *a, const tally_alerts_msg *m,
		      size_t c[3], tally_error *err)
{
	tally_alerts_item *it = &a->items[a->nitems++];
	tally_codec_error ce = { 0 };
	int r;

	memset(it, 0, sizeof(*it));
	it->msg = m;
	add_part(a, m);
	if (strcmp(m->topic, a->totals_topic) == 0) {
		it->type = IT_TOTALS;
		r = tally_totals_from_json(&it->totals, m->payload, m->len,
					   &ce);
		c[0] += r == 0;
	} else if (strcmp(m->topic, a->signals_topic) == 0) {
		it->type = IT_SIGNAL;
		r = tally_signal_from_json(&it->signal, m->payload, m->len,
					   &ce);
		c[1] += r == 0;
	} else {
		r = tally_codec__fail(&ce, "unknown_topic", "",
				      "not a topic of tally-alerts");
	}
	if (r == 0)
		return 0;
	it->type = IT_DEAD;
	it->reason = ce.reason;
	snprintf(it->detail, sizeof(it->detail), "%s%s%s", ce.field,
		 ce.field[0] ? ": " : "", ce.detail);
	c[2]++;
	return tally_alerts__dlq_send(a, it, err);
}

/* Count and log the alerts the committed batch inserted. */
static void log_raised(tally_alerts *a)
{
	size_t k;

	for (k = 0; k < a->nout; k++) {
		json_t *o = json_loads(a->out[k].json, 0, NULL);
		const char *kind = json_string_value(json_object_get(o,
								     "kind"));

		tally_alerts__count_kind(a, kind ? kind : "");
		tally_log(TALLY_INFO, "alerts.raised",
			  TALLY_KV_STR("alert_id", a->out[k].id),
			  TALLY_KV_STR("tenant_id", a->out[k].tenant),
			  TALLY_KV_STR("kind", kind ? kind : ""));
		json_decref(o);
	}
}

int tally_alerts_process(tally_alerts *a, const tally_alerts_msg *msgs,
			 size_t n, tally_alerts_stats *stats, tally_error *err)
{
	int64_t t0 = tally_mono_ns();
	size_t i, c[3] = { 0, 0, 0 }, produced = 0;
	int rc = 0;

	tally_alerts__clear_batch(a);
	if (n == 0)
		return 0;
	if (a->capitems < n) {
		a->capitems = n;
		a->items = tally_xrealloc(a->items, n * sizeof(*a->items));
	}
	for (i = 0; i < n && rc == 0; i++)
		rc = decode_one(a, &msgs[i], c, err);
	if (rc != 0)
		goto cleanup;
	/* dead letters are durable before their offsets are committed */
	if (c[2] > 0 && a->producer != NULL &&
	    rd_kafka_flush(a->producer, 10000) != RD_KAFKA_RESP_ERR_NO_ERROR) {
		rc = tally_error_set(err, TALLY_ETRANSIENT,
				     "dead-letter flush timed out");
		goto cleanup;
	}
	rc = tally_pg_txn(a->pg, tally_alerts__batch_txn, a, 0, err);
	if (rc != 0)
		goto cleanup;
	/* committed: this instance now expects the positions it wrote */
	tally_positions_committed(a->pos, a->parts, a->nparts);
	tally_alerts__cadd(a->c_totals, c[0]);
	tally_alerts__cadd(a->c_signals, c[1]);
	tally_alerts__cadd(a->c_stale, a->stale);
	log_raised(a);
	/* a failed produce is not a failed batch: the sweep redoes it */
	if (tally_alerts__produce_rows(a, &produced, err) != 0) {
		tally_log(TALLY_WARN, "alerts.mark_produced_failed",
			  TALLY_KV_STR("error", err->msg));
		tally_error_clear(err);
	}
	if (stats != NULL) {
		stats->totals += c[0];
		stats->stale += a->stale;
		stats->signals += c[1];
		stats->raised += a->nout;
		stats->existing += a->existing;
		stats->dead_lettered += c[2];
		stats->produced += produced;
	}
cleanup:
	if (a->h_batch != NULL)
		tally_histogram_observe(a->h_batch,
					(uint64_t)(tally_mono_ns() - t0) / 1000);
	tally_alerts__clear_batch(a);
	return rc;
}
