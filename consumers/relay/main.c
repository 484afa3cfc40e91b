/*
 * tally-relay - Stripe webhooks and usage events onto Kafka (see
 * include/tally/relay.h).
 *
 *   tally-relay --config FILE [--listen HOST:PORT] [--create-topic N]
 *
 * --create-topic N creates topics.stripe_events with N partitions if it is
 * missing (demo, benchmark); in production the topic is provisioned.
 * SIGTERM/SIGINT: stop accepting, drain in-flight events, flush, exit 0
 * (a second signal exits at once). SIGHUP: reload relay.tolerance_s and
 * log.level. Exit 1 on a start-up error or a fatal producer error.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/config.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/relay.h"
#include "tally/program.h"
#include "tally/signals.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

static int create_topic(const tally_config *cfg, int partitions,
			tally_error *err)
{
	rd_kafka_t *rk = NULL;
	const char *topics[2];
	int rc;

	topics[0] = tally_config_str(cfg, "topics.stripe_events");
	topics[1] = NULL;
	rc = tally_kafka_producer_new(&rk, tally_kafka_conf(cfg), err);
	if (rc == 0)
		rc = tally_kafka_create_topics(rk, topics, partitions, err);
	if (rk != NULL)
		rd_kafka_destroy(rk);
	return rc;
}

/* --create-topic PARTITIONS: create topics.stripe_events first */
static int parse_arg(int argc, char **argv, int i, void *payload)
{
	int64_t *partitions = payload;

	if (strcmp(argv[i], "--create-topic") != 0)
		return 0;
	if (i + 1 >= argc || tally_parse_i64(partitions, argv[i + 1]) != 0 ||
	    *partitions < 1 || *partitions > 1000)
		return -1;
	return 2;
}

int main(int argc, char **argv)
{
	int64_t partitions = 0;
	const tally_program_opts popts = {
		"tally-relay", "--listen", "relay.listen",
		"[--create-topic PARTITIONS]\n"
		"  Stripe webhooks (POST relay.path) onto topics.stripe_events;\n"
		"  usage events (POST relay.intake_path, API keys) onto\n"
		"  topics.usage;\n"
		"  /healthz, /readyz and /metrics on relay.admin_listen.\n"
		"  Secrets: STRIPE_WEBHOOK_SECRET, STRIPE_WEBHOOK_SECRET_PREVIOUS.",
		parse_arg, &partitions
	};
	tally_config *cfg = NULL;
	tally_metrics *m = NULL;
	tally_relay *r = NULL;
	tally_error err = { 0 };
	int rc = EXIT_FAILURE;

	if (tally_program_start(&cfg, &popts, argc, argv, &rc) != 0)
		return rc;
	rc = EXIT_FAILURE;
	if (partitions > 0 && create_topic(cfg, (int)partitions, &err) != 0) {
		tally_log(TALLY_FATAL, "relay.create_topic_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	m = tally_metrics_new();
	if (tally_relay_new(&r, cfg, m, &err) != 0) {
		tally_log(TALLY_FATAL, "relay.start_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	rc = EXIT_SUCCESS;
	while (!tally_signals_sleep_ms(100)) {
		if (tally_relay_failed(r)) {
			rc = EXIT_FAILURE;
			break;
		}
		if (tally_signals_reload_requested() &&
		    tally_program_reload(cfg) == 0)
			tally_relay_reload(r, cfg);
	}
	tally_relay_stop(r);
cleanup:
	tally_relay_free(r);
	tally_metrics_free(m);
	tally_config_free(cfg);
	return rc;
}
