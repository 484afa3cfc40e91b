/*
 * test_price_overrides.c - tenant and plan overrides loaded from
 * PostgreSQL: a plan's price_overrides row expanded to the plan's tenants,
 * tenants.price_multiplier, an explicit per-tenant price (which beats the
 * tenant's plan row), checked through the rating API on the book loaded
 * from the database and through `tally rate` without --prices. The expected
 * costs are computed independently from the plain book: a multiplier m =
 * p/q scales each component, rounded half even at the pico; an explicit
 * price replaces the book's and its row id becomes the price_id.
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "tally/log.h"
#include "tally/migrate.h"
#include "tally/money.h"
#include "tally/pg.h"
#include "tally/pricebook_pg.h"
#include "tally/rating.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#define DATA TALLY_SOURCE_DIR "/data/genai-prices-0.1.8.json"

/* tenants: plain, multiplier 1.5, white-label plan (x1.25), own price,
 * own price on the white-label plan (tenant row beats plan row) */
static const char *const tenant_ids[] = {
	"00000000-0000-4000-8000-0000000000a0",
	"00000000-0000-4000-8000-0000000000a1",
	"00000000-0000-4000-8000-0000000000a2",
	"00000000-0000-4000-8000-0000000000a3",
	"00000000-0000-4000-8000-0000000000a4",
};
#define NT 5

static char db[64], dsn[512];
static int64_t explicit_id[NT];

static void admin_exec(const char *base, const char *sql)
{
	PGconn *c = PQconnectdb(base);
	PGresult *res;

	ck_assert_msg(PQstatus(c) == CONNECTION_OK, "connect admin");
	res = PQexec(c, sql);
	ck_assert_msg(PQresultStatus(res) == PGRES_COMMAND_OK ||
			      PQresultStatus(res) == PGRES_TUPLES_OK,
		      "%s: %s", sql, PQerrorMessage(c));
	PQclear(res);
	PQfinish(c);
}

static void dsn_for(char *out, size_t n, const char *base, const char *name)
{
	const char *slash = strrchr(base, '/');
	size_t pre = slash ? (size_t)(slash - base) + 1 : strlen(base);

	snprintf(out, n, "%.*s%s", (int)pre, base, name);
}

static int64_t one_id(PGconn *c, const char *sql)
{
	PGresult *res = PQexec(c, sql);
	int64_t v = 0;

	ck_assert_msg(PQresultStatus(res) == PGRES_TUPLES_OK &&
			      PQntuples(res) == 1,
		      "%s: %s", sql, PQerrorMessage(c));
	ck_assert(tally_parse_i64(&v, PQgetvalue(res, 0, 0)) == 0);
	PQclear(res);
	return v;
}

/* Unchecked: runs in the parent, so teardown drops the database even when
 * the test fails. */
static void setup(void)
{
	const char *base = tally_test_need_env("TALLY_TEST_PG_DSN");
	tally_price_import_stats st;
	tally_pg *pg = NULL;
	tally_error err;
	char sql[1024], *text = NULL;
	FILE *fp;
	long sz;
	size_t len;
	PGconn *c;
	int i;

	tally_log_init("test_price_overrides", TALLY_WARN);
	snprintf(db, sizeof(db), "tally_ovr_it_%d_%lld", (int)getpid(),
		 (long long)(tally_now_ms() % 100000));
	snprintf(sql, sizeof(sql), "CREATE DATABASE %s", db);
	admin_exec(base, sql);
	dsn_for(dsn, sizeof(dsn), base, db);
	ck_assert(tally_pg_connect(&pg, dsn, 10000, &err) == 0);
	ck_assert_msg(tally_migrate(pg, tally_migrate_default_dir(), NULL,
				    &err) == 0, "migrate: %s", err.msg);
	fp = fopen(DATA, "rb");
	ck_assert(fp != NULL);
	fseek(fp, 0, SEEK_END);
	sz = ftell(fp);
	fseek(fp, 0, SEEK_SET);
	text = tally_xmalloc((size_t)sz + 1);
	len = fread(text, 1, (size_t)sz, fp);
	fclose(fp);
	ck_assert_msg(tally_pricebook_import_genai(pg, text, len, "test",
						   tally_now_ms(), &st,
						   &err) == 0,
		      "import: %s", err.msg);
	free(text);
	tally_pg_free(pg);

	c = PQconnectdb(dsn);
	ck_assert(PQstatus(c) == CONNECTION_OK);
	for (i = 0; i < NT; i++) {
		snprintf(sql, sizeof(sql),
			 "INSERT INTO tenants (id, name, slug, domain, "
			 "subscription_plan, price_multiplier) VALUES "
			 "('%s', 'T%d', 't%d', 't%d.example', '%s', %s)",
			 tenant_ids[i], i, i, i,
			 i == 2 || i == 4 ? "white_label_starter" : "starter",
			 i == 1 ? "1.5" : "1");
		admin_exec(dsn, sql);
	}
	/* the plan row: every tenant of white_label_starter marks up 25 % */
	admin_exec(dsn, "INSERT INTO price_overrides (plan, meter, "
			"multiplier, note) VALUES ('white_label_starter', "
			"'ai.tokens', 1.25, 'reseller markup')");
	for (i = 3; i < NT; i++) {
		snprintf(sql, sizeof(sql),
			 "INSERT INTO price_overrides (tenant_id, meter, "
			 "provider, model, input_mtok, output_mtok, note) "
			 "VALUES ('%s', 'ai.tokens', 'openai', 'gpt-4o', 1, 2,"
			 " 'negotiated')",
			 tenant_ids[i]);
		admin_exec(dsn, sql);
		snprintf(sql, sizeof(sql),
			 "SELECT id FROM price_overrides WHERE tenant_id = "
			 "'%s'", tenant_ids[i]);
		explicit_id[i] = one_id(c, sql);
	}
	PQfinish(c);
}

static void teardown(void)
{
	char sql[160];

	snprintf(sql, sizeof(sql), "DROP DATABASE IF EXISTS %s WITH (FORCE)",
		 db);
	admin_exec(tally_test_need_env("TALLY_TEST_PG_DSN"), sql);
}

static void make_event(tally_usage_event *ev, int t)
{
	memset(ev, 0, sizeof(*ev));
	ev->id.ptr = "ov-1";
	ev->id.len = 4;
	ev->source.ptr = "it";
	ev->source.len = 2;
	ck_assert(tally_uuid_parse(ev->tenant_id, tenant_ids[t], 36) == 0);
	ev->time_ms = INT64_C(1767225600000);
	ev->meter = TALLY_METER_AI_TOKENS;
	ev->provider.ptr = "openai";
	ev->provider.len = 6;
	ev->model.ptr = "gpt-4o";
	ev->model.len = 6;
	ev->input_tokens = 123457; /* odd: the x1.25 and x1.5 need rounding */
	ev->output_tokens = 4321;
}

/* component x p / q, half even at the pico, summed */
static int64_t scaled(const tally_rated_event *base, int64_t p, int64_t q)
{
	int64_t sum = 0, v;
	int k;

	for (k = 0; k < TALLY_COMP_N; k++) {
		ck_assert(tally_money_muldiv(&v, base->components[k], p, q) ==
			  0);
		sum += v;
	}
	return sum;
}

static void expected_costs(int64_t cost[NT], int64_t price_id[NT],
			   const tally_rated_event *base)
{
	/* explicit: 1 USD/MTok input, 2 USD/MTok output = 10^6, 2x10^6 pico
	 * per token */
	int64_t own = INT64_C(123457) * 1000000 + INT64_C(4321) * 2000000;

	cost[0] = base->cost;
	cost[1] = scaled(base, 3, 2);
	cost[2] = scaled(base, 5, 4);
	cost[3] = own;
	cost[4] = own;
	price_id[0] = price_id[1] = price_id[2] = base->price_id;
	price_id[3] = explicit_id[3];
	price_id[4] = explicit_id[4];
}

START_TEST(test_price_overrides_rating_api_db_book)
{
	tally_pricebook *plain = NULL, *pb = NULL;
	tally_rate_ctx *ctx = tally_rate_ctx_new();
	tally_rated_event base, re;
	tally_usage_event ev;
	int64_t cost[NT], pid[NT];
	tally_pg *pg = NULL;
	tally_error err;
	int t;

	/* the plain book: the genai data without overrides */
	ck_assert(tally_pricebook_load_genai_file(&plain, DATA, &err) == 0);
	make_event(&ev, 0);
	ck_assert(tally_rate_event(&base, plain, &ev, ctx, &err) == 0);
	ck_assert_msg(base.cost > 0 && base.price_id > 0, "base priced");
	ck_assert(tally_pg_connect(&pg, dsn, 10000, &err) == 0);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	tally_pg_free(pg);
	/* same genai price, row ids of the database */
	make_event(&ev, 0);
	ck_assert(tally_rate_event(&re, pb, &ev, ctx, &err) == 0);
	ck_assert_msg(re.cost == base.cost, "DB book = genai book: %lld vs "
		      "%lld", (long long)re.cost, (long long)base.cost);
	base.price_id = re.price_id;
	expected_costs(cost, pid, &base);
	for (t = 0; t < NT; t++) {
		make_event(&ev, t);
		ck_assert(tally_rate_event(&re, pb, &ev, ctx, &err) == 0);
		ck_assert_msg(re.cost == cost[t],
			      "tenant %d: cost %lld, expected %lld", t,
			      (long long)re.cost, (long long)cost[t]);
		ck_assert_msg(re.price_id == pid[t],
			      "tenant %d: price_id %lld, expected %lld", t,
			      (long long)re.price_id, (long long)pid[t]);
	}
	ck_assert_msg(cost[1] != cost[0] && cost[2] != cost[0] &&
			      cost[3] != cost[0],
		      "each override changes the cost");
	tally_pricebook_free(plain);
	tally_pricebook_free(pb);
	tally_rate_ctx_free(ctx);
}
END_TEST

START_TEST(test_price_overrides_tally_rate_cli_db_book)
{
	tally_pricebook *pb = NULL;
	tally_rate_ctx *ctx = tally_rate_ctx_new();
	tally_rated_event base;
	tally_usage_event ev;
	int64_t cost[NT], pid[NT];
	char cmd[1024], in[80], line[4096], want[128];
	tally_pg *pg = NULL;
	tally_error err;
	FILE *fp;
	int t, lines = 0;

	ck_assert(tally_pg_connect(&pg, dsn, 10000, &err) == 0);
	ck_assert(tally_pricebook_load_pg(&pb, pg, &err) == 0);
	tally_pg_free(pg);
	/* tenant 0 has no override: its rating is the plain book's */
	make_event(&ev, 0);
	ck_assert(tally_rate_event(&base, pb, &ev, ctx, &err) == 0);
	expected_costs(cost, pid, &base);

	snprintf(in, sizeof(in), "/tmp/%s.jsonl", db);
	fp = fopen(in, "w");
	ck_assert(fp != NULL);
	for (t = 0; t < NT; t++)
		fprintf(fp,
			"{\"id\":\"ov-%d\",\"source\":\"it\",\"type\":"
			"\"ai.tokens\",\"tenant_id\":\"%s\",\"time\":"
			"1767225600000,\"data\":{\"provider\":\"openai\","
			"\"model\":\"gpt-4o\",\"input_tokens\":123457,"
			"\"output_tokens\":4321}}\n",
			t, tenant_ids[t]);
	fclose(fp);
	/* no --prices: the book comes from DATABASE_URL */
	snprintf(cmd, sizeof(cmd),
		 "DATABASE_URL='%s' " TALLY_BINARY_DIR "/tally rate < %s",
		 dsn, in);
	fp = popen(cmd, "r");
	ck_assert(fp != NULL);
	while (fgets(line, sizeof(line), fp) != NULL) {
		char money[64], *p;

		t = lines++;
		ck_assert_msg(t < NT, "one output line per input line");
		tally_money_fmt(money, sizeof(money), cost[t]);
		snprintf(want, sizeof(want), "\"cost\":\"%s\"", money);
		ck_assert_msg(strstr(line, want) != NULL,
			      "tenant %d: want %s in %s", t, want, line);
		snprintf(want, sizeof(want), "\"price_id\":%lld,",
			 (long long)pid[t]);
		p = strstr(line, want);
		ck_assert_msg(p != NULL, "tenant %d: want %s in %s", t, want,
			      line);
	}
	ck_assert_msg(pclose(fp) == 0, "tally rate exits 0");
	ck_assert_int_eq(lines, NT);
	unlink(in);
	tally_pricebook_free(pb);
	tally_rate_ctx_free(ctx);
}
END_TEST

static Suite *tally_price_overrides_suite(void)
{
	Suite *s = suite_create("price_overrides");
	TCase *tc = tcase_create("Overrides");

	tcase_add_unchecked_fixture(tc, setup, teardown);
	tcase_add_test(tc, test_price_overrides_rating_api_db_book);
	tcase_add_test(tc, test_price_overrides_tally_rate_cli_db_book);
	tcase_set_timeout(tc, 120);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_price_overrides_suite)
