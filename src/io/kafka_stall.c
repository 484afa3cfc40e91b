/*
 * kafka_stall.c - the liveness check of a subscribed consumer and the
 * bounded close of a stuck one (see kafka_stall.h).
 */
#define _POSIX_C_SOURCE 200809L
#include "io/kafka_stall.h"
#include "tally/log.h"
#include "tally/pg.h"
#include "tally/signals.h"

#include <pthread.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>

#define NS_PER_MS INT64_C(1000000)
#define PROBE_TIMEOUT_MS 2000
#define PROBE_EVERY_NS (5000 * NS_PER_MS)
#define GAUGE_EVERY_NS (1000 * NS_PER_MS)

static atomic_bool stall_seen;

rd_kafka_conf_t *tally_kafka_stall_conf(const rd_kafka_conf_t *consumer)
{
	/* consumer-only properties would be warned about by a producer */
	static const char *skip[] = {
		"group.", "enable.auto.", "auto.", "isolation.", "statistics.",
		"session.", "max.poll.", "heartbeat.", "partition.assignment",
		"fetch.", "queued.", "enable.partition.eof", "check.crcs",
	};

	rd_kafka_conf_t *conf = rd_kafka_conf_dup_filter(consumer,
		sizeof(skip) / sizeof(skip[0]), skip);

	/* the topic defaults (auto.offset.reset) are not filtered above */
	rd_kafka_conf_set_default_topic_conf(conf, rd_kafka_topic_conf_new());
	return conf;
}

void tally_kafka_stall_free(tally_kafka_stall *s)
{
	if (s->probe != NULL)
		rd_kafka_conf_destroy(s->probe);
	s->probe = NULL;
}

/*
 * A wait starts: the first probe a quarter of the limit later. Nearly
 * every start and rebalance ends well before that, and a probe is a new
 * client's metadata round trip on the poll thread.
 */
static void wait_starts(tally_kafka_stall *s, int64_t now)
{
	s->unassigned_since = now;
	s->counted_from = now;
	s->next_probe = now + s->limit_ns / 4;
}

void tally_kafka_stall_init(tally_kafka_stall *s, int64_t limit_ms,
			    rd_kafka_conf_t *probe, int64_t now)
{
	s->probe = probe;
	s->limit_ns = limit_ms > 0 ? limit_ms * NS_PER_MS : 0;
	s->gauge_at = 0;
	s->fired = false;
	wait_starts(s, now);
}

void tally_kafka_stall_assigned(tally_kafka_stall *s)
{
	s->unassigned_since = 0;
}

void tally_kafka_stall_revoked(tally_kafka_stall *s, int64_t now)
{
	wait_starts(s, now);
}

static void set_gauge(tally_kafka_stall *s, const char *group,
		      tally_metrics *m, int64_t now)
{
	char g[128], labels[160];

	if (m == NULL || now - s->gauge_at < GAUGE_EVERY_NS)
		return;
	s->gauge_at = now;
	tally_metrics_escape_label(g, sizeof(g), group);
	snprintf(labels, sizeof(labels), "group=\"%s\"", g);
	tally_gauge_set(tally_metrics_gauge(m,
		"tally_kafka_consumer_unassigned_seconds", labels,
		"Seconds this consumer has waited for an assignment from its"
		" group (0 while it holds one)"),
		s->unassigned_since != 0 ?
		(now - s->unassigned_since) / (1000 * NS_PER_MS) : 0);
}

/*
 * Whether a broker answers a metadata request of a new client now. Not
 * the consumer's handle: a stuck one may have no broker connection left
 * (its group in query-coord with "no broker available" while Kafka is up).
 */
static bool broker_answers(const rd_kafka_conf_t *probe)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_conf_t *conf = rd_kafka_conf_dup(probe);
	rd_kafka_resp_err_t e;
	char errstr[256];
	rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr,
				      sizeof(errstr));

	if (rk == NULL) {
		rd_kafka_conf_destroy(conf);
		return false;
	}
	e = rd_kafka_metadata(rk, 0, NULL, &md, PROBE_TIMEOUT_MS);
	if (md != NULL)
		rd_kafka_metadata_destroy(md);
	rd_kafka_destroy(rk);
	return e == RD_KAFKA_RESP_ERR_NO_ERROR;
}

bool tally_kafka_stall_check(tally_kafka_stall *s, const char *group,
			     tally_metrics *m)
{
	int64_t now = tally_mono_ns(), waited;
	char labels[160], g[128];

	set_gauge(s, group, m, now);
	if (s->limit_ns == 0 || s->probe == NULL || s->fired ||
	    s->unassigned_since == 0)
		return false;
	if (now < s->next_probe)
		return false;
	s->next_probe = now + (s->limit_ns / 4 < PROBE_EVERY_NS ?
			       s->limit_ns / 4 : PROBE_EVERY_NS);
	if (!broker_answers(s->probe)) {
		/* an outage: the group gets the whole limit once Kafka is back */
		s->counted_from = tally_mono_ns();
		return false;
	}
	if (now - s->counted_from <= s->limit_ns)
		return false;
	waited = now - s->unassigned_since;
	s->fired = true;
	atomic_store(&stall_seen, true);
	tally_log(TALLY_ERR, "kafka.consumer_stalled",
		  TALLY_KV_STR("group", group),
		  TALLY_KV_INT("unassigned_ms", waited / NS_PER_MS),
		  TALLY_KV_INT("limit_ms", s->limit_ns / NS_PER_MS),
		  TALLY_KV_STR("action", "stop, exit 1 (restarted by the "
				"supervisor)"));
	if (m != NULL) {
		tally_metrics_escape_label(g, sizeof(g), group);
		snprintf(labels, sizeof(labels), "group=\"%s\"", g);
		tally_counter_add(tally_metrics_counter(m,
			"tally_kafka_consumer_stalls_total", labels,
			"Times a consumer held no assignment past"
			" kafka.rejoin_timeout_ms while Kafka answered"), 1);
	}
	tally_signals_request_stop();
	return true;
}

bool tally_kafka_stall_seen(void)
{
	return atomic_load(&stall_seen);
}

struct closer {
	rd_kafka_t *rk;
	rd_kafka_queue_t *q;
	atomic_bool done;
};

static void *close_main(void *p)
{
	struct closer *cl = p;

	if (cl->q != NULL)
		rd_kafka_queue_destroy(cl->q);
	rd_kafka_consumer_close(cl->rk);
	rd_kafka_destroy(cl->rk);
	atomic_store(&cl->done, true); /* the last access to cl */
	return NULL;
}

void tally_kafka_stall_close(rd_kafka_t *rk, rd_kafka_queue_t *q,
			     int wait_ms)
{
	struct closer *cl = tally_xcalloc(1, sizeof(*cl));
	pthread_t th;
	int waited;

	cl->rk = rk;
	cl->q = q;
	atomic_init(&cl->done, false);
	if (pthread_create(&th, NULL, close_main, cl) != 0) {
		tally_log(TALLY_WARN, "kafka.close_abandoned",
			  TALLY_KV_STR("reason", "no thread"));
		return; /* cl and the handle go with the process */
	}
	(void)pthread_detach(th);
	for (waited = 0; waited < wait_ms && !atomic_load(&cl->done);
	     waited += 50)
		tally_sleep_ms(50);
	if (!atomic_load(&cl->done)) {
		/* the thread still uses cl: both go with the process */
		tally_log(TALLY_WARN, "kafka.close_abandoned",
			  TALLY_KV_INT("waited_ms", waited));
		return;
	}
	free(cl);
}
