/*
 * test_codec_encode.c - the usage and rated encoders write exactly the
 * bytes of msgpack-c's packer (the reference below packs the same fields
 * with msgpack_pack_*): for every valid golden vector re-encoded, and for
 * integers and strings at each boundary of msgpack's smallest forms.
 */
#define _POSIX_C_SOURCE 200809L
#include <check.h>
#include <dirent.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "events/codec_int.h"
#include "tally/codec.h"
#include "tally/money.h"

#define VEC TALLY_SOURCE_DIR "/schemas/vectors"

/* ---- the reference: msgpack-c's packer, field by field ---------------- */

static void r_cstr(msgpack_packer *pk, const char *s)
{
	msgpack_pack_str(pk, strlen(s));
	msgpack_pack_str_body(pk, s, strlen(s));
}

static void r_str(msgpack_packer *pk, const char *key, tally_str v)
{
	r_cstr(pk, key);
	msgpack_pack_str(pk, v.len);
	msgpack_pack_str_body(pk, v.ptr, v.len);
}

static void r_int(msgpack_packer *pk, const char *key, int64_t v)
{
	r_cstr(pk, key);
	msgpack_pack_int64(pk, v);
}

static void r_money(msgpack_packer *pk, int64_t pico)
{
	char buf[48];
	size_t n = tally_money_fmt(buf, sizeof(buf), pico);

	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, buf, n);
}

static void r_usage_body(msgpack_packer *pk, const tally_usage_event *ev)
{
	char t[37];
	const char *meter = tally_meter_name(ev->meter);

	r_str(pk, "id", ev->id);
	r_str(pk, "source", ev->source);
	r_cstr(pk, "type");
	r_cstr(pk, meter != NULL ? meter : "");
	tally_uuid_fmt(t, ev->tenant_id);
	r_cstr(pk, "tenant_id");
	r_cstr(pk, t);
	r_int(pk, "time", ev->time_ms);
	if (ev->subject.len > 0)
		r_str(pk, "subject", ev->subject);
	r_cstr(pk, "data");
	switch (ev->meter) {
	case TALLY_METER_AI_TOKENS:
		msgpack_pack_map(pk, 6 + ev->has_reasoning +
					     (ev->workflow_id.len > 0));
		r_str(pk, "provider", ev->provider);
		r_str(pk, "model", ev->model);
		r_int(pk, "input_tokens", ev->input_tokens);
		r_int(pk, "output_tokens", ev->output_tokens);
		r_int(pk, "cache_read_tokens", ev->cache_read_tokens);
		r_int(pk, "cache_write_tokens", ev->cache_write_tokens);
		if (ev->has_reasoning)
			r_int(pk, "reasoning_tokens", ev->reasoning_tokens);
		if (ev->workflow_id.len > 0)
			r_str(pk, "workflow_id", ev->workflow_id);
		break;
	case TALLY_METER_WORKFLOW:
		msgpack_pack_map(pk, 3);
		r_str(pk, "workflow_id", ev->workflow_id);
		r_int(pk, "steps", ev->steps);
		r_int(pk, "complexity", ev->complexity);
		break;
	case TALLY_METER_STORAGE:
		msgpack_pack_map(pk, 1);
		r_int(pk, "bytes", ev->bytes);
		break;
	case TALLY_METER_API_CALL:
		msgpack_pack_map(pk, 1);
		r_int(pk, "count", ev->count);
		break;
	default:
		msgpack_pack_map(pk, 0);
		break;
	}
}

static void ref_usage(msgpack_sbuffer *sb, const tally_usage_event *ev)
{
	msgpack_packer pk;

	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 6 + (ev->subject.len > 0));
	r_usage_body(&pk, ev);
}

static void ref_rated(msgpack_sbuffer *sb, const tally_rated_event *re)
{
	msgpack_packer pk;
	size_t nc = 0;
	int i;

	for (i = 0; i < TALLY_COMP_N; i++)
		nc += re->components[i] != 0;
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, 6 + (re->ev.subject.len > 0) + 6);
	r_usage_body(&pk, &re->ev);
	r_cstr(&pk, "cost");
	r_money(&pk, re->cost);
	r_cstr(&pk, "components");
	msgpack_pack_map(&pk, nc);
	for (i = 0; i < TALLY_COMP_N; i++) {
		if (re->components[i] == 0)
			continue;
		r_cstr(&pk, tally_codec__comp_names[i]);
		r_money(&pk, re->components[i]);
	}
	r_cstr(&pk, "currency");
	r_cstr(&pk, re->currency);
	r_int(&pk, "price_id", re->price_id);
	r_cstr(&pk, "unpriced");
	if (re->unpriced)
		msgpack_pack_true(&pk);
	else
		msgpack_pack_false(&pk);
	r_int(&pk, "rated_at", re->rated_at_ms);
}

/* ---- comparison ------------------------------------------------------- */

static void same_usage(const tally_usage_event *ev, const char *what)
{
	msgpack_sbuffer a, b;

	msgpack_sbuffer_init(&a);
	msgpack_sbuffer_init(&b);
	tally_codec_encode_usage(&a, ev);
	ref_usage(&b, ev);
	ck_assert_msg(a.size == b.size && memcmp(a.data, b.data, a.size) == 0,
		      "usage %s: %zu bytes, msgpack-c %zu", what, a.size,
		      b.size);
	msgpack_sbuffer_destroy(&a);
	msgpack_sbuffer_destroy(&b);
}

static void same_rated(const tally_rated_event *re, const char *what)
{
	msgpack_sbuffer a, b;

	/* appends after what the buffer already holds, as tally-rate's
	 * reused buffer does */
	msgpack_sbuffer_init(&a);
	msgpack_sbuffer_init(&b);
	msgpack_sbuffer_write(&a, "xyz", 3);
	msgpack_sbuffer_write(&b, "xyz", 3);
	tally_codec_encode_rated(&a, re);
	ref_rated(&b, re);
	ck_assert_msg(a.size == b.size && memcmp(a.data, b.data, a.size) == 0,
		      "rated %s: %zu bytes, msgpack-c %zu", what, a.size,
		      b.size);
	msgpack_sbuffer_destroy(&a);
	msgpack_sbuffer_destroy(&b);
}

START_TEST(test_encode_vectors_match_packer)
{
	DIR *d = opendir(VEC "/valid");
	struct dirent *de;
	int count = 0;

	ck_assert_msg(d != NULL, "vectors directory missing");
	while ((de = readdir(d)) != NULL) {
		char path[512];
		FILE *fp;
		char buf[65536];
		size_t len;
		tally_rated_event re;
		tally_codec_error err;
		const char *n = de->d_name;

		if (strstr(n, ".msgpack") == NULL ||
		    strncmp(n, "command-", 8) == 0)
			continue;
		snprintf(path, sizeof(path), VEC "/valid/%s", n);
		fp = fopen(path, "rb");
		ck_assert_msg(fp != NULL, "cannot open %s", path);
		len = fread(buf, 1, sizeof(buf), fp);
		fclose(fp);
		if (strncmp(n, "rated-", 6) == 0) {
			ck_assert_msg(tally_codec_decode_rated(&re, buf, len,
							       &err) == 0,
				      "%s: %s", n, err.reason);
			same_rated(&re, n);
			same_usage(&re.ev, n);
		} else {
			ck_assert_msg(tally_codec_decode_usage(&re.ev, buf, len,
							       &err) == 0,
				      "%s: %s", n, err.reason);
			same_usage(&re.ev, n);
		}
		count++;
	}
	closedir(d);
	ck_assert_msg(count >= 10, "only %d vectors", count);
}
END_TEST

/* each edge of msgpack's integer forms, both sides */
static const int64_t edges[] = {
	INT64_MIN, -2147483649LL, -2147483648LL, -32769, -32768, -129, -128,
	-33, -32, -1, 0, 1, 127, 128, 255, 256, 65535, 65536,
	4294967295LL, 4294967296LL, INT64_MAX,
};

static char big[70000];

/* string lengths at the edges of fixstr, str 8, str 16 */
static const uint32_t lens[] = { 0, 1, 31, 32, 255, 256, 65535, 65536 };

static void base_event(tally_rated_event *re)
{
	static const uint8_t tenant[16] = { 0x01, 0x23, 0x45, 0x67, 0x89, 0xab,
					    0xcd, 0xef, 0xfe, 0xdc, 0xba, 0x98,
					    0x76, 0x54, 0x32, 0x10 };

	memset(re, 0, sizeof(*re));
	re->ev.id = (tally_str){ "evt-1", 5 };
	re->ev.source = (tally_str){ "svc", 3 };
	re->ev.meter = TALLY_METER_AI_TOKENS;
	memcpy(re->ev.tenant_id, tenant, 16);
	re->ev.provider = (tally_str){ "openai", 6 };
	re->ev.model = (tally_str){ "gpt-4o", 6 };
	re->ev.has_reasoning = true;
	memcpy(re->currency, "USD", 4);
	re->price_id = 7;
}

START_TEST(test_encode_edges_match_packer)
{
	tally_rated_event re;
	char what[64];
	size_t i, j;

	memset(big, 'm', sizeof(big));
	for (i = 0; i < sizeof(edges) / sizeof(edges[0]); i++) {
		int64_t v = edges[i];

		base_event(&re);
		re.ev.time_ms = v;
		re.ev.input_tokens = v;
		re.ev.output_tokens = v / -3;
		re.ev.cache_read_tokens = v / 7;
		re.ev.reasoning_tokens = v / 11;
		re.price_id = v;
		re.rated_at_ms = v;
		re.cost = v;
		re.components[i % TALLY_COMP_N] = v;
		re.components[(i + 3) % TALLY_COMP_N] = v / -5;
		snprintf(what, sizeof(what), "int %lld", (long long)v);
		same_rated(&re, what);
		re.ev.meter = TALLY_METER_WORKFLOW;
		re.ev.workflow_id = (tally_str){ "wf", 2 };
		re.ev.steps = v;
		re.ev.complexity = v / -2;
		same_rated(&re, what);
		same_usage(&re.ev, what);
		re.ev.meter = TALLY_METER_STORAGE;
		re.ev.bytes = v;
		same_usage(&re.ev, what);
		re.ev.meter = TALLY_METER_API_CALL;
		re.ev.count = v;
		same_usage(&re.ev, what);
	}
	for (j = 0; j < sizeof(lens) / sizeof(lens[0]); j++) {
		tally_str s = { big, lens[j] };

		base_event(&re);
		re.ev.subject = s;
		re.ev.model = s;
		re.ev.workflow_id = s;
		re.ev.id = s;
		snprintf(what, sizeof(what), "string of %u", lens[j]);
		same_rated(&re, what);
		same_usage(&re.ev, what);
	}
}
END_TEST

static Suite *tally_codec_encode_suite(void)
{
	Suite *s = suite_create("codec_encode");
	TCase *tc = tcase_create("Packer");

	tcase_add_test(tc, test_encode_vectors_match_packer);
	tcase_add_test(tc, test_encode_edges_match_packer);
	tcase_set_timeout(tc, 20);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(tally_codec_encode_suite)
