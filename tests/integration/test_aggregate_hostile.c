/*
 * test_aggregate_hostile.c - valid but hostile input never halts a
 * partition (PostgreSQL only, no broker; the batch logic of
 * tally-aggregate): 40 000 spellings of one provider are one provider id;
 * an event whose addition would overflow a sum, or that PostgreSQL refuses
 * for its data, is dead-lettered alone and the rest of its batch commits;
 * a tenant past its cap of distinct models gets its new names
 * dead-lettered, also when they were registered ahead.
 */
#include "aggregate_pg_support.h"
#include "check_main.h"

#define BIG 2000

/* A batch larger than aggregate_pg_support.h's (64 messages). */
static tally_agg_msg bm[BIG];
static msgpack_sbuffer bsb[BIG];
static size_t bn;

static void big_add(const tally_rated_event *re, int part)
{
	agg_encode(&bsb[bn], re);
	bm[bn].topic = AGG_TOPIC;
	bm[bn].partition = part;
	bm[bn].offset = next_off[part]++;
	bm[bn].payload = bsb[bn].data;
	bm[bn].len = bsb[bn].size;
	bn++;
}

static void big_free(void)
{
	size_t i;

	for (i = 0; i < bn; i++)
		msgpack_sbuffer_destroy(&bsb[i]);
	bn = 0;
}

static void big_run(tally_agg *agg, int64_t now, tally_agg_stats *st)
{
	tally_error err;
	int rc = tally_agg_process(agg, bm, bn, now, st, &err);

	ck_assert_msg(rc == 0, "process: %s", err.msg);
	big_free();
}

typedef struct ai_ev {
	char id[48], provider[64], model[32];
	tally_rated_event re;
} ai_ev;

/* An AI event i of tenant k with the given names and input tokens. */
static void ai_event(ai_ev *e, int k, int64_t i, int64_t t,
		     const char *provider, const char *model, int64_t in)
{
	tally_usage_event *ev = &e->re.ev;

	memset(&e->re, 0, sizeof(e->re));
	snprintf(e->id, sizeof(e->id), "hostile-%" PRId64, i);
	snprintf(e->provider, sizeof(e->provider), "%s", provider);
	snprintf(e->model, sizeof(e->model), "%s", model);
	ev->id.ptr = e->id;
	ev->id.len = (uint32_t)strlen(e->id);
	ev->source.ptr = "hostile";
	ev->source.len = 7;
	agg_tenant(ev->tenant_id, k);
	ev->time_ms = t;
	ev->meter = TALLY_METER_AI_TOKENS;
	ev->provider.ptr = e->provider;
	ev->provider.len = (uint32_t)strlen(e->provider);
	ev->model.ptr = e->model;
	ev->model.len = (uint32_t)strlen(e->model);
	ev->input_tokens = in;
	ev->output_tokens = 1;
	e->re.cost = 1000;
	e->re.price_id = 11;
	memcpy(e->re.currency, "USD", 4);
	e->re.rated_at_ms = t;
}

static int64_t positions(void)
{
	return next_off[0] + next_off[1] + next_off[2] + next_off[3];
}

/*
 * Spelling v of "openai" (v < 40 000): case from its low 6 bits, then 0-24
 * spaces before and 0-24 after (the codec refuses other white space in a
 * name: control characters).
 */
static void spelling(char *out, unsigned v)
{
	unsigned lead = (v / 64) % 25, trail = v / (64 * 25), k;
	size_t n = 0;

	for (k = 0; k < lead; k++)
		out[n++] = ' ';
	for (k = 0; k < 6; k++)
		out[n++] = (char)((v >> k & 1) ? "OPENAI"[k] : "openai"[k]);
	for (k = 0; k < trail; k++)
		out[n++] = ' ';
	out[n] = '\0';
}

/* "reason partition/offset" of every dead letter, in offset order */
static const char *dead_letters_seen(void)
{
	return agg_query1(chk, "SELECT string_agg(reason || ' ' || partition"
			  " || '/' || \"offset\", ',' ORDER BY partition,"
			  " \"offset\") FROM dead_letters");
}

static void setup(void)
{
	aggpg_setup("agghost");
}

static void teardown(void)
{
	aggpg_teardown();
}

START_TEST(test_aggregate_hostile_spellings_one_provider)
{
	int64_t now = tally_now_ms();
	tally_agg *agg = aggpg_new(NULL, 0);
	tally_agg_stats st;
	char p[64];
	ai_ev e;
	unsigned v;
	size_t accepted = 0;

	memset(next_off, 0, sizeof(next_off));
	for (v = 0; v < 40000; v++) {
		spelling(p, v);
		ai_event(&e, (int)(v % 4), v, now - 3600000, p,
			 (v & 1) ? "GPT-4o " : " gpt-4O", 10);
		big_add(&e.re, (int)(v % 4));
		if (bn == BIG) {
			big_run(agg, now, &st);
			accepted += st.accepted;
		}
	}
	ck_assert_int_eq(accepted, 40000);
	ck_assert_str_eq(agg_query1(chk, "SELECT string_agg(name, ',')"
				    " FROM providers"), "openai");
	ck_assert_str_eq(agg_query1(chk, "SELECT string_agg(name, ',')"
				    " FROM models"), "gpt-4o");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"
				       " l JOIN providers p ON p.id ="
				       " l.provider_id WHERE p.name = 'openai'"),
			 40000);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_hourly"),
			 4);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM dead_letters"),
			 0);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT sum(next_offset) FROM "
				       "consumer_offsets"), positions());
	tally_agg_free(agg);
}
END_TEST

/* tenant k as text */
static const char *tenant_text(int k)
{
	static char buf[40];
	uint8_t id[16];

	agg_tenant(id, k);
	snprintf(buf, sizeof(buf),
		 "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x"
		 "%02x%02x", id[0], id[1], id[2], id[3], id[4], id[5], id[6],
		 id[7], id[8], id[9], id[10], id[11], id[12], id[13], id[14],
		 id[15]);
	return buf;
}

/* Ten ordinary events of tenants 0 and 2 (ids from `from`), partition 0. */
static void add_ordinary(int64_t from, int64_t t, agg_expect *x)
{
	ai_ev e;
	int64_t i;

	for (i = from; i < from + 10; i++) {
		ai_event(&e, (int)(i % 2) * 2, i, t, "openai", "gpt-4o",
			 100 + i);
		big_add(&e.re, 0);
		agg_expect_add(x, &e.re);
	}
}

/*
 * Tenant 1's period already holds INT64_MAX - 807 input tokens: of its
 * events 500, 1000, 300 the second would overflow the period's sum and is
 * dead-lettered as out_of_range; the first and third and every other
 * event of the batch commit, and the next batch goes on.
 */
START_TEST(test_aggregate_hostile_overflow_dead_lettered)
{
	int64_t now = tally_now_ms(), t = now - 3600000;
	tally_agg *agg = aggpg_new(NULL, 0);
	tally_agg_stats st;
	agg_expect x = { 0 };
	char sql[512];
	ai_ev e;

	memset(next_off, 0, sizeof(next_off));
	snprintf(sql, sizeof(sql),
		 "INSERT INTO tenant_period_usage (tenant_id, period_start,"
		 " period_end, input_tokens) SELECT '%s', m, m + interval"
		 " '1 month', 9223372036854775000 FROM (SELECT date_trunc("
		 "'month', to_timestamp(%" PRId64 " / 1000.0) AT TIME ZONE"
		 " 'UTC') AT TIME ZONE 'UTC' AS m) s", tenant_text(1), t);
	tally_test_exec(dsn, sql);
	add_ordinary(0, t, &x);
	ai_event(&e, 1, 100, t, "openai", "gpt-4o", 500);
	big_add(&e.re, 1);
	add_ordinary(10, t, &x);
	ai_event(&e, 1, 101, t, "openai", "gpt-4o", 1000);
	big_add(&e.re, 1); /* offset 1 of partition 1 */
	ai_event(&e, 1, 102, t, "openai", "gpt-4o", 300);
	big_add(&e.re, 1);
	add_ordinary(20, t, &x);
	big_run(agg, now, &st);
	ck_assert_int_eq(st.accepted, 32);
	ck_assert_int_eq(st.dead_lettered, 1);
	ck_assert_str_eq(dead_letters_seen(), "out_of_range 1/1");
	snprintf(sql, sizeof(sql), "SELECT input_tokens::text FROM"
		 " tenant_period_usage WHERE tenant_id = '%s'", tenant_text(1));
	ck_assert_str_eq(agg_query1(chk, sql), "9223372036854775800");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"),
			 32);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT sum(next_offset) FROM "
				       "consumer_offsets"), positions());
	/* the partitions keep moving */
	add_ordinary(30, t, &x);
	big_run(agg, now, &st);
	ck_assert_int_eq(st.accepted, 10);
	ck_assert_int_eq(st.dead_lettered, 0);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT sum(input_tokens) FROM"
				       " tenant_period_usage WHERE tenant_id"
				       " <> '00000000-0000-4000-8000-00000000a002'"),
			 x.in);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT sum(next_offset) FROM "
				       "consumer_offsets"), positions());
	tally_agg_free(agg);
}
END_TEST

/*
 * An event PostgreSQL refuses for its data (a trigger raising 22023 for
 * 424 242 input tokens; SQLSTATE class 22, not transient) is
 * dead-lettered as rejected_by_database; the rest of the batch commits.
 * The batch holds a re-sent event a new aggregator does not know, so it
 * takes the ON CONFLICT path through the stage.
 */
START_TEST(test_aggregate_hostile_data_error_dead_lettered)
{
	int64_t now = tally_now_ms(), t = now - 3600000;
	tally_agg *agg = aggpg_new(NULL, 0);
	tally_agg_stats st;
	agg_expect x = { 0 };
	ai_ev e;

	memset(next_off, 0, sizeof(next_off));
	tally_test_exec(dsn,
		"CREATE FUNCTION poison() RETURNS trigger LANGUAGE plpgsql AS"
		" $$ BEGIN IF NEW.input_tokens = 424242 THEN RAISE EXCEPTION"
		" 'poisoned row' USING ERRCODE = '22023'; END IF; RETURN NEW;"
		" END $$; CREATE TRIGGER poison BEFORE INSERT ON usage_hourly"
		" FOR EACH ROW EXECUTE FUNCTION poison()");
	add_ordinary(0, t, &x);
	big_run(agg, now, &st);
	ck_assert_int_eq(st.accepted, 10);
	tally_agg_free(agg);
	agg = aggpg_new(NULL, 0);
	ai_event(&e, 0, 0, t, "openai", "gpt-4o", 100); /* re-sent */
	big_add(&e.re, 0);
	ai_event(&e, 3, 100, t, "openai", "gpt-4o", 424242);
	big_add(&e.re, 2); /* offset 0 of partition 2 */
	add_ordinary(10, t, &x);
	big_run(agg, now, &st);
	ck_assert_int_eq(st.accepted, 10);
	ck_assert_int_eq(st.duplicates, 1);
	ck_assert_int_ge(st.dedupe_fallbacks, 1);
	ck_assert_int_eq(st.dead_lettered, 1);
	ck_assert_str_eq(agg_query1(chk, "SELECT reason || ' ' || partition ||"
				    " '/' || \"offset\" || ' ' || (detail LIKE"
				    " '%22023%poisoned row%') FROM dead_letters"),
			 "rejected_by_database 2/0 true");
	agg_check_totals(chk, &x, 20);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT sum(next_offset) FROM "
				       "consumer_offsets"), positions());
	tally_agg_free(agg);
}
END_TEST

/* Event id of tenant k naming model "M<m>" (spelt by id's parity). */
static void add_model_event(int64_t id, int k, int m, int64_t t)
{
	char model[16];
	ai_ev e;

	snprintf(model, sizeof(model), (id & 1) ? " M%d" : "m%d ", m);
	ai_event(&e, k, id, t, "OpenAI", model, 10);
	big_add(&e.re, k);
}

/* Tenant 0 naming m1, m2 and tenant 1 naming m1..m5 (ids 0, 1, 11-15). */
static void add_cap_batch(int64_t t)
{
	int m;

	memset(next_off, 0, sizeof(next_off));
	add_model_event(0, 0, 1, t);
	add_model_event(1, 0, 2, t);
	for (m = 1; m <= 5; m++)
		add_model_event(10 + m, 1, m, t);
}

/*
 * A cap of 3 distinct provider/model names per tenant: tenant 1 naming
 * m1..m5 keeps m1..m3, its m4 and m5 events are dead letters
 * too_many_models and no id is drawn for names only refused; spellings
 * of a name it has count once; tenant 0 has its own 3; the cap holds
 * for a new aggregator (the pairs are in tenant_models), and every
 * position moves on.
 */
START_TEST(test_aggregate_hostile_model_cap)
{
	int64_t now = tally_now_ms(), t = now - 3600000;
	tally_agg *agg = aggpg_new_cap(NULL, 0, 3);
	tally_agg_stats st;

	add_cap_batch(t);
	add_model_event(21, 1, 1, t); /* "m1" spelt otherwise: known */
	big_run(agg, now, &st);
	ck_assert_int_eq(st.accepted, 6);
	ck_assert_int_eq(st.dead_lettered, 2);
	add_model_event(2, 0, 3, t);
	add_model_event(3, 0, 4, t);
	add_model_event(4, 0, 1, t);
	add_model_event(22, 1, 2, t);
	add_model_event(23, 1, 5, t);
	big_run(agg, now, &st);
	ck_assert_int_eq(st.accepted, 3);
	ck_assert_int_eq(st.dead_lettered, 2);
	tally_agg_free(agg);
	agg = aggpg_new_cap(NULL, 0, 3);
	add_model_event(24, 1, 6, t);
	add_model_event(25, 1, 3, t);
	big_run(agg, now, &st);
	ck_assert_int_eq(st.accepted, 1);
	ck_assert_int_eq(st.dead_lettered, 1);
	ck_assert_str_eq(dead_letters_seen(),
			 "too_many_models 0/3,too_many_models 1/3,"
			 "too_many_models 1/4,too_many_models 1/7,"
			 "too_many_models 1/8");
	ck_assert_str_eq(agg_query1(chk, "SELECT string_agg(name, ','"
				    " ORDER BY name) FROM models"), "m1,m2,m3");
	ck_assert_str_eq(agg_query1(chk, "SELECT string_agg(n::text, ',')"
				    " FROM (SELECT count(*) n FROM tenant_models"
				    " GROUP BY tenant_id) s"), "3,3");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"),
			 10);
	ck_assert_int_eq(agg_query_i64(chk, "SELECT sum(next_offset) FROM "
				       "consumer_offsets"), positions());
	tally_agg_free(agg);
}
END_TEST

/*
 * Pairs registered ahead on another connection (the poll thread's, while
 * a lane is in the batch before): under the cap of 3, tenant 0's m1, m2
 * and tenant 1's m1..m3 are registered, its m4 and m5 are not, nor is the
 * name of an event before the lateness window; the batch then commits as
 * without the step: 5 accepted, m4, m5 too_many_models, the late one
 * too_late. A second call finds everything cached, registers nothing
 * and gives the events their ids.
 */
START_TEST(test_aggregate_hostile_models_ahead)
{
	int64_t now = tally_now_ms(), t = now - 3600000;
	tally_agg *agg = aggpg_new_cap(NULL, 0, 3);
	tally_agg_decoded *dec = tally_agg_decoded_new();
	tally_agg_stats st;
	tally_pg *pg2 = NULL;
	tally_error err;
	size_t reg = 99;
	ai_ev late;

	add_cap_batch(t);
	ai_event(&late, 2, 30, now - 36 * DAY_MS, "OpenAI", "m9", 10);
	big_add(&late.re, 2);
	ck_assert_msg(tally_pg_connect(&pg2, dsn, 10000, &err) == 0, "%s",
		      err.msg);
	tally_agg_decoded_use(dec, agg);
	tally_agg_decode(dec, bm, bn);
	ck_assert_msg(tally_agg_prefetch_models(agg, pg2, dec, now, &reg,
						&err) == 0, "%s", err.msg);
	ck_assert_uint_eq(reg, 5);
	ck_assert_str_eq(agg_query1(chk, "SELECT string_agg(n::text, ','"
				    " ORDER BY n) FROM (SELECT count(*) n FROM"
				    " tenant_models GROUP BY tenant_id) s"),
			 "2,3");
	ck_assert_str_eq(agg_query1(chk, "SELECT string_agg(name, ','"
				    " ORDER BY name) FROM models"), "m1,m2,m3");
	ck_assert_msg(tally_agg_prefetch_models(agg, pg2, dec, now, &reg,
						&err) == 0, "%s", err.msg);
	ck_assert_uint_eq(reg, 0);
	ck_assert_msg(tally_agg_process_decoded(agg, dec, bm, bn, now, &st,
						&err) == 0, "%s", err.msg);
	big_free();
	ck_assert_int_eq(st.accepted, 5);
	ck_assert_int_eq(st.dead_lettered, 3);
	ck_assert_str_eq(dead_letters_seen(),
			 "too_many_models 1/3,too_many_models 1/4,"
			 "too_late 2/0");
	ck_assert_str_eq(agg_query1(chk, "SELECT string_agg(name, ','"
				    " ORDER BY name) FROM models"), "m1,m2,m3");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT count(*) FROM usage_ledger"),
			 5);
	/* the second call gave the events of cached pairs their ids: each
	 * ledger row and hourly cell names its event's own model */
	ck_assert_str_eq(agg_query1(chk, "SELECT string_agg(m.name, ','"
				    " ORDER BY l.tenant_id, m.name) FROM"
				    " usage_ledger l JOIN models m ON m.id ="
				    " l.model_id AND m.provider_id ="
				    " l.provider_id"), "m1,m2,m1,m2,m3");
	ck_assert_str_eq(agg_query1(chk, "SELECT string_agg(model, ','"
				    " ORDER BY tenant_id, model) FROM"
				    " usage_hourly"), "m1,m2,m1,m2,m3");
	tally_agg_decoded_free(dec);
	tally_pg_free(pg2);
	tally_agg_free(agg);
}
END_TEST

/*
 * providers.id at the end of its smallint range: an event naming a new
 * provider is dead-lettered as out_of_range (PostgreSQL refuses the id,
 * 2200H), events with known names, and a known name's first use by
 * another tenant, commit.
 */
START_TEST(test_aggregate_hostile_provider_ids_exhausted)
{
	int64_t now = tally_now_ms(), t = now - 3600000;
	tally_agg *agg = aggpg_new(NULL, 0);
	tally_agg_stats st;
	ai_ev e;

	memset(next_off, 0, sizeof(next_off));
	ai_event(&e, 0, 0, t, "openai", "gpt-4o", 10);
	big_add(&e.re, 0);
	big_run(agg, now, &st);
	ck_assert_int_eq(st.accepted, 1);
	tally_test_exec(dsn, "SELECT setval('providers_id_seq', 32767)");
	ai_event(&e, 0, 1, t, "openai", "gpt-4o", 10);
	big_add(&e.re, 0);
	ai_event(&e, 0, 2, t, "anthropic", "claude", 10);
	big_add(&e.re, 0); /* offset 2 of partition 0 */
	ai_event(&e, 1, 3, t, "OpenAI", "gpt-4o", 10);
	big_add(&e.re, 1);
	big_run(agg, now, &st);
	ck_assert_int_eq(st.accepted, 2);
	ck_assert_int_eq(st.dead_lettered, 1);
	ck_assert_str_eq(agg_query1(chk, "SELECT reason || ' ' || partition ||"
				    " '/' || \"offset\" || ' ' || (detail LIKE"
				    " '%2200H%') FROM dead_letters"),
			 "out_of_range 0/2 true");
	ck_assert_int_eq(agg_query_i64(chk, "SELECT sum(next_offset) FROM "
				       "consumer_offsets"), positions());
	tally_agg_free(agg);
}
END_TEST

/*
 * tally rerate --model takes any spelling of the name: " GPT-4o " selects
 * the rows of "gpt-4o" (events spelt "GPT-4o " and " gpt-4O"), not those
 * of another model.
 */
START_TEST(test_aggregate_hostile_rerate_model_spelling)
{
	int64_t now = tally_now_ms(), t = now - 3600000;
	tally_agg *agg = aggpg_new(NULL, 0);
	tally_rerate_opts ro = { 0 };
	tally_rerate_stats rs;
	tally_pricebook *pb = NULL;
	tally_agg_stats st;
	tally_error err;
	ai_ev e;
	int64_t i;

	memset(next_off, 0, sizeof(next_off));
	for (i = 0; i < 6; i++) {
		ai_event(&e, 0, i, t, "OpenAI",
			 i == 5 ? "gpt-4o-mini" : (i & 1) ? "GPT-4o " : " gpt-4O",
			 10);
		big_add(&e.re, 0);
	}
	big_run(agg, now, &st);
	ck_assert_int_eq(st.accepted, 6);
	ck_assert_msg(tally_pricebook_load_pg(&pb, pg, &err) == 0, "%s",
		      err.msg);
	ro.from_ms = t - 3600000;
	ro.to_ms = now;
	ro.model = " GPT-4o ";
	ck_assert_msg(tally_agg_rerate(pg, pb, &ro, &rs, &err) == 0, "%s",
		      err.msg);
	ck_assert_int_eq(rs.rows_seen, 5);
	tally_pricebook_free(pb);
	tally_agg_free(agg);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("aggregate_hostile");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, test_aggregate_hostile_spellings_one_provider);
	tcase_add_test(tc, test_aggregate_hostile_overflow_dead_lettered);
	tcase_add_test(tc, test_aggregate_hostile_data_error_dead_lettered);
	tcase_add_test(tc, test_aggregate_hostile_model_cap);
	tcase_add_test(tc, test_aggregate_hostile_models_ahead);
	tcase_add_test(tc, test_aggregate_hostile_provider_ids_exhausted);
	tcase_add_test(tc, test_aggregate_hostile_rerate_model_spelling);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(suite)
