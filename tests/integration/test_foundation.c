/*
 * test_foundation.c - migrations on an empty database (once, twice,
 * concurrently from two processes, refusing a changed file), the PostgreSQL
 * helper's reconnect after its backend is killed, and a produce/consume
 * round trip with headers on the real broker through the consumer wrapper.
 */
#include "test_support.h"
#include "check_main.h"

#include "tally/config.h"
#include "tally/kafka.h"
#include "tally/log.h"

#include <pthread.h>
#include <sys/stat.h>
#include <sys/wait.h>

static int count_files(const char *dir)
{
	char cmd[512];
	FILE *fp;
	int n = -1;

	snprintf(cmd, sizeof(cmd), "ls %s/[0-9][0-9][0-9][0-9]_*.sql | wc -l",
		 dir);
	fp = popen(cmd, "r");
	if (fp != NULL && fscanf(fp, "%d", &n) != 1)
		n = -1;
	if (fp != NULL)
		pclose(fp);
	return n;
}

static int64_t query_int(tally_pg *pg, const char *sql)
{
	PGresult *res = NULL;
	tally_error err;
	int64_t v = -1;

	ck_assert_msg(tally_pg_exec(pg, &res, sql, 0, NULL, &err) == 0, "%s: %s",
		      sql, err.msg);
	ck_assert_int_eq(tally_parse_i64(&v, PQgetvalue(res, 0, 0)), 0);
	PQclear(res);
	return v;
}

START_TEST(test_migrate_empty_then_noop)
{
	char db[64], dsn[512];
	tally_pg *pg = NULL;
	tally_error err;
	int applied = -1, nfiles = count_files(tally_migrate_default_dir());

	tally_test_unique(db, sizeof(db), "t_mig");
	tally_test_db_create(dsn, sizeof(dsn), db, 0);
	ck_assert_int_eq(tally_pg_connect(&pg, dsn, 5000, &err), 0);
	ck_assert_msg(tally_migrate(pg, tally_migrate_default_dir(), &applied,
				    &err) == 0, "%s", err.msg);
	ck_assert_int_eq(applied, nfiles);
	ck_assert_int_eq(query_int(pg, "SELECT count(*) FROM schema_migrations"),
			 nfiles);
	ck_assert_int_eq(query_int(pg, "SELECT count(*) FROM plans"), 5);
	ck_assert_int_eq(query_int(pg, "SELECT max_ai_requests_per_month FROM"
				       " plans WHERE id = 'professional'"), 50000);
	ck_assert_msg(tally_migrate(pg, tally_migrate_default_dir(), &applied,
				    &err) == 0, "%s", err.msg);
	ck_assert_msg(applied == 0, "second run must apply nothing");
	tally_pg_free(pg);
	tally_test_db_drop(db);
}
END_TEST

START_TEST(test_migrate_concurrent_processes)
{
	char db[64], dsn[512];
	pid_t kids[2];
	int i, status, nfiles = count_files(tally_migrate_default_dir());
	tally_pg *pg = NULL;
	tally_error err;

	tally_test_unique(db, sizeof(db), "t_migc");
	tally_test_db_create(dsn, sizeof(dsn), db, 0);
	for (i = 0; i < 2; i++) {
		kids[i] = fork();
		ck_assert_int_ge(kids[i], 0);
		if (kids[i] == 0) {
			tally_pg *p = NULL;
			tally_error e;
			int rc = tally_pg_connect(&p, dsn, 5000, &e);
			if (rc == 0)
				rc = tally_migrate(p, tally_migrate_default_dir(),
						   NULL, &e);
			if (rc != 0)
				fprintf(stderr, "child: %s\n", e.msg);
			tally_pg_free(p);
			_exit(rc == 0 ? 0 : 1);
		}
	}
	for (i = 0; i < 2; i++) {
		ck_assert_int_eq(waitpid(kids[i], &status, 0), kids[i]);
		ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
			      "both concurrent migrate runs must succeed");
	}
	ck_assert_int_eq(tally_pg_connect(&pg, dsn, 5000, &err), 0);
	ck_assert_int_eq(query_int(pg, "SELECT count(*) FROM schema_migrations"),
			 nfiles);
	tally_pg_free(pg);
	tally_test_db_drop(db);
}
END_TEST

START_TEST(test_migrate_refuses_changed_file)
{
	char db[64], dsn[512], dir[128], cmd[512];
	tally_pg *pg = NULL;
	tally_error err;
	int applied;
	FILE *fp;

	snprintf(dir, sizeof(dir), "/tmp/tally_mig_%d", (int)getpid());
	snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s", dir, dir);
	ck_assert_int_eq(system(cmd), 0);
	snprintf(cmd, sizeof(cmd), "%s/0001_a.sql", dir);
	fp = fopen(cmd, "w");
	fputs("CREATE TABLE a (x int);\n", fp);
	fclose(fp);
	tally_test_unique(db, sizeof(db), "t_migx");
	tally_test_db_create(dsn, sizeof(dsn), db, 0);
	ck_assert_int_eq(tally_pg_connect(&pg, dsn, 5000, &err), 0);
	ck_assert_int_eq(tally_migrate(pg, dir, &applied, &err), 0);
	ck_assert_int_eq(applied, 1);
	fp = fopen(cmd, "w");
	fputs("CREATE TABLE a (x bigint);\n", fp);
	fclose(fp);
	ck_assert_int_eq(tally_migrate(pg, dir, &applied, &err), TALLY_EINVALID);
	ck_assert_msg(strstr(err.msg, "0001_a.sql was changed"), "got '%s'",
		      err.msg);
	/* a failing migration leaves nothing behind */
	fp = fopen(cmd, "w");
	fputs("CREATE TABLE a (x int);\n", fp);
	fclose(fp);
	snprintf(cmd, sizeof(cmd), "%s/0002_bad.sql", dir);
	fp = fopen(cmd, "w");
	fputs("CREATE TABLE b (y int);\nSELECT no_such_function();\n", fp);
	fclose(fp);
	ck_assert_int_ne(tally_migrate(pg, dir, &applied, &err), 0);
	ck_assert_msg(strstr(err.msg, "0002_bad.sql"), "got '%s'", err.msg);
	ck_assert_int_eq(query_int(pg, "SELECT count(*) FROM pg_tables WHERE"
				       " tablename = 'b'"), 0);
	ck_assert_int_eq(query_int(pg, "SELECT count(*) FROM schema_migrations"), 1);
	/* a directory named like a migration is an error, not a read */
	snprintf(cmd, sizeof(cmd), "rm %s/0002_bad.sql && mkdir %s/0002_dir.sql",
		 dir, dir);
	ck_assert_int_eq(system(cmd), 0);
	ck_assert_int_ne(tally_migrate(pg, dir, &applied, &err), 0);
	ck_assert_msg(strstr(err.msg, "0002_dir.sql"), "got '%s'", err.msg);
	tally_pg_free(pg);
	tally_test_db_drop(db);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}
END_TEST

/*
 * Roles belong to the whole cluster, the migration lock to one database:
 * a migration creating a role that another database's migration is
 * creating at the same moment fails (unique_violation) when that one
 * commits; tally_migrate runs it again and it finds the role. Played with
 * a session holding an uncommitted CREATE ROLE: the migration waits for
 * it, the session commits after 300 ms, the migration must be applied.
 */
static void *commit_later(void *c)
{
	PGresult *r;

	tally_sleep_ms(300);
	r = PQexec(c, "COMMIT");
	PQclear(r);
	return NULL;
}

START_TEST(test_migrate_retries_shared_role_race)
{
	char db[64], dsn[512], dir[128], cmd[512], role[64], sql[256];
	tally_pg *pg = NULL;
	tally_error err;
	PGconn *other;
	PGresult *r;
	pthread_t th;
	int applied = 0, rc;
	FILE *fp;

	snprintf(role, sizeof(role), "tally_race_%d", (int)getpid());
	snprintf(dir, sizeof(dir), "/tmp/tally_migr_%d", (int)getpid());
	snprintf(cmd, sizeof(cmd), "rm -rf %s && mkdir -p %s", dir, dir);
	ck_assert_int_eq(system(cmd), 0);
	snprintf(cmd, sizeof(cmd), "%s/0001_role.sql", dir);
	fp = fopen(cmd, "w");
	fprintf(fp, "DO $$ BEGIN IF NOT EXISTS (SELECT 1 FROM pg_roles WHERE"
		" rolname = '%s') THEN CREATE ROLE %s NOLOGIN; END IF; END $$;\n"
		"CREATE TABLE race_t (x int);\n", role, role);
	fclose(fp);
	tally_test_unique(db, sizeof(db), "t_migr");
	tally_test_db_create(dsn, sizeof(dsn), db, 0);
	other = PQconnectdb(dsn);
	ck_assert_int_eq(PQstatus(other), CONNECTION_OK);
	snprintf(sql, sizeof(sql), "BEGIN; CREATE ROLE %s NOLOGIN", role);
	r = PQexec(other, sql);
	ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
	PQclear(r);
	ck_assert_int_eq(tally_pg_connect(&pg, dsn, 5000, &err), 0);
	ck_assert_int_eq(pthread_create(&th, NULL, commit_later, other), 0);
	rc = tally_migrate(pg, dir, &applied, &err);
	pthread_join(th, NULL);
	ck_assert_msg(rc == 0, "migrate: %s", err.msg);
	ck_assert_int_eq(applied, 1);
	ck_assert_int_eq(query_int(pg, "SELECT count(*) FROM schema_migrations"),
			 1);
	tally_pg_free(pg);
	snprintf(sql, sizeof(sql), "DROP ROLE %s", role);
	r = PQexec(other, sql);
	ck_assert_int_eq(PQresultStatus(r), PGRES_COMMAND_OK);
	PQclear(r);
	PQfinish(other);
	tally_test_db_drop(db);
	snprintf(cmd, sizeof(cmd), "rm -rf %s", dir);
	ck_assert_int_eq(system(cmd), 0);
}
END_TEST

static int txn_insert(tally_pg *pg, void *payload, tally_error *err)
{
	const char *p[1] = { payload };

	return tally_pg_exec(pg, NULL, "INSERT INTO t VALUES ($1::int)", 1, p,
			     err);
}

START_TEST(test_pg_reconnects_after_backend_killed)
{
	char db[64], dsn[512], sql[128];
	tally_pg *pg = NULL;
	tally_error err;
	int64_t pid;

	tally_test_unique(db, sizeof(db), "t_pgre");
	tally_test_db_create(dsn, sizeof(dsn), db, 0);
	ck_assert_int_eq(tally_pg_connect(&pg, dsn, 10000, &err), 0);
	ck_assert_int_eq(tally_pg_exec(pg, NULL, "CREATE TABLE t (x int)", 0,
				       NULL, &err), 0);
	pid = query_int(pg, "SELECT pg_backend_pid()");
	snprintf(sql, sizeof(sql), "SELECT pg_terminate_backend(%lld)",
		 (long long)pid);
	tally_test_exec(dsn, sql);
	/* the transaction fails on the dead connection, then reconnects */
	ck_assert_msg(tally_pg_txn(pg, txn_insert, "7", 0, &err) == 0,
		      "txn after backend kill: %s", err.msg);
	ck_assert_int_ne(query_int(pg, "SELECT pg_backend_pid()"), pid);
	ck_assert_int_eq(query_int(pg, "SELECT count(*) FROM t WHERE x = 7"), 1);
	tally_pg_free(pg);
	tally_test_db_drop(db);
}
END_TEST

START_TEST(test_pg_classifies_errors)
{
	char db[64], dsn[512];
	tally_pg *pg = NULL;
	tally_error err;

	tally_test_unique(db, sizeof(db), "t_pgcl");
	tally_test_db_create(dsn, sizeof(dsn), db, 0);
	ck_assert_int_eq(tally_pg_connect(&pg, dsn, 5000, &err), 0);
	ck_assert_int_eq(tally_pg_exec(pg, NULL, "SELECT 1/0", 0, NULL, &err),
			 TALLY_EINVALID);
	ck_assert_msg(strstr(err.msg, "22012") != NULL, "got '%s'", err.msg);
	ck_assert_int_eq(tally_pg_exec(pg, NULL, "SELEC 1", 0, NULL, &err),
			 TALLY_ERROR);
	tally_pg_free(pg);
	tally_test_db_drop(db);
	/* nothing listens on port 1: transient, after the retry time */
	ck_assert_int_eq(tally_pg_connect(&pg, "postgresql://x@127.0.0.1:1/x",
					  300, &err), TALLY_ETRANSIENT);
}
END_TEST

START_TEST(test_pg_statement_timeout_from_config)
{
	char db[64], dsn[512];
	tally_config *cfg = NULL;
	tally_pg *pg = NULL;
	tally_error err;

	tally_test_unique(db, sizeof(db), "t_pgto");
	tally_test_db_create(dsn, sizeof(dsn), db, 0);
	ck_assert_int_eq(tally_config_load(&cfg, NULL, &err), 0);
	tally_config_set(cfg, "database.url", dsn);
	tally_config_set(cfg, "database.statement_timeout_ms", "100");
	ck_assert_int_eq(tally_pg_connect_cfg(&pg, cfg, &err), 0);
	ck_assert_int_ne(tally_pg_exec(pg, NULL, "SELECT pg_sleep(2)", 0, NULL,
				       &err), 0);
	ck_assert_msg(strstr(err.msg, "57014") != NULL,
		      "statement_timeout must cancel: got '%s'", err.msg);
	tally_pg_free(pg);
	tally_config_free(cfg);
	tally_test_db_drop(db);
}
END_TEST

static int assign_from_table(rd_kafka_topic_partition_list_t *parts,
			     void *payload)
{
	int *calls = payload;
	int i;

	(*calls)++;
	for (i = 0; i < parts->cnt; i++)
		parts->elems[i].offset = 1; /* as if PG said: skip message 0 */
	return 0;
}

START_TEST(test_kafka_round_trip_with_headers)
{
	const char *brokers = getenv("TALLY_TEST_BROKERS");
	char topic[64], group[64];
	const char *topics[2];
	tally_config *cfg = NULL;
	tally_error err;
	rd_kafka_t *rk = NULL;
	tally_consumer *c = NULL;
	rd_kafka_message_t *msgs[16];
	rd_kafka_headers_t *h;
	const void *hv;
	size_t hlen, n = 0;
	int i, calls = 0;
	tally_consumer_opts opts;

	tally_test_unique(topic, sizeof(topic), "t_rt");
	tally_test_unique(group, sizeof(group), "g_rt");
	topics[0] = topic;
	topics[1] = NULL;
	ck_assert_int_eq(tally_config_load(&cfg, NULL, &err), 0);
	tally_config_set(cfg, "kafka.brokers", brokers);
	ck_assert_int_eq(tally_kafka_producer_new(&rk, tally_kafka_conf(cfg),
						  &err), 0);
	ck_assert_msg(tally_kafka_create_topics(rk, topics, 1, &err) == 0, "%s",
		      err.msg);
	for (i = 0; i < 3; i++) {
		char val[8];
		snprintf(val, sizeof(val), "v%d", i);
		h = rd_kafka_headers_new(1);
		rd_kafka_header_add(h, "ce_id", -1, val, -1);
		ck_assert_int_eq(rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic),
				 RD_KAFKA_V_KEY("tenant-a", 8),
				 RD_KAFKA_V_VALUE(val, strlen(val)),
				 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				 RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_END), 0);
	}
	ck_assert_int_eq(rd_kafka_flush(rk, 10000), 0);

	memset(&opts, 0, sizeof(opts));
	opts.group = group;
	opts.topics = topics;
	opts.read_committed = true;
	opts.on_assign = assign_from_table;
	opts.payload = &calls;
	ck_assert_int_eq(tally_consumer_new(&c, tally_kafka_conf(cfg), &opts,
					    &err), 0);
	for (i = 0; i < 40 && n < 2; i++)
		n += tally_consumer_poll_batch(c, msgs + n, 16 - n, 500);
	ck_assert_int_eq(calls, 1);
	ck_assert_msg(n == 2, "start offset from on_assign: expected 2, got %zu",
		      n);
	ck_assert_int_eq((int)msgs[0]->len, 2);
	ck_assert(memcmp(msgs[0]->payload, "v1", 2) == 0);
	ck_assert(memcmp(msgs[0]->key, "tenant-a", 8) == 0);
	ck_assert_int_eq(rd_kafka_message_headers(msgs[1], &h), 0);
	ck_assert_int_eq(rd_kafka_header_get_last(h, "ce_id", &hv, &hlen), 0);
	ck_assert(hlen == 2 && memcmp(hv, "v2", 2) == 0);
	ck_assert_int_eq(tally_consumer_store(c, msgs, n, &err), 0);
	/* dead-letter copy keeps key/value and adds the reason */
	ck_assert_int_eq(tally_dlq_send(rk, topic, msgs[0], "test", "bad_thing",
					"detail here", &err), 0);
	ck_assert_int_eq(rd_kafka_flush(rk, 10000), 0);
	for (i = 0; i < (int)n; i++)
		rd_kafka_message_destroy(msgs[i]);
	n = 0;
	for (i = 0; i < 40 && n < 1; i++)
		n += tally_consumer_poll_batch(c, msgs + n, 16 - n, 500);
	ck_assert_int_eq((int)n, 1);
	ck_assert_int_eq(rd_kafka_message_headers(msgs[0], &h), 0);
	ck_assert_int_eq(rd_kafka_header_get_last(h, "x-tally-reason", &hv,
						  &hlen), 0);
	ck_assert(hlen == 9 && memcmp(hv, "bad_thing", 9) == 0);
	rd_kafka_message_destroy(msgs[0]);
	tally_consumer_free(c);
	rd_kafka_destroy(rk);
	tally_config_free(cfg);
}
END_TEST

static Suite *foundation_suite(void)
{
	Suite *s = suite_create("foundation");
	TCase *tm = tcase_create("Migrate");
	TCase *tp = tcase_create("Postgres");
	TCase *tk = tcase_create("Kafka");

	tcase_set_timeout(tm, 120);
	tcase_set_timeout(tp, 60);
	tcase_set_timeout(tk, 120);
	tcase_add_test(tm, test_migrate_empty_then_noop);
	tcase_add_test(tm, test_migrate_concurrent_processes);
	tcase_add_test(tm, test_migrate_refuses_changed_file);
	tcase_add_test(tm, test_migrate_retries_shared_role_race);
	tcase_add_test(tp, test_pg_reconnects_after_backend_killed);
	tcase_add_test(tp, test_pg_classifies_errors);
	tcase_add_test(tp, test_pg_statement_timeout_from_config);
	tcase_add_test(tk, test_kafka_round_trip_with_headers);
	suite_add_tcase(s, tm);
	suite_add_tcase(s, tp);
	suite_add_tcase(s, tk);
	return s;
}

static Suite *need_services(void)
{
	tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_test_need_env("TALLY_TEST_BROKERS");
	tally_log_init("test_foundation", TALLY_WARN);
	return foundation_suite();
}

TALLY_CHECK_MAIN(need_services)
