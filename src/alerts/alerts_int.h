/*
 * alerts_int.h - what the files of the tally-alerts engine share: the
 * engine's state, one batch's items and the rows it inserted, and the
 * functions of its store, outbox and dead-letter files.
 */
#ifndef TALLY_ALERTS_INT_H
#define TALLY_ALERTS_INT_H

#include "io/outbox.h"
#include "tally/alerts.h"
#include "tally/dead_letters.h"
#include "tally/positions.h"

/* An alert as published: the billing.alerts value and the webhook body. */
#define ALERT_JSON                                                         \
	"json_build_object('id', id, 'tenant_id', tenant_id, 'kind', kind,"  \
	" 'period_start', to_char(period_start AT TIME ZONE 'UTC',"         \
	" 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'), 'threshold', threshold,"     \
	" 'payload', payload, 'raised_at', to_char(raised_at AT TIME ZONE"  \
	" 'UTC', 'YYYY-MM-DD\"T\"HH24:MI:SS.MS\"Z\"'))::text"

typedef enum { IT_TOTALS, IT_SIGNAL, IT_DEAD } tally_alerts_item_type;

/* One message of a batch, decoded (or why it is a dead letter). */
typedef struct tally_alerts_item {
	tally_alerts_item_type type;
	tally_totals totals;
	tally_signal signal;
	const char *reason;
	char detail[256];
	const tally_alerts_msg *msg;
} tally_alerts_item;

/* A row inserted by the batch (or found by the sweep), produced later. */
typedef struct tally_alerts_outrow {
	char tenant[37];
	char id[37];
	char *json;
} tally_alerts_outrow;

/* An alert's identity in the outbox: its primary key as text. */
typedef struct alert_ident {
	char tenant[36];
	char id[36];
} alert_ident;

/* When a periodic scan last ran (monotonic). */
typedef struct tally_alerts_timer {
	bool ran;
	int64_t last_ns;
} tally_alerts_timer;

/* Whether a scan every every_ms (> 0) is due; if so, it starts now. The
 * first call is due. */
bool tally_alerts__due(tally_alerts_timer *t, int64_t every_ms);

struct tally_alerts {
	tally_pg *pg;
	char *group, *totals_topic, *signals_topic, *alerts_topic;
	char *totals_dlq, *signals_dlq;
	rd_kafka_t *producer;
	tally_outbox *outbox;      /* billing.alerts; NULL: PG only */
	tally_dead_letters *dead;  /* the batch's dead_letters rows */
	tally_metrics *m;
	tally_alert_thresholds th;
	tally_positions *pos;
	/* per batch */
	tally_position *parts;
	size_t nparts, capparts;
	tally_alerts_item *items;
	size_t nitems, capitems;
	tally_alerts_outrow *out;
	size_t nout, capout;
	tally_alert_list list;
	size_t stale, existing;
	/* metrics */
	tally_counter *c_stale, *c_totals, *c_signals, *c_produced;
	tally_counter *c_produce_failed;
	tally_histogram *h_batch;
	/* the last periodic scans: silence (alerts_silence.c), revenue
	 * (alerts_revenue.c) */
	tally_alerts_timer silence_timer, revenue_timer;
};

/* engine (alerts_engine.c) */
void tally_alerts__clear_batch(tally_alerts *a);
void tally_alerts__count(tally_alerts *a, const char *name,
			 const char *labels, const char *help);
void tally_alerts__cadd(tally_counter *c, uint64_t n);
/* Append a row to a->out (json copied). */
void tally_alerts__out_push(tally_alerts *a, const char *tenant,
			    const char *id, const char *json);

/* store (alerts_store.c): the batch transaction, for tally_pg_txn */
int tally_alerts__batch_txn(tally_pg *pg, void *payload, tally_error *err);
/* A scan's a->list inserted in one transaction; the new rows are counted
 * (tally_alerts_raised_total{kind}), logged with reason and produced.
 * @param[out] raised rows inserted (may be NULL) */
int tally_alerts__raise_list(tally_alerts *a, const char *reason,
			     int *raised, tally_error *err);
/* Count one raised alert of kind in tally_alerts_raised_total. */
void tally_alerts__count_kind(tally_alerts *a, const char *kind);

/* outbox (alerts_outbox.c): produce a->out, mark the delivered rows */
int tally_alerts__produce_rows(tally_alerts *a, size_t *produced,
			       tally_error *err);

/* dead letters (alerts_dead_letters.c) */
int tally_alerts__dlq_send(tally_alerts *a, const tally_alerts_item *it,
			   tally_error *err);
/* The batch's dead letters into dead_letters (in its transaction). */
int tally_alerts__mirror_dead(tally_alerts *a, tally_error *err);

#endif /* TALLY_ALERTS_INT_H */
