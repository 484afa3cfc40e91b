/*
 * test_dedupe_partitions.c - dedupe keys led by the id's time in day
 * partitions of usage_dedupe (migrations/0024_dedupe_partitions.sql,
 * docs/aggregate.md "Dedupe key"): a re-send with another timestamp counts
 * once (UUIDv7 and md5-form ids, after a restart: PostgreSQL finds the
 * key); a key of a future id waits in the default partition and moves
 * into its day when maintenance creates it; maintenance drops old day
 * partitions and an id older than the window is id_too_old; a database
 * upgraded from 0023 still catches re-sends of its stored events and sets
 * timeled_from 40 days ahead (a fresh one: -infinity); maintenance
 * skips a day whose default-partition keys are locked by a running
 * transaction (dedupe_busy) and creates it on its next run; SQL
 * tally_event_digest equals the C key on the same vectors.
 */
#define _DEFAULT_SOURCE
#include "aggregate_batch_support.h"
#include "dedupe_key_vectors.h"
#include "tally/migrate.h"

#include <dirent.h>
#include <errno.h>
#include <sys/stat.h>
#include <unistd.h>

/* A UUIDv7 text with time ms and a tail of n. */
static void uuid7(char out[48], int64_t ms, int n)
{
	snprintf(out, 48, "%08llx-%04llx-7abc-8def-%012x",
		 (unsigned long long)((uint64_t)ms >> 16),
		 (unsigned long long)((uint64_t)ms & 0xffff), n);
}

/* Event i of seed 40 with id `id` at event time t. */
static void ev_with_id(agg_gen *g, int64_t i, const char *id, int64_t t)
{
	agg_gen_event(g, 40, i, t);
	snprintf(g->id, sizeof(g->id), "%s", id);
	g->re.ev.id.ptr = g->id;
	g->re.ev.id.len = (uint32_t)strlen(g->id);
	g->re.ev.time_ms = t;
}

/* The partition holding the key of (source, id). */
static const char *key_partition(const char *source, const char *id)
{
	static char out[64];
	char sql[512];

	snprintf(sql, sizeof(sql),
		 "SELECT coalesce((SELECT tableoid::regclass::text FROM"
		 " usage_dedupe WHERE digest = tally_event_digest('%s', '%s')),"
		 " 'none')", source, id);
	snprintf(out, sizeof(out), "%.63s", agg_query1(chk, sql));
	return out;
}

/* 'usage_dedupe_dYYYYMMDD' of the UTC day of now + days */
static const char *day_name(int days)
{
	static char out[64];
	char sql[256];

	snprintf(sql, sizeof(sql),
		 "SELECT 'usage_dedupe_d' || to_char((now() AT TIME ZONE 'UTC')"
		 "::date + %d, 'YYYYMMDD')", days);
	snprintf(out, sizeof(out), "%.63s", agg_query1(chk, sql));
	return out;
}

/* 'usage_dedupe_dYYYYMMDD' of the UTC day of unix ms t */
static const char *day_of(int64_t t)
{
	static char out[64];
	char sql[256];

	snprintf(sql, sizeof(sql),
		 "SELECT 'usage_dedupe_d' || to_char((timestamptz 'epoch' + %"
		 PRId64 " * interval '1 ms') AT TIME ZONE 'UTC', 'YYYYMMDD')", t);
	snprintf(out, sizeof(out), "%.63s", agg_query1(chk, sql));
	return out;
}

static int64_t one_event(tally_agg *agg, agg_gen *g, int part, int64_t now,
			 tally_agg_stats *st)
{
	batch b = { 0 };

	batch_add(&b, &g->re, part);
	ck_assert_int_eq(run(agg, &b, now, st), 0);
	batch_free(&b);
	return (int64_t)st->accepted;
}

START_TEST(test_dedupe_resend_other_timestamp)
{
	int64_t now = tally_now_ms();
	tally_agg *agg = new_agg();
	tally_agg_stats st;
	agg_gen g;
	char v7[48];

	uuid7(v7, now - 3600000, 1);
	ev_with_id(&g, 0, v7, now - 3600000);
	ck_assert_int_eq(one_event(agg, &g, 0, now, &st), 1);
	ck_assert_str_eq(key_partition("gen/40", v7), day_of(now - 3600000));
	ev_with_id(&g, 1, "plain-id-1", now - 3600000);
	ck_assert_int_eq(one_event(agg, &g, 1, now, &st), 1);
	ck_assert_str_eq(key_partition("gen/40", "plain-id-1"),
			 "usage_dedupe_md5");
	/* the ledger row carries the same key */
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger l"
			 " JOIN usage_dedupe d USING (tenant_id, digest)"), 2);
	/* a restart (empty ring): re-sent with other timestamps */
	tally_agg_free(agg);
	agg = new_agg();
	ev_with_id(&g, 0, v7, now - 5 * 3600000);
	ck_assert_int_eq(one_event(agg, &g, 2, now, &st), 0);
	ck_assert_int_eq(st.duplicates, 1);
	ev_with_id(&g, 1, "plain-id-1", now - 7 * 3600000);
	ck_assert_int_eq(one_event(agg, &g, 3, now, &st), 0);
	ck_assert_int_eq(st.duplicates, 1);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"),
			 2);
	tally_agg_free(agg);
}
END_TEST

START_TEST(test_dedupe_default_moves_to_new_day)
{
	int64_t now = tally_now_ms();
	tally_agg *agg = new_agg();
	tally_agg_stats st;
	tally_error err;
	agg_gen g;
	char v7[48], sql[256];

	/* an id made 10 days ahead: refused like an event time in the
	 * future, so no key of the aggregator waits in DEFAULT */
	uuid7(v7, now + 10 * DAY_MS, 2);
	ev_with_id(&g, 0, v7, now - 60000);
	ck_assert_int_eq(one_event(agg, &g, 0, now, &st), 0);
	ck_assert_int_eq(st.dead_lettered, 1);
	ck_assert_str_eq(agg_query1(chk, "SELECT reason FROM dead_letters"),
			 "id_in_future");
	ck_assert_str_eq(key_partition("gen/40", v7), "none");
	/* a key beyond the created days (written by hand) waits in DEFAULT
	 * and moves into its day when maintenance creates it */
	snprintf(sql, sizeof(sql), "INSERT INTO usage_dedupe VALUES"
		 " ('%s', tally_event_digest('gen/40', '%s'), now())",
		 "00000000-0000-4000-8000-00000000a001", v7);
	tally_test_exec(dsn, sql);
	ck_assert_str_eq(key_partition("gen/40", v7), "usage_dedupe_default");
	ck_assert_msg(tally_agg_maintain(pg, 35, 12, 400, &err) == 0, "%s",
		      err.msg);
	ck_assert_str_eq(key_partition("gen/40", v7), day_of(now + 10 * DAY_MS));
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " usage_dedupe_default"), 0);
	tally_agg_free(agg);
	/* the event, once its id is no longer in the future, is a re-send */
	agg = new_agg();
	ev_with_id(&g, 0, v7, now + 10 * DAY_MS - 60000);
	ck_assert_int_eq(one_event(agg, &g, 1, now + 10 * DAY_MS, &st), 0);
	ck_assert_int_eq(st.duplicates, 1);
	tally_agg_free(agg);
}
END_TEST

START_TEST(test_dedupe_drop_and_id_too_old)
{
	int64_t now = tally_now_ms();
	tally_agg *agg;
	tally_agg_stats st;
	tally_error err;
	agg_gen g;
	char v7[48], sql[256];

	/* day partitions back to 50 days, one key 45 days old */
	tally_test_exec(dsn, "SELECT count(*) FROM tally_dedupe_maintain(7, 50)");
	uuid7(v7, now - 45 * DAY_MS, 3);
	snprintf(sql, sizeof(sql), "INSERT INTO usage_dedupe VALUES"
		 " (gen_random_uuid(), tally_event_digest('s', '%s'), now())",
		 v7);
	tally_test_exec(dsn, sql);
	ck_assert_str_eq(key_partition("s", v7), day_of(now - 45 * DAY_MS));
	ck_assert_msg(tally_agg_maintain(pg, 35, 7, 400, &err) == 0, "%s",
		      err.msg);
	/* window 37 days: the days that ended 38 days ago or earlier go */
	ck_assert_str_eq(key_partition("s", v7), "none");
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_class WHERE"
		 " relname = '%s'", day_name(-39));
	ck_assert_int_eq(agg_query_i64(chk, sql), 0);
	snprintf(sql, sizeof(sql), "SELECT count(*) FROM pg_class WHERE"
		 " relname = '%s'", day_name(-38));
	ck_assert_int_eq(agg_query_i64(chk, sql), 1);
	/* an id made before the window: id_too_old, whatever its event time */
	agg = new_agg();
	ev_with_id(&g, 0, v7, now - 3600000);
	ck_assert_int_eq(one_event(agg, &g, 0, now, &st), 0);
	ck_assert_int_eq(st.dead_lettered, 1);
	ck_assert_str_eq(agg_query1(chk, "SELECT reason || ' ' || (detail LIKE"
				    " 'event id time is % before the dedupe"
				    " window%')::text FROM dead_letters"),
			 "id_too_old true");
	/* inside the window: accepted */
	uuid7(v7, now - 36 * DAY_MS, 4);
	ev_with_id(&g, 1, v7, now - 3600000);
	ck_assert_int_eq(one_event(agg, &g, 1, now, &st), 1);
	tally_agg_free(agg);
}
END_TEST

/* Rows (action, object) of tally_ledger_maintain as "action object;..." */
static void maintain_rows(char *out, size_t n, int ahead)
{
	char sql[256];
	PGresult *r;
	size_t len = 0;
	int i;

	snprintf(sql, sizeof(sql), "SELECT action, object FROM"
		 " tally_ledger_maintain(37, %d, 400, 37)"
		 " WHERE object LIKE 'usage_dedupe%%'", ahead);
	r = PQexec(chk, sql);
	ck_assert_msg(PQresultStatus(r) == PGRES_TUPLES_OK, "%s",
		      PQerrorMessage(chk));
	out[0] = '\0';
	for (i = 0; i < PQntuples(r) && len < n; i++)
		len += (size_t)snprintf(out + len, n - len, "%s %s;",
					PQgetvalue(r, i, 0), PQgetvalue(r, i, 1));
	PQclear(r);
}

/*
 * A day partition is created while an aggregator's transaction holds a
 * key it put in the default partition: maintenance waits at most its
 * lock_timeout, leaves that day for the next run (dedupe_busy) and fails
 * nothing; the next run creates it and moves the key.
 */
START_TEST(test_dedupe_maintain_busy)
{
	int64_t now = tally_now_ms();
	PGconn *other = PQconnectdb(dsn);
	PGresult *r;
	char want[640], got[512], sql[512], v7[48];

	ck_assert(PQstatus(other) == CONNECTION_OK);
	uuid7(v7, now + 8 * DAY_MS, 7);
	snprintf(sql, sizeof(sql), "BEGIN; INSERT INTO usage_dedupe VALUES"
		 " (gen_random_uuid(), tally_event_digest('s', '%s'), now())",
		 v7);
	r = PQexec(other, sql);
	ck_assert_msg(PQresultStatus(r) == PGRES_COMMAND_OK, "%s",
		      PQerrorMessage(other));
	PQclear(r);
	maintain_rows(got, sizeof(got), 8);
	snprintf(want, sizeof(want), "dedupe_busy %s;", day_of(now + 8 * DAY_MS));
	ck_assert_str_eq(got, want);
	r = PQexec(other, "COMMIT");
	PQclear(r);
	PQfinish(other);
	maintain_rows(got, sizeof(got), 8);
	snprintf(want, sizeof(want), "created %s;dedupe_moved %s:1;",
		 day_of(now + 8 * DAY_MS), day_of(now + 8 * DAY_MS));
	ck_assert_str_eq(got, want);
	ck_assert_str_eq(key_partition("s", v7), day_of(now + 8 * DAY_MS));
}
END_TEST

/* A copy of the migrations directory without 0024 and later. */
static void migrations_upto_0023(char *dir, size_t n)
{
	const char *src = tally_migrate_default_dir();
	DIR *d = opendir(src);
	struct dirent *e;
	char from[1024], to[1024];

	ck_assert(d != NULL);
	snprintf(dir, n, "/tmp/tally_mig_%d", (int)getpid());
	ck_assert(mkdir(dir, 0700) == 0 || errno == EEXIST);
	while ((e = readdir(d)) != NULL) {
		if (strlen(e->d_name) < 8 || strcmp(e->d_name, "0024") >= 0 ||
		    strstr(e->d_name, ".sql") == NULL)
			continue;
		snprintf(from, sizeof(from), "%s/%s", src, e->d_name);
		snprintf(to, sizeof(to), "%s/%s", dir, e->d_name);
		(void)unlink(to);
		ck_assert(symlink(from, to) == 0);
	}
	closedir(d);
}

static void rm_dir(const char *dir)
{
	DIR *d = opendir(dir);
	struct dirent *e;
	char p[1024];

	if (d == NULL)
		return;
	while ((e = readdir(d)) != NULL) {
		if (e->d_name[0] == '.')
			continue;
		snprintf(p, sizeof(p), "%s/%s", dir, e->d_name);
		(void)unlink(p);
	}
	closedir(d);
	(void)rmdir(dir);
}

START_TEST(test_dedupe_upgrade_from_0023)
{
	int64_t now = tally_now_ms();
	char name[64], udsn[512], dir[256], v7[48], v7b[48], sql[1024];
	tally_pg *saved = pg, *up = NULL;
	PGconn *saved_chk = chk, *old_agg;
	const char *old_keys[] = { "dbname", "application_name", NULL };
	const char *old_vals[] = { NULL, "tally-aggregate", NULL };
	PGresult *res;
	tally_agg *agg;
	tally_agg_stats st;
	tally_error err;
	agg_gen g;

	/* fresh database (the fixture's): every time-ordered id time-led */
	ck_assert_str_eq(agg_query1(chk, "SELECT timeled_from::text FROM"
				    " dedupe_settings"), "-infinity");
	tally_test_unique(name, sizeof(name), "dedupe_up");
	tally_test_db_create(udsn, sizeof(udsn), name, 0);
	old_vals[0] = udsn;
	migrations_upto_0023(dir, sizeof(dir));
	ck_assert(tally_pg_connect(&up, udsn, 10000, &err) == 0);
	ck_assert_msg(tally_migrate(up, dir, NULL, &err) == 0, "%s", err.msg);
	rm_dir(dir);
	/* two events stored by 0023's aggregator: plain md5 keys */
	uuid7(v7, now - 3600000, 5);
	snprintf(sql, sizeof(sql),
		 "INSERT INTO usage_dedupe VALUES"
		 " ('00000000-0000-4000-8000-00000000a001',"
		 "  tally_event_digest('gen/40', '%s'), now() - interval '1 hour'),"
		 " ('00000000-0000-4000-8000-00000000a002',"
		 "  tally_event_digest('gen/40', 'old-plain'),"
		 "  now() - interval '1 hour')", v7);
	tally_test_exec(udsn, sql);
	/* refused while a tally-aggregate (of the old version) is connected */
	old_agg = PQconnectdbParams(old_keys, old_vals, 1);
	ck_assert(PQstatus(old_agg) == CONNECTION_OK);
	ck_assert(tally_migrate(up, tally_migrate_default_dir(), NULL, &err) != 0);
	ck_assert_msg(strstr(err.msg, "stop every tally-aggregate") != NULL, "%s",
		      err.msg);
	PQfinish(old_agg);
	ck_assert_msg(tally_migrate(up, tally_migrate_default_dir(), NULL,
				    &err) == 0, "%s", err.msg);
	/* an old tally-aggregate starting afterwards is refused at its first
	 * maintenance (the call it makes at start) */
	old_agg = PQconnectdbParams(old_keys, old_vals, 1);
	ck_assert(PQstatus(old_agg) == CONNECTION_OK);
	res = PQexec(old_agg, "SELECT * FROM tally_ledger_maintain(37, 7, 400, 37)");
	ck_assert_int_eq(PQresultStatus(res), PGRES_FATAL_ERROR);
	ck_assert_msg(strstr(PQresultErrorMessage(res), "predates migration 0024")
		      != NULL, "%s", PQresultErrorMessage(res));
	PQclear(res);
	PQfinish(old_agg);
	pg = up;
	chk = PQconnectdb(udsn);
	ck_assert(PQstatus(chk) == CONNECTION_OK);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM dedupe_settings"
				       " WHERE timeled_from BETWEEN now() +"
				       " interval '39 days 23 hours' AND now() +"
				       " interval '40 days 1 hour'"), 1);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM"
				       " usage_dedupe_md5"), 2);
	memset(next_off, 0, sizeof(next_off));
	agg = new_agg();
	/* re-sent (tenants 0 and 1 of agg_gen: ...a001, ...a002) */
	ev_with_id(&g, 0, v7, now - 2 * 3600000);
	ck_assert_int_eq(one_event(agg, &g, 0, now, &st), 0);
	ck_assert_int_eq(st.duplicates, 1);
	ev_with_id(&g, 1, "old-plain", now - 2 * 3600000);
	ck_assert_int_eq(one_event(agg, &g, 1, now, &st), 0);
	ck_assert_int_eq(st.duplicates, 1);
	/* a new UUIDv7 id before timeled_from: md5 form */
	uuid7(v7b, now - 60000, 6);
	ev_with_id(&g, 2, v7b, now - 60000);
	ck_assert_int_eq(one_event(agg, &g, 2, now, &st), 1);
	ck_assert_str_eq(key_partition("gen/40", v7b), "usage_dedupe_md5");
	tally_agg_free(agg);
	PQfinish(chk);
	tally_pg_free(up);
	chk = saved_chk;
	pg = saved;
	tally_test_db_drop(name);
}
END_TEST

START_TEST(test_dedupe_sql_equals_c)
{
	size_t i;
	char sql[1024];

	for (i = 0; i < sizeof(dedupe_key_vectors) / sizeof(dedupe_key_vectors[0]);
	     i++) {
		const dedupe_key_vector *v = &dedupe_key_vectors[i];
		uint8_t key[16];
		char hex[33], want[40];
		int k;

		if (v->timeled_from_ms == TALLY_DEDUPE_TIMELED_ALWAYS)
			tally_test_exec(dsn, "UPDATE dedupe_settings SET"
					" timeled_from = '-infinity'");
		else {
			snprintf(sql, sizeof(sql),
				 "UPDATE dedupe_settings SET timeled_from ="
				 " timestamptz 'epoch' + %" PRId64
				 " * interval '1 ms'", v->timeled_from_ms);
			tally_test_exec(dsn, sql);
		}
		(void)tally_dedupe_key(key, v->source, strlen(v->source), v->id,
				       strlen(v->id), v->timeled_from_ms);
		for (k = 0; k < 16; k++)
			snprintf(hex + 2 * k, 3, "%02x", key[k]);
		snprintf(want, sizeof(want), "%.8s-%.4s-%.4s-%.4s-%.12s", hex,
			 hex + 8, hex + 12, hex + 16, hex + 20);
		snprintf(sql, sizeof(sql),
			 "SELECT tally_event_digest('%s', '%s')::text",
			 v->source, v->id);
		ck_assert_msg(strcmp(agg_query1(chk, sql), want) == 0,
			      "%s %s: SQL %s, C %s", v->source, v->id,
			      agg_query1(chk, sql), want);
		snprintf(sql, sizeof(sql),
			 "SELECT coalesce(tally_event_id_time_ms('%s'), -1)", v->id);
		if (v->time_ms >= 0)
			ck_assert_int_eq(agg_query_i64(chk, sql), v->time_ms);
	}
	/* the aggregator reads the setting at start */
	tally_test_exec(dsn, "UPDATE dedupe_settings SET timeled_from ="
			" timestamptz 'epoch' + 1688096058519 * interval '1 ms'");
	{
		tally_agg *agg = new_agg();

		ck_assert_int_eq(tally_agg_timeled_from_ms(agg),
				 INT64_C(1688096058519));
		tally_agg_free(agg);
	}
}
END_TEST

static Suite *dedupe_partitions_suite(void)
{
	Suite *s = suite_create("dedupe_partitions");
	TCase *tc = tcase_create("Core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 120);
	tcase_add_test(tc, test_dedupe_resend_other_timestamp);
	tcase_add_test(tc, test_dedupe_default_moves_to_new_day);
	tcase_add_test(tc, test_dedupe_drop_and_id_too_old);
	tcase_add_test(tc, test_dedupe_maintain_busy);
	tcase_add_test(tc, test_dedupe_upgrade_from_0023);
	tcase_add_test(tc, test_dedupe_sql_equals_c);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(dedupe_partitions_suite)
