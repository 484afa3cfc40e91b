/*
 * test_tenant_spec.c - the provisioning rules (tally/tenant_spec.h): a
 * good create passes with its budget in canonical form; each bad field is
 * refused with its own code; updates need a plan or a budget; the
 * provisioning commands decode (msgpack) into the same spec; a command id
 * names one tenant id, always the same.
 */
#include "check_main.h"
#include "tally/command.h"
#include "tally/event.h"
#include "tally/tenant_spec.h"

#include <msgpack.h>
#include <string.h>

#define TID "3f1c2a7e-5b6d-4e8f-9a0b-1c2d3e4f5a6b"

static tally_tenant_spec good(void)
{
	tally_tenant_spec s;

	memset(&s, 0, sizeof(s));
	s.kind = TALLY_TENANT_CREATE;
	s.command_id = "cmd-1";
	s.tenant_id = TID;
	s.name = "Acme Motors";
	s.slug = "acme-motors";
	s.domain = "acme.example.com";
	s.plan = "professional";
	s.email = "billing+ap@Acme.Example.com";
	s.budget = "250.50";
	s.trial_days = 14;
	return s;
}

static const char *code_of(const tally_tenant_spec *s)
{
	static tally_tenant_reject why;
	char b[32];

	if (tally_tenant_spec_check(s, b, sizeof(b), &why) == 0)
		return "ok";
	return why.code;
}

START_TEST(test_spec_good_create)
{
	tally_tenant_spec s = good();
	tally_tenant_reject why;
	char b[32];

	ck_assert_int_eq(tally_tenant_spec_check(&s, b, sizeof(b), &why), 0);
	ck_assert_str_eq(b, "250.5");
	s.budget = "1e3";
	ck_assert_int_eq(tally_tenant_spec_check(&s, b, sizeof(b), &why), 0);
	ck_assert_str_eq(b, "1000");
	s.budget = NULL;
	ck_assert_int_eq(tally_tenant_spec_check(&s, b, sizeof(b), &why), 0);
	ck_assert_str_eq(b, "");
}
END_TEST

static const struct {
	const char *field, *value, *code;
} bad[] = {
	{ "name", "", "bad_name" },
	{ "name", "Acme\nMotors", "bad_name" },
	{ "slug", "Acme", "bad_slug" },
	{ "slug", "-acme", "bad_slug" },
	{ "slug", "acme motors", "bad_slug" },
	{ "domain", "localhost", "bad_domain" },
	{ "domain", "ACME.example.com", "bad_domain" },
	{ "domain", "acme..example.com", "bad_domain" },
	{ "domain", "-acme.example.com", "bad_domain" },
	{ "email", "billing", "bad_email" },
	{ "email", "a@b@example.com", "bad_email" },
	{ "email", "billing@localhost", "bad_email" },
	{ "email", ".x@example.com", "bad_email" },
	{ "email", "a..b@example.com", "bad_email" },
	{ "email", "a b@example.com", "bad_email" },
	{ "email", "", "bad_email" },
	{ "plan", "", "bad_plan" },
	{ "plan", "Pro Plan", "bad_plan" },
	{ "budget", "ten", "bad_budget" },
	{ "budget", "-5", "bad_budget" },
	{ "budget", "1.005", "bad_budget" },
	{ "budget", "0.1e-2", "bad_budget" },
	{ "budget", "99999999999", "bad_budget" },
	{ "budget", "1e400", "bad_budget" },
	{ "command_id", "", "bad_command_id" },
	{ "tenant_id", "acme", "bad_tenant_id" },
	{ "tenant_id", "00000000-0000-0000-0000-000000000000",
	  "bad_tenant_id" },
};

START_TEST(test_spec_bad_field)
{
	tally_tenant_spec s = good();
	const char *v = bad[_i].value, *f = bad[_i].field;

	if (strcmp(f, "name") == 0) s.name = v;
	else if (strcmp(f, "slug") == 0) s.slug = v;
	else if (strcmp(f, "domain") == 0) s.domain = v;
	else if (strcmp(f, "email") == 0) s.email = v;
	else if (strcmp(f, "plan") == 0) s.plan = v;
	else if (strcmp(f, "budget") == 0) s.budget = v;
	else if (strcmp(f, "command_id") == 0) s.command_id = v;
	else s.tenant_id = v;
	ck_assert_msg(strcmp(code_of(&s), bad[_i].code) == 0,
		      "%s=\"%s\": got %s, want %s", f, v, code_of(&s),
		      bad[_i].code);
}
END_TEST

START_TEST(test_spec_trial_and_update)
{
	tally_tenant_spec s = good();

	s.trial_days = 731;
	ck_assert_str_eq(code_of(&s), "bad_trial_days");
	memset(&s, 0, sizeof(s));
	s.kind = TALLY_TENANT_UPDATE;
	s.command_id = "cmd-2";
	s.tenant_id = TID;
	ck_assert_str_eq(code_of(&s), "nothing_to_update");
	s.budget = "12.3";
	ck_assert_str_eq(code_of(&s), "ok");
	s.budget = "12.345";
	ck_assert_str_eq(code_of(&s), "bad_budget");
	s.budget = NULL;
	s.plan = "enterprise";
	ck_assert_str_eq(code_of(&s), "ok");
	s.kind = TALLY_TENANT_SUSPEND;
	s.plan = NULL;
	ck_assert_str_eq(code_of(&s), "ok");
}
END_TEST

START_TEST(test_spec_of_command)
{
	tally_command in, out;
	tally_tenant_spec s;
	tally_codec_error ce;
	msgpack_sbuffer sb;
	char buf[2048];

	memset(&in, 0, sizeof(in));
	in.id = (tally_str){ "cmd-9", 5 };
	in.type = TALLY_CMD_CREATE_TENANT;
	ck_assert_int_eq(tally_uuid_parse(in.tenant_id, TID, 36), 0);
	in.time_ms = 1764151200000;
	in.plan = (tally_str){ "starter", 7 };
	in.trial_days = 7;
	in.name = (tally_str){ "Acme", 4 };
	in.slug = (tally_str){ "acme", 4 };
	in.domain = (tally_str){ "acme.example.com", 16 };
	in.email = (tally_str){ "ap@acme.example.com", 19 };
	in.budget = (tally_str){ "120", 3 };
	msgpack_sbuffer_init(&sb);
	tally_codec_encode_command(&sb, &in);
	memset(&ce, 0, sizeof(ce));
	ck_assert_int_eq(tally_codec_decode_command(&out, sb.data, sb.size,
						    &ce), 0);
	ck_assert_int_eq(out.type, TALLY_CMD_CREATE_TENANT);
	ck_assert_int_eq(tally_tenant_spec_of_command(&s, &out, buf,
						      sizeof(buf)), 0);
	ck_assert_int_eq(s.kind, TALLY_TENANT_CREATE);
	ck_assert_str_eq(s.tenant_id, TID);
	ck_assert_str_eq(s.command_id, "cmd-9");
	ck_assert_str_eq(s.slug, "acme");
	ck_assert_str_eq(s.domain, "acme.example.com");
	ck_assert_str_eq(s.email, "ap@acme.example.com");
	ck_assert_str_eq(s.budget, "120");
	ck_assert_int_eq(s.trial_days, 7);
	ck_assert_str_eq(code_of(&s), "ok");
	msgpack_sbuffer_destroy(&sb);

	/* create_tenant needs a plan; a Stripe command is no spec */
	in.plan.len = 0;
	msgpack_sbuffer_init(&sb);
	tally_codec_encode_command(&sb, &in);
	ck_assert_int_ne(tally_codec_decode_command(&out, sb.data, sb.size,
						    &ce), 0);
	msgpack_sbuffer_destroy(&sb);
	out.type = TALLY_CMD_CHANGE_PLAN;
	ck_assert_int_ne(tally_tenant_spec_of_command(&s, &out, buf,
						      sizeof(buf)), 0);
}
END_TEST

START_TEST(test_spec_tenant_id_for_command)
{
	char a[37], b[37], c[37];
	uint8_t u[16];

	tally_tenant_id_for_command(a, "cli-1");
	tally_tenant_id_for_command(b, "cli-1");
	tally_tenant_id_for_command(c, "cli-2");
	ck_assert_str_eq(a, b);
	ck_assert_str_ne(a, c);
	ck_assert_int_eq(tally_uuid_parse(u, a, 36), 0);
	ck_assert_int_eq(a[14], '8');
}
END_TEST

static Suite *tenant_spec_suite(void)
{
	Suite *s = suite_create("tenant_spec");
	TCase *tc = tcase_create("Core");

	tcase_add_test(tc, test_spec_good_create);
	tcase_add_loop_test(tc, test_spec_bad_field, 0,
			    (int)(sizeof(bad) / sizeof(bad[0])));
	tcase_add_test(tc, test_spec_trial_and_update);
	tcase_add_test(tc, test_spec_of_command);
	tcase_add_test(tc, test_spec_tenant_id_for_command);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tenant_spec_suite)
