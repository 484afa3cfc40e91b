/*
 * test_alerts_silence.c - the churn-from-silence rule: silent for N days
 * after activity raises one churn_risk/100 keyed by the silence start;
 * never active, too little history, still active or active again raise
 * nothing; a second silence is a new episode (a new key).
 */
#include "check_main.h"
#include "tally/alerts_rules.h"
#include "tally/event.h"

#include <jansson.h>
#include <string.h>

#define TENANT "0b9a2c1e-5f1d-4c4e-9a39-3f6f7c1d2e10"
#define NOV_2026 INT64_C(1793491200000)
#define HOUR INT64_C(3600000)
#define DAY (24 * HOUR)

static const tally_silence_rule rule = { 7, 7 };

static tally_silence_facts facts(int64_t last_hour, int active_days)
{
	tally_silence_facts f;

	ck_assert_int_eq(tally_uuid_parse(f.tenant_id, TENANT,
					  (uint32_t)strlen(TENANT)), 0);
	f.last_hour_ms = last_hour;
	f.active_days = active_days;
	return f;
}

/* The last hour with usage is NOV_2026 + 10 h: silence starts at 11:00. */
static const struct {
	int64_t last;      /* -1: never active */
	int active;
	int64_t now_after; /* now = silence start + this */
	bool want;
} cases[] = {
	{ NOV_2026 + 10 * HOUR, 20, 7 * DAY, true },      /* exactly N days */
	{ NOV_2026 + 10 * HOUR, 20, 7 * DAY - 1, false }, /* 1 ms short */
	{ NOV_2026 + 10 * HOUR, 20, 30 * DAY, true },
	{ NOV_2026 + 10 * HOUR, 7, 8 * DAY, true },       /* exactly K days */
	{ NOV_2026 + 10 * HOUR, 6, 8 * DAY, false },      /* too little */
	{ -1, 0, 8 * DAY, false },                        /* never active */
	{ NOV_2026 + 10 * HOUR, 20, 0, false },           /* active now */
};

START_TEST(test_silence_table)
{
	tally_silence_facts f = facts(cases[_i].last, cases[_i].active);
	int64_t start = NOV_2026 + 11 * HOUR;
	tally_alert_list l;
	bool got;

	tally_alert_list_init(&l);
	got = tally_alerts_eval_silence(&l, &f, &rule,
					start + cases[_i].now_after);
	ck_assert_msg(got == cases[_i].want && l.n == (size_t)got,
		      "case %d: want %d, got %d (%zu alerts)", _i,
		      (int)cases[_i].want, (int)got, l.n);
	if (got) {
		ck_assert_int_eq(l.v[0].kind, TALLY_ALERT_CHURN_RISK);
		ck_assert_int_eq(l.v[0].threshold, TALLY_ALERT_CHURN_SILENCE);
		ck_assert_int_eq(l.v[0].period_start_ms, start);
	}
	tally_alert_list_dispose(&l);
}
END_TEST

START_TEST(test_silence_payload)
{
	tally_silence_facts f = facts(NOV_2026 + 10 * HOUR, 20);
	tally_alert_list l;
	json_t *o;

	tally_alert_list_init(&l);
	ck_assert(tally_alerts_eval_silence(&l, &f, &rule,
					    NOV_2026 + 11 * HOUR + 8 * DAY));
	o = json_loads(l.v[0].payload, 0, NULL);
	ck_assert_ptr_nonnull(o);
	ck_assert_str_eq(json_string_value(json_object_get(o, "reason")),
			 "silence");
	ck_assert_str_eq(json_string_value(json_object_get(o,
							   "silent_since")),
			 "2026-11-01T11:00:00.000Z");
	ck_assert_str_eq(json_string_value(json_object_get(
				 o, "last_usage_hour")),
			 "2026-11-01T10:00:00.000Z");
	ck_assert_int_eq(json_integer_value(json_object_get(o,
							    "silent_days")),
			 8);
	ck_assert_int_eq(json_integer_value(json_object_get(o,
							    "active_days")),
			 20);
	json_decref(o);
	tally_alert_list_dispose(&l);
}
END_TEST

/* A rescan of the same silence gives the same id; activity after it
 * (a later last hour) and a new silence give another key and id. */
START_TEST(test_silence_episodes)
{
	tally_silence_facts f1 = facts(NOV_2026 + 10 * HOUR, 20);
	tally_silence_facts f2 = facts(NOV_2026 + 12 * DAY, 20);
	int64_t now1 = NOV_2026 + 9 * DAY, now2 = NOV_2026 + 20 * DAY;
	tally_alert_list l;

	tally_alert_list_init(&l);
	ck_assert(tally_alerts_eval_silence(&l, &f1, &rule, now1));
	ck_assert(tally_alerts_eval_silence(&l, &f1, &rule, now1 + DAY));
	ck_assert_int_eq(l.n, 2);
	ck_assert_mem_eq(l.v[0].id, l.v[1].id, 16);
	/* usage resumed on day 12: not silent yet two days later */
	ck_assert(!tally_alerts_eval_silence(&l, &f2, &rule,
					     NOV_2026 + 14 * DAY));
	ck_assert(tally_alerts_eval_silence(&l, &f2, &rule, now2));
	ck_assert_int_eq(l.n, 3);
	ck_assert_int_eq(l.v[2].period_start_ms, NOV_2026 + 12 * DAY + HOUR);
	ck_assert(memcmp(l.v[0].id, l.v[2].id, 16) != 0);
	tally_alert_list_dispose(&l);
}
END_TEST

static Suite *tally_alerts_silence_suite(void)
{
	Suite *s = suite_create("alerts_silence");
	TCase *tc = tcase_create("Silence");

	tcase_add_loop_test(tc, test_silence_table, 0,
			    (int)(sizeof(cases) / sizeof(cases[0])));
	tcase_add_test(tc, test_silence_payload);
	tcase_add_test(tc, test_silence_episodes);
	tcase_set_timeout(tc, 10);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_alerts_silence_suite)
