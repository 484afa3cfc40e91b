/*
 * consumer_loop.c - the loop of the exactly-once consumers: gather, one
 * batch retried behind the fence, rebalances, stop on a signal.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/consumer_loop.h"
#include "tally/log.h"
#include "tally/pg.h"
#include "tally/signals.h"

#include <stdio.h>
#include <string.h>

void tally_kafka_msg_view(tally_kafka_msg *v, const rd_kafka_message_t *m,
			  const char *topic)
{
	v->topic = topic != NULL ? topic : rd_kafka_topic_name(m->rkt);
	v->partition = m->partition;
	v->offset = m->offset;
	v->payload = m->payload;
	v->len = m->len;
	v->rkm = m;
}

size_t tally_loop_gather(tally_consumer *c, const tally_gather_ops *ops,
			 int timeout_ms)
{
	int64_t deadline = tally_mono_ns() + (int64_t)timeout_ms * 1000000;
	unsigned gen = tally_consumer_generation(c);
	rd_kafka_message_t *chunk[TALLY_GATHER_CHUNK];
	size_t got = 0, k, room;

	for (;;) {
		int64_t left = (deadline - tally_mono_ns()) / 1000000;

		room = ops->room(ops->ctx);
		if (room > TALLY_GATHER_CHUNK)
			room = TALLY_GATHER_CHUNK;
		if (room == 0 || left <= 0)
			break;
		k = tally_consumer_poll_batch(c, chunk, room, (int)left);
		if (tally_consumer_generation(c) != gen) {
			ops->drop(ops->ctx);
			got = 0;
			gen = tally_consumer_generation(c);
		}
		if (k == 0)
			continue;
		ops->take(ops->ctx, chunk, k, got == 0);
		got += k;
	}
	return got;
}

/* tally_loop_gather_into's batch */
struct gather_array {
	rd_kafka_message_t **msgs;
	size_t max, n;
};

static size_t array_room(void *ctx)
{
	struct gather_array *g = ctx;

	return g->max - g->n;
}

static void array_take(void *ctx, rd_kafka_message_t **msgs, size_t n,
		       bool first)
{
	struct gather_array *g = ctx;

	(void)first;
	memcpy(g->msgs + g->n, msgs, n * sizeof(*msgs));
	g->n += n;
}

static void array_drop(void *ctx)
{
	struct gather_array *g = ctx;

	while (g->n > 0)
		rd_kafka_message_destroy(g->msgs[--g->n]);
}

size_t tally_loop_gather_into(tally_consumer *c, rd_kafka_message_t **msgs,
			      size_t max, int timeout_ms)
{
	struct gather_array g = { msgs, max, 0 };
	tally_gather_ops ops = { array_room, array_take, array_drop, &g };

	(void)tally_loop_gather(c, &ops, timeout_ms);
	return g.n;
}

/* the event "<name>.<what>" */
static const char *event(char *buf, size_t len, const char *name,
			 const char *what)
{
	snprintf(buf, len, "%s.%s", name, what);
	return buf;
}

static bool give_up(const tally_batch_ops *ops)
{
	return tally_signals_stop_requested() ||
	       (ops->abandon != NULL && ops->abandon(ops->ctx));
}

/* Wait ms in slices of 50 ms; false if the batch is to be given up. */
static bool backoff_wait(const tally_batch_ops *ops, int64_t ms)
{
	for (; ms > 0 && !give_up(ops); ms -= 50)
		tally_sleep_ms(ms < 50 ? ms : 50);
	return !give_up(ops);
}

static void set_health(const tally_batch_ops *ops, bool ok)
{
	if (ops->health != NULL)
		ops->health(ops->ctx, ok);
}

/* Log with the lane when there is one. */
static void log_batch(const tally_batch_ops *ops, tally_log_level level,
		      const char *what, const tally_error *err)
{
	char ev[64];

	event(ev, sizeof(ev), ops->name, what);
	if (ops->lane >= 0)
		tally_log(level, ev, TALLY_KV_INT("lane", ops->lane),
			  TALLY_KV_STR("error", err->msg));
	else
		tally_log(level, ev, TALLY_KV_STR("error", err->msg));
}

static void log_retry(const tally_batch_ops *ops, const tally_error *err,
		      int attempt, int64_t wait)
{
	char ev[64];

	event(ev, sizeof(ev), ops->name, "retry");
	if (ops->lane >= 0)
		tally_log(TALLY_WARN, ev, TALLY_KV_INT("lane", ops->lane),
			  TALLY_KV_STR("error", err->msg),
			  TALLY_KV_INT("attempt", attempt),
			  TALLY_KV_INT("wait_ms", wait));
	else
		tally_log(TALLY_WARN, ev, TALLY_KV_STR("error", err->msg),
			  TALLY_KV_INT("attempt", attempt),
			  TALLY_KV_INT("wait_ms", wait));
}

static void count(tally_counter *c)
{
	if (c != NULL)
		tally_counter_add(c, 1);
}

enum tally_batch_outcome tally_loop_batch(const tally_batch_ops *ops)
{
	tally_error err;
	int attempt = 0, errors = 0, rc;

	for (;;) {
		int64_t wait;

		tally_error_clear(&err);
		rc = ops->attempt(ops->ctx, &err);
		if (rc == 0) {
			set_health(ops, true);
			return TALLY_BATCH_COMMITTED;
		}
		if (rc == TALLY_EFENCED) {
			count(ops->c_fenced);
			log_batch(ops, TALLY_WARN, "fenced", &err);
			return TALLY_BATCH_FENCED;
		}
		if (give_up(ops))
			return TALLY_BATCH_ABANDONED;
		count(ops->c_retries);
		if (rc == TALLY_ETRANSIENT) {
			set_health(ops, false);
		} else if (++errors >= 5) {
			log_batch(ops, TALLY_FATAL, "batch_failed", &err);
			return TALLY_BATCH_FATAL;
		} else if (ops->failed != NULL) {
			ops->failed(ops->ctx);
		}
		wait = tally_backoff_ms(attempt++,
			ops->backoff_min_ms > 0 ? ops->backoff_min_ms : 200,
			ops->backoff_max_ms > 0 ? ops->backoff_max_ms : 10000);
		if (!ops->quiet_retries)
			log_retry(ops, &err, attempt, wait);
		if (!backoff_wait(ops, wait))
			return TALLY_BATCH_ABANDONED;
		if (ops->waited != NULL)
			ops->waited(ops->ctx);
	}
}

static int on_assign(rd_kafka_topic_partition_list_t *parts, void *payload)
{
	const tally_rebalance_ops *rb = payload;
	tally_error err;
	char ev[64];
	int rc;

	/* nothing may be in flight while positions are read */
	if (rb->drain != NULL)
		rb->drain(rb->ctx, false);
	tally_error_clear(&err);
	rc = rb->assign(rb->ctx, parts, &err);
	if (rc != 0)
		tally_log(TALLY_WARN, event(ev, sizeof(ev), rb->name,
					    "assign_failed"),
			  TALLY_KV_STR("error", err.msg));
	return rc;
}

static void on_revoke(rd_kafka_topic_partition_list_t *parts, void *payload)
{
	const tally_rebalance_ops *rb = payload;

	/* the batch in flight (if any) finishes before the partitions go */
	if (rb->drain != NULL)
		rb->drain(rb->ctx, true);
	rb->revoke(rb->ctx, parts);
}

int tally_loop_consumer_new(tally_consumer **out, rd_kafka_conf_t *conf,
			    const char *group, const char **topics,
			    const tally_rebalance_ops *rb, tally_metrics *m,
			    tally_error *err)
{
	tally_consumer_opts co = { 0 };

	co.metrics = m; /* consumer lag gauges */
	co.group = group;
	co.topics = topics;
	co.read_committed = true;
	co.on_assign = on_assign;
	co.on_revoke = on_revoke;
	co.payload = (void *)rb;
	co.rejoin_timeout_ms = rb->rejoin_timeout_ms;
	if (tally_consumer_new(out, conf, &co, err) != 0) {
		tally_log(TALLY_FATAL, "kafka.consumer_failed",
			  TALLY_KV_STR("error", err->msg));
		return err->code != 0 ? err->code : TALLY_ERROR;
	}
	return 0;
}

rd_kafka_conf_t *tally_loop_consumer_conf(tally_config *cfg)
{
	rd_kafka_conf_t *conf = tally_kafka_conf(cfg);
	tally_error err;
	char v[24];

	snprintf(v, sizeof(v), "%lld", (long long)tally_config_int(
		 cfg, "kafka.session_timeout_ms"));
	if (tally_kafka_conf_set(conf, "session.timeout.ms", v, &err) != 0 ||
	    tally_kafka_conf_set(conf, "max.poll.interval.ms", "600000",
				 &err) != 0)
		tally_log(TALLY_WARN, "kafka.conf",
			  TALLY_KV_STR("error", err.msg));
	return conf;
}

int tally_loop_reseeked(const char *name, int reseek_rc,
			const tally_error *err)
{
	char ev[64];

	if (reseek_rc != 0)
		tally_log(TALLY_FATAL, event(ev, sizeof(ev), name,
					     "reseek_failed"),
			  TALLY_KV_STR("error", err->msg));
	return reseek_rc;
}

int tally_loop_run(int (*step)(void *ctx), void (*reload)(void *ctx),
		   void *ctx)
{
	int rc = 0;

	while (rc == 0 && !tally_signals_stop_requested()) {
		if (tally_signals_reload_requested() && reload != NULL)
			reload(ctx);
		rc = step(ctx);
	}
	return rc;
}
