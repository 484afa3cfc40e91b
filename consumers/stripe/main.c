/*
 * tally-stripe - consumer group stripe.group (tally.stripe) on
 * billing.commands and billing.stripe-events: carries out billing commands
 * against Stripe, mirrors Stripe events into PostgreSQL, runs the dunning
 * clock, reports usage to Stripe meters and publishes billing.signals from
 * the outbox. All logic is in libtally's stripe_sync; this is the loop.
 *
 * Offsets are stored only after a message reached a final state in
 * PostgreSQL (done, duplicate or dead-lettered). A transient failure
 * (Stripe or PostgreSQL down) retries the same message with backoff, so
 * the partition waits rather than skipping; effects are idempotent.
 *
 * Delivery reports decide: a signal is marked published, and a dead letter
 * counts as sent (so its offset may be stored), only when its own delivery
 * report is successful; a drained queue proves nothing.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/command.h"
#include "tally/config.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/pg.h"
#include "tally/program.h"
#include "tally/signals.h"
#include "tally/stripe.h"
#include "tally/stripe_sync.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BATCH 100

typedef struct app {
	tally_config *cfg;
	tally_pg *pg;
	tally_stripe *stripe;
	tally_stripe_sync *ss;
	rd_kafka_t *producer;
	tally_consumer *consumer;
	tally_metrics *metrics;
	tally_metrics_server *server;
	tally_counter *c_cmd, *c_evt, *c_dup, *c_dlq, *c_sig, *c_meter;
	char dlq_commands[256], dlq_events[256];
	const char *secrets[2];
	uint64_t dlq_failed; /* failed delivery reports of dead letters */
} app;

/* Delivery reports, served on this thread by rd_kafka_poll/flush: signals
 * go to stripe_sync (per-message opaque), anything else is a dead letter. */
static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *rkm,
			void *opaque)
{
	app *a = opaque;

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

static int dead_letter(app *a, const rd_kafka_message_t *rkm,
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
static int handle(app *a, const rd_kafka_message_t *rkm)
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

static void publish(app *a)
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

static int run(app *a)
{
	rd_kafka_message_t *msgs[BATCH];
	int64_t next_dunning = 0, next_meter = 0;

	while (!tally_signals_stop_requested()) {
		size_t n, i, done;
		int64_t now = tally_now_ms();
		tally_error err;

		if (tally_signals_reload_requested())
			(void)tally_program_reload(a->cfg);
		n = tally_consumer_poll_batch(a->consumer, msgs, BATCH, 100);
		done = 0;
		for (i = 0; i < n && !tally_signals_stop_requested(); i++) {
			int attempt = 0, hrc;

			while ((hrc = handle(a, msgs[i])) != 0 &&
			       !tally_signals_sleep_ms((long)tally_backoff_ms(
				       attempt++, 500, 30000)))
				;
			if (hrc != 0)
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
		publish(a);
		if (now >= next_dunning) {
			int k = 0;

			if (tally_stripe_sync_dunning(a->ss, &k, &err) != 0)
				tally_log(TALLY_WARN, "stripe.dunning",
					  TALLY_KV_STR("error", err.msg));
			next_dunning = now + 60000;
		}
		if (now >= next_meter) {
			int k = 0;

			if (tally_stripe_sync_report_meters(a->ss, &k,
							    &err) != 0)
				tally_log(TALLY_WARN, "stripe.meters",
					  TALLY_KV_STR("error", err.msg));
			tally_counter_add(a->c_meter, (uint64_t)k);
			next_meter = now + 1000 * tally_config_int(a->cfg,
					"stripe.meter_interval_s");
		}
	}
	return 0;
}

int main(int argc, char **argv)
{
	app a;
	static const tally_program_opts popts = {
		"tally-stripe", "--metrics-listen", "stripe.metrics_listen",
		NULL, NULL, NULL
	};
	const char *topics[3];
	tally_stripe_sync_opts so = { 0 };
	tally_consumer_opts co = { 0 };
	rd_kafka_conf_t *conf;
	tally_error err;
	size_t ns = 0;
	int rc = 1;

	memset(&a, 0, sizeof(a));
	if (tally_program_start(&a.cfg, &popts, argc, argv, &rc) != 0)
		return rc;
	rc = 1;
	if (tally_pg_connect_cfg(&a.pg, a.cfg, &err) != 0 ||
	    tally_stripe_new_from_config(&a.stripe, a.cfg, &err) != 0)
		goto fail;
	a.secrets[0] = tally_config_str(a.cfg, "relay.webhook_secret");
	a.secrets[1] = tally_config_str(a.cfg,
					"relay.webhook_secret_previous");
	if (*a.secrets[0])
		ns++;
	if (*a.secrets[1])
		a.secrets[ns++] = a.secrets[1];
	if (ns == 0)
		tally_log(TALLY_WARN, "stripe.no_webhook_secret",
			  TALLY_KV_STR("detail", "events are not re-verified"));
	so.pg = a.pg;
	so.stripe = a.stripe;
	so.cfg = a.cfg;
	so.webhook_secrets = a.secrets;
	so.nsecrets = ns;
	if (tally_stripe_sync_new(&a.ss, &so, &err) != 0)
		goto fail;
	conf = tally_kafka_conf(a.cfg);
	rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
	rd_kafka_conf_set_opaque(conf, &a);
	if (tally_kafka_producer_new(&a.producer, conf, &err) != 0)
		goto fail;
	snprintf(a.dlq_commands, sizeof(a.dlq_commands), "%s%s",
		 tally_config_str(a.cfg, "topics.commands"),
		 tally_config_str(a.cfg, "kafka.dlq_suffix"));
	snprintf(a.dlq_events, sizeof(a.dlq_events), "%s%s",
		 tally_config_str(a.cfg, "topics.stripe_events"),
		 tally_config_str(a.cfg, "kafka.dlq_suffix"));
	topics[0] = tally_config_str(a.cfg, "topics.commands");
	topics[1] = tally_config_str(a.cfg, "topics.stripe_events");
	topics[2] = NULL;
	co.group = tally_config_str(a.cfg, "stripe.group");
	co.topics = topics;
	conf = tally_kafka_conf(a.cfg);
	if (tally_consumer_new(&a.consumer, conf, &co, &err) != 0)
		goto fail;
	a.metrics = tally_metrics_new();
	a.c_cmd = tally_metrics_counter(a.metrics,
		"tally_stripe_commands_total", NULL, "commands handled");
	a.c_evt = tally_metrics_counter(a.metrics,
		"tally_stripe_events_total", NULL, "Stripe events handled");
	a.c_dup = tally_metrics_counter(a.metrics,
		"tally_stripe_duplicates_total", NULL,
		"commands and events already done");
	a.c_dlq = tally_metrics_counter(a.metrics,
		"tally_stripe_dead_letters_total", NULL, "dead letters");
	a.c_sig = tally_metrics_counter(a.metrics,
		"tally_stripe_signals_total", NULL, "signals published");
	a.c_meter = tally_metrics_counter(a.metrics,
		"tally_stripe_meter_events_total", NULL,
		"meter events sent to Stripe");
	if (tally_metrics_serve(&a.server, a.metrics,
				tally_config_str(a.cfg,
						 "stripe.metrics_listen"),
				NULL, NULL, NULL, &err) != 0)
		tally_log(TALLY_WARN, "metrics.serve",
			  TALLY_KV_STR("error", err.msg));
	tally_log(TALLY_INFO, "stripe.start",
		  TALLY_KV_STR("group", co.group));
	rc = run(&a);
	publish(&a); /* settle the last batch's delivery reports */
	goto cleanup;
fail:
	tally_log(TALLY_FATAL, "stripe.start_failed",
		  TALLY_KV_STR("error", err.msg));
	rc = 1;
cleanup:
	tally_metrics_server_free(a.server);
	tally_consumer_free(a.consumer);
	if (a.producer) {
		rd_kafka_flush(a.producer, 5000);
		rd_kafka_destroy(a.producer);
	}
	tally_metrics_free(a.metrics);
	tally_stripe_sync_free(a.ss);
	tally_stripe_free(a.stripe);
	tally_pg_free(a.pg);
	tally_config_free(a.cfg);
	tally_log(TALLY_INFO, "stripe.stop");
	return rc;
}
