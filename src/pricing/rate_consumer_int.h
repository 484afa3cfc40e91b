#ifndef TALLY_RATE_CONSUMER_INT_H
#define TALLY_RATE_CONSUMER_INT_H

/*
 * rate_consumer_int.h - the state of tally-rate, shared by its setup
 * (rate_consumer_setup.c), its price book refresh (rate_prices.c) and its
 * transaction loop (rate_consumer.c).
 */

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/kafka.h"
#include "tally/metrics.h"
#include "tally/pg.h"
#include "tally/pricebook.h"
#include "tally/rate_consumer.h"
#include "tally/rating.h"

#define TXN_TIMEOUT_MS 60000

struct tally_rater {
	tally_config *cfg;
	tally_metrics *m;
	tally_pg *pg;
	tally_pricebook *pb;
	tally_rate_ctx *ctx;
	tally_consumer *consumer;
	rd_kafka_t *producer;
	rd_kafka_topic_t *out_rkt; /* out_topic's handle: no lookup per message */
	char in_topic[256], out_topic[256], dlq_topic[256];
	size_t batch_size;
	int batch_ms;
	bool unpriced_zero;
	int64_t last_check_ns;
	PGconn *listen_conn; /* connection LISTENing on tally_prices */
	rd_kafka_message_t **msgs;
	int64_t *event_ms; /* event times of the rated, batch_size entries */
	msgpack_sbuffer sb;
	uint64_t n_rated, n_unpriced, n_dlq; /* of the open transaction */
	tally_counter *c_rated, *c_dlq, *c_unpriced, *c_batches, *c_aborts,
		*c_reloads;
	tally_gauge *g_version;
	tally_histogram *h_event_lag; /* event time to transaction commit */
};

/* rate.* options that a reload (SIGHUP) may change */
void tally_rater__read_opts(tally_rater *r);

/* rate_prices.c: true when the book may have changed (see there) */
bool tally_rater__prices_notified(tally_rater *r);
/* load the book if its version changed (or force); swap it in */
int tally_rater__load_book(tally_rater *r, bool force, tally_error *err);
/* between batches: reload the book when notified, on SIGHUP (reload) or
 * every rate.price_check_s; failures are logged, the old book stays */
void tally_rater__refresh_prices(tally_rater *r, bool reload);

#endif /* TALLY_RATE_CONSUMER_INT_H */
