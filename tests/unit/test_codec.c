/*
 * test_codec.c - the strict codec against the golden vectors in
 * schemas/vectors/ (valid: decode, compare with the decoded JSON, round
 * trip; invalid: rejected with the expected reason and field) plus
 * table-driven boundary cases and a decode-rate measurement.
 */
#define _POSIX_C_SOURCE 200809L
#include <check.h>
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "check_main.h"
#include "events/codec_int.h"
#include "tally/codec.h"
#include "tally/codec_json.h"
#include "tally/command.h"

#define VEC TALLY_SOURCE_DIR "/schemas/vectors"

static char *slurp(const char *path, size_t *len)
{
	FILE *fp = fopen(path, "rb");
	char *buf;
	long n;

	ck_assert_msg(fp != NULL, "cannot open %s", path);
	fseek(fp, 0, SEEK_END);
	n = ftell(fp);
	fseek(fp, 0, SEEK_SET);
	buf = malloc((size_t)n + 1);
	ck_assert_msg(fread(buf, 1, (size_t)n, fp) == (size_t)n, "read %s", path);
	buf[n] = '\0';
	fclose(fp);
	*len = (size_t)n;
	return buf;
}

typedef union anyev {
	tally_usage_event u;
	tally_rated_event r;
	tally_command c;
} anyev;

/* decode by kind (file name prefix) */
static int decode_kind(const char *name, anyev *ev, const char *buf,
		       size_t len, tally_codec_error *err)
{
	if (strncmp(name, "rated-", 6) == 0)
		return tally_codec_decode_rated(&ev->r, buf, len, err);
	if (strncmp(name, "command-", 8) == 0)
		return tally_codec_decode_command(&ev->c, buf, len, err);
	return tally_codec_decode_usage(&ev->u, buf, len, err);
}

static json_t *to_json_kind(const char *name, const anyev *ev)
{
	if (strncmp(name, "rated-", 6) == 0)
		return tally_codec_rated_to_json(&ev->r);
	if (strncmp(name, "command-", 8) == 0)
		return tally_codec_command_to_json(&ev->c);
	return tally_codec_usage_to_json(&ev->u);
}

static void encode_kind(const char *name, msgpack_sbuffer *sb, const anyev *ev)
{
	if (strncmp(name, "rated-", 6) == 0)
		tally_codec_encode_rated(sb, &ev->r);
	else if (strncmp(name, "command-", 8) == 0)
		tally_codec_encode_command(sb, &ev->c);
	else
		tally_codec_encode_usage(sb, &ev->u);
}

static int from_json_kind(const char *name, anyev *ev, const json_t *j,
			  tally_codec_error *err)
{
	if (strncmp(name, "rated-", 6) == 0)
		return tally_codec_rated_from_json(&ev->r, j, err);
	if (strncmp(name, "command-", 8) == 0)
		return tally_codec_command_from_json(&ev->c, j, err);
	return tally_codec_usage_from_json(&ev->u, j, err);
}

static int suffix(const char *s, const char *suf)
{
	size_t n = strlen(s), m = strlen(suf);

	return n > m && strcmp(s + n - m, suf) == 0;
}

START_TEST(test_codec_valid_vectors)
{
	DIR *d = opendir(VEC "/valid");
	struct dirent *de;
	int count = 0;

	ck_assert_msg(d != NULL, "vectors directory missing");
	while ((de = readdir(d)) != NULL) {
		char path[512], name[256];
		size_t len, jlen, n;
		char *buf, *jtext;
		anyev ev, ev2, ev3;
		tally_codec_error err;
		json_t *want, *got, *got2, *got3;
		json_error_t jerr;
		msgpack_sbuffer sb, sb2;

		if (!suffix(de->d_name, ".msgpack"))
			continue;
		n = strlen(de->d_name) - 8;
		snprintf(name, sizeof(name), "%.*s", (int)n, de->d_name);
		snprintf(path, sizeof(path), VEC "/valid/%s.msgpack", name);
		buf = slurp(path, &len);
		snprintf(path, sizeof(path), VEC "/valid/%s.json", name);
		jtext = slurp(path, &jlen);
		want = json_loads(jtext, 0, &jerr);
		ck_assert_msg(want != NULL, "%s: bad JSON", name);

		ck_assert_msg(decode_kind(name, &ev, buf, len, &err) == 0,
			      "%s should decode, got %s %s (%s)", name,
			      err.reason, err.field, err.detail);
		got = to_json_kind(name, &ev);
		ck_assert_msg(json_equal(got, want), "%s decodes to %s", name,
			      json_dumps(got, JSON_COMPACT | JSON_SORT_KEYS));

		/* decode -> encode -> decode is the identity */
		msgpack_sbuffer_init(&sb);
		encode_kind(name, &sb, &ev);
		ck_assert_msg(decode_kind(name, &ev2, sb.data, sb.size, &err)
				      == 0, "%s re-encoded fails: %s %s", name,
			      err.reason, err.field);
		got2 = to_json_kind(name, &ev2);
		ck_assert_msg(json_equal(got, got2), "%s round trip differs",
			      name);
		/* and encoding is canonical: byte-identical the second time */
		msgpack_sbuffer_init(&sb2);
		encode_kind(name, &sb2, &ev2);
		ck_assert_msg(sb.size == sb2.size &&
				      memcmp(sb.data, sb2.data, sb.size) == 0,
			      "%s encoding not canonical", name);

		/* the JSON form is accepted by the JSON reader, same result */
		ck_assert_msg(from_json_kind(name, &ev3, want, &err) == 0,
			      "%s JSON rejected: %s %s", name, err.reason,
			      err.field);
		got3 = to_json_kind(name, &ev3);
		ck_assert_msg(json_equal(got3, want), "%s JSON differs", name);

		json_decref(want);
		json_decref(got);
		json_decref(got2);
		json_decref(got3);
		msgpack_sbuffer_destroy(&sb);
		msgpack_sbuffer_destroy(&sb2);
		free(buf);
		free(jtext);
		count++;
	}
	closedir(d);
	ck_assert_msg(count >= 20, "only %d valid vectors", count);
}
END_TEST

START_TEST(test_codec_invalid_vectors)
{
	DIR *d = opendir(VEC "/invalid");
	struct dirent *de;
	int count = 0;

	ck_assert_msg(d != NULL, "vectors directory missing");
	while ((de = readdir(d)) != NULL) {
		char path[512], name[256], reason[64], field[64];
		size_t len, rlen, n;
		char *buf, *rtext;
		anyev ev;
		tally_codec_error err;

		if (!suffix(de->d_name, ".msgpack"))
			continue;
		n = strlen(de->d_name) - 8;
		snprintf(name, sizeof(name), "%.*s", (int)n, de->d_name);
		snprintf(path, sizeof(path), VEC "/invalid/%s.msgpack", name);
		buf = slurp(path, &len);
		snprintf(path, sizeof(path), VEC "/invalid/%s.reason", name);
		rtext = slurp(path, &rlen);
		ck_assert_msg(sscanf(rtext, "%63s %63s", reason, field) == 2,
			      "%s: bad .reason", name);
		if (strcmp(field, "-") == 0)
			field[0] = '\0';
		ck_assert_msg(decode_kind(name, &ev, buf, len, &err) ==
				      TALLY_EINVALID,
			      "%s should be rejected", name);
		ck_assert_msg(err.reason != NULL &&
				      strcmp(err.reason, reason) == 0 &&
				      strcmp(err.field, field) == 0,
			      "%s: want %s %s, got %s %s (%s)", name, reason,
			      field, err.reason, err.field, err.detail);
		free(buf);
		free(rtext);
		count++;
	}
	closedir(d);
	ck_assert_msg(count >= 30, "only %d invalid vectors", count);
}
END_TEST

/* ---- boundaries, table-driven through the JSON reader ---- */

static const struct {
	const char *json; /* the ai.tokens "data" object and top overrides */
	const char *reason; /* NULL = valid */
	const char *field;
} cases[] = {
	{ "\"input_tokens\":0,\"output_tokens\":0", NULL, NULL },
	{ "\"input_tokens\":1000000000000,\"output_tokens\":1000000000000",
	  NULL, NULL },
	{ "\"input_tokens\":1000000000001,\"output_tokens\":0",
	  "out_of_range", "data.input_tokens" },
	{ "\"input_tokens\":5,\"output_tokens\":1,\"cache_read_tokens\":5",
	  NULL, NULL },
	{ "\"input_tokens\":5,\"output_tokens\":1,\"cache_read_tokens\":6",
	  "cache_exceeds_input", "data.cache_read_tokens" },
	{ "\"input_tokens\":5,\"output_tokens\":1,\"cache_write_tokens\":6",
	  "cache_exceeds_input", "data.cache_read_tokens" },
	{ "\"input_tokens\":5,\"output_tokens\":1,\"cache_read_tokens\":-1",
	  "out_of_range", "data.cache_read_tokens" },
	{ "\"input_tokens\":5,\"output_tokens\":1.5", "wrong_type",
	  "data.output_tokens" },
	{ "\"input_tokens\":5,\"output_tokens\":1,\"reasoning_tokens\":"
	  "1000000000001", "out_of_range", "data.reasoning_tokens" },
};

static json_t *base_event(const char *data)
{
	char text[1024];
	json_error_t jerr;
	json_t *j;

	snprintf(text, sizeof(text),
		 "{\"id\":\"e\",\"source\":\"s\",\"type\":\"ai.tokens\","
		 "\"tenant_id\":\"3f1c2a7e-5b6d-4e8f-9a0b-1c2d3e4f5a6b\","
		 "\"time\":1,\"data\":{\"provider\":\"p\",\"model\":\"m\",%s}}",
		 data);
	j = json_loads(text, 0, &jerr);
	ck_assert_msg(j != NULL, "bad test JSON: %s", jerr.text);
	return j;
}

/* The JSON case must give the same verdict through msgpack. */
static void check_both(json_t *j, const char *reason, const char *field,
		       int i)
{
	tally_usage_event ev, ev2;
	tally_codec_error err;
	int rc = tally_codec_usage_from_json(&ev, j, &err);

	if (reason == NULL) {
		msgpack_sbuffer sb;

		ck_assert_msg(rc == 0, "case %d should be valid: %s %s", i,
			      err.reason, err.field);
		msgpack_sbuffer_init(&sb);
		tally_codec_encode_usage(&sb, &ev);
		ck_assert_msg(tally_codec_decode_usage(&ev2, sb.data, sb.size,
						       &err) == 0,
			      "case %d msgpack rejected: %s", i, err.reason);
		ck_assert_int_eq(ev.input_tokens, ev2.input_tokens);
		ck_assert_int_eq(ev.time_ms, ev2.time_ms);
		msgpack_sbuffer_destroy(&sb);
	} else {
		ck_assert_msg(rc == TALLY_EINVALID && err.reason != NULL &&
				      strcmp(err.reason, reason) == 0 &&
				      strcmp(err.field, field) == 0,
			      "case %d: want %s %s, got %s %s", i, reason,
			      field, err.reason, err.field);
	}
}

START_TEST(test_codec_quantity_bounds)
{
	size_t i;

	for (i = 0; i < sizeof(cases) / sizeof(cases[0]); i++) {
		json_t *j = base_event(cases[i].json);

		check_both(j, cases[i].reason, cases[i].field, (int)i);
		json_decref(j);
	}
}
END_TEST

static const struct {
	const char *s;
	int64_t want; /* -1 = reject */
} times[] = {
	{ "1970-01-01T00:00:00Z", 0 },
	{ "1970-01-01T00:00:00.999Z", 999 },
	{ "1970-01-01T00:00:00.9999999Z", 999 },   /* truncated */
	{ "1970-01-01T01:00:00+01:00", 0 },
	{ "1969-12-31T23:00:00-01:00", 0 },
	{ "1969-12-31T23:59:59Z", -1 },            /* before 1970 */
	{ "2024-02-29T00:00:00Z", 1709164800000 }, /* leap year */
	{ "2100-02-29T00:00:00Z", -1 },            /* not a leap year */
	{ "2000-02-29t12:00:00z", 951825600000 },  /* lower case t/z */
	{ "2000-02-29 12:00:00Z", 951825600000 },  /* RFC 3339 allows space */
	{ "2025-11-26T10:00:00", -1 },             /* no offset */
	{ "2025-11-26T10:00:00.123", -1 },         /* no offset */
	{ "2025-11-26T24:00:00Z", -1 },
	{ "2025-11-26T10:60:00Z", -1 },
	{ "2025-11-26T10:00:60Z", -1 },            /* leap second rejected */
	{ "2025-13-01T00:00:00Z", -1 },
	{ "2025-11-26T10:00:00.Z", -1 },
	{ "2025-11-26T10:00:00.1234567891Z", -1 }, /* > 9 fraction digits */
	{ "2025-11-26T10:00:00+0100", -1 },
	{ "2025-11-26T10:00:00+01:00x", -1 },
	{ "2025-11-26T10:00:00+24:00", -1 },
	{ "9999-12-31T23:59:59.999Z", 253402300799999 },
	{ "+2025-11-26T10:00:00Z", -1 },
	{ "2025-1l-26T10:00:00Z", -1 },
};

START_TEST(test_codec_rfc3339)
{
	size_t i;

	for (i = 0; i < sizeof(times) / sizeof(times[0]); i++) {
		int64_t got = -2;
		int rc = tally_codec__parse_rfc3339(
			&got, times[i].s, (uint32_t)strlen(times[i].s));

		if (times[i].want < 0)
			ck_assert_msg(rc != 0, "%s should be rejected",
				      times[i].s);
		else
			ck_assert_msg(rc == 0 && got == times[i].want,
				      "%s should be %lld, got rc %d %lld",
				      times[i].s, (long long)times[i].want, rc,
				      (long long)got);
	}
}
END_TEST

START_TEST(test_codec_id_lengths)
{
	char data[64] = "\"input_tokens\":1,\"output_tokens\":1";
	char id[131];
	json_t *j;
	tally_usage_event ev;
	tally_codec_error err;

	memset(id, 'a', sizeof(id));
	id[128] = '\0';
	j = base_event(data);
	json_object_set_new(j, "id", json_string(id));
	ck_assert_msg(tally_codec_usage_from_json(&ev, j, &err) == 0,
		      "128-byte id must be accepted");
	ck_assert_int_eq(ev.id.len, 128);
	id[128] = 'a';
	id[129] = '\0';
	json_object_set_new(j, "id", json_string(id));
	ck_assert_msg(tally_codec_usage_from_json(&ev, j, &err) ==
			      TALLY_EINVALID &&
			      strcmp(err.reason, "too_long") == 0 &&
			      strcmp(err.field, "id") == 0,
		      "129-byte id must be too_long id");
	/* a NUL inside a JSON string is a control character */
	json_object_set_new(j, "id", json_stringn("a\0b", 3));
	ck_assert_msg(tally_codec_usage_from_json(&ev, j, &err) ==
			      TALLY_EINVALID &&
			      strcmp(err.reason, "bad_utf8") == 0,
		      "embedded NUL must be rejected");
	json_decref(j);
}
END_TEST

/* every byte outside printable ASCII, at every position of a string, is
 * judged as the byte-wise UTF-8 rules say (the validator reads 8 bytes at
 * a time while they are plain ASCII) */
START_TEST(test_codec_string_bytes)
{
	static const struct {
		uint8_t b;
		bool ok;
	} bytes[] = {
		{ 0x00, false }, { 0x01, false }, { 0x1f, false },
		{ 0x20, true },  { 'a', true },   { 0x7e, true },
		{ 0x7f, false }, { 0x80, false }, { 0xc0, false },
		{ 0xc3, false }, { 0xff, false },
	};
	char id[41];
	size_t p, k;

	for (p = 0; p < 40; p++) {
		for (k = 0; k < sizeof(bytes) / sizeof(bytes[0]); k++) {
			tally_usage_event ev, out;
			tally_codec_error err;
			msgpack_sbuffer sb;
			json_t *j = base_event(
				"\"input_tokens\":1,\"output_tokens\":1");
			int rc;

			memset(id, 'a', 40);
			id[p] = (char)bytes[k].b;
			id[40] = '\0';
			ck_assert_int_eq(tally_codec_usage_from_json(&ev, j,
								     &err), 0);
			ev.id = (tally_str){ id, 40 };
			msgpack_sbuffer_init(&sb);
			tally_codec_encode_usage(&sb, &ev);
			rc = tally_codec_decode_usage(&out, sb.data, sb.size,
						      &err);
			ck_assert_msg(bytes[k].ok ? rc == 0 :
				      rc != 0 && strcmp(err.reason,
							"bad_utf8") == 0,
				      "byte 0x%02x at %zu: rc %d", bytes[k].b,
				      p, rc);
			/* a valid 2-byte sequence there is accepted */
			if (p < 39) {
				id[p] = (char)0xc3;
				id[p + 1] = (char)0xa9;
				msgpack_sbuffer_clear(&sb);
				tally_codec_encode_usage(&sb, &ev);
				ck_assert_msg(tally_codec_decode_usage(
						      &out, sb.data, sb.size,
						      &err) == 0,
					      "U+00E9 at %zu rejected", p);
			}
			msgpack_sbuffer_destroy(&sb);
			json_decref(j);
		}
	}
}
END_TEST

START_TEST(test_codec_every_truncation)
{
	/* every prefix of a valid message is rejected, never read past */
	size_t len, cut;
	char *buf = slurp(VEC "/valid/usage-ai-full.msgpack", &len);

	for (cut = 0; cut < len; cut++) {
		char *p = malloc(cut + 1); /* exact size: ASan catches overreads */
		tally_usage_event ev;
		tally_codec_error err;

		memcpy(p, buf, cut);
		ck_assert_msg(tally_codec_decode_usage(&ev, p, cut, &err) ==
				      TALLY_EINVALID,
			      "prefix %zu accepted", cut);
		free(p);
	}
	free(buf);
}
END_TEST

START_TEST(test_codec_json_line_schema)
{
	/* the reader of `tally produce`: schema by argument, duplicate keys
	 * and non-JSON refused with a reason */
	size_t len;
	char *text = slurp(VEC "/valid/command-cancel.json", &len);
	static const char dup[] = "{\"id\": \"a\", \"id\": \"b\"}";
	union {
		tally_usage_event usage;
		tally_command command;
	} m;
	tally_json_line l;
	tally_codec_error err;

	tally_json_line_init(&l);
	ck_assert_int_eq(tally_codec_from_json_line(TALLY_JSON_COMMAND,
						    &m.command, text, len, &l,
						    &err), 0);
	ck_assert_int_eq(m.command.type, TALLY_CMD_CANCEL_SUBSCRIPTION);
	/* the same line as a usage event: its type is no meter */
	ck_assert_int_eq(tally_codec_from_json_line(TALLY_JSON_USAGE, &m.usage,
						    text, len, &l, &err),
			 TALLY_EINVALID);
	ck_assert_str_eq(err.reason, "unknown_meter");
	ck_assert_int_eq(tally_codec_from_json_line(TALLY_JSON_USAGE, &m.usage,
						    "{\"id\": ", 7, &l, &err),
			 TALLY_EINVALID);
	ck_assert_str_eq(err.reason, "bad_json");
	ck_assert_msg(err.detail[0] != '\0', "jansson's message is kept");
	ck_assert_int_eq(tally_codec_from_json_line(TALLY_JSON_USAGE, &m.usage,
						    dup, sizeof(dup) - 1, &l,
						    &err), TALLY_EINVALID);
	ck_assert_str_eq(err.reason, "bad_json");
	tally_json_line_release(&l);
	free(text);
}
END_TEST

START_TEST(test_codec_decode_rate)
{
	/* CPU time of this thread, so a busy machine does not skew it */
	size_t len;
	char *buf = slurp(VEC "/valid/usage-ai-full.msgpack", &len);
	struct timespec a, b;
	int64_t n = 0, ns;
	int bad = 0;
	tally_usage_event ev;
	tally_codec_error err;

	clock_gettime(CLOCK_THREAD_CPUTIME_ID, &a);
	do {
		int k;

		/* no ck_assert inside: Check records each one (a pipe write) */
		for (k = 0; k < 1000; k++)
			bad |= tally_codec_decode_usage(&ev, buf, len, &err);
		n += 1000;
		clock_gettime(CLOCK_THREAD_CPUTIME_ID, &b);
		ns = (int64_t)(b.tv_sec - a.tv_sec) * 1000000000 +
		     (b.tv_nsec - a.tv_nsec);
	} while (ns < 200000000);
	ck_assert_msg(bad == 0, "the vector must decode");
	fprintf(stderr, "codec decode: %lld events/s, %lld ns/event "
		"(%zu-byte ai.tokens, one core CPU time, this build)\n",
		(long long)(n * 1000000000 / ns), (long long)(ns / n), len);
	free(buf);
}
END_TEST

static Suite *tally_codec_suite(void)
{
	Suite *s = suite_create("codec");
	TCase *tc = tcase_create("Vectors");

	tcase_add_test(tc, test_codec_valid_vectors);
	tcase_add_test(tc, test_codec_invalid_vectors);
	tcase_set_timeout(tc, 10);
	suite_add_tcase(s, tc);
	tc = tcase_create("Limits");
	tcase_add_test(tc, test_codec_quantity_bounds);
	tcase_add_test(tc, test_codec_rfc3339);
	tcase_add_test(tc, test_codec_id_lengths);
	tcase_add_test(tc, test_codec_string_bytes);
	tcase_add_test(tc, test_codec_every_truncation);
	tcase_add_test(tc, test_codec_json_line_schema);
	tcase_add_test(tc, test_codec_decode_rate);
	tcase_set_timeout(tc, 10);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_codec_suite)
