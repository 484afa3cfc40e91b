/*
 * fuzz_jsonl.c - libFuzzer target for the JSON-lines reader of
 * `tally produce` (tally_codec_json_line). The first byte picks the schema
 * ('c' command, 'r' rated, anything else usage); the rest is split into lines as produce does.
 * A line is rejected with a reason or decoded; a decoded line must print
 * back (to_json) to JSON that decodes to the same message, compared by
 * its canonical msgpack encoding. Run: tests/fuzz/run.sh 60 jsonl
 */
#include "fuzz.h"
#include "tally/codec.h"
#include "tally/codec_json.h"

static void encode(msgpack_sbuffer *sb, char schema, const tally_codec_msg *m)
{
	if (schema == 'c')
		tally_codec_encode_command(sb, &m->command);
	else if (schema == 'r')
		tally_codec_encode_rated(sb, &m->rated);
	else
		tally_codec_encode_usage(sb, &m->usage);
}

static json_t *to_json(char schema, const tally_codec_msg *m)
{
	if (schema == 'c')
		return tally_codec_command_to_json(&m->command);
	if (schema == 'r')
		return tally_codec_rated_to_json(&m->rated);
	return tally_codec_usage_to_json(&m->usage);
}

static void one_line(char schema, const char *line, size_t n)
{
	tally_codec_msg m, m2;
	tally_codec_error err;
	json_t *obj, *obj2, *back;
	msgpack_sbuffer a, b;
	char *text;

	if (tally_codec_json_line(&m, schema, line, n, &obj, &err) != 0) {
		if (err.reason == NULL || obj != NULL)
			abort();
		return;
	}
	back = to_json(schema, &m);
	text = json_dumps(back, JSON_COMPACT);
	if (text == NULL)
		abort();
	if (tally_codec_json_line(&m2, schema, text, strlen(text), &obj2,
				  &err) != 0)
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
	json_decref(obj2);
	json_decref(obj);
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
