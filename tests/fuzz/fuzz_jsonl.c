/*
 * fuzz_jsonl.c - libFuzzer target for the JSON-lines reader of
 * `tally produce` (tally_codec_from_json_line: the tree-free fast path and
 * jansson's slow path). The first byte picks the schema
 * ('c' command, 'r' rated, anything else usage); the rest is split into lines as produce does.
 * A line is rejected with a reason or decoded; a decoded line must print
 * back (to_json) to JSON that decodes to the same message, compared by
 * its canonical msgpack encoding. Run: tests/fuzz/run.sh 60 jsonl
 */
#include "fuzz.h"
#include "tally/codec.h"
#include "tally/codec_json.h"

typedef union msg {
	tally_usage_event usage;
	tally_rated_event rated;
	tally_command command;
} msg;

static tally_json_schema schema_of(char c)
{
	return c == 'c' ? TALLY_JSON_COMMAND :
	       c == 'r' ? TALLY_JSON_RATED : TALLY_JSON_USAGE;
}

static void encode(msgpack_sbuffer *sb, char schema, const msg *m)
{
	if (schema == 'c')
		tally_codec_encode_command(sb, &m->command);
	else if (schema == 'r')
		tally_codec_encode_rated(sb, &m->rated);
	else
		tally_codec_encode_usage(sb, &m->usage);
}

static json_t *to_json(char schema, const msg *m)
{
	if (schema == 'c')
		return tally_codec_command_to_json(&m->command);
	if (schema == 'r')
		return tally_codec_rated_to_json(&m->rated);
	return tally_codec_usage_to_json(&m->usage);
}

static void one_line(char schema, const char *line, size_t n)
{
	msg m, m2;
	tally_codec_error err;
	tally_json_line l1, l2;
	json_t *back;
	msgpack_sbuffer a, b;
	char *text;

	tally_json_line_init(&l1);
	tally_json_line_init(&l2);
	if (tally_codec_from_json_line(schema_of(schema), &m, line, n, &l1,
				       &err) != 0) {
		if (err.reason == NULL)
			abort();
		tally_json_line_release(&l1);
		return;
	}
	back = to_json(schema, &m);
	text = json_dumps(back, JSON_COMPACT);
	if (text == NULL)
		abort();
	if (tally_codec_from_json_line(schema_of(schema), &m2, text,
				       strlen(text), &l2, &err) != 0)
		abort();
	msgpack_sbuffer_init(&a);
	msgpack_sbuffer_init(&b);
	encode(&a, schema, &m);
	encode(&b, schema, &m2);
	fuzz_same(&a, &b);
	msgpack_sbuffer_destroy(&a);
	msgpack_sbuffer_destroy(&b);
	free(text);
	json_decref(back);
	tally_json_line_release(&l2);
	tally_json_line_release(&l1);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const char *p, *end;
	char schema;

	if (size == 0)
		return 0;
	schema = data[0] == 'c' || data[0] == 'r' ? (char)data[0] : 'u';
	p = (const char *)data + 1;
	end = (const char *)data + size;
	while (p < end) {
		const char *nl = memchr(p, '\n', (size_t)(end - p));
		size_t n = (size_t)((nl ? nl : end) - p);
		const char *line = p;

		p = nl ? nl + 1 : end;
		while (n > 0 && line[n - 1] == '\r')
			n--;
		if (n > 0)
			one_line(schema, line, n);
	}
	return 0;
}
