/*
 * relay_intake_support.h - for the tally-relay HTTP intake tests: a relay
 * in this process, real HTTP (libcurl), a fresh database (api_keys, plans)
 * and a fresh billing.usage topic per test on the real broker. Keys come
 * from `tally keys create` and are revoked with `tally keys revoke`; the
 * relay and the CLI run as a login in tally_engine (api_keys has FORCE ROW
 * LEVEL SECURITY). What the relay accepted is read back from the topic and
 * decoded with the codec.
 */
#ifndef TALLY_TEST_RELAY_INTAKE_SUPPORT_H
#define TALLY_TEST_RELAY_INTAKE_SUPPORT_H

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
	const char *set2_key, *set2_value; /* one more setting for start() */
} fixture;

/* --- HTTP --------------------------------------------------------------- */

typedef struct intake_resp {
	long status;
	char body[65536];
	size_t len;
	long retry_after; /* -1: no Retry-After */
} intake_resp;

static inline size_t on_body(char *p, size_t sz, size_t nm, void *ud)
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

static inline size_t on_header(char *p, size_t sz, size_t nm, void *ud)
{
	intake_resp *r = ud;
	size_t n = sz * nm;

	if (n > 12 && strncasecmp(p, "Retry-After:", 12) == 0)
		r->retry_after = strtol(p + 12, NULL, 10);
	return n;
}

/* POST body to port's path; ctype and key (Bearer) may be NULL. */
static inline void intake_post(intake_resp *out, int port, const char *method,
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

static inline const char *bin(void)
{
	const char *b = getenv("TALLY_BIN_DIR");

	return b ? b : TALLY_BINARY_DIR;
}

/* Run `tally <args>` on the fixture's database as the engine; its stdout
 * (first line). */
static inline void cli(const fixture *f, char *out, size_t n, const char *args)
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

static inline void new_key(const fixture *f, char key[128], const char *tenant)
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
static inline void engine_login(fixture *f)
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
static inline void setup(fixture *f, const char *sql)
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
static inline void start(fixture *f, const char *kafka, const char *set_key,
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
	if (f->set2_key != NULL)
		tally_config_set(f->cfg, f->set2_key, f->set2_value);
	f->m = tally_metrics_new();
	ck_assert_msg(tally_relay_new(&f->r, f->cfg, f->m, &err) == 0,
		      "relay start: %s", err.msg);
	f->port = tally_relay_port(f->r);
}

static inline void stop(fixture *f)
{
	char sql[160];

	tally_relay_free(f->r);
	tally_metrics_free(f->m);
	tally_config_free(f->cfg);
	tally_test_db_drop(f->db);
	snprintf(sql, sizeof(sql), "DROP ROLE IF EXISTS %s", f->role);
	tally_test_exec(getenv("TALLY_TEST_PG_DSN"), sql);
}

static inline void post(intake_resp *out, const fixture *f, const char *ctype,
		 const char *key, const char *body)
{
	intake_post(out, f->port, "POST", PATH, ctype, key, body);
}

/* A series of the relay's /metrics, or -1 when absent. */
static inline int64_t metric(const fixture *f, const char *series)
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
static inline void usage(char *out, size_t n, const char *id,
			 const char *tenant, int count)
{
	snprintf(out, n,
		 "{\"id\":\"%s\",\"source\":\"wf-engine\",\"type\":"
		 "\"api.call\",\"tenant_id\":\"%s\",\"time\":"
		 "1765000000000,\"data\":{\"count\":%d}}",
		 id, tenant, count);
}

static inline void cloudevent(char *out, size_t n, const char *id, int count)
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
static inline void expect_on_topic(const fixture *f, const char *const *ids,
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

/* Once per program, before the tests: broker and database, quiet logs,
 * libcurl. */
static inline void relay_intake_suite_init(void)
{
	brokers = tally_test_need_env("TALLY_TEST_BROKERS");
	(void)tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_log_init("test-relay-intake", TALLY_WARN);
	curl_global_init(CURL_GLOBAL_DEFAULT);
	srand((unsigned)getpid());
}

#endif
