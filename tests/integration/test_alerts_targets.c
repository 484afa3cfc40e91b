/*
 * test_alerts_targets.c - alert delivery to several targets against two
 * loopback receivers (libmicrohttpd) and PostgreSQL: a json target whose
 * Tally-Signature an independent HMAC-SHA256 (OpenSSL) accepts, a slack
 * target whose body has the exact blocks (tenant, title, threshold,
 * figures, link from the template) and no signature; routing by kind (a
 * kind only to the target that receives it); one target failing until it
 * gives up while the other gets its POST exactly once, metrics per
 * target, and a redelivery of the failed target alone.
 */
#include "alerts_webhook_support.h"

#include "tally/alerts.h"

#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <openssl/hmac.h>
#include <pthread.h>

#define TENANT AW_TENANT
#define SECRET "whsec_targets_7c1e"
#define BUDGET_ID "11111111-1111-4111-8111-111111111111"
#define DISPUTE_ID "22222222-2222-4222-8222-222222222222"

static char db[64], dsn[512];
static tally_pg *pg;

/* one receiver: the status it answers and what it saw */
typedef struct rx {
	pthread_mutex_t mu;
	int status;
	int n;
	char sig[8][256];
	char body[8][4096];
	size_t len[8];
} rx;

static rx rj = { PTHREAD_MUTEX_INITIALIZER, 200, 0, { "" }, { "" }, { 0 } };
static rx rs = { PTHREAD_MUTEX_INITIALIZER, 200, 0, { "" }, { "" }, { 0 } };

static enum MHD_Result handler(void *cls, struct MHD_Connection *conn,
			       const char *url, const char *method,
			       const char *version, const char *data,
			       size_t *data_size, void **con_cls)
{
	rx *x = cls;
	const aw_body *b;
	const char *v;
	int status;

	(void)url;
	(void)method;
	(void)version;
	if (aw_body_more(con_cls, data, data_size))
		return MHD_YES;
	b = *con_cls;
	v = MHD_lookup_connection_value(conn, MHD_HEADER_KIND,
					"Tally-Signature");
	pthread_mutex_lock(&x->mu);
	if (x->n < 8) {
		snprintf(x->sig[x->n], sizeof(x->sig[0]), "%s", v ? v : "");
		memcpy(x->body[x->n], b->buf, b->len + 1);
		x->len[x->n] = b->len;
	}
	x->n++;
	status = x->status;
	pthread_mutex_unlock(&x->mu);
	return aw_reply(conn, (unsigned)status);
}

static struct MHD_Daemon *start(rx *x, char *url, size_t n)
{
	struct MHD_Daemon *d;

	curl_global_init(CURL_GLOBAL_DEFAULT);
	pthread_mutex_lock(&x->mu);
	x->n = 0;
	x->status = 200;
	pthread_mutex_unlock(&x->mu);
	d = MHD_start_daemon(MHD_USE_INTERNAL_POLLING_THREAD |
			     MHD_USE_THREAD_PER_CONNECTION, 0, NULL, NULL,
			     handler, x, MHD_OPTION_NOTIFY_COMPLETED, aw_body_done,
			     NULL, MHD_OPTION_END);
	ck_assert_msg(d != NULL, "receiver must start");
	snprintf(url, n, "http://127.0.0.1:%u/hook", (unsigned)
		 MHD_get_daemon_info(d, MHD_DAEMON_INFO_BIND_PORT)->port);
	return d;
}

static int count(rx *x)
{
	int n;

	pthread_mutex_lock(&x->mu);
	n = x->n;
	pthread_mutex_unlock(&x->mu);
	return n;
}

static void sql(const char *q)
{
	tally_error err;

	ck_assert_msg(tally_pg_exec(pg, NULL, q, 0, NULL, &err) == 0, "%s: %s",
		      q, err.msg);
}

static void setup(void)
{
	pg = aw_db_open(db, sizeof(db), dsn, sizeof(dsn), "t_altgt");
	sql("INSERT INTO alerts (id, tenant_id, kind, period_start, threshold,"
	    " payload, raised_at) VALUES ('" BUDGET_ID "', '" TENANT "',"
	    " 'budget', '2026-12-01T00:00:00Z', 80, '{\"cost\": \"81.5\","
	    " \"monthly_budget\": \"100\"}', now() - interval '2 s'),"
	    " ('" DISPUTE_ID "', '" TENANT "', 'dispute',"
	    " '2026-12-03T08:00:00Z', 0, '{}', now() - interval '1 s')");
}

static void teardown(void)
{
	tally_pg_free(pg);
	pg = NULL;
	tally_test_db_drop(db);
}

/* Does the v1 of sig match HMAC-SHA256(SECRET, "<t>.<body>")? */
static bool sig_ok(const char *sig, const char *body, size_t len)
{
	unsigned char mac[EVP_MAX_MD_SIZE];
	unsigned maclen = 0, i;
	char msg[4200], hex[65], want[80];
	long long t = -1;
	int tl;

	if (sscanf(sig, "t=%lld,", &t) != 1 || t <= 0)
		return false;
	tl = snprintf(msg, sizeof(msg), "%lld.", t);
	memcpy(msg + tl, body, len);
	HMAC(EVP_sha256(), SECRET, (int)strlen(SECRET),
	     (const unsigned char *)msg, (size_t)tl + len, mac, &maclen);
	for (i = 0; i < maclen; i++)
		snprintf(hex + 2 * i, 3, "%02x", mac[i]);
	snprintf(want, sizeof(want), ",v1=%s", hex);
	return strstr(sig, want) != NULL;
}

static void round_now(const tally_alerts_delivery *d, tally_metrics *m)
{
	tally_error err;
	int nd, nf;

	sql("UPDATE alert_deliveries SET next_attempt_at = now()");
	ck_assert_msg(tally_alerts_deliver_targets(pg, d, 50, m, &nd, &nf,
						   &err) == 0, "%s", err.msg);
}

static int64_t q(const char *s)
{
	return aw_q_int(pg, s);
}

static uint64_t outcome(tally_metrics *m, const char *t, const char *o)
{
	char labels[96];

	snprintf(labels, sizeof(labels), "target=\"%s\",outcome=\"%s\"", t, o);
	return tally_counter_get(tally_metrics_counter(m,
		"tally_alerts_deliveries_total", labels, ""));
}

/* the text of the mrkdwn/plain_text object at blocks[i] (field f or -1) */
static const char *block_text(json_t *j, size_t i, int f)
{
	json_t *b = json_array_get(json_object_get(j, "blocks"), i);

	if (f >= 0)
		return json_string_value(json_object_get(json_array_get(
			json_object_get(b, "fields"), (size_t)f), "text"));
	return json_string_value(json_object_get(json_object_get(b, "text"),
						 "text"));
}

START_TEST(test_targets_route_sign_and_slack_blocks)
{
	struct MHD_Daemon *dj, *ds;
	char uj[128], us[128];
	tally_alerts_target t[2] = {
		{ "finance", TALLY_ALERTS_TARGET_JSON, uj, "dispute", NULL },
		{ "ops-chat", TALLY_ALERTS_TARGET_SLACK, us, "budget",
		  "https://admin.example/tenants/{tenant_id}" },
	};
	tally_alerts_delivery d = { t, 2, { SECRET, NULL }, 1, 2000, 5, 3600 };
	tally_metrics *m = tally_metrics_new();
	json_t *j, *a;

	dj = start(&rj, uj, sizeof(uj));
	ds = start(&rs, us, sizeof(us));
	round_now(&d, m);
	/* routing: the dispute to finance only, the budget to ops-chat only */
	ck_assert_int_eq(count(&rj), 1);
	ck_assert_int_eq(count(&rs), 1);
	ck_assert_int_eq(q("SELECT count(*) FROM alert_deliveries"), 2);
	ck_assert_int_eq(q("SELECT count(*) FROM alert_deliveries WHERE"
			   " alert_id = '" DISPUTE_ID "' AND target ="
			   " 'finance' AND delivered_at IS NOT NULL"), 1);
	ck_assert_int_eq(q("SELECT count(*) FROM alerts WHERE delivered_at"
			   " IS NOT NULL AND routed_at IS NOT NULL"), 2);
	/* the json target: the alert JSON, signed */
	ck_assert_msg(sig_ok(rj.sig[0], rj.body[0], rj.len[0]),
		      "signature %s must verify", rj.sig[0]);
	a = json_loads(rj.body[0], 0, NULL);
	ck_assert_str_eq(json_string_value(json_object_get(a, "id")),
			 DISPUTE_ID);
	json_decref(a);
	/* the slack target: unsigned, the exact blocks */
	ck_assert_str_eq(rs.sig[0], "");
	j = json_loads(rs.body[0], 0, NULL);
	ck_assert_ptr_nonnull(j);
	ck_assert_str_eq(json_string_value(json_object_get(j, "text")),
			 "Budget 80 % reached: Acme");
	ck_assert_int_eq(json_array_size(json_object_get(j, "blocks")), 5);
	ck_assert_str_eq(block_text(j, 0, -1), "Budget 80 % reached");
	ck_assert_str_eq(block_text(j, 1, 0), "*Tenant*\nAcme");
	ck_assert_str_eq(block_text(j, 1, 1), "*Threshold*\n80 %");
	ck_assert_str_eq(block_text(j, 1, 2),
			 "*Period*\n2026-12-01T00:00:00.000Z");
	ck_assert_str_eq(block_text(j, 1, 3), "*Kind*\nbudget");
	ck_assert_str_eq(block_text(j, 2, -1), "*Figures*\n\xe2\x80\xa2 cost:"
			 " 81.5\n\xe2\x80\xa2 monthly_budget: 100");
	ck_assert_str_eq(block_text(j, 3, -1),
			 "<https://admin.example/tenants/" TENANT
			 "|Open in admin>");
	json_decref(j);
	ck_assert_uint_eq(outcome(m, "finance", "delivered"), 1);
	ck_assert_uint_eq(outcome(m, "ops-chat", "delivered"), 1);
	/* nothing more to deliver */
	round_now(&d, m);
	ck_assert_int_eq(count(&rj) + count(&rs), 2);
	MHD_stop_daemon(dj);
	MHD_stop_daemon(ds);
	tally_metrics_free(m);
}
END_TEST

START_TEST(test_targets_one_fails_other_delivers_once)
{
	struct MHD_Daemon *dj, *ds;
	char uj[128], us[128];
	tally_alerts_target t[2] = {
		{ "finance", TALLY_ALERTS_TARGET_JSON, uj, "budget", NULL },
		{ "ops-chat", TALLY_ALERTS_TARGET_SLACK, us, "budget", NULL },
	};
	tally_alerts_delivery d = { t, 2, { SECRET, NULL }, 1, 2000, 3, 3600 };
	tally_metrics *m = tally_metrics_new();
	tally_error err;
	int64_t n = 0;

	dj = start(&rj, uj, sizeof(uj));
	ds = start(&rs, us, sizeof(us));
	pthread_mutex_lock(&rj.mu);
	rj.status = 500;
	pthread_mutex_unlock(&rj.mu);
	round_now(&d, m);
	round_now(&d, m);
	round_now(&d, m);
	round_now(&d, m);
	/* finance: 3 attempts then failed; ops-chat: exactly one POST */
	ck_assert_int_eq(count(&rj), 3);
	ck_assert_int_eq(count(&rs), 1);
	ck_assert_int_eq(q("SELECT count(*) FROM alert_deliveries WHERE"
			   " target = 'finance' AND failed_at IS NOT NULL AND"
			   " attempts = 3 AND last_error = 'HTTP 500'"), 1);
	ck_assert_int_eq(q("SELECT count(*) FROM alert_deliveries WHERE"
			   " target = 'ops-chat' AND delivered_at IS NOT NULL"
			   " AND attempts = 1"), 1);
	/* the alert's summary: failed (one target gave up), not delivered */
	ck_assert_int_eq(q("SELECT count(*) FROM alerts WHERE id = '"
			   BUDGET_ID "' AND delivery_failed_at IS NOT NULL AND"
			   " delivered_at IS NULL AND last_delivery_error ="
			   " 'HTTP 500'"), 1);
	ck_assert_uint_eq(outcome(m, "finance", "retry"), 2);
	ck_assert_uint_eq(outcome(m, "finance", "failed"), 1);
	ck_assert_uint_eq(outcome(m, "ops-chat", "delivered"), 1);
	/* redeliver finance alone once it answers: ops-chat is not re-sent */
	pthread_mutex_lock(&rj.mu);
	rj.status = 200;
	pthread_mutex_unlock(&rj.mu);
	ck_assert_int_eq(tally_alerts_redeliver_target(pg, NULL, "ops-chat",
						       &n, &err), 0);
	ck_assert_int_eq(n, 0);
	ck_assert_int_eq(tally_alerts_redeliver_target(pg, NULL, "finance",
						       &n, &err), 0);
	ck_assert_int_eq(n, 1);
	round_now(&d, m);
	ck_assert_int_eq(count(&rj), 4);
	ck_assert_int_eq(count(&rs), 1);
	ck_assert_int_eq(q("SELECT count(*) FROM alerts WHERE id = '"
			   BUDGET_ID "' AND delivered_at IS NOT NULL AND"
			   " delivery_failed_at IS NULL"), 1);
	ck_assert_uint_eq(outcome(m, "finance", "delivered"), 1);
	MHD_stop_daemon(dj);
	MHD_stop_daemon(ds);
	tally_metrics_free(m);
}
END_TEST

/* An alert older than max_age_s when a target first sees it is marked
 * routed without a delivery: a new target gets no stale backlog. */
START_TEST(test_targets_stale_backlog_not_sent)
{
	struct MHD_Daemon *dj;
	char uj[128];
	tally_alerts_target t[1] = {
		{ "finance", TALLY_ALERTS_TARGET_JSON, uj, "", NULL },
	};
	tally_alerts_delivery d = { t, 1, { SECRET, NULL }, 1, 2000, 3, 3600 };
	tally_metrics *m = tally_metrics_new();

	sql("UPDATE alerts SET raised_at = now() - interval '2 h' WHERE id ="
	    " '" BUDGET_ID "'");
	dj = start(&rj, uj, sizeof(uj));
	round_now(&d, m);
	/* only the fresh dispute is posted; the stale budget is routed */
	ck_assert_int_eq(count(&rj), 1);
	ck_assert_int_eq(q("SELECT count(*) FROM alert_deliveries"), 1);
	ck_assert_int_eq(q("SELECT count(*) FROM alert_deliveries WHERE"
			   " alert_id = '" DISPUTE_ID "'"), 1);
	ck_assert_int_eq(q("SELECT count(*) FROM alerts WHERE routed_at IS"
			   " NULL"), 0);
	round_now(&d, m);
	ck_assert_int_eq(count(&rj), 1);
	MHD_stop_daemon(dj);
	tally_metrics_free(m);
}
END_TEST

START_TEST(test_targets_json_needs_secret)
{
	tally_alerts_target t[1] = {
		{ "finance", TALLY_ALERTS_TARGET_JSON, "http://127.0.0.1:9/x",
		  NULL, NULL },
	};
	tally_alerts_delivery d = { t, 1, { NULL, NULL }, 0, 2000, 3, 3600 };
	tally_error err;

	ck_assert_int_eq(tally_alerts_deliver_targets(pg, &d, 50, NULL, NULL,
						      NULL, &err),
			 TALLY_EINVALID);
	ck_assert_int_eq(q("SELECT count(*) FROM alert_deliveries"), 0);
}
END_TEST

static Suite *tally_alerts_targets_suite(void)
{
	Suite *s = suite_create("alerts_targets");
	TCase *tc = tcase_create("Targets");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_targets_route_sign_and_slack_blocks);
	tcase_add_test(tc, test_targets_one_fails_other_delivers_once);
	tcase_add_test(tc, test_targets_stale_backlog_not_sent);
	tcase_add_test(tc, test_targets_json_needs_secret);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_alerts_targets_suite)
