/*
 * fuzz_genai.c - libFuzzer target for the genai-prices data file reader:
 * the number-quoting scanner (tally_pb__quote_numbers) and the price book
 * built from its output (tally_pricebook_load_genai_buf), which
 * tally prices import also runs before writing anything. A book that loads
 * must rate a few fixed events with one of rating's documented results and
 * a cost that is the sum of its components.
 * Run: tests/fuzz/run.sh 60 genai
 */
#include "fuzz.h"
#include "pricing/pricebook_int.h"
#include "tally/pricebook.h"
#include "tally/rating.h"

static tally_str str(const char *s)
{
	tally_str t = { s, (uint32_t)strlen(s) };

	return t;
}

static void rate(const tally_pricebook *pb, tally_rate_ctx *ctx,
		 const char *provider, const char *model)
{
	tally_usage_event ev;
	tally_rated_event re;
	tally_error err;
	int64_t sum = 0;
	int rc, k;

	memset(&ev, 0, sizeof(ev));
	ev.id = str("fuzz-1");
	ev.source = str("fuzz");
	ev.time_ms = INT64_C(1773400000000) + (int64_t)strlen(model) * 3600000;
	ev.meter = TALLY_METER_AI_TOKENS;
	ev.provider = str(provider);
	ev.model = str(model);
	ev.input_tokens = 250000;
	ev.cache_read_tokens = 1000;
	ev.cache_write_tokens = 2000;
	ev.output_tokens = 70000;
	ev.reasoning_tokens = 5000;
	ev.has_reasoning = true;
	rc = tally_rate_event(&re, pb, &ev, ctx, &err);
	if (rc != 0 && rc != TALLY_ENOTFOUND && rc != TALLY_EINVALID &&
	    rc != TALLY_EOVERFLOW)
		abort();
	if (rc != 0)
		return;
	for (k = 0; k < TALLY_COMP_N; k++)
		sum += re.components[k];
	if (sum != re.cost)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const models[][2] = {
		{ "acme", "acme-plain" },   { "acme", "acme-tiered" },
		{ "acme", "acme-dated-1" }, { "acme", "acme-r12" },
		{ "resell", "acme-plain" }, { "openai", "gpt-4o" },
		{ "anthropic", "claude-3-5-sonnet-latest" },
	};
	tally_pricebook *pb = NULL;
	tally_rate_ctx *ctx;
	tally_error err;
	size_t qlen, i;
	char *q;

	q = tally_pb__quote_numbers((const char *)data, size, &qlen);
	if (qlen > size * 3)
		abort();
	free(q);
	if (tally_pricebook_load_genai_buf(&pb, (const char *)data, size,
					   &err) != 0)
		return 0;
	ctx = tally_rate_ctx_new();
	for (i = 0; i < sizeof(models) / sizeof(models[0]); i++)
		rate(pb, ctx, models[i][0], models[i][1]);
	tally_rate_ctx_free(ctx);
	tally_pricebook_free(pb);
	return 0;
}
