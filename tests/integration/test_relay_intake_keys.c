/*
 * test_relay_intake_keys.c - API keys at tally-relay's HTTP intake end to
 * end (see relay_intake_support.h): a key of another tenant, a revoked key
 * refused without a relay restart, `tally keys revoke` given a whole key
 * (cut to its prefix, its secret never echoed), a key in use read ahead
 * of its TTL (and its revocation seen so), a burst of a new key's
 * requests read with one query, the rate limit per key,
 * also when junk prefixes have filled the key cache, and a key database
 * that does not answer stalling neither the intake nor the webhooks.
 */
#define _DEFAULT_SOURCE
#include "relay_intake_support.h"

#include <pthread.h>

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

/* A key in use is read again by the refresher before its TTL ends, so its
 * requests never wait for a lookup after the first; a revocation is seen
 * by the refresher too. relay.key_ttl_ms of 5 s: the refresher (every
 * 1.25 s, keys 2.5 s old) would have to stall for over a second for a
 * request to find the entry expired. */
START_TEST(test_intake_key_in_use_read_ahead)
{
	const char *req = "tally_relay_key_lookups_total{on=\"request\"}";
	const char *ahead = "tally_relay_key_lookups_total{on=\"refresh\"}";
	char key[128], prefix[32], args[64], body[512], id[32];
	int64_t deadline;
	intake_resp r;
	fixture f;
	int i = 0;

	setup(&f, NULL);
	start(&f, brokers, "relay.key_ttl_ms", "5000");
	new_key(&f, key, TENANT_A);
	deadline = tally_now_ms() + 30000;
	do {
		snprintf(id, sizeof(id), "ahead-%d", i++);
		usage(body, sizeof(body), id, TENANT_A, 1);
		post(&r, &f, JSON, key, body);
		ck_assert_int_eq(r.status, 202);
		usleep(100000);
	} while (metric(&f, ahead) < 2 && tally_now_ms() < deadline);
	ck_assert_int_ge(metric(&f, ahead), 2);
	ck_assert_int_eq(metric(&f, req), 1);

	snprintf(prefix, sizeof(prefix), "%.16s", key);
	snprintf(args, sizeof(args), "keys revoke %s", prefix);
	cli(&f, NULL, 0, args);
	deadline = tally_now_ms() + 20000;
	do {
		usleep(100000);
		usage(body, sizeof(body), "ahead-revoked", TENANT_A, 1);
		post(&r, &f, JSON, key, body);
	} while (r.status == 202 && tally_now_ms() < deadline);
	ck_assert_int_eq(r.status, 401);
	ck_assert_int_eq(metric(&f, req), 1);
	stop(&f);
}
END_TEST

/* `tally keys revoke ARGS 2>&1`: its exit status, its output in out */
static int cli_all(const fixture *f, char *out, size_t n, const char *args)
{
	char cmd[1024];
	size_t len = 0;
	FILE *fp;

	snprintf(cmd, sizeof(cmd), "DATABASE_URL='%s' %s/tally %s 2>&1",
		 f->eng_dsn, bin(), args);
	fp = popen(cmd, "r");
	ck_assert_ptr_nonnull(fp);
	len = fread(out, 1, n - 1, fp);
	out[len] = '\0';
	return pclose(fp);
}

START_TEST(test_keys_revoke_whole_key)
{
	char key[128], other[128], args[160], out[1024], line[512];
	fixture f;

	setup(&f, NULL);
	start(&f, brokers, NULL, NULL);
	new_key(&f, key, TENANT_A);

	snprintf(args, sizeof(args), "keys revoke %s", key);
	ck_assert_msg(cli_all(&f, out, sizeof(out), args) == 0, "%s", out);
	ck_assert_msg(strstr(out, key + 17) == NULL, "secret echoed: %s", out);
	snprintf(args, sizeof(args), "keys list --tenant %s", TENANT_A);
	cli(&f, line, sizeof(line), args);
	ck_assert_msg(strstr(line, "REVOKED") != NULL, "%s", line);

	/* a whole key that is not stored: refused, only its prefix named */
	snprintf(other, sizeof(other), "tly_00000000000a_%064d", 7);
	snprintf(args, sizeof(args), "keys revoke %s", other);
	ck_assert(cli_all(&f, out, sizeof(out), args) != 0);
	ck_assert_msg(strstr(out, "no key 00000000000a") != NULL, "%s", out);
	ck_assert_msg(strstr(out, other + 17) == NULL, "secret echoed: %s",
		      out);
	/* malformed: refused without echoing it */
	snprintf(args, sizeof(args), "keys revoke tly_00000000000a_secret");
	ck_assert(cli_all(&f, out, sizeof(out), args) != 0);
	ck_assert_msg(strstr(out, "secret") == NULL, "echoed: %s", out);
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

/* Unknown prefixes cannot fill relay.key_cache_max and so lift the rate
 * limit: the valid key still gets its bucket, and a valid key with no
 * room left is answered 503, never served without a bucket. */
START_TEST(test_intake_rate_limit_with_full_key_cache)
{
	enum { KEYS = 17 };
	char keys[KEYS][128], junk[128], body[512];
	intake_resp r;
	fixture f;
	int i;

	setup(&f, "UPDATE plans SET api_rate_per_minute = 1, api_burst = 2"
		  " WHERE id = 'starter'");
	f.set2_key = "relay.key_ttl_ms";
	f.set2_value = "600000";
	start(&f, brokers, "relay.key_cache_max", "16");
	for (i = 0; i < KEYS; i++)
		new_key(&f, keys[i], TENANT_A);
	usage(body, sizeof(body), "full-cache", TENANT_A, 1);
	for (i = 0; i < 40; i++) { /* junk prefixes, each remembered */
		snprintf(junk, sizeof(junk), "tly_%012x_%064d", 0xf00000 + i,
			 0);
		post(&r, &f, JSON, junk, body);
		ck_assert_int_eq(r.status, 401);
	}
	post(&r, &f, JSON, keys[0], body);
	ck_assert_int_eq(r.status, 202);
	post(&r, &f, JSON, keys[0], body);
	ck_assert_int_eq(r.status, 202);
	post(&r, &f, JSON, keys[0], body);
	ck_assert_int_eq(r.status, 429);
	/* 15 more keys fill the cache; the 17th finds no room */
	for (i = 1; i < KEYS - 1; i++) {
		post(&r, &f, JSON, keys[i], body);
		ck_assert_int_eq(r.status, 202);
	}
	post(&r, &f, JSON, keys[KEYS - 1], body);
	ck_assert_int_eq(r.status, 503);
	post(&r, &f, JSON, keys[0], body);
	ck_assert_int_eq(r.status, 429);
	stop(&f);
}
END_TEST

typedef struct asker {
	const fixture *f;
	int i;
	long status;
} asker;

static void *ask(void *arg)
{
	asker *a = arg;
	char key[128], body[512];
	intake_resp *r = malloc(sizeof(*r));

	ck_assert_ptr_nonnull(r);
	snprintf(key, sizeof(key), "tly_%012x_%064d", 0xd00000 + a->i, 0);
	usage(body, sizeof(body), "down", TENANT_A, 1);
	post(r, a->f, JSON, key, body);
	a->status = r->status;
	free(r);
	return NULL;
}

/* The key database refuses connections: intake requests get 503 at once
 * and, with more of them than HTTP threads, a Stripe webhook on
 * relay.path is still answered (400: unsigned) without waiting for them.
 * The bound (5 s) is far above an answer and far below the stall of a
 * lookup that retries for seconds per request. */
START_TEST(test_webhook_answered_while_key_database_down)
{
	enum { ASKERS = 16 };
	pthread_t t[ASKERS];
	asker a[ASKERS];
	intake_resp r;
	fixture f;
	int64_t t0, ms;
	int i;

	setup(&f, NULL);
	start(&f, brokers, "database.url",
	      "postgresql://nobody@127.0.0.1:1/none");
	for (i = 0; i < ASKERS; i++) {
		a[i].f = &f;
		a[i].i = i;
		a[i].status = 0;
		ck_assert_int_eq(pthread_create(&t[i], NULL, ask, &a[i]), 0);
	}
	usleep(200000);
	t0 = tally_now_ms();
	intake_post(&r, f.port, "POST", tally_config_str(f.cfg, "relay.path"),
		    "application/json", NULL, "{}");
	ms = tally_now_ms() - t0;
	ck_assert_int_eq(r.status, 400);
	ck_assert_msg(ms < 5000, "webhook answered after %lld ms",
		      (long long)ms);
	for (i = 0; i < ASKERS; i++) {
		ck_assert_int_eq(pthread_join(t[i], NULL), 0);
		ck_assert_int_eq(a[i].status, 503);
	}
	stop(&f);
}
END_TEST

typedef struct burster {
	const fixture *f;
	const char *key;
	pthread_barrier_t *go;
	int i;
	long status;
} burster;

static void *burst(void *arg)
{
	burster *b = arg;
	char body[512], id[32];
	intake_resp *r = malloc(sizeof(*r));

	ck_assert_ptr_nonnull(r);
	snprintf(id, sizeof(id), "burst-%d", b->i);
	usage(body, sizeof(body), id, TENANT_A, 1);
	pthread_barrier_wait(b->go); /* all at once */
	post(r, b->f, JSON, b->key, body);
	b->status = r->status;
	free(r);
	return NULL;
}

/* Requests of a new key arriving together: the first reads it, the others
 * find it stored once they get the connection (or answer 503 after 20 ms
 * without it): one query in all, never one each. */
START_TEST(test_intake_key_burst_one_lookup)
{
	enum { BURST = 32 };
	pthread_t t[BURST];
	pthread_barrier_t go;
	burster b[BURST];
	char key[128];
	fixture f;
	int i, ok = 0;

	setup(&f, NULL);
	start(&f, brokers, "relay.key_ttl_ms", "600000");
	new_key(&f, key, TENANT_A);
	ck_assert_int_eq(pthread_barrier_init(&go, NULL, BURST), 0);
	for (i = 0; i < BURST; i++) {
		b[i].f = &f;
		b[i].key = key;
		b[i].go = &go;
		b[i].i = i;
		b[i].status = 0;
		ck_assert_int_eq(pthread_create(&t[i], NULL, burst, &b[i]), 0);
	}
	for (i = 0; i < BURST; i++) {
		ck_assert_int_eq(pthread_join(t[i], NULL), 0);
		ck_assert_msg(b[i].status == 202 || b[i].status == 503,
			      "status %ld", b[i].status);
		ok += b[i].status == 202;
	}
	pthread_barrier_destroy(&go);
	ck_assert_int_ge(ok, 1);
	ck_assert_int_eq(
		metric(&f, "tally_relay_key_lookups_total{on=\"request\"}"),
		1);
	stop(&f);
}
END_TEST

static Suite *tally_relay_intake_keys_suite(void)
{
	Suite *s = suite_create("relay_intake_keys");
	TCase *tc = tcase_create("Intake");

	relay_intake_suite_init();
	tcase_set_timeout(tc, 180);
	tcase_add_test(tc, test_intake_key_of_another_tenant);
	tcase_add_test(tc, test_intake_revoked_key_refused_without_restart);
	tcase_add_test(tc, test_intake_key_in_use_read_ahead);
	tcase_add_test(tc, test_intake_key_burst_one_lookup);
	tcase_add_test(tc, test_keys_revoke_whole_key);
	tcase_add_test(tc, test_intake_rate_limit_per_key);
	tcase_add_test(tc, test_intake_rate_limit_with_full_key_cache);
	tcase_add_test(tc, test_webhook_answered_while_key_database_down);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_relay_intake_keys_suite)
