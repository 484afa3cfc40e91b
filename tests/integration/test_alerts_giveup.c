/*
 * test_alerts_giveup.c - webhook deliveries give up cleanly: a receiver
 * that always answers 500 gets exactly delivery_max_attempts POSTs, then
 * the alert is failed with its last error, counted in
 * tally_alerts_deliveries_total{outcome}, and claimed no more; an alert
 * older than delivery_max_age_s gives up at its next failure; `tally alerts
 * redeliver --failed` / `--id` put them back to pending and they are
 * delivered once the receiver answers 2xx. Own database; loopback receiver.
 */
#include "alerts_webhook_support.h"

#include "tally/alerts.h"
#include "tally/metrics.h"

#include <stdatomic.h>

#define TENANT AW_TENANT
#define ALERT1 "0b8f6a1e-5d2c-4c7a-9e3f-1a2b3c4d5e01"
#define ALERT2 "0b8f6a1e-5d2c-4c7a-9e3f-1a2b3c4d5e02"

static char db[64], dsn[512];
static tally_pg *pg;
static atomic_int rx_status = 500, rx_requests;

static void db_setup(void)
{
	pg = aw_db_open(db, sizeof(db), dsn, sizeof(dsn), "t_algiveup");
	atomic_store(&rx_status, 500);
	atomic_store(&rx_requests, 0);
}

static void db_teardown(void)
{
	tally_pg_free(pg);
	pg = NULL;
	tally_test_db_drop(db);
}

static void sql(const char *q)
{
	tally_error err;

	ck_assert_msg(tally_pg_exec(pg, NULL, q, 0, NULL, &err) == 0, "%s: %s",
		      q, err.msg);
}

static int64_t q_int(const char *q)
{
	return aw_q_int(pg, q);
}

static enum MHD_Result rx_handler(void *cls, struct MHD_Connection *conn,
				  const char *url, const char *method,
				  const char *version, const char *data,
				  size_t *data_size, void **con_cls)
{
	struct MHD_Response *resp;
	enum MHD_Result r;

	(void)cls;
	(void)url;
	(void)method;
	(void)version;
	(void)data;
	if (*con_cls == NULL) {
		*con_cls = conn;
		return MHD_YES;
	}
	if (*data_size > 0) {
		*data_size = 0;
		return MHD_YES;
	}
	atomic_fetch_add(&rx_requests, 1);
	resp = MHD_create_response_from_buffer(0, (void *)"",
					       MHD_RESPMEM_PERSISTENT);
	r = MHD_queue_response(conn, (unsigned)atomic_load(&rx_status), resp);
	MHD_destroy_response(resp);
	return r;
}

/* One delivery round now (the backoff skipped: everything is due). */
static void round_now(const tally_alerts_webhook *wh, tally_metrics *m)
{
	tally_error err;
	int nd, nf;

	sql("UPDATE alert_deliveries SET next_attempt_at = now()");
	ck_assert_int_eq(tally_alerts_deliver(pg, wh, 50, m, &nd, &nf, &err),
			 0);
}

static uint64_t outcome(tally_metrics *m, const char *o)
{
	char labels[64];

	snprintf(labels, sizeof(labels), "target=\"webhook\",outcome=\"%s\"",
		 o);
	return tally_counter_get(tally_metrics_counter(m,
		"tally_alerts_deliveries_total", labels, ""));
}

static void insert_alert(const char *id, int threshold)
{
	char q[512];

	snprintf(q, sizeof(q), "INSERT INTO alerts (id, tenant_id, kind,"
		 " period_start, threshold) VALUES ('%s', '" TENANT "',"
		 " 'budget', '2026-12-01T00:00:00Z', %d)", id, threshold);
	sql(q);
}

static const char *bin(void)
{
	const char *b = getenv("TALLY_BIN_DIR");

	return b ? b : TALLY_BINARY_DIR;
}

/* `tally alerts redeliver ARGS`: its exit status. */
static int cli_redeliver(const char *args)
{
	char cmd[1024];
	int rc;

	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' %s/tally alerts"
		 " redeliver %s >/dev/null 2>&1", dsn, bin(), args);
	rc = system(cmd);
	return WIFEXITED(rc) ? WEXITSTATUS(rc) : -1;
}

START_TEST(test_alerts_giveup_after_max_attempts)
{
	struct MHD_Daemon *d;
	tally_metrics *m = tally_metrics_new();
	char url[128];
	tally_alerts_webhook wh = { url, { "whsec_t", NULL }, 1, 2000, 3,
				    86400 };
	int i;

	d = aw_rx_start(rx_handler, NULL, url, sizeof(url));
	insert_alert(ALERT1, 50);
	for (i = 0; i < 5; i++)
		round_now(&wh, m);
	ck_assert_int_eq(atomic_load(&rx_requests), 3);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE"
			       " delivery_failed_at IS NOT NULL AND"
			       " delivered_at IS NULL AND delivery_attempts = 3"
			       " AND last_delivery_error = 'HTTP 500'"), 1);
	ck_assert_uint_eq(outcome(m, "retry"), 2);
	ck_assert_uint_eq(outcome(m, "failed"), 1);
	ck_assert_uint_eq(outcome(m, "delivered"), 0);

	/* redeliver --failed: pending again, delivered once the receiver
	 * answers 2xx */
	atomic_store(&rx_status, 200);
	ck_assert_int_eq(cli_redeliver("--failed"), 0);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE"
			       " delivery_failed_at IS NULL AND"
			       " delivery_attempts = 0"), 1);
	round_now(&wh, m);
	round_now(&wh, m);
	ck_assert_int_eq(atomic_load(&rx_requests), 4);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE"
			       " delivered_at IS NOT NULL AND"
			       " delivery_failed_at IS NULL AND"
			       " last_delivery_error IS NULL"), 1);
	ck_assert_uint_eq(outcome(m, "delivered"), 1);

	/* --id puts a delivered alert back too; nothing else moves */
	ck_assert_int_eq(cli_redeliver("--id " ALERT1), 0);
	round_now(&wh, m);
	ck_assert_int_eq(atomic_load(&rx_requests), 5);
	ck_assert_int_eq(cli_redeliver("--id " ALERT2), 1);
	ck_assert_int_eq(cli_redeliver("--id not-a-uuid"), 2);
	ck_assert_int_eq(cli_redeliver(""), 2);
	MHD_stop_daemon(d);
	tally_metrics_free(m);
}
END_TEST

START_TEST(test_alerts_giveup_after_max_age)
{
	struct MHD_Daemon *d;
	tally_metrics *m = tally_metrics_new();
	char url[128];
	tally_alerts_webhook wh = { url, { "whsec_t", NULL }, 1, 2000, 12,
				    3600 };
	tally_error err;
	int64_t n = -1;

	d = aw_rx_start(rx_handler, NULL, url, sizeof(url));
	insert_alert(ALERT1, 50);
	insert_alert(ALERT2, 80);
	/* the first attempt of ALERT1 (routed to the webhook) was two hours
	 * ago */
	sql("UPDATE alerts SET routed_at = now() WHERE id = '" ALERT1 "'");
	sql("INSERT INTO alert_deliveries (tenant_id, alert_id, target,"
	    " attempts, started_at) VALUES ('" TENANT "', '" ALERT1 "',"
	    " 'webhook', 1, now() - interval '2 h')");
	round_now(&wh, m);
	ck_assert_int_eq(atomic_load(&rx_requests), 2);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE id = '"
			       ALERT1 "' AND delivery_failed_at IS NOT NULL"
			       " AND delivery_attempts = 2"), 1);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE id = '"
			       ALERT2 "' AND delivery_failed_at IS NULL AND"
			       " delivery_started_at IS NOT NULL"), 1);
	ck_assert_uint_eq(outcome(m, "failed"), 1);
	ck_assert_uint_eq(outcome(m, "retry"), 1);
	/* the library call behind the CLI: only the failed one moves */
	ck_assert_int_eq(tally_alerts_redeliver(pg, NULL, &n, &err), 0);
	ck_assert_int_eq(n, 1);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE"
			       " delivery_started_at IS NULL"), 1);
	MHD_stop_daemon(d);
	tally_metrics_free(m);
}
END_TEST

static Suite *tally_alerts_giveup_suite(void)
{
	Suite *s = suite_create("alerts_giveup");
	TCase *tc = tcase_create("Receiver");

	tcase_add_checked_fixture(tc, db_setup, db_teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_alerts_giveup_after_max_attempts);
	tcase_add_test(tc, test_alerts_giveup_after_max_age);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_alerts_giveup_suite)
