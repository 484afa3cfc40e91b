/*
 * tally-relay - Stripe webhooks onto Kafka (see include/tally/relay.h).
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

static void usage(FILE *fp)
{
	fprintf(fp, "usage: tally-relay --config FILE [--listen HOST:PORT] "
		    "[--create-topic PARTITIONS]\n"
		    "  Stripe webhooks (POST relay.path) onto "
		    "topics.stripe_events;\n"
		    "  /healthz, /readyz and /metrics on the same listener.\n"
		    "  Secrets: STRIPE_WEBHOOK_SECRET, "
		    "STRIPE_WEBHOOK_SECRET_PREVIOUS.\n");
}

int main(int argc, char **argv)
{
	const char *cfg_path = NULL, *listen = NULL;
	tally_config *cfg = NULL;
	tally_metrics *m = NULL;
	tally_relay *r = NULL;
	tally_error err = { 0 };
	int64_t partitions = 0;
	int i, lv, rc = EXIT_FAILURE;

	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			cfg_path = argv[++i];
		} else if (strcmp(argv[i], "--listen") == 0 && i + 1 < argc) {
			listen = argv[++i];
		} else if (strcmp(argv[i], "--create-topic") == 0 &&
			   i + 1 < argc) {
			if (tally_parse_i64(&partitions, argv[++i]) != 0 ||
			    partitions < 1 || partitions > 1000) {
				usage(stderr);
				return 2;
			}
		} else if (strcmp(argv[i], "--help") == 0 ||
			   strcmp(argv[i], "-h") == 0) {
			usage(stdout);
			return EXIT_SUCCESS;
		} else {
			usage(stderr);
			return 2;
		}
	}
	tally_log_init("tally-relay", TALLY_INFO);
	if (tally_config_load(&cfg, cfg_path, &err) != 0) {
		tally_log(TALLY_FATAL, "config.error",
			  TALLY_KV_STR("error", err.msg));
		return EXIT_FAILURE;
	}
	lv = tally_log_level_parse(tally_config_str(cfg, "log.level"));
	if (lv >= 0)
		tally_log_set_level((tally_log_level)lv);
	if (listen != NULL)
		tally_config_set(cfg, "relay.listen", listen);
	if (partitions > 0 && create_topic(cfg, (int)partitions, &err) != 0) {
		tally_log(TALLY_FATAL, "relay.create_topic_failed",
			  TALLY_KV_STR("error", err.msg));
		goto cleanup;
	}
	tally_signals_install();
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
		if (tally_signals_reload_requested()) {
			if (tally_config_reload(cfg, &err) != 0) {
				tally_log(TALLY_ERR, "config.reload_failed",
					  TALLY_KV_STR("error", err.msg));
				continue;
			}
			lv = tally_log_level_parse(
				tally_config_str(cfg, "log.level"));
			if (lv >= 0)
				tally_log_set_level((tally_log_level)lv);
			tally_relay_reload(r, cfg);
		}
	}
	tally_relay_stop(r);
cleanup:
	tally_relay_free(r);
	tally_metrics_free(m);
	tally_config_free(cfg);
	return rc;
}
