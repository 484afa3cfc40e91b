/*
 * program.c - start-up and SIGHUP handling shared by tally-rate,
 * tally-aggregate, tally-stripe, tally-alerts and tally-relay.
 */
#include "tally/program.h"
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/signals.h"
#include "io/sd_notify.h"

#include <librdkafka/rdkafka.h>
#ifdef __GLIBC__
#include <malloc.h>
#endif
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>

static void usage(FILE *fp, const tally_program_opts *o)
{
	fprintf(fp, "usage: %s --config FILE", o->name);
	if (o->listen_flag != NULL)
		fprintf(fp, " [%s HOST:PORT]", o->listen_flag);
	if (o->usage_extra != NULL)
		fprintf(fp, " %s", o->usage_extra);
	fputc('\n', fp);
}

static void apply_log_level(const tally_config *cfg)
{
	int lv = tally_log_level_parse(tally_config_str(cfg, "log.level"));

	if (lv >= 0)
		tally_log_set_level((tally_log_level)lv);
	else
		tally_log(TALLY_WARN, "config.bad_log_level",
			  TALLY_KV_STR("value", tally_config_str(cfg, "log.level")));
}

int tally_program_start(tally_config **out, const tally_program_opts *o,
			int argc, char **argv, int *exit_code)
{
	const char *cfg_path = NULL, *listen = NULL;
	tally_error err;
	int i, used;

	*out = NULL;
	/* no core dump, no ptrace or /proc/<pid>/mem by the user's other
	 * processes: the programs hold secrets (database and Kafka
	 * passwords, Stripe keys) */
	(void)prctl(PR_SET_DUMPABLE, 0, 0, 0, 0);
	for (i = 1; i < argc; i++) {
		if (strcmp(argv[i], "--config") == 0 && i + 1 < argc) {
			cfg_path = argv[++i];
		} else if (o->listen_flag != NULL &&
			   strcmp(argv[i], o->listen_flag) == 0 && i + 1 < argc) {
			listen = argv[++i];
		} else if (strcmp(argv[i], "--help") == 0 ||
			   strcmp(argv[i], "-h") == 0) {
			usage(stdout, o);
			*exit_code = EXIT_SUCCESS;
			return 1;
		} else if (o->arg != NULL &&
			   (used = o->arg(argc, argv, i, o->payload)) != 0) {
			if (used < 0) {
				usage(stderr, o);
				*exit_code = 2;
				return 1;
			}
			i += used - 1;
		} else {
			fprintf(stderr, "%s: unknown argument %s\n", o->name,
				argv[i]);
			usage(stderr, o);
			*exit_code = 2;
			return 1;
		}
	}
	tally_log_init(o->name, TALLY_INFO);
	tally_error_clear(&err);
	if (tally_config_load(out, cfg_path, &err) != 0) {
		tally_log(TALLY_FATAL, "config.error",
			  TALLY_KV_STR("error", err.msg));
		*exit_code = EXIT_FAILURE;
		return 1;
	}
	apply_log_level(*out); /* $TALLY_LOG_LEVEL wins via the config */
	if (strncmp(o->name, "tally-", 6) == 0) /* rate.kafka.properties ... */
		tally_config_set_program(*out, o->name + 6);
	if (listen != NULL && o->listen_key != NULL)
		tally_config_set(*out, o->listen_key, listen);
	tally_signals_install();
	tally_log(TALLY_INFO, "program.start",
		  TALLY_KV_STR("config", cfg_path ? cfg_path : "(defaults)"),
		  TALLY_KV_STR("librdkafka", rd_kafka_version_str()));
	tally_sd_notify_start(); /* systemd: READY=1, watchdog, STOPPING=1 */
	*exit_code = EXIT_SUCCESS;
	return 0;
}

int tally_program_reload(tally_config *cfg)
{
	tally_error err;
	int rc;

	tally_error_clear(&err);
	rc = tally_config_reload(cfg, &err);
	if (rc != 0) {
		tally_log(TALLY_ERR, "config.reload_failed",
			  TALLY_KV_STR("error", err.msg),
			  TALLY_KV_STR("kept", "previous config"));
		return rc;
	}
	apply_log_level(cfg);
	tally_log(TALLY_INFO, "config.reload_done");
	return 0;
}

void tally_program_bound_heap(size_t mmap_threshold)
{
#ifdef __GLIBC__
	(void)mallopt(M_MMAP_THRESHOLD, (int)mmap_threshold);
	(void)mallopt(M_ARENA_MAX, 2);
#else
	(void)mmap_threshold;
#endif
}

/* log the event "<name>.<what>" with the error */
static void log_consumer(tally_log_level level, const char *name,
			 const char *what, const tally_error *err)
{
	char ev[64];

	snprintf(ev, sizeof(ev), "%s.%s", name, what);
	tally_log(level, ev, TALLY_KV_STR("error", err->msg));
}

int tally_program_run_consumer(const tally_program_opts *o,
			       const tally_consumer_vtable *vt, int argc,
			       char **argv)
{
	tally_config *cfg = NULL;
	tally_metrics *m = NULL;
	tally_metrics_server *srv = NULL;
	void *c = NULL;
	tally_error err;
	int rc = EXIT_FAILURE;

	if (tally_program_start(&cfg, o, argc, argv, &rc) != 0)
		return rc;
	rc = EXIT_FAILURE;
	tally_error_clear(&err);
	m = tally_metrics_new();
	if (vt->create(&c, cfg, m, &err) != 0) {
		log_consumer(TALLY_FATAL, vt->name, "start_failed", &err);
		goto cleanup;
	}
	if (tally_metrics_serve(&srv, m, tally_config_str(cfg, o->listen_key),
				vt->health, vt->health, c, &err) != 0)
		/* a second instance on the same host: run without /metrics */
		tally_log(TALLY_WARN, "metrics.serve_failed",
			  TALLY_KV_STR("error", err.msg));
	if (vt->run(c, &err) != 0) {
		log_consumer(TALLY_FATAL, vt->name, "fatal", &err);
		goto cleanup;
	}
	if (tally_kafka_stalled()) {
		/* the supervisor starts it again with a new consumer */
		tally_error_set(&err, TALLY_ERROR, "the Kafka consumer stalled"
				" (kafka.consumer_stalled)");
		log_consumer(TALLY_FATAL, vt->name, "fatal", &err);
		goto cleanup;
	}
	if (vt->stopped != NULL)
		tally_log(TALLY_INFO, vt->stopped);
	rc = EXIT_SUCCESS;
cleanup:
	tally_metrics_server_free(srv);
	vt->destroy(c);
	tally_metrics_free(m);
	tally_config_free(cfg);
	return rc;
}
