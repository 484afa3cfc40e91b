/*
 * test_rate_consumer_reload.c - tally-rate on the real broker reloads its
 * price book: a price changed in PostgreSQL while tally-rate runs (NOTIFY;
 * the periodic version check is set to an hour so it cannot be what
 * reloads) prices the events produced after it with the new book, and no
 * transaction mixes books (all events of a batch share rated_at); a change
 * made without NOTIFY is picked up on SIGHUP, and not before.
 *
 * The fixture (rate_consumer_support.h) is unchecked, so the database and
 * the topics are dropped even when the test fails or times out.
 */
#define _POSIX_C_SOURCE 200809L
#include "rate_consumer_support.h"


static void setup_reload(void)
{
	/* only NOTIFY or SIGHUP may reload within the test */
	rate_extra = "price_check_s = 3600; ";
	setup();
	rate_extra = "";
}

typedef struct rated_row {
	char tag;       /* first letter of the event id: the phase */
	int64_t price_id;
	int64_t rated_at;
	int32_t partition;
} rated_row;

/* gpt-4o events whose ids start with tag, produced and flushed */
static void produce_tagged(char tag, int first, int n)
{
	rd_kafka_t *rk = producer();
	msgpack_sbuffer sb;
	int i;

	msgpack_sbuffer_init(&sb);
	for (i = first; i < first + n; i++) {
		tally_usage_event ev;
		char id[32], key[8];
		rd_kafka_resp_err_t e;

		make_event(&ev, id, i * 8); /* i * 8: openai gpt-4o */
		snprintf(id, sizeof(id), "%c-%06d", tag, i);
		ev.id.len = (uint32_t)strlen(id);
		snprintf(key, sizeof(key), "t%d", i % 16);
		sb.size = 0;
		tally_codec_encode_usage(&sb, &ev);
		do {
			e = rd_kafka_producev(
				rk, RD_KAFKA_V_TOPIC(usage_t),
				RD_KAFKA_V_KEY(key, strlen(key)),
				RD_KAFKA_V_VALUE(sb.data, sb.size),
				RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				RD_KAFKA_V_END);
			if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
				rd_kafka_poll(rk, 50);
		} while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
		ck_assert(e == RD_KAFKA_RESP_ERR_NO_ERROR);
	}
	ck_assert(rd_kafka_flush(rk, 60000) == RD_KAFKA_RESP_ERR_NO_ERROR);
	msgpack_sbuffer_destroy(&sb);
	rd_kafka_destroy(rk);
}

/* All committed rated events so far (waits until want are there). */
static size_t collect(rated_row **out, size_t want)
{
	rd_kafka_conf_t *conf;
	rd_kafka_topic_partition_list_t *parts;
	char errstr[256], gid[160];
	rated_row *rows = NULL;
	size_t n = 0, cap = 0;
	rd_kafka_t *rk;
	int64_t idle_since, deadline = tally_mono_ns() + INT64_C(120000000000);
	int p;

	do {
		conf = rd_kafka_conf_new();
		snprintf(gid, sizeof(gid), "%s.reader.%lld", group,
			 (long long)tally_mono_ns());
		rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
				  sizeof(errstr));
		rd_kafka_conf_set(conf, "group.id", gid, errstr, sizeof(errstr));
		rd_kafka_conf_set(conf, "isolation.level", "read_committed",
				  errstr, sizeof(errstr));
		rd_kafka_conf_set(conf, "enable.auto.commit", "false", errstr,
				  sizeof(errstr));
		rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr,
				  sizeof(errstr));
		ck_assert(rk != NULL);
		rd_kafka_poll_set_consumer(rk);
		parts = rd_kafka_topic_partition_list_new(PARTS);
		for (p = 0; p < PARTS; p++)
			rd_kafka_topic_partition_list_add(parts, rated_t, p)
				->offset = RD_KAFKA_OFFSET_BEGINNING;
		rd_kafka_assign(rk, parts);
		rd_kafka_topic_partition_list_destroy(parts);
		n = 0;
		idle_since = tally_mono_ns();
		while ((tally_mono_ns() - idle_since) / 1000000 < 2000) {
			rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
			tally_rated_event re;
			tally_codec_error cerr;

			if (m == NULL)
				continue;
			if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
				ck_assert_msg(tally_codec_decode_rated(
						      &re, m->payload, m->len,
						      &cerr) == 0,
					      "rated event decodes");
				if (n == cap) {
					cap = cap ? cap * 2 : 4096;
					rows = tally_xrealloc(rows,
							      cap * sizeof(*rows));
				}
				rows[n].tag = re.ev.id.ptr[0];
				rows[n].price_id = re.price_id;
				rows[n].rated_at = re.rated_at_ms;
				rows[n].partition = m->partition;
				n++;
				idle_since = tally_mono_ns();
			}
			rd_kafka_message_destroy(m);
		}
		rd_kafka_consumer_close(rk);
		rd_kafka_destroy(rk);
	} while (n < want && tally_mono_ns() < deadline);
	ck_assert_msg(n >= want, "%zu rated events, waited for %zu", n, want);
	*out = rows;
	return n;
}

/* ids of the open gpt-4o rows, into ids[] (sorted); returns their number */
static int open_ids(int64_t *ids, int max)
{
	PGconn *c = PQconnectdb(dsn);
	PGresult *res;
	int i, n;

	ck_assert(PQstatus(c) == CONNECTION_OK);
	res = PQexec(c, "SELECT id FROM model_prices WHERE provider = 'openai'"
			" AND model = 'gpt-4o' AND effective_to = 'infinity' "
			"ORDER BY id");
	ck_assert(PQresultStatus(res) == PGRES_TUPLES_OK);
	n = PQntuples(res);
	ck_assert(n > 0 && n <= max);
	for (i = 0; i < n; i++)
		ck_assert(tally_parse_i64(&ids[i], PQgetvalue(res, i, 0)) == 0);
	PQclear(res);
	PQfinish(c);
	return n;
}

/*
 * A new version of gpt-4o's prices (input and output doubled), valid for
 * every event time from `cut` on (the test's events are in 2026), the old
 * rows closed at `cut`: the new rows get new price ids.
 */
static void change_price(const char *cut, bool notify)
{
	PGconn *c = PQconnectdb(dsn);
	char sql[1200];
	PGresult *res;

	ck_assert(PQstatus(c) == CONNECTION_OK);
	snprintf(sql, sizeof(sql),
		 "BEGIN;"
		 "%s"
		 "CREATE TEMP TABLE np ON COMMIT DROP AS SELECT * FROM "
		 "model_prices WHERE provider = 'openai' AND model = 'gpt-4o'"
		 " AND effective_to = 'infinity';"
		 "UPDATE model_prices SET effective_to = '%s' WHERE id IN "
		 "(SELECT id FROM np);"
		 "UPDATE np SET id = nextval('price_id_seq'), "
		 "effective_from = '%s', input_mtok = input_mtok * 2, "
		 "output_mtok = output_mtok * 2;"
		 "INSERT INTO model_prices SELECT * FROM np;"
		 "%s"
		 "COMMIT;",
		 notify ? "" : "ALTER TABLE model_prices DISABLE TRIGGER "
			       "model_prices_bump;",
		 cut, cut,
		 notify ? "" : "ALTER TABLE model_prices ENABLE TRIGGER "
			       "model_prices_bump;");
	res = PQexec(c, sql);
	ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK, "%s",
		      PQerrorMessage(c));
	PQclear(res);
	PQfinish(c);
}

static bool in_ids(int64_t id, const int64_t *ids, int n)
{
	int i;

	for (i = 0; i < n; i++)
		if (ids[i] == id)
			return true;
	return false;
}

/* 0: first book, 1: second, 2: third; fails on any other price_id */
static int book_of(const rated_row *row, const int64_t ids[3][8],
		   const int nids[3])
{
	int b;

	for (b = 0; b < 3; b++)
		if (in_ids(row->price_id, ids[b], nids[b]))
			return b;
	ck_abort_msg("price_id %lld is in none of the books",
		     (long long)row->price_id);
	return -1;
}

START_TEST(test_rate_consumer_reload_notify_and_sighup)
{
	int64_t ids[3][8];
	int nids[3], status, per_book[3] = { 0, 0, 0 };
	rated_row *rows = NULL;
	size_t n, i, j, groups = 0;
	pid_t pid;

	produce_all_topics_only();
	nids[0] = open_ids(ids[0], 8);
	pid = start_rater();

	/* a: price change once the rater has committed some of a (not
	 * after a fixed sleep: its group join can take longer than that on
	 * a loaded machine), committed with NOTIFY */
	produce_tagged('a', 0, 20000);
	{
		rated_row *first = NULL;

		(void)collect(&first, 1);
		free(first);
	}
	change_price("2000-01-01", true);
	nids[1] = open_ids(ids[1], 8);
	ck_assert(ids[1][0] > ids[0][nids[0] - 1]);
	/* b: produced after the change (and after one batch's time) */
	tally_sleep_ms(1500);
	produce_tagged('b', 0, 2000);
	n = collect(&rows, 22000);
	ck_assert_msg(n == 22000, "exactly once: %zu", n);
	for (i = 0; i < n; i++) {
		int b = book_of(&rows[i], ids, nids);

		ck_assert_msg(b <= 1, "only two books so far");
		if (rows[i].tag == 'b')
			ck_assert_msg(b == 1, "an event produced after the "
					      "NOTIFY is priced with the new "
					      "book (price_id %lld)",
				      (long long)rows[i].price_id);
		per_book[b]++;
	}
	ck_assert_msg(per_book[0] > 0 && per_book[1] >= 2000,
		      "both books used: %d old, %d new", per_book[0],
		      per_book[1]);
	/* one transaction = one rated_at: never two books in it */
	for (i = 0; i < n; i++) {
		int b = book_of(&rows[i], ids, nids);
		bool first = true;

		for (j = 0; j < i; j++)
			if (rows[j].rated_at == rows[i].rated_at) {
				first = false;
				break;
			}
		if (!first)
			continue;
		groups++;
		for (j = i + 1; j < n; j++)
			if (rows[j].rated_at == rows[i].rated_at)
				ck_assert_msg(book_of(&rows[j], ids, nids) ==
						      b,
					      "batch rated at %lld priced "
					      "with two books",
					      (long long)rows[i].rated_at);
	}
	ck_assert(groups >= 2);
	free(rows);

	/* c: a change without NOTIFY (trigger off) is not picked up ... */
	change_price("2001-01-01", false);
	nids[2] = open_ids(ids[2], 8);
	tally_sleep_ms(1500);
	produce_tagged('c', 0, 1000);
	n = collect(&rows, 23000);
	for (i = 0; i < n; i++)
		if (rows[i].tag == 'c')
			ck_assert_msg(book_of(&rows[i], ids, nids) == 1,
				      "no reload without NOTIFY or SIGHUP");
	free(rows);
	/* d: ... until SIGHUP */
	ck_assert(kill(pid, SIGHUP) == 0);
	tally_sleep_ms(1500);
	produce_tagged('d', 0, 1000);
	n = collect(&rows, 24000);
	ck_assert_msg(n == 24000, "exactly once: %zu", n);
	for (i = 0; i < n; i++)
		if (rows[i].tag == 'd')
			ck_assert_msg(book_of(&rows[i], ids, nids) == 2,
				      "SIGHUP reloads the book");
	free(rows);
	kill(pid, SIGTERM);
	waitpid(pid, &status, 0);
	ck_assert_msg(WIFEXITED(status) && WEXITSTATUS(status) == 0,
		      "clean exit on SIGTERM");
}
END_TEST

static Suite *tally_rate_consumer_reload_suite(void)
{
	Suite *s = suite_create("rate_consumer_reload");
	TCase *tc = tcase_create("Reload");

	tcase_add_unchecked_fixture(tc, setup_reload, teardown);
	tcase_set_timeout(tc, 400);
	tcase_add_test(tc, test_rate_consumer_reload_notify_and_sighup);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_rate_consumer_reload_suite)
