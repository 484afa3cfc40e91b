/*
 * test_codec_json_line.c - tally_codec_from_json_line (the allocation-free
 * reader of `tally produce`) gives exactly the verdicts of jansson +
 * *_from_json: the same result, reason, field and detail, and for an
 * accepted line the same msgpack bytes. Checked on the valid vectors of
 * schemas/vectors/, a table of edge cases, and 30 000 deterministic
 * mutations of them (bytes replaced, deleted, doubled). Plain events must
 * take the fast path (nothing held from jansson).
 */
#define _POSIX_C_SOURCE 200809L
#include <check.h>
#include <dirent.h>
#include <msgpack.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "check_main.h"
#include "tally/codec.h"
#include "tally/codec_json.h"
#include "tally/command.h"

#define VEC TALLY_SOURCE_DIR "/schemas/vectors/valid"

typedef union anyev {
	tally_usage_event u;
	tally_rated_event r;
	tally_command c;
} anyev;

static void encode(msgpack_sbuffer *sb, tally_json_schema k, const anyev *e)
{
	msgpack_sbuffer_init(sb);
	if (k == TALLY_JSON_COMMAND)
		tally_codec_encode_command(sb, &e->c);
	else if (k == TALLY_JSON_RATED)
		tally_codec_encode_rated(sb, &e->r);
	else
		tally_codec_encode_usage(sb, &e->u);
}

/* The reference: jansson, then the tree reader. */
static int reference(tally_json_schema k, anyev *e, const char *s, size_t n,
		     json_t **held, tally_codec_error *ce)
{
	json_error_t je;

	*held = json_loadb(s, n, JSON_REJECT_DUPLICATES, &je);
	memset(ce, 0, sizeof(*ce));
	ce->reason = "";
	if (*held == NULL) {
		ce->reason = "bad_json";
		snprintf(ce->detail, sizeof(ce->detail), "%s", je.text);
		return TALLY_EINVALID;
	}
	if (k == TALLY_JSON_COMMAND)
		return tally_codec_command_from_json(&e->c, *held, ce);
	if (k == TALLY_JSON_RATED)
		return tally_codec_rated_from_json(&e->r, *held, ce);
	return tally_codec_usage_from_json(&e->u, *held, ce);
}

static size_t fast_hits;

/*
 * The msgpack decoder accepts what an accepted line encodes to, and
 * encoding its result gives the same bytes: why `tally produce` needs no
 * decode-back check (backfill.c).
 */
static void decodes_back(tally_json_schema k, const msgpack_sbuffer *x,
			 const char *s, size_t n)
{
	anyev d;
	tally_codec_error ce;
	msgpack_sbuffer z;
	int rc;

	if (k == TALLY_JSON_COMMAND)
		rc = tally_codec_decode_command(&d.c, x->data, x->size, &ce);
	else if (k == TALLY_JSON_RATED)
		rc = tally_codec_decode_rated(&d.r, x->data, x->size, &ce);
	else
		rc = tally_codec_decode_usage(&d.u, x->data, x->size, &ce);
	ck_assert_msg(rc == 0, "decode rejects the encoding (%s %s) of: %.*s",
		      ce.reason, ce.field, (int)n, s);
	encode(&z, k, &d);
	ck_assert_msg(z.size == x->size &&
		      memcmp(z.data, x->data, x->size) == 0,
		      "decode changes the encoding of: %.*s", (int)n, s);
	msgpack_sbuffer_destroy(&z);
}

/* Both readers on s; they must agree in every respect. */
static void same(tally_json_schema k, const char *s, size_t n)
{
	anyev a, b;
	tally_codec_error ca, cb;
	tally_json_line l;
	json_t *held = NULL;
	int ra, rb;

	tally_json_line_init(&l);
	memset(&ca, 0, sizeof(ca));
	ca.reason = "";
	ra = tally_codec_from_json_line(k, &a, s, n, &l, &ca);
	rb = reference(k, &b, s, n, &held, &cb);
	ck_assert_msg(ra == rb, "verdicts differ (%d vs %d) on: %.*s", ra, rb,
		      (int)n, s);
	if (ra != 0) {
		ck_assert_msg(strcmp(ca.reason, cb.reason) == 0 &&
			      strcmp(ca.field, cb.field) == 0 &&
			      strcmp(ca.detail, cb.detail) == 0,
			      "reasons differ: %s %s %s / %s %s %s on: %.*s",
			      ca.reason, ca.field, ca.detail, cb.reason,
			      cb.field, cb.detail, (int)n, s);
	} else {
		msgpack_sbuffer x, y;

		encode(&x, k, &a);
		encode(&y, k, &b);
		ck_assert_msg(x.size == y.size &&
			      memcmp(x.data, y.data, x.size) == 0,
			      "events differ on: %.*s", (int)n, s);
		msgpack_sbuffer_destroy(&y);
		/* tally produce sends these bytes without decoding them back */
		decodes_back(k, &x, s, n);
		msgpack_sbuffer_destroy(&x);
		fast_hits += l.held == NULL;
	}
	tally_json_line_release(&l);
	json_decref(held);
}

static tally_json_schema kind_of(const char *name)
{
	if (strncmp(name, "rated-", 6) == 0)
		return TALLY_JSON_RATED;
	if (strncmp(name, "command-", 8) == 0)
		return TALLY_JSON_COMMAND;
	return TALLY_JSON_USAGE;
}

typedef struct seed {
	tally_json_schema k;
	char *text;
	size_t n;
} seed;

static seed seeds[64];
static size_t nseeds;

static void load_seeds(void)
{
	DIR *d = opendir(VEC);
	struct dirent *de;

	ck_assert_ptr_nonnull(d);
	nseeds = 0;
	while ((de = readdir(d)) != NULL && nseeds < 64) {
		char path[512];
		size_t len = strlen(de->d_name);
		FILE *fp;
		long n;

		if (len < 5 || strcmp(de->d_name + len - 5, ".json") != 0)
			continue;
		snprintf(path, sizeof(path), VEC "/%s", de->d_name);
		fp = fopen(path, "rb");
		ck_assert_ptr_nonnull(fp);
		fseek(fp, 0, SEEK_END);
		n = ftell(fp);
		fseek(fp, 0, SEEK_SET);
		seeds[nseeds].text = malloc((size_t)n + 1);
		ck_assert(fread(seeds[nseeds].text, 1, (size_t)n, fp) ==
			  (size_t)n);
		seeds[nseeds].n = (size_t)n;
		seeds[nseeds].k = kind_of(de->d_name);
		nseeds++;
		fclose(fp);
	}
	closedir(d);
	ck_assert_uint_gt(nseeds, 10);
}

static void free_seeds(void)
{
	size_t i;

	for (i = 0; i < nseeds; i++)
		free(seeds[i].text);
	nseeds = 0;
}

START_TEST(test_json_line_vectors_take_fast_path)
{
	size_t i;

	load_seeds();
	fast_hits = 0;
	for (i = 0; i < nseeds; i++)
		same(seeds[i].k, seeds[i].text, seeds[i].n);
	/* plain vectors need no jansson tree */
	ck_assert_msg(fast_hits * 2 >= nseeds, "fast path taken %zu of %zu",
		      fast_hits, nseeds);
	free_seeds();
}
END_TEST

#define T "\"tenant_id\":\"3f1c2a7e-5b6d-4e8f-9a0b-1c2d3e4f5a6b\""
#define AI "\"type\":\"ai.tokens\",\"time\":1764151200000,"
#define D "\"data\":{\"provider\":\"openai\",\"model\":\"gpt-4o\"," \
	  "\"input_tokens\":10,\"output_tokens\":2}"

static const char *const edge[] = {
	"{\"id\":\"a\",\"source\":\"s\"," AI T "," D "}",
	" {\"id\":\"a\",\"source\":\"s\"," AI T "," D "}  ",
	"{\"id\":\"a\",\"source\":\"s\"," AI T "," D "}x",
	"{\"id\":\"a\",\"id\":\"b\",\"source\":\"s\"," AI T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"x\":1,\"x\":2," AI T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\"," AI T ",\"data\":{\"provider\":"
	"\"openai\",\"model\":\"gpt-4o\",\"input_tokens\":10,"
	"\"input_tokens\":1,\"output_tokens\":2}}",
	"{\"id\":\"a\\u0041\",\"source\":\"s\"," AI T "," D "}",
	"{\"id\":\"a\\u0000\",\"source\":\"s\"," AI T "," D "}",
	"{\"id\":\"\xc3\xa9\",\"source\":\"s\"," AI T "," D "}",
	"{\"id\":\"\xc3\",\"source\":\"s\"," AI T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"subject\":\"u-1\"," AI T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"extra\":{\"k\":[1,2]}," AI T ","
	D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"extra\":[]," AI T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"extra\":1.5," AI T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"extra\":1e999," AI T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"extra\":-0," AI T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"extra\":012," AI T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"extra\":99999999999999999999,"
	AI T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"extra\":-9223372036854775808,"
	AI T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"time\":1.0,\"type\":\"ai.tokens\","
	T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"type\":\"ai.tokens\",\"time\":"
	"\"2025-11-26T10:00:00Z\"," T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"type\":\"ai.tokens\",\"time\":"
	"\"2025-11-26T10:00:00\"," T "," D "}",
	"{\"id\":\"a\",\"source\":\"s\",\"type\":\"api.call\",\"time\":1,"
	T ",\"data\":{\"count\":1000000000001}}",
	"{\"id\":\"a\",\"source\":\"s\"," AI T "," D ",\"z\":true,\"y\":false,"
	"\"w\":null}",
	"{\"id\":\"a\",\"source\":\"s\"," AI T "," D ",}",
	"{\"id\":\"a\",\"source\":\"s\"," AI T "," D,
	"[1,2]",
	"\"a\"",
	"{}",
	"",
	"   ",
	"this is not json",
	"{\"id\":\"a\",\"source\":\"s\"," AI T ",\"data\":\"x\"}",
	"{\"id\":\"a\",\"source\":\"s\"," AI T ",\"data\":null}",
	"{\"id\":\"a\",\"source\":\"s\"," AI T ",\"data\":{}}",
	"{\"id\":\"a\",\"source\":\"s\",\"type\":\"ai.tokens\",\"time\":1,"
	"\"tenant_id\":\"3f1c2a7e-5b6d-4e8f-9a0b-1c2d3e4f5a6\"," D "}",
};

START_TEST(test_json_line_edges)
{
	size_t i;

	for (i = 0; i < sizeof(edge) / sizeof(edge[0]); i++)
		same(TALLY_JSON_USAGE, edge[i], strlen(edge[i]));
}
END_TEST

/* xorshift: the mutations are the same on every run */
static uint64_t rnd(uint64_t *s)
{
	*s ^= *s << 13;
	*s ^= *s >> 7;
	*s ^= *s << 17;
	return *s;
}

START_TEST(test_json_line_mutations_agree)
{
	static const char alphabet[] = "{}[]\",:\\ 0123456789-.eEtrufalsn"
				       "\t\x01\x7f\xc3\xa9\xff";
	uint64_t s = 0x9e3779b97f4a7c15u;
	char buf[4096];
	int i, k;

	load_seeds();
	for (i = 0; i < 30000; i++) {
		const seed *sd = &seeds[rnd(&s) % nseeds];
		size_t n = sd->n < sizeof(buf) - 8 ? sd->n : sizeof(buf) - 8;
		int muts = 1 + (int)(rnd(&s) % 3);

		memcpy(buf, sd->text, n);
		for (k = 0; k < muts && n > 1; k++) {
			size_t at = (size_t)(rnd(&s) % n);
			char c = alphabet[rnd(&s) % (sizeof(alphabet) - 1)];

			switch (rnd(&s) % 3) {
			case 0:
				buf[at] = c;
				break;
			case 1:
				memmove(buf + at, buf + at + 1, n - at - 1);
				n--;
				break;
			default:
				memmove(buf + at + 1, buf + at, n - at);
				n++;
				break;
			}
		}
		same(sd->k, buf, n);
	}
	free_seeds();
}
END_TEST

static Suite *json_line_suite(void)
{
	Suite *s = suite_create("codec_json_line");
	TCase *tc = tcase_create("Core");

	tcase_set_timeout(tc, 60);
	tcase_add_test(tc, test_json_line_vectors_take_fast_path);
	tcase_add_test(tc, test_json_line_edges);
	tcase_add_test(tc, test_json_line_mutations_agree);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(json_line_suite)
