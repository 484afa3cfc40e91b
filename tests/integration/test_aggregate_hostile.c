/*
 * test_aggregate_hostile.c - valid but hostile input never halts a
 * partition (PostgreSQL only, no broker; the batch logic of
 * tally-aggregate): 40 000 spellings of one provider are one provider id;
 * an event whose addition would overflow a sum, or that PostgreSQL refuses
 * for its data, is dead-lettered alone and the rest of its batch commits;
 * a tenant past its cap of distinct models gets its new names
 * dead-lettered.
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

static Suite *suite(void)
{
	Suite *s = suite_create("aggregate_hostile");
	TCase *tc = tcase_create("core");

	tcase_add_checked_fixture(tc, setup, teardown);
	tcase_set_timeout(tc, 600);
	tcase_add_test(tc, test_aggregate_hostile_spellings_one_provider);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(suite)
