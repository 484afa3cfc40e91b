/*
 * test_alerts_silence.c - churn from silence against PostgreSQL: a tenant
 * with hourly usage for 20 days then none for 8 raises exactly one
 * churn_risk/100 (clock injected, usage_hourly rows inserted directly); a
 * rescan raises nothing more; usage that resumes and stops again raises a
 * second one; a tenant without history and a cancelled one raise none.
 */
#include "test_support.h"
#include "check_main.h"

#include "tally/alerts.h"
#include "tally/event.h"
#include "tally/log.h"

#define ACTIVE "6a1f0c2e-7b3d-4e5f-8a9b-0c1d2e3f4a50"
#define NOHIST "6a1f0c2e-7b3d-4e5f-8a9b-0c1d2e3f4a51"
#define GONE "6a1f0c2e-7b3d-4e5f-8a9b-0c1d2e3f4a52"
#define T0 INT64_C(1793491200000) /* 2026-11-01T00:00:00Z */
#define DAY INT64_C(86400000)

static char db[64], dsn[512];
static tally_pg *pg;
static tally_alerts *al;
static const tally_silence_rule rule = { 7, 7 };

static void run(const char *sql)
{
	tally_error err;

	ck_assert_msg(tally_pg_exec(pg, NULL, sql, 0, NULL, &err) == 0,
		      "%s: %s", sql, err.msg);
}

static void tenant(const char *id, const char *slug, const char *status)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "INSERT INTO tenants (id, name, slug, domain,"
		 " subscription_plan, status) VALUES ('%s', '%s', '%s',"
		 " '%s.example', 'enterprise', '%s')", id, slug, slug, slug,
		 status);
	run(sql);
}

/* Usage in every hour of days [from, to) after T0. */
static void usage(const char *id, int from, int to)
{
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "INSERT INTO usage_hourly (tenant_id, hour, meter, events,"
		 " cost) SELECT '%s', h, 'ai_requests', 3, 0.05 FROM"
		 " generate_series(timestamptz '2026-11-01Z' + %d *"
		 " interval '1 day', timestamptz '2026-11-01Z' + %d *"
		 " interval '1 day' - interval '1 hour', interval '1 hour') h",
		 id, from, to);
	run(sql);
}

static void setup(void)
{
	tally_alerts_opts o = { 0 };
	tally_error err;

	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_log_init("test_alerts_silence", TALLY_WARN);
	tally_test_unique(db, sizeof(db), "t_silence");
	tally_test_db_create(dsn, sizeof(dsn), db, 1);
	ck_assert_msg(tally_pg_connect(&pg, dsn, 10000, &err) == 0, "%s",
		      err.msg);
	o.group = "g";
	o.totals_topic = "billing.totals";
	o.signals_topic = "billing.signals";
	ck_assert_int_eq(tally_alerts_new(&al, pg, &o, &err), 0);
	tenant(ACTIVE, "busy", "active");
	tenant(NOHIST, "quiet", "active");
	tenant(GONE, "gone", "cancelled");
	usage(ACTIVE, 0, 20);
	usage(GONE, 0, 20);
}

static void teardown(void)
{
	tally_alerts_free(al);
	al = NULL;
	tally_pg_free(pg);
	pg = NULL;
	tally_test_db_drop(db);
}

static int64_t q_int(const char *sql)
{
	PGresult *res = NULL;
	tally_error err;
	int64_t v = -1;

	ck_assert_msg(tally_pg_exec(pg, &res, sql, 0, NULL, &err) == 0,
		      "%s: %s", sql, err.msg);
	ck_assert_int_eq(tally_parse_i64(&v, PQgetvalue(res, 0, 0)), 0);
	PQclear(res);
	return v;
}

static int scan_at(int64_t now_ms)
{
	tally_error err;
	int raised = -1;

	ck_assert_msg(tally_alerts_scan_silence(al, &rule, now_ms, &raised,
						&err) == 0, "%s", err.msg);
	return raised;
}

#define SILENCE_ALERTS(t)                                                  \
	q_int("SELECT count(*) FROM alerts WHERE tenant_id = '" t "' AND"  \
	      " kind = 'churn_risk' AND threshold = 100")

START_TEST(test_silence_one_alert_per_episode)
{
	/* 20 days of usage, then 8 silent days */
	ck_assert_int_eq(scan_at(T0 + 27 * DAY - 1), 0); /* 7 days - 1 ms */
	ck_assert_int_eq(scan_at(T0 + 28 * DAY), 1);
	ck_assert_int_eq(SILENCE_ALERTS(ACTIVE), 1);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE tenant_id"
			       " = '" ACTIVE "' AND period_start ="
			       " timestamptz '2026-11-21Z' AND"
			       " payload->>'reason' = 'silence' AND"
			       " (payload->>'active_days')::int = 20"), 1);
	/* the scan again (and a day later): the same episode */
	ck_assert_int_eq(scan_at(T0 + 28 * DAY), 0);
	ck_assert_int_eq(scan_at(T0 + 29 * DAY), 0);
	ck_assert_int_eq(SILENCE_ALERTS(ACTIVE), 1);
	/* usage resumes on day 29: not silent */
	usage(ACTIVE, 29, 30);
	ck_assert_int_eq(scan_at(T0 + 31 * DAY), 0);
	ck_assert_int_eq(SILENCE_ALERTS(ACTIVE), 1);
	/* and stops again: a second episode, once */
	ck_assert_int_eq(scan_at(T0 + 38 * DAY), 1);
	ck_assert_int_eq(scan_at(T0 + 38 * DAY), 0);
	ck_assert_int_eq(SILENCE_ALERTS(ACTIVE), 2);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE tenant_id"
			       " = '" ACTIVE "' AND period_start ="
			       " timestamptz '2026-12-01Z'"), 1);
	/* no history, or no live subscription: nothing */
	ck_assert_int_eq(SILENCE_ALERTS(NOHIST), 0);
	ck_assert_int_eq(SILENCE_ALERTS(GONE), 0);
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts"), 2);
	/* like any alert: waiting for billing.alerts and the webhook */
	ck_assert_int_eq(q_int("SELECT count(*) FROM alerts WHERE"
			       " produced_at IS NULL AND delivered_at IS NULL"
			       " AND next_delivery_at <= now()"), 2);
}
END_TEST

static Suite *tally_alerts_silence_it_suite(void)
{
	Suite *s = suite_create("alerts_silence_integration");
	TCase *tc = tcase_create("Postgres");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_silence_one_alert_per_episode);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_alerts_silence_it_suite)
