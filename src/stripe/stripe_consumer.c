/*
 * stripe_consumer.c - the pipeline of tally-stripe (tally/stripe_consumer.h):
 * commands and Stripe events from Kafka into tally_stripe_sync, dead
 * letters, and the periodic work (signals outbox, dunning, meters).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/stripe_consumer.h"
#include "tally/command.h"
#include "tally/consumer_loop.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/pg.h"
#include "tally/program.h"
#include "tally/signals.h"
#include "tally/stripe.h"
#include "tally/stripe_sync.h"

#include <assert.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 100

struct tally_stripe_consumer {
	tally_config *cfg;
	tally_metrics *m; /* borrowed */
	tally_pg *pg;
	tally_stripe *stripe;
	tally_stripe_sync *ss;
	rd_kafka_t *producer;
	tally_consumer *consumer;
	tally_counter *c_cmd, *c_evt, *c_dup, *c_dlq, *c_sig, *c_meter;
	char dlq_commands[256], dlq_events[256];
	const char *secrets[2];
	uint64_t dlq_failed; /* failed delivery reports of dead letters */
};

/* Delivery reports, served on this thread by rd_kafka_poll/flush: signals
 * go to stripe_sync (per-message opaque), anything else is a dead letter. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
			void *opaque)
{
	tally_stripe_consumer *a = opaque;

	(void)rk;
	if (tally_stripe_sync_on_delivery(rkm))
		return;
	if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		a->dlq_failed++;
		tally_log(TALLY_WARN, "stripe.dead_letter_not_delivered",
			  TALLY_KV_STR("error", rd_kafka_err2str(rkm->err)));
	}
}

static void header(const rd_kafka_message_t *rkm, const char *name,
		   char *out, size_t n)
{
	rd_kafka_headers_t *hdrs = NULL;
	const void *v = NULL;
	size_t len = 0;

	out[0] = '\0';
	if (rd_kafka_message_headers(rkm, &hdrs) != RD_KAFKA_RESP_ERR_NO_ERROR)
		return;
	if (rd_kafka_header_get_last(hdrs, name, &v, &len) !=
	    RD_KAFKA_RESP_ERR_NO_ERROR || v == NULL)
		return;
	if (len >= n)
		len = n - 1;
	memcpy(out, v, len);
	out[len] = '\0';
}

static int dead_letter(tally_stripe_consumer *a, const rd_kafka_message_t *rkm,
		       const char *dlq, const char *reason, const char *detail)
{
	uint64_t failed_before = a->dlq_failed;
	tally_error err;
	int rc;

	rc = tally_dlq_send(a->producer, dlq, rkm, "tally-stripe", reason,
			    detail, &err);
	/* flush serves the reports; ours must not be a failure */
	if (rc == 0 && (rd_kafka_flush(a->producer, 10000) !=
			RD_KAFKA_RESP_ERR_NO_ERROR ||
			a->dlq_failed != failed_before))
		rc = TALLY_ETRANSIENT;
	if (rc == 0)
		tally_counter_add(a->c_dlq, 1);
	tally_log(TALLY_WARN, "stripe.dead_letter",
		  TALLY_KV_STR("topic", rd_kafka_topic_name(rkm->rkt)),
		  TALLY_KV_INT("partition", rkm->partition),
		  TALLY_KV_INT("offset", rkm->offset),
		  TALLY_KV_STR("reason", reason));
	return rc;
}

/* One message to a final state: 0, or ETRANSIENT (retry it). */
static int handle(tally_stripe_consumer *a, const rd_kafka_message_t *rkm)
{
	const char *topic = rd_kafka_topic_name(rkm->rkt);
	tally_error err;
	int rc;

	tally_error_clear(&err);
	if (strcmp(topic, tally_config_str(a->cfg, "topics.commands")) == 0) {
		tally_command cmd;
		tally_codec_error ce;

		memset(&ce, 0, sizeof(ce));
		if (tally_codec_decode_command(&cmd, rkm->payload, rkm->len,
					       &ce) != 0)
			return dead_letter(a, rkm, a->dlq_commands,
					   ce.reason ? ce.reason : "invalid",
					   ce.detail);
		rc = tally_stripe_sync_command(a->ss, &cmd, &err);
		tally_counter_add(a->c_cmd, 1);
	} else {
		char sig[512];
		const char *outcome = NULL;

		header(rkm, "stripe-signature", sig, sizeof(sig));
		rc = tally_stripe_sync_event(a->ss, rkm->payload, rkm->len,
					     sig[0] ? sig : NULL, &outcome,
					     &err);
		tally_counter_add(a->c_evt, 1);
		if (rc == TALLY_EINVALID)
			return dead_letter(a, rkm, a->dlq_events,
					   "invalid_event", err.msg);
	}
	if (rc == TALLY_EDUPLICATE) {
		tally_counter_add(a->c_dup, 1);
		return 0;
	}
	if (rc == TALLY_EINVALID)
		return dead_letter(a, rkm, a->dlq_commands, "invalid_command",
				   err.msg);
	if (rc != 0)
		tally_log(TALLY_WARN, "stripe.retry_message",
			  TALLY_KV_STR("topic", topic),
			  TALLY_KV_INT("offset", rkm->offset),
			  TALLY_KV_STR("error", err.msg));
	return rc == 0 ? 0 : TALLY_ETRANSIENT;
}

static void publish(tally_stripe_consumer *a)
{
	tally_error err;
	int n = 0;

	if (tally_stripe_sync_publish(a->ss, a->producer,
				      tally_config_str(a->cfg,
						       "topics.signals"),
				      &n, &err) != 0)
		tally_log(TALLY_WARN, "stripe.signals_publish",
			  TALLY_KV_STR("error", err.msg));
	tally_counter_add(a->c_sig, (uint64_t)n);
}

/* tally_loop_batch's attempt: one message to a final state */
struct stripe_msg {
	tally_stripe_consumer *a;
	const rd_kafka_message_t *rkm;
};

static int msg_attempt(void *ctx, tally_error *err)
{
	struct stripe_msg *sm = ctx;

	(void)err; /* handle() logs stripe.retry_message itself */
	return handle(sm->a, sm->rkm);
}

/* Handle one polled batch; offsets are stored for the messages that
 * reached a final state (all, unless stopping). A transient failure is
 * retried for as long as it lasts, 500 ms .. 30 s apart. */
static void handle_batch(tally_stripe_consumer *a, rd_kafka_message_t **msgs,
			 size_t n)
{
	size_t i, done = 0;
	tally_error err;
	struct stripe_msg sm = { a, NULL };
	tally_batch_ops ops = { 0 };

	ops.name = "stripe";
	ops.lane = -1;
	ops.attempt = msg_attempt;
	ops.backoff_min_ms = 500;
	ops.backoff_max_ms = 30000;
	ops.quiet_retries = true;
	ops.ctx = &sm;
	for (i = 0; i < n && !tally_signals_stop_requested(); i++) {
		sm.rkm = msgs[i];
		if (tally_loop_batch(&ops) != TALLY_BATCH_COMMITTED)
			break; /* stopping: leave it for redelivery */
		done = i + 1;
	}
	/* store only what reached a final state */
	if (done > 0 && tally_consumer_store(a->consumer, msgs, done,
					     &err) != 0)
		tally_log(TALLY_WARN, "kafka.store_failed",
			  TALLY_KV_STR("error", err.msg));
	for (i = 0; i < n; i++)
		rd_kafka_message_destroy(msgs[i]);
}

/* The dunning clock (every minute) and the meters, when due. */
static void periodic(tally_stripe_consumer *a, int64_t now,
		     int64_t *next_dunning, int64_t *next_meter)
{
	tally_error err;
	int k = 0;

	if (now >= *next_dunning) {
		if (tally_stripe_sync_dunning(a->ss, &k, &err) != 0)
			tally_log(TALLY_WARN, "stripe.dunning",
				  TALLY_KV_STR("error", err.msg));
		*next_dunning = now + 60000;
	}
	if (now >= *next_meter) {
		k = 0;
		if (tally_stripe_sync_report_meters(a->ss, &k, &err) != 0)
			tally_log(TALLY_WARN, "stripe.meters",
				  TALLY_KV_STR("error", err.msg));
		tally_counter_add(a->c_meter, (uint64_t)k);
		*next_meter = now + 1000 * tally_config_int(a->cfg,
					"stripe.meter_interval_s");
	}
}

/* tally_stripe_consumer_run's state between tally_loop_run's calls */
struct stripe_run {
	tally_stripe_consumer *a;
	int64_t next_dunning, next_meter; /* tally_now_ms() */
};

static void run_reload(void *ctx)
{
	struct stripe_run *run = ctx;

	(void)tally_program_reload(run->a->cfg);
}

/* One batch, then the outbox and what is due; never ends the loop. */
static int run_step(void *ctx)
{
	struct stripe_run *run = ctx;
	rd_kafka_message_t *msgs[BATCH];
	int64_t now = tally_now_ms();
	size_t n;

	n = tally_loop_gather_into(run->a->consumer, msgs, BATCH, 100);
	handle_batch(run->a, msgs, n);
	publish(run->a);
	periodic(run->a, now, &run->next_dunning, &run->next_meter);
	return 0;
}

int tally_stripe_consumer_run(tally_stripe_consumer *a, tally_error *err)
{
	struct stripe_run run = { a, 0, 0 };

	(void)err;
	(void)tally_loop_run(run_step, run_reload, &run);
	publish(a); /* settle the last batch's delivery reports */
	return 0;
}

/*
 * The webhook secrets events are re-verified with (current, previous).
 * Without one, anyone who can write to the topic forges the mirror: a
 * start-up error unless stripe.verify_signatures = false says so.
 */
static int webhook_secrets(tally_stripe_consumer *a, size_t *ns,
			   tally_error *err)
{
	*ns = 0;
	if (!tally_config_bool(a->cfg, "stripe.verify_signatures")) {
		tally_log(TALLY_WARN, "stripe.signatures_not_verified",
			  TALLY_KV_STR("detail", "stripe.verify_signatures = "
				       "false: events are not re-verified"));
		return 0;
	}
	a->secrets[0] = tally_config_str(a->cfg, "relay.webhook_secret");
	a->secrets[1] = tally_config_str(a->cfg,
					 "relay.webhook_secret_previous");
	if (*a->secrets[0])
		(*ns)++;
	if (*a->secrets[1])
		a->secrets[(*ns)++] = a->secrets[1];
	if (*ns == 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "no webhook secret: set "
				       "STRIPE_WEBHOOK_SECRET, or "
				       "stripe.verify_signatures = false to "
				       "mirror events unverified");
	return 0;
}

/* The producer (its delivery reports come to on_delivery), the dead-letter
 * topics and the consumer. */
static int kafka_clients(tally_stripe_consumer *a, tally_error *err)
{
	const char *topics[3];
	tally_consumer_opts co = { 0 };
	rd_kafka_conf_t *conf = tally_kafka_conf(a->cfg);
	int rc;

	rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	rd_kafka_conf_set_opaque(conf, a);
	rc = tally_kafka_producer_new(&a->producer, conf, err);
	if (rc != 0)
		return rc;
	snprintf(a->dlq_commands, sizeof(a->dlq_commands), "%s%s",
		 tally_config_str(a->cfg, "topics.commands"),
		 tally_config_str(a->cfg, "kafka.dlq_suffix"));
	snprintf(a->dlq_events, sizeof(a->dlq_events), "%s%s",
		 tally_config_str(a->cfg, "topics.stripe_events"),
		 tally_config_str(a->cfg, "kafka.dlq_suffix"));
	topics[0] = tally_config_str(a->cfg, "topics.commands");
	topics[1] = tally_config_str(a->cfg, "topics.stripe_events");
	topics[2] = NULL;
	co.group = tally_config_str(a->cfg, "stripe.group");
	co.topics = topics;
	co.metrics = a->m; /* consumer lag gauges */
	co.rejoin_timeout_ms = tally_config_int(a->cfg,
						"kafka.rejoin_timeout_ms");
	conf = tally_kafka_conf(a->cfg);
	return tally_consumer_new(&a->consumer, conf, &co, err);
}

static void counters(tally_stripe_consumer *a, tally_metrics *m)
{
	const tally_metric_def defs[] = {
		{ "tally_stripe_commands_total", NULL, "commands handled",
		  &a->c_cmd },
		{ "tally_stripe_events_total", NULL, "Stripe events handled",
		  &a->c_evt },
		{ "tally_stripe_duplicates_total", NULL,
		  "commands and events already done", &a->c_dup },
		{ "tally_stripe_dead_letters_total", NULL, "dead letters",
		  &a->c_dlq },
		{ "tally_stripe_signals_total", NULL, "signals published",
		  &a->c_sig },
		{ "tally_stripe_meter_events_total", NULL,
		  "meter events sent to Stripe", &a->c_meter },
	};

	TALLY_METRICS_REGISTER(m, defs);
}

int tally_stripe_consumer_new(tally_stripe_consumer **out, tally_config *cfg,
			      tally_metrics *m, tally_error *err)
{
	tally_stripe_consumer *a = tally_xcalloc(1, sizeof(*a));
	tally_stripe_sync_opts so = { 0 };
	int rc;

	assert(m != NULL);
	*out = NULL;
	a->cfg = cfg;
	a->m = m;
	counters(a, m);
	rc = webhook_secrets(a, &so.nsecrets, err);
	if (rc == 0)
		rc = tally_pg_connect_cfg(&a->pg, cfg, err);
	if (rc == 0)
		rc = tally_stripe_new_from_config(&a->stripe, cfg, err);
	if (rc != 0)
		goto fail;
	tally_stripe_set_metrics(a->stripe, m);
	so.pg = a->pg;
	so.stripe = a->stripe;
	so.cfg = cfg;
	so.webhook_secrets = a->secrets;
	rc = tally_stripe_sync_new(&a->ss, &so, err);
	if (rc == 0)
		rc = kafka_clients(a, err);
	if (rc != 0)
		goto fail;
	*out = a;
	tally_log(TALLY_INFO, "stripe.start",
		  TALLY_KV_STR("group", tally_config_str(cfg, "stripe.group")));
	return 0;
fail:
	tally_stripe_consumer_free(a);
	return rc;
}

void tally_stripe_consumer_free(tally_stripe_consumer *a)
{
	if (a == NULL)
		return;
	tally_consumer_free(a->consumer);
	if (a->producer) {
		rd_kafka_flush(a->producer, 5000);
		rd_kafka_destroy(a->producer);
	}
	tally_stripe_sync_free(a->ss);
	tally_stripe_free(a->stripe);
	tally_pg_free(a->pg);
	free(a);
}
