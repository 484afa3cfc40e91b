/*
 * test_webhook.c - Stripe-Signature verification: a known-answer vector
 * (computed independently with `openssl dgst -sha256 -hmac`), rotation,
 * tolerance and every rejection reason, table-driven.
 */
#include "check_main.h"
#include "tally/webhook.h"

#include <stdio.h>
#include <string.h>

#define BODY "{\"id\":\"evt_1\",\"object\":\"event\",\"type\":\"invoice.paid\"}"
#define SECRET "whsec_test_secret"
#define OLD "whsec_previous_secret"
#define T0 INT64_C(1700000000)
#define KAT "dfb4777aaaec4ea29ff455dd4df7fe6b2ef71096ad3a93a158db7e100109ea91"

static const char *const both[] = { SECRET, OLD };

START_TEST(test_webhook_known_answer)
{
	char hex[65], hdr[TALLY_WEBHOOK_SIG_HEADER_MAX];

	tally_webhook_signature_hex(hex, BODY, strlen(BODY), SECRET, T0);
	ck_assert_str_eq(hex, KAT);
	tally_webhook_sign(hdr, sizeof(hdr), BODY, strlen(BODY), SECRET, T0);
	ck_assert_str_eq(hdr, "t=1700000000,v1=" KAT);
}
END_TEST

typedef struct vcase {
	const char *name;
	const char *header;
	const char *body;
	int64_t now;
	int64_t tolerance;
	tally_webhook_reason want;
} vcase;

static const vcase cases[] = {
	{ "valid", "t=1700000000,v1=" KAT, BODY, T0 + 10, 300,
	  TALLY_WEBHOOK_OK },
	{ "valid with v0 and unknown items",
	  "t=1700000000,v0=abc,v1=" KAT ",x=1", BODY, T0, 300,
	  TALLY_WEBHOOK_OK },
	{ "second v1 matches", "t=1700000000,v1=00,v1=" KAT, BODY, T0, 300,
	  TALLY_WEBHOOK_OK },
	{ "spaces tolerated", " t=1700000000, v1=" KAT " ", BODY, T0, 300,
	  TALLY_WEBHOOK_OK },
	{ "exactly at tolerance", "t=1700000000,v1=" KAT, BODY, T0 + 300, 300,
	  TALLY_WEBHOOK_OK },
	{ "future timestamp accepted", "t=1700000000,v1=" KAT, BODY,
	  T0 - 1000, 300, TALLY_WEBHOOK_OK },
	{ "expired", "t=1700000000,v1=" KAT, BODY, T0 + 301, 300,
	  TALLY_WEBHOOK_EXPIRED },
	{ "no tolerance check", "t=1700000000,v1=" KAT, BODY, T0 + 99999999,
	  -1, TALLY_WEBHOOK_OK },
	{ "missing header", NULL, BODY, T0, 300,
	  TALLY_WEBHOOK_MISSING_HEADER },
	{ "empty header", "  ", BODY, T0, 300, TALLY_WEBHOOK_MISSING_HEADER },
	{ "no t", "v1=" KAT, BODY, T0, 300, TALLY_WEBHOOK_MALFORMED_HEADER },
	{ "t not a number", "t=abc,v1=" KAT, BODY, T0, 300,
	  TALLY_WEBHOOK_MALFORMED_HEADER },
	{ "negative t", "t=-5,v1=" KAT, BODY, T0, 300,
	  TALLY_WEBHOOK_MALFORMED_HEADER },
	{ "two t", "t=1700000000,t=1700000000,v1=" KAT, BODY, T0, 300,
	  TALLY_WEBHOOK_MALFORMED_HEADER },
	{ "item without =", "t=1700000000,garbage", BODY, T0, 300,
	  TALLY_WEBHOOK_MALFORMED_HEADER },
	{ "v0 only", "t=1700000000,v0=" KAT, BODY, T0, 300,
	  TALLY_WEBHOOK_NO_V1 },
	{ "tampered body", "t=1700000000,v1=" KAT,
	  "{\"id\":\"evt_2\",\"object\":\"event\",\"type\":\"invoice.paid\"}",
	  T0, 300, TALLY_WEBHOOK_BAD_SIGNATURE },
	{ "tampered timestamp", "t=1700000001,v1=" KAT, BODY, T0, 300,
	  TALLY_WEBHOOK_BAD_SIGNATURE },
	{ "upper-case hex", "t=1700000000,v1="
	  "DFB4777AAAEC4EA29FF455DD4DF7FE6B2EF71096AD3A93A158DB7E100109EA91",
	  BODY, T0, 300, TALLY_WEBHOOK_BAD_SIGNATURE },
	{ "truncated signature", "t=1700000000,v1=dfb4777a", BODY, T0, 300,
	  TALLY_WEBHOOK_BAD_SIGNATURE },
	{ "expired and forged: bad_signature wins",
	  "t=1600000000,v1=" KAT, BODY, T0, 300,
	  TALLY_WEBHOOK_BAD_SIGNATURE },
};

START_TEST(test_webhook_table)
{
	const vcase *c = &cases[_i];
	tally_webhook_reason r = (tally_webhook_reason)-1;
	int rc;

	rc = tally_webhook_verify(c->header, c->body, strlen(c->body), both, 2,
				  c->now, c->tolerance, &r);
	ck_assert_msg(r == c->want, "%s: want %s, got %s", c->name,
		      tally_webhook_reason_name(c->want),
		      tally_webhook_reason_name(r));
	ck_assert_msg(rc == (c->want == TALLY_WEBHOOK_OK ? 0 : TALLY_EINVALID),
		      "%s: return code %d", c->name, rc);
}
END_TEST

START_TEST(test_webhook_rotation)
{
	char hdr[TALLY_WEBHOOK_SIG_HEADER_MAX];
	const char *const cur_only[] = { SECRET };
	const char *const with_empty[] = { "", OLD };
	tally_webhook_reason r;

	tally_webhook_sign(hdr, sizeof(hdr), BODY, strlen(BODY), OLD, T0);
	ck_assert_msg(tally_webhook_verify(hdr, BODY, strlen(BODY), both, 2, T0,
					   300, &r) == 0,
		      "previous secret must verify during rotation");
	ck_assert_int_eq(tally_webhook_verify(hdr, BODY, strlen(BODY),
					      cur_only, 1, T0, 300, &r),
			 TALLY_EINVALID);
	ck_assert_int_eq(r, TALLY_WEBHOOK_BAD_SIGNATURE);
	ck_assert_msg(tally_webhook_verify(hdr, BODY, strlen(BODY), with_empty,
					   2, T0, 300, NULL) == 0,
		      "empty secrets are skipped");
	ck_assert_int_eq(tally_webhook_verify(hdr, BODY, strlen(BODY), NULL, 0,
					      T0, 300, &r), TALLY_EINVALID);
	ck_assert_int_eq(r, TALLY_WEBHOOK_BAD_SIGNATURE);
}
END_TEST

START_TEST(test_webhook_binary_body)
{
	static const char body[] = { 'a', '\0', 'b', '\n', (char)0xff };
	char hdr[TALLY_WEBHOOK_SIG_HEADER_MAX];

	tally_webhook_sign(hdr, sizeof(hdr), body, sizeof(body), SECRET, T0);
	ck_assert_msg(tally_webhook_verify(hdr, body, sizeof(body), both, 2,
					   T0, 300, NULL) == 0,
		      "raw bytes with NUL must verify");
	ck_assert_int_eq(tally_webhook_verify(hdr, body, 1, both, 2, T0, 300,
					      NULL), TALLY_EINVALID);
}
END_TEST

/* Whether a header could be valid, before any body is read. */
START_TEST(test_webhook_check_header)
{
	char ok[TALLY_WEBHOOK_SIG_HEADER_MAX], longer[300];

	tally_webhook_sign(ok, sizeof(ok), "{}", 2, "whsec_x", 1700000000);
	ck_assert_int_eq(tally_webhook_check_header(ok, 1024),
			 TALLY_WEBHOOK_OK);
	ck_assert_int_eq(tally_webhook_check_header(NULL, 1024),
			 TALLY_WEBHOOK_MISSING_HEADER);
	ck_assert_int_eq(tally_webhook_check_header("  ", 1024),
			 TALLY_WEBHOOK_MISSING_HEADER);
	ck_assert_int_eq(tally_webhook_check_header("garbage", 1024),
			 TALLY_WEBHOOK_MALFORMED_HEADER);
	ck_assert_int_eq(tally_webhook_check_header("t=x,v1=ab", 1024),
			 TALLY_WEBHOOK_MALFORMED_HEADER);
	ck_assert_int_eq(tally_webhook_check_header("t=1,v0=ab", 1024),
			 TALLY_WEBHOOK_NO_V1);
	/* v1 values that can never match: wrong length, upper case */
	ck_assert_int_eq(tally_webhook_check_header("t=1,v1=abc", 1024),
			 TALLY_WEBHOOK_BAD_SIGNATURE);
	snprintf(longer, sizeof(longer), "t=1,v1=%064d", 0);
	longer[10] = 'A';
	ck_assert_int_eq(tally_webhook_check_header(longer, 1024),
			 TALLY_WEBHOOK_BAD_SIGNATURE);
	/* one plausible v1 among others is enough */
	snprintf(longer, sizeof(longer), "t=1,v1=zz,v1=%064d", 0);
	ck_assert_int_eq(tally_webhook_check_header(longer, 1024),
			 TALLY_WEBHOOK_OK);
	ck_assert_int_eq(tally_webhook_check_header(longer, 20),
			 TALLY_WEBHOOK_MALFORMED_HEADER);
}
END_TEST

START_TEST(test_webhook_reason_names)
{
	ck_assert_str_eq(tally_webhook_reason_name(TALLY_WEBHOOK_OK), "ok");
	ck_assert_str_eq(tally_webhook_reason_name(
				 TALLY_WEBHOOK_MISSING_HEADER),
			 "missing_header");
	ck_assert_str_eq(tally_webhook_reason_name(
				 TALLY_WEBHOOK_MALFORMED_HEADER),
			 "malformed_header");
	ck_assert_str_eq(tally_webhook_reason_name(TALLY_WEBHOOK_NO_V1),
			 "no_v1");
	ck_assert_str_eq(tally_webhook_reason_name(TALLY_WEBHOOK_EXPIRED),
			 "expired");
	ck_assert_str_eq(tally_webhook_reason_name(
				 TALLY_WEBHOOK_BAD_SIGNATURE),
			 "bad_signature");
}
END_TEST

static Suite *tally_webhook_suite(void)
{
	Suite *s = suite_create("webhook");
	TCase *tc = tcase_create("Core");

	tcase_set_timeout(tc, 10);
	tcase_add_test(tc, test_webhook_known_answer);
	tcase_add_loop_test(tc, test_webhook_table, 0,
			    (int)(sizeof(cases) / sizeof(cases[0])));
	tcase_add_test(tc, test_webhook_rotation);
	tcase_add_test(tc, test_webhook_binary_body);
	tcase_add_test(tc, test_webhook_check_header);
	tcase_add_test(tc, test_webhook_reason_names);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_webhook_suite)
