/*
 * test_relay_intake.c - tally-relay's HTTP intake end to end: a relay in
 * this process, real HTTP (libcurl), a fresh database (api_keys, plans)
 * and a fresh billing.usage topic per test on the real broker. Keys come
 * from `tally keys create` and are revoked with `tally keys revoke`; the
 * relay and the CLI run as a login in tally_engine (api_keys has FORCE ROW
 * LEVEL SECURITY). What the relay accepted is read back from the topic and
 * decoded with the codec.
 */
#define _DEFAULT_SOURCE
#include "check_main.h"
#include "test_support.h"
#include "topic_support.h"
#include "tally/codec.h"
#include "tally/config.h"
#include "tally/log.h"
#include "tally/metrics.h"
#include "tally/relay.h"

#include <curl/curl.h>
#include <inttypes.h>
#include <strings.h>

#define TENANT_A "7d1c2a40-0000-4000-8000-00000000000a"
#define TENANT_B "7d1c2a40-0000-4000-8000-00000000000b"
#define PATH "/v1/events"
#define JSON "application/json"
#define CE "application/cloudevents+json"
#define CE_BATCH "application/cloudevents-batch+json"
#define PARTS 3

static const char *brokers;

typedef struct fixture {
	char db[64], dsn[512], topic[160];
	char role[48], eng_dsn[600]; /* a login in tally_engine */
	tally_config *cfg;
	tally_metrics *m;
	tally_relay *r;
	int port;
} fixture;

/* --- HTTP --------------------------------------------------------------- */

typedef struct intake_resp {
	long status;
	char body[65536];
	size_t len;
	long retry_after; /* -1: no Retry-After */
} intake_resp;

static size_t on_body(char *p, size_t sz, size_t nm, void *ud)
{
	intake_resp *r = ud;
	size_t n = sz * nm, room = sizeof(r->body) - 1 - r->len;

	if (n < room)
		room = n;
	memcpy(r->body + r->len, p, room);
	r->len += room;
	r->body[r->len] = '\0';
	return n;
}

static size_t on_header(char *p, size_t sz, size_t nm, void *ud)
{
	intake_resp *r = ud;
	size_t n = sz * nm;

	if (n > 12 && strncasecmp(p, "Retry-After:", 12) == 0)
		r->retry_after = strtol(p + 12, NULL, 10);
	return n;
}

/* POST body to port's path; ctype and key (Bearer) may be NULL. */
static void intake_post(intake_resp *out, int port, const char *method,
			const char *path, const char *ctype, const char *key,
			const char *body)
{
	struct curl_slist *h = NULL;
	CURL *c = curl_easy_init();
	char url[256], line[256];
	CURLcode cc;

	memset(out, 0, sizeof(*out));
	out->retry_after = -1;
	snprintf(url, sizeof(url), "http://127.0.0.1:%d%s", port, path);
	curl_easy_setopt(c, CURLOPT_URL, url);
	curl_easy_setopt(c, CURLOPT_CUSTOMREQUEST, method);
	curl_easy_setopt(c, CURLOPT_TIMEOUT, 60L);
	h = curl_slist_append(h, "Expect:");
	snprintf(line, sizeof(line), "Content-Type: %s", ctype ? ctype : "");
	h = curl_slist_append(h, ctype ? line : "Content-Type:");
	if (key != NULL) {
		snprintf(line, sizeof(line), "Authorization: Bearer %s", key);
		h = curl_slist_append(h, line);
	}
	curl_easy_setopt(c, CURLOPT_HTTPHEADER, h);
	if (body != NULL) {
		curl_easy_setopt(c, CURLOPT_POSTFIELDS, body);
		curl_easy_setopt(c, CURLOPT_POSTFIELDSIZE, (long)strlen(body));
	}
	curl_easy_setopt(c, CURLOPT_WRITEFUNCTION, on_body);
	curl_easy_setopt(c, CURLOPT_WRITEDATA, out);
	curl_easy_setopt(c, CURLOPT_HEADERFUNCTION, on_header);
	curl_easy_setopt(c, CURLOPT_HEADERDATA, out);
	cc = curl_easy_perform(c);
	ck_assert_msg(cc == CURLE_OK, "%s %s: %s", method, path,
		      curl_easy_strerror(cc));
	curl_easy_getinfo(c, CURLINFO_RESPONSE_CODE, &out->status);
	curl_easy_cleanup(c);
	curl_slist_free_all(h);
}

/* --- set-up ------------------------------------------------------------- */

static const char *bin(void)
{
	const char *b = getenv("TALLY_BIN_DIR");

	return b ? b : TALLY_BINARY_DIR;
}

/* Run `tally <args>` on the fixture's database as the engine; its stdout
 * (first line). */
static void cli(const fixture *f, char *out, size_t n, const char *args)
{
	char cmd[1024], line[512] = "";
	FILE *fp;

	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' %s/tally %s", f->eng_dsn,
		 bin(), args);
	fp = popen(cmd, "r");
	ck_assert_ptr_nonnull(fp);
	if (fgets(line, sizeof(line), fp) == NULL)
		line[0] = '\0';
	while (fgetc(fp) != EOF) /* the rest */
		;
	ck_assert_msg(pclose(fp) == 0, "tally %s failed", args);
	line[strcspn(line, "\n")] = '\0';
	if (out != NULL)
		snprintf(out, n, "%s", line);
}

static void new_key(const fixture *f, char key[128], const char *tenant)
{
	char args[160];

	snprintf(args, sizeof(args), "keys create --tenant %s --name t",
		 tenant);
	cli(f, key, 128, args);
	ck_assert_msg(strncmp(key, "tly_", 4) == 0 && strlen(key) == 81,
		      "a key: %s", key);
}

/* A login in tally_engine and the database's DSN with it (the test DSN is
 * postgresql://user[:password]@host..., the cluster trusts local logins
 * as test_roles does). */
static void engine_login(fixture *f)
{
	const char *at = strchr(f->dsn, '@');
	char sql[160];

	ck_assert(at != NULL && strncmp(f->dsn, "postgresql://", 13) == 0);
	snprintf(f->role, sizeof(f->role), "intake_eng_%d", (int)getpid());
	snprintf(sql, sizeof(sql), "DROP ROLE IF EXISTS %s", f->role);
	tally_test_exec(getenv("TALLY_TEST_PG_DSN"), sql);
	snprintf(sql, sizeof(sql), "CREATE ROLE %s LOGIN IN ROLE tally_engine",
		 f->role);
	tally_test_exec(getenv("TALLY_TEST_PG_DSN"), sql);
	snprintf(f->eng_dsn, sizeof(f->eng_dsn), "postgresql://%s%s", f->role,
		 at);
}

/* database (two starter tenants) and topic; sql runs before the relay */
static void setup(fixture *f, const char *sql)
{
	char q[512];

	memset(f, 0, sizeof(*f));
	tally_test_unique(f->db, sizeof(f->db), "intake");
	tally_test_db_create(f->dsn, sizeof(f->dsn), f->db, 1);
	snprintf(q, sizeof(q),
		 "INSERT INTO tenants (id, name, slug, domain) VALUES"
		 " ('%s', 'a', 'a', 'a.example'), ('%s', 'b', 'b',"
		 " 'b.example')", TENANT_A, TENANT_B);
	tally_test_exec(f->dsn, q);
	if (sql != NULL)
		tally_test_exec(f->dsn, sql);
	engine_login(f);
	topic_make(f->topic, sizeof(f->topic), brokers, "test.intake", PARTS);
}

/* kafka: the brokers the relay produces to; set: "key=value" or NULL */
static void start(fixture *f, const char *kafka, const char *set_key,
		  const char *set_value)
{
	tally_error err = { 0 };

	ck_assert_int_eq(tally_config_load(&f->cfg, NULL, &err), 0);
	tally_config_set(f->cfg, "kafka.brokers", kafka);
	tally_config_set(f->cfg, "topics.usage", f->topic);
	tally_config_set(f->cfg, "database.url", f->eng_dsn);
	tally_config_set(f->cfg, "relay.listen", "127.0.0.1:0");
	tally_config_set(f->cfg, "relay.admin_listen", "127.0.0.1:0");
	tally_config_set(f->cfg, "relay.max_connections_per_ip", "0");
	tally_config_set(f->cfg, "relay.webhook_secret", "whsec_intake");
	tally_config_set(f->cfg, "relay.produce_timeout_ms", "5000");
	tally_config_set(f->cfg, "relay.key_ttl_ms", "500");
	if (set_key != NULL)
		tally_config_set(f->cfg, set_key, set_value);
	f->m = tally_metrics_new();
	ck_assert_msg(tally_relay_new(&f->r, f->cfg, f->m, &err) == 0,
		      "relay start: %s", err.msg);
	f->port = tally_relay_port(f->r);
}

static void stop(fixture *f)
{
	char sql[160];

	tally_relay_free(f->r);
	tally_metrics_free(f->m);
	tally_config_free(f->cfg);
	tally_test_db_drop(f->db);
	snprintf(sql, sizeof(sql), "DROP ROLE IF EXISTS %s", f->role);
	tally_test_exec(getenv("TALLY_TEST_PG_DSN"), sql);
}

static void post(intake_resp *out, const fixture *f, const char *ctype,
		 const char *key, const char *body)
{
	intake_post(out, f->port, "POST", PATH, ctype, key, body);
}

/* A series of the relay's /metrics, or -1 when absent. */
static int64_t metric(const fixture *f, const char *series)
{
	char *text = NULL, *p;
	int64_t v = -1;

	tally_metrics_render(&text, NULL, f->m);
	p = strstr(text, series);
	if (p != NULL)
		v = strtoll(p + strlen(series) + 1, NULL, 10);
	free(text);
	return v;
}

/* --- events ------------------------------------------------------------- */

/* An api.call usage event of tenant with id and count. */
static void usage(char *out, size_t n, const char *id, const char *tenant,
		  int count)
{
	snprintf(out, n,
		 "{\"id\":\"%s\",\"source\":\"wf-engine\",\"type\":"
		 "\"api.call\",\"tenant_id\":\"%s\",\"time\":"
		 "1765000000000,\"data\":{\"count\":%d}}",
		 id, tenant, count);
}

static void cloudevent(char *out, size_t n, const char *id, int count)
{
	char ev[384];

	usage(ev, sizeof(ev), id, TENANT_A, count);
	snprintf(out, n,
		 "{\"specversion\":\"1.0\",\"id\":\"ce-%s\",\"source\":"
		 "\"wf-engine\",\"type\":\"api.call\",\"datacontenttype\":"
		 "\"application/json\",\"data\":%s}",
		 id, ev);
}

/*
 * Read the topic back: exactly n records, whose ids (in any order) are
 * ids[] and whose counts add up to total; each keyed by its tenant with
 * the documented headers.
 */
static void expect_on_topic(const fixture *f, const char *const *ids,
			    size_t n, int64_t total)
{
	rd_kafka_message_t *msgs[64];
	rd_kafka_t *crk = NULL;
	size_t got, i, j, seen = 0;
	int64_t sum = 0;
	char tmp[160];

	got = topic_consume(&crk, msgs, 64, brokers, f->topic, PARTS, 5000);
	ck_assert_msg(got == n, "%zu records on %s, expected %zu", got,
		      f->topic, n);
	for (i = 0; i < got; i++) {
		tally_usage_event ev;
		tally_codec_error ce;

		ck_assert_msg(tally_codec_decode_usage(
				      &ev, msgs[i]->payload, msgs[i]->len,
				      &ce) == 0,
			      "canonical msgpack: %s %s", ce.reason, ce.field);
		sum += ev.count;
		for (j = 0; j < n; j++)
			if (ev.id.len == strlen(ids[j]) &&
			    memcmp(ev.id.ptr, ids[j], ev.id.len) == 0)
				seen++;
		ck_assert_int_eq((int)msgs[i]->key_len, 36);
		ck_assert(memcmp(msgs[i]->key, TENANT_A, 36) == 0);
		ck_assert_pstr_eq(topic_header(msgs[i], "ce_type", tmp,
					       sizeof(tmp)), "api.call");
		ck_assert_pstr_eq(topic_header(msgs[i], "ce_source", tmp,
					       sizeof(tmp)), "wf-engine");
		ck_assert_pstr_eq(topic_header(msgs[i], "ce_specversion", tmp,
					       sizeof(tmp)), "1.0");
		ck_assert_pstr_eq(topic_header(msgs[i], "content-type", tmp,
					       sizeof(tmp)),
				 "application/msgpack");
		ck_assert_ptr_nonnull(topic_header(msgs[i], "ce_id", tmp,
						   sizeof(tmp)));
		ck_assert_uint_eq(strlen(tmp), ev.id.len);
	}
	ck_assert_msg(seen == n, "the ids on the topic: %zu of %zu", seen, n);
	ck_assert_int_eq(sum, total);
	topic_done(crk, msgs, got);
}

/* --- tests -------------------------------------------------------------- */

START_TEST(test_intake_every_content_type)
{
	static const char *const ids[] = { "one", "arr-1", "arr-2", "ce-one",
					   "ceb-1", "ceb-2" };
	char key[128], a[1024], b[1024], body[4096];
	intake_resp r;
	fixture f;

	setup(&f, NULL);
	start(&f, brokers, NULL, NULL);
	new_key(&f, key, TENANT_A);

	usage(body, sizeof(body), "one", TENANT_A, 1);
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 202);
	ck_assert_str_eq(r.body, "{\"accepted\":1,\"rejected\":[]}\n");

	usage(a, sizeof(a), "arr-1", TENANT_A, 2);
	usage(b, sizeof(b), "arr-2", TENANT_A, 3);
	snprintf(body, sizeof(body), "[%s,%s]", a, b);
	post(&r, &f, "application/json; charset=utf-8", key, body);
	ck_assert_int_eq(r.status, 202);
	ck_assert_str_eq(r.body, "{\"accepted\":2,\"rejected\":[]}\n");

	cloudevent(body, sizeof(body), "ce-one", 4);
	post(&r, &f, CE, key, body);
	ck_assert_int_eq(r.status, 202);
	ck_assert_str_eq(r.body, "{\"accepted\":1,\"rejected\":[]}\n");

	cloudevent(a, sizeof(a), "ceb-1", 5);
	cloudevent(b, sizeof(b), "ceb-2", 6);
	snprintf(body, sizeof(body), "[%s,%s]", a, b);
	post(&r, &f, CE_BATCH, key, body);
	ck_assert_int_eq(r.status, 202);
	ck_assert_str_eq(r.body, "{\"accepted\":2,\"rejected\":[]}\n");

	post(&r, &f, "text/plain", key, body);
	ck_assert_int_eq(r.status, 415);
	post(&r, &f, NULL, key, body);
	ck_assert_int_eq(r.status, 415);

	expect_on_topic(&f, ids, 6, 1 + 2 + 3 + 4 + 5 + 6);
	ck_assert_int_eq(metric(&f, "tally_relay_intake_events_total{result="
				    "\"accepted\"}"), 6);
	ck_assert_int_eq(metric(&f, "tally_relay_requests_total{status=\"202\""
				    ",reason=\"accepted\"}"), 4);
	ck_assert_int_eq(metric(&f, "tally_relay_requests_total{status=\"415\""
				    ",reason=\"unsupported_media_type\"}"), 2);
	stop(&f);
}
END_TEST

START_TEST(test_intake_batch_rejects_by_index)
{
	static const char *const ids[] = { "good-0", "good-5" };
	char key[128], ev[6][512], body[4096];
	intake_resp r;
	fixture f;

	setup(&f, NULL);
	start(&f, brokers, NULL, NULL);
	new_key(&f, key, TENANT_A);
	usage(ev[0], sizeof(ev[0]), "good-0", TENANT_A, 10);
	snprintf(ev[1], sizeof(ev[1]),
		 "{\"id\":\"no-count\",\"source\":\"wf-engine\",\"type\":"
		 "\"api.call\",\"tenant_id\":\"%s\",\"time\":1765000000000,"
		 "\"data\":{}}", TENANT_A);
	usage(ev[2], sizeof(ev[2]), "other-tenant", TENANT_B, 1);
	snprintf(ev[3], sizeof(ev[3]),
		 "{\"id\":\"float\",\"source\":\"wf-engine\",\"type\":"
		 "\"api.call\",\"tenant_id\":\"%s\",\"time\":1765000000000,"
		 "\"data\":{\"count\":1.5}}", TENANT_A);
	snprintf(ev[4], sizeof(ev[4]), "\"not an object\"");
	usage(ev[5], sizeof(ev[5]), "good-5", TENANT_A, 20);
	snprintf(body, sizeof(body), "[%s,%s,%s,%s,%s,%s]", ev[0], ev[1],
		 ev[2], ev[3], ev[4], ev[5]);
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 207);
	ck_assert_str_eq(
		r.body,
		"{\"accepted\":2,\"rejected\":["
		"{\"index\":1,\"code\":\"missing_field\",\"field\":"
		"\"data.count\"},"
		"{\"index\":2,\"code\":\"tenant_mismatch\",\"field\":"
		"\"tenant_id\"},"
		"{\"index\":3,\"code\":\"wrong_type\",\"field\":"
		"\"data.count\"},"
		"{\"index\":4,\"code\":\"not_a_map\",\"field\":\"\"}]}\n");

	/* CloudEvents: the fields are named from the CloudEvent */
	snprintf(body, sizeof(body),
		 "[{\"specversion\":\"0.3\",\"data\":{}},{\"specversion\":"
		 "\"1.0\",\"data\":%s},{\"specversion\":\"1.0\"}]", ev[2]);
	post(&r, &f, CE_BATCH, key, body);
	ck_assert_int_eq(r.status, 207);
	ck_assert_str_eq(
		r.body,
		"{\"accepted\":0,\"rejected\":["
		"{\"index\":0,\"code\":\"bad_value\",\"field\":"
		"\"specversion\"},"
		"{\"index\":1,\"code\":\"tenant_mismatch\",\"field\":"
		"\"data.tenant_id\"},"
		"{\"index\":2,\"code\":\"missing_field\",\"field\":"
		"\"data\"}]}\n");

	expect_on_topic(&f, ids, 2, 30);
	ck_assert_int_eq(metric(&f, "tally_relay_intake_events_total{result="
				    "\"rejected\",reason=\"tenant_mismatch\"}"),
			 2);
	ck_assert_int_eq(metric(&f, "tally_relay_intake_events_total{result="
				    "\"rejected\",reason=\"missing_field\"}"),
			 2);
	ck_assert_int_eq(metric(&f, "tally_relay_requests_total{status=\"207\""
				    ",reason=\"partial\"}"), 2);
	stop(&f);
}
END_TEST

START_TEST(test_intake_key_of_another_tenant)
{
	char key_b[128], body[512], bad[128];
	intake_resp r;
	fixture f;

	setup(&f, NULL);
	start(&f, brokers, NULL, NULL);
	new_key(&f, key_b, TENANT_B);
	usage(body, sizeof(body), "a-by-b", TENANT_A, 7);
	post(&r, &f, JSON, key_b, body);
	ck_assert_int_eq(r.status, 207);
	ck_assert_str_eq(r.body, "{\"accepted\":0,\"rejected\":[{\"index\":0,"
				 "\"code\":\"tenant_mismatch\",\"field\":"
				 "\"tenant_id\"}]}\n");

	post(&r, &f, JSON, NULL, body);
	ck_assert_int_eq(r.status, 401);
	ck_assert_str_eq(r.body, "{\"error\":\"missing_key\"}\n");
	post(&r, &f, JSON, "tly_nonsense", body);
	ck_assert_int_eq(r.status, 401);
	ck_assert_str_eq(r.body, "{\"error\":\"invalid_key\"}\n");
	/* B's prefix with another secret */
	snprintf(bad, sizeof(bad), "%.17s%064d", key_b, 0);
	post(&r, &f, JSON, bad, body);
	ck_assert_int_eq(r.status, 401);

	expect_on_topic(&f, NULL, 0, 0);
	stop(&f);
}
END_TEST

START_TEST(test_intake_revoked_key_refused_without_restart)
{
	char key[128], prefix[32], args[64], body[512], line[512];
	int64_t deadline;
	intake_resp r;
	fixture f;

	setup(&f, NULL);
	start(&f, brokers, NULL, NULL);
	new_key(&f, key, TENANT_A);
	usage(body, sizeof(body), "before-revoke", TENANT_A, 1);
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 202);

	snprintf(prefix, sizeof(prefix), "%.16s", key);
	snprintf(args, sizeof(args), "keys revoke %s", prefix);
	cli(&f, NULL, 0, args);
	snprintf(args, sizeof(args), "keys list --tenant %s", TENANT_A);
	cli(&f, line, sizeof(line), args); /* the header line */
	ck_assert_msg(strstr(line, "REVOKED") != NULL, "%s", line);

	/* relay.key_ttl_ms is 500: refused well within 10 s */
	deadline = tally_now_ms() + 10000;
	do {
		usleep(100000);
		usage(body, sizeof(body), "after-revoke", TENANT_A, 1);
		post(&r, &f, JSON, key, body);
	} while (r.status == 202 && tally_now_ms() < deadline);
	ck_assert_int_eq(r.status, 401);
	ck_assert_str_eq(r.body, "{\"error\":\"invalid_key\"}\n");
	stop(&f);
}
END_TEST

START_TEST(test_intake_rate_limit_per_key)
{
	char key[128], key2[128], body[512];
	intake_resp r;
	fixture f;

	/* one request a minute, two at once: the third must wait */
	setup(&f, "UPDATE plans SET api_rate_per_minute = 1, api_burst = 2"
		  " WHERE id = 'starter'");
	start(&f, brokers, NULL, NULL);
	new_key(&f, key, TENANT_A);
	new_key(&f, key2, TENANT_A);
	usage(body, sizeof(body), "limited", TENANT_A, 1);
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 202);
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 202);
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 429);
	ck_assert_str_eq(r.body, "{\"error\":\"rate_limited\"}\n");
	ck_assert_msg(r.retry_after >= 1 && r.retry_after <= 60,
		      "Retry-After: %ld", r.retry_after);
	/* per key: another key of the tenant has its own bucket */
	post(&r, &f, JSON, key2, body);
	ck_assert_int_eq(r.status, 202);
	ck_assert_int_eq(metric(&f, "tally_relay_requests_total{status=\"429\""
				    ",reason=\"rate_limited\"}"), 1);
	stop(&f);
}
END_TEST

START_TEST(test_intake_kafka_unreachable_503)
{
	char key[128], body[512];
	intake_resp r;
	fixture f;

	setup(&f, NULL);
	/* a port no broker listens on; the shared Kafka keeps running */
	start(&f, "127.0.0.1:1", "relay.produce_timeout_ms", "1500");
	new_key(&f, key, TENANT_A);
	usage(body, sizeof(body), "no-kafka", TENANT_A, 1);
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 503);
	ck_assert_str_eq(r.body, "{\"error\":\"kafka_unavailable\"}\n");
	ck_assert_int_eq(metric(&f, "tally_relay_intake_events_total{result="
				    "\"unavailable\"}"), 1);
	ck_assert_int_eq(metric(&f, "tally_relay_intake_events_total{result="
				    "\"accepted\"}"), 0);
	stop(&f);
}
END_TEST

START_TEST(test_intake_limits)
{
	char key[128], ev[512], body[8192];
	intake_resp r;
	size_t i;
	fixture f;

	setup(&f, NULL);
	start(&f, brokers, "relay.intake_max_events", "3");
	new_key(&f, key, TENANT_A);
	usage(ev, sizeof(ev), "x", TENANT_A, 1);
	snprintf(body, sizeof(body), "[%s,%s,%s,%s]", ev, ev, ev, ev);
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 413);
	ck_assert_str_eq(r.body, "{\"error\":\"too_many_events\"}\n");
	post(&r, &f, JSON, key, "{\"id\":");
	ck_assert_int_eq(r.status, 400);
	ck_assert_str_eq(r.body, "{\"error\":\"malformed_body\"}\n");
	post(&r, &f, CE, key, "[]");
	ck_assert_int_eq(r.status, 400);
	intake_post(&r, f.port, "GET", PATH, JSON, key, NULL);
	ck_assert_int_eq(r.status, 405);
	stop(&f);

	setup(&f, NULL);
	start(&f, brokers, "relay.intake_max_body", "2048");
	new_key(&f, key, TENANT_A);
	memset(body, ' ', 4096);
	body[4096] = '\0';
	for (i = 0; i < 4; i++)
		body[i] = "[{}]"[i];
	post(&r, &f, JSON, key, body);
	ck_assert_int_eq(r.status, 413);
	ck_assert_str_eq(r.body, "{\"error\":\"too_large\"}\n");
	expect_on_topic(&f, NULL, 0, 0);
	stop(&f);
}
END_TEST

static Suite *tally_relay_intake_suite(void)
{
	Suite *s = suite_create("relay_intake");
	TCase *tc = tcase_create("Intake");

	brokers = tally_test_need_env("TALLY_TEST_BROKERS");
	(void)tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_log_init("test-relay-intake", TALLY_WARN);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	srand((unsigned)getpid());
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_intake_every_content_type);
	tcase_add_test(tc, test_intake_batch_rejects_by_index);
	tcase_add_test(tc, test_intake_key_of_another_tenant);
	tcase_add_test(tc, test_intake_revoked_key_refused_without_restart);
	tcase_add_test(tc, test_intake_rate_limit_per_key);
	tcase_add_test(tc, test_intake_kafka_unreachable_503);
	tcase_add_test(tc, test_intake_limits);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_relay_intake_suite)
