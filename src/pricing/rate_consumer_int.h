#ifndef TALLY_RATE_CONSUMER_INT_H
#define TALLY_RATE_CONSUMER_INT_H

/*
 * rate_consumer_int.h - the state of tally-rate, shared by its setup
 * (rate_consumer_setup.c), its price book refresh (rate_prices.c), the
 * rating of a batch (rate_batch.c) and its transaction loop
 * (rate_consumer.c).
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

/* what rating made of one input message: its rated event at sb[off, +len]
 * with the input's key at sb[key_off, +key_len], or, when reason is set, a
 * dead letter with the detail at sb[off] (the input message is kept) */
struct rate_out {
	uint32_t off, len, key_off, key_len;
	const char *reason; /* static */
};

/* one gathered batch: its input messages (until rated; a dead letter's
 * until its transaction ends), each partition's first offset (to rewind
 * to) and next offset (to commit), what rating made of it, its counts */
struct rate_batch {
	rd_kafka_message_t **msgs;
	struct rate_out *out;
	int64_t *event_ms; /* event times of the rated ones, for the lag */
	rd_kafka_topic_partition_list_t *firsts, *nexts;
	size_t n, cap;
	uint64_t n_rated, n_unpriced, n_dlq;
	int64_t rated_at_ms;
	unsigned gen; /* the consumer's generation when gathered */
};

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
	/* two batches: while one's transaction commits on a second thread,
	 * the other is rated; pend is the rated one not yet produced */
	struct rate_batch batch[2];
	unsigned pend;
	msgpack_sbuffer sb; /* the pending batch's output */
	int64_t committed_at[2]; /* rated_at of the last step's commits */
	size_t n_committed_at;
	tally_counter *c_rated, *c_dlq, *c_unpriced, *c_batches, *c_aborts,
		*c_reloads;
	tally_gauge *g_version;
	tally_histogram *h_event_lag; /* event time to transaction commit */
};

/* rate.* options that a reload (SIGHUP) may change */
void tally_rater__read_opts(tally_rater *r);

/* rate_batch.c: keep in l the lowest (or highest) offset of each
 * partition given */
void tally_rater__merge_offset(rd_kafka_topic_partition_list_t *l,
			       const char *topic, int32_t partition,
			       int64_t off, bool highest);
/* note the partitions' offsets of a gathered batch */
void tally_rater__gathered(tally_rater *r, struct rate_batch *b);
/* rate every message of b into r->sb (no Kafka call) and let go of the
 * input messages that are not dead letters */
void tally_rater__rate_batch(tally_rater *r, struct rate_batch *b);
/* produce b's rated events and dead letters into the open transaction */
int tally_rater__produce_batch(tally_rater *r, const struct rate_batch *b,
			       tally_error *err);
/* destroy what b holds of its input; b is empty */
void tally_rater__drop_batch(struct rate_batch *b);

/* rate_prices.c: true when the book may have changed (see there) */
bool tally_rater__prices_notified(tally_rater *r);
/* load the book if its version changed (or force); swap it in */
int tally_rater__load_book(tally_rater *r, bool force, tally_error *err);
/* between batches: reload the book when notified, on SIGHUP (reload) or
 * every rate.price_check_s; failures are logged, the old book stays */
void tally_rater__refresh_prices(tally_rater *r, bool reload);

#endif /* TALLY_RATE_CONSUMER_INT_H */
