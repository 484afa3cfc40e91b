/*
 * gen.c - deterministic workload generator (tally/gen.h). Unique event u
 * is derived from splitmix64(seed, u) alone, so the generator keeps no
 * history: a duplicate re-derives an earlier u, and totals are summed as
 * unique events are first emitted. Integer arithmetic only.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/gen.h"

#include "codec_int.h"
#include "tally/money.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define PICO INT64_C(1000000000000)

const char *const tally_gen_default_models[] = {
	"openai:gpt-4o",
	"openai:gpt-4o-mini",
	"anthropic:claude-3-5-sonnet-20241022",
	"anthropic:claude-3-5-haiku-20241022",
	"google:gemini-1.5-pro",
	"google:gemini-1.5-flash",
	NULL,
};

typedef struct model {
	char *provider;
	char *model;
	char *full;
} model;

typedef struct totals {
	int64_t events, ai_requests, input, output, cache_read, cache_write;
	int64_t wf_exec, wf_steps, complexity, api_calls, storage;
} totals;

typedef struct mtotals {
	int64_t requests, input, output, cache_read, cache_write;
} mtotals;

struct tally_gen {
	tally_gen_opts o;
	model *models;
	size_t nmodels;
	uint64_t emitted, unique;
	totals *tot;   /* per tenant */
	mtotals *mtot; /* per tenant x model, NULL when too big */
	char id[64], source[40], subject[24], wf[24];
};

static uint64_t splitmix(uint64_t x)
{
	x += UINT64_C(0x9e3779b97f4a7c15);
	x = (x ^ (x >> 30)) * UINT64_C(0xbf58476d1ce4e5b9);
	x = (x ^ (x >> 27)) * UINT64_C(0x94d049bb133111eb);
	return x ^ (x >> 31);
}

/* A small stream: state advanced by the golden gamma each draw. */
typedef struct rng {
	uint64_t s;
} rng;

static uint64_t next(rng *r)
{
	r->s += UINT64_C(0x9e3779b97f4a7c15);
	return splitmix(r->s);
}

static uint64_t below(rng *r, uint64_t n)
{
	return n == 0 ? 0 : next(r) % n;
}

static bool chance(rng *r, int64_t frac_pico)
{
	return frac_pico > 0 && (int64_t)(next(r) % (uint64_t)PICO) < frac_pico;
}

void tally_gen_opts_init(tally_gen_opts *o)
{
	memset(o, 0, sizeof(*o));
	o->events = 1000;
	o->tenants = 10;
	o->from_ms = INT64_C(1761955200000); /* 2025-11-01T00:00:00Z */
	o->to_ms = INT64_C(1764547200000);   /* 2025-12-01T00:00:00Z */
	o->seed = 1;
	o->mix[TALLY_METER_AI_TOKENS] = 70 * PICO;
	o->mix[TALLY_METER_WORKFLOW] = 20 * PICO;
	o->mix[TALLY_METER_STORAGE] = 2 * PICO;
	o->mix[TALLY_METER_API_CALL] = 8 * PICO;
}

int tally_gen_new(tally_gen **out, const tally_gen_opts *o, tally_error *err)
{
	tally_gen *g;
	const char *const *list = o->models != NULL ?
					  (const char *const *)o->models :
					  tally_gen_default_models;
	size_t n = o->models != NULL ? o->nmodels : 0, i;
	int64_t msum = 0;

	if (o->models == NULL)
		while (list[n] != NULL)
			n++;
	for (i = 1; i <= 4; i++) {
		if (o->mix[i] < 0)
			return tally_error_set(err, TALLY_EINVALID,
					       "negative mix weight");
		msum += o->mix[i];
	}
	if (o->tenants == 0 || o->to_ms <= o->from_ms || o->from_ms < 0 ||
	    n == 0 || msum <= 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "gen: need tenants >= 1, from < to, "
				       "at least one model and a non-zero mix");
	g = tally_xcalloc(1, sizeof(*g));
	g->o = *o;
	g->models = tally_xcalloc(n, sizeof(model));
	for (i = 0; i < n; i++) {
		const char *c = strchr(list[i], ':');

		if (c == NULL || !tally_gen_model_ok(list[i])) {
			g->nmodels = i;
			tally_gen_free(g);
			return tally_error_set(err, TALLY_EINVALID,
					       "model '%s' is not provider:model",
					       list[i]);
		}
		g->models[i].provider = tally_xstrndup(list[i],
						       (size_t)(c - list[i]));
		g->models[i].model = tally_xstrdup(c + 1);
		g->models[i].full = tally_xstrdup(list[i]);
	}
	g->nmodels = n;
	g->o.models = NULL;
	g->tot = tally_xcalloc(o->tenants, sizeof(totals));
	if ((uint64_t)o->tenants * n <= 2000000)
		g->mtot = tally_xcalloc((size_t)o->tenants * n,
					sizeof(mtotals));
	*out = g;
	return 0;
}

void tally_gen_tenant(const tally_gen *g, uint32_t i, uint8_t out[16])
{
	uint64_t a = splitmix(g->o.seed ^ UINT64_C(0x7e4a47) ^
			      ((uint64_t)i << 20));
	uint64_t b = splitmix(a);
	int k;

	for (k = 0; k < 8; k++) {
		out[k] = (uint8_t)(a >> (8 * k));
		out[8 + k] = (uint8_t)(b >> (8 * k));
	}
	out[6] = (uint8_t)((out[6] & 0x0f) | 0x40); /* version 4 */
	out[8] = (uint8_t)((out[8] & 0x3f) | 0x80); /* RFC 4122 variant */
}

/*
 * Event u's id: a UUIDv7 (canonical text) whose time is the event's time
 * t, as a producer makes it when the event happens; its 74 other bits a
 * function of (seed, u), so a duplicate keeps its id and ids never repeat.
 */
static void gen_uuid7(char out[37], uint64_t seed, uint64_t u, int64_t t)
{
	uint64_t a = splitmix(seed ^ UINT64_C(0x1d7e5) ^ splitmix(u));
	uint64_t b = splitmix(a ^ u);
	uint64_t ms = (uint64_t)t & ((UINT64_C(1) << 48) - 1);

	snprintf(out, 37, "%08llx-%04llx-7%03llx-%04llx-%012llx",
		 (unsigned long long)(ms >> 16),
		 (unsigned long long)(ms & 0xffff),
		 (unsigned long long)(a & 0xfff),
		 (unsigned long long)(0x8000 | ((a >> 12) & 0x3fff)),
		 (unsigned long long)(b & UINT64_C(0xffffffffffff)));
}

/* Content of unique event u: a pure function of (seed, u). */
static void derive(tally_gen *g, uint64_t u, tally_usage_event *ev,
		   uint32_t *tenant, size_t *mi)
{
	rng r = { splitmix(g->o.seed * UINT64_C(0x2545f4914f6cdd1d) + u) };
	uint64_t span = (uint64_t)(g->o.to_ms - g->o.from_ms), pick, acc;
	uint64_t total = g->o.events > 0 ? g->o.events : 1;
	int64_t t, back;
	int m;

	memset(ev, 0, sizeof(*ev));
	/* tenants: half of the events go to the first tenth (skew) */
	if ((next(&r) & 1) && g->o.tenants >= 10)
		*tenant = (uint32_t)below(&r, g->o.tenants / 10);
	else
		*tenant = (uint32_t)below(&r, g->o.tenants);
	tally_gen_tenant(g, *tenant, ev->tenant_id);

	/* in-order base time, then out-of-order / late shifts */
	t = g->o.from_ms + (int64_t)((unsigned __int128)span * (u % total) /
				     total);
	if (chance(&r, g->o.late_frac))
		back = 3600000 + (int64_t)below(&r, 3 * 86400000 - 3600000);
	else if (chance(&r, g->o.ooo_frac))
		back = 1000 + (int64_t)below(&r, 299000);
	else
		back = 0;
	t -= back;
	if (t < g->o.from_ms)
		t = g->o.from_ms;
	ev->time_ms = t;

	gen_uuid7(g->id, g->o.seed, u, t);
	ev->id.ptr = g->id;
	ev->id.len = (uint32_t)strlen(g->id);
	snprintf(g->source, sizeof(g->source), "workflow-engine/gen-%u",
		 (unsigned)(*tenant % 4));
	ev->source.ptr = g->source;
	ev->source.len = (uint32_t)strlen(g->source);
	snprintf(g->subject, sizeof(g->subject), "user-%u",
		 (unsigned)below(&r, 50));
	ev->subject.ptr = g->subject;
	ev->subject.len = (uint32_t)strlen(g->subject);

	acc = 0;
	for (m = 1; m <= 4; m++)
		acc += (uint64_t)g->o.mix[m];
	pick = below(&r, acc);
	for (m = 1; m < 4; m++) {
		if (pick < (uint64_t)g->o.mix[m])
			break;
		pick -= (uint64_t)g->o.mix[m];
	}
	ev->meter = (tally_meter)m;
	*mi = 0;
	switch (ev->meter) {
	case TALLY_METER_AI_TOKENS: {
		/* log-uniform-ish prompt sizes: 2^6 .. 2^17 tokens */
		int bits = 6 + (int)below(&r, 12);

		*mi = (size_t)below(&r, g->nmodels);
		ev->provider.ptr = g->models[*mi].provider;
		ev->provider.len = (uint32_t)strlen(ev->provider.ptr);
		ev->model.ptr = g->models[*mi].model;
		ev->model.len = (uint32_t)strlen(ev->model.ptr);
		ev->input_tokens = 16 + (int64_t)below(&r, UINT64_C(1) << bits);
		ev->output_tokens = 1 + (int64_t)below(&r, 4000);
		if (below(&r, 2) == 0)
			ev->cache_read_tokens = (int64_t)below(
				&r, (uint64_t)ev->input_tokens / 2 + 1);
		if (below(&r, 10) == 0)
			ev->cache_write_tokens = (int64_t)below(
				&r, (uint64_t)(ev->input_tokens -
					       ev->cache_read_tokens) / 4 + 1);
		snprintf(g->wf, sizeof(g->wf), "wf-%u",
			 (unsigned)below(&r, 200));
		ev->workflow_id.ptr = g->wf;
		ev->workflow_id.len = (uint32_t)strlen(g->wf);
		break;
	}
	case TALLY_METER_WORKFLOW:
		snprintf(g->wf, sizeof(g->wf), "wf-%u",
			 (unsigned)below(&r, 200));
		ev->workflow_id.ptr = g->wf;
		ev->workflow_id.len = (uint32_t)strlen(g->wf);
		ev->steps = 1 + (int64_t)below(&r, 50);
		ev->complexity = ev->steps * (1 + (int64_t)below(&r, 5));
		break;
	case TALLY_METER_STORAGE:
		ev->bytes = 1000000 + (int64_t)below(&r, UINT64_C(100000000000));
		break;
	default:
		ev->count = 1 + (int64_t)below(&r, 100);
		break;
	}
}

static void account(tally_gen *g, const tally_usage_event *ev,
		    uint32_t tenant, size_t mi)
{
	totals *t = &g->tot[tenant];

	t->events++;
	switch (ev->meter) {
	case TALLY_METER_AI_TOKENS:
		t->ai_requests++;
		t->input += ev->input_tokens;
		t->output += ev->output_tokens;
		t->cache_read += ev->cache_read_tokens;
		t->cache_write += ev->cache_write_tokens;
		if (g->mtot != NULL) {
			mtotals *m = &g->mtot[(size_t)tenant * g->nmodels + mi];

			m->requests++;
			m->input += ev->input_tokens;
			m->output += ev->output_tokens;
			m->cache_read += ev->cache_read_tokens;
			m->cache_write += ev->cache_write_tokens;
		}
		break;
	case TALLY_METER_WORKFLOW:
		t->wf_exec++;
		t->wf_steps += ev->steps;
		t->complexity += ev->complexity;
		break;
	case TALLY_METER_STORAGE:
		t->storage++;
		break;
	default:
		t->api_calls += ev->count;
		break;
	}
}

bool tally_gen_next(tally_gen *g, tally_usage_event *out, bool *is_dup)
{
	rng r = { splitmix(g->o.seed ^ UINT64_C(0xd1b54a32d192ed03) ^
			   g->emitted) };
	uint32_t tenant;
	size_t mi;
	bool dup;

	if (g->emitted >= g->o.events)
		return false;
	dup = g->unique > 0 && chance(&r, g->o.dup_frac);
	if (dup) {
		/* repeat one of the last 1000 unique events, as a retrying
		 * producer would */
		uint64_t window = g->unique < 1000 ? g->unique : 1000;

		derive(g, g->unique - 1 - below(&r, window), out, &tenant, &mi);
	} else {
		derive(g, g->unique, out, &tenant, &mi);
		account(g, out, tenant, mi);
		g->unique++;
	}
	g->emitted++;
	if (is_dup != NULL)
		*is_dup = dup;
	return true;
}

json_t *tally_gen_totals_json(const tally_gen *g)
{
	json_t *o = json_object(), *arr = json_array();
	uint32_t i;
	size_t m;

	json_object_set_new(o, "seed", json_integer((json_int_t)g->o.seed));
	json_object_set_new(o, "records", json_integer((json_int_t)g->emitted));
	json_object_set_new(o, "unique", json_integer((json_int_t)g->unique));
	json_object_set_new(o, "duplicates",
			    json_integer((json_int_t)(g->emitted - g->unique)));
	for (i = 0; i < g->o.tenants; i++) {
		const totals *t = &g->tot[i];
		json_t *e = json_object();
		uint8_t u[16];
		char txt[37];

		tally_gen_tenant(g, i, u);
		tally_uuid_fmt(txt, u);
		json_object_set_new(e, "tenant_id", json_string(txt));
#define SETI(k, v) json_object_set_new(e, k, json_integer((json_int_t)(v)))
		SETI("events", t->events);
		SETI("ai_requests", t->ai_requests);
		SETI("input_tokens", t->input);
		SETI("output_tokens", t->output);
		SETI("cache_read_tokens", t->cache_read);
		SETI("cache_write_tokens", t->cache_write);
		SETI("workflow_executions", t->wf_exec);
		SETI("workflow_steps", t->wf_steps);
		SETI("complexity_units", t->complexity);
		SETI("api_calls", t->api_calls);
		SETI("storage_snapshots", t->storage);
#undef SETI
		if (g->mtot != NULL) {
			json_t *bm = json_object();

			for (m = 0; m < g->nmodels; m++) {
				const mtotals *x =
					&g->mtot[(size_t)i * g->nmodels + m];
				json_t *mm;

				if (x->requests == 0)
					continue;
				mm = json_pack("{sIsIsIsIsI}", "requests",
					       (json_int_t)x->requests,
					       "input_tokens",
					       (json_int_t)x->input,
					       "output_tokens",
					       (json_int_t)x->output,
					       "cache_read_tokens",
					       (json_int_t)x->cache_read,
					       "cache_write_tokens",
					       (json_int_t)x->cache_write);
				json_object_set_new(bm, g->models[m].full, mm);
			}
			json_object_set_new(e, "by_model", bm);
		}
		json_array_append_new(arr, e);
	}
	json_object_set_new(o, "tenants", arr);
	return o;
}

/* The generator's strings are plain ASCII without quotes or backslashes
 * (ids, provider:model names from the caller are checked by the codec
 * when produced), so they are written as-is. */
size_t tally_gen_format_json(char *buf, size_t n, const tally_usage_event *ev)
{
	char tenant[37];
	int w;

	tally_uuid_fmt(tenant, ev->tenant_id);
	w = snprintf(buf, n,
		     "{\"id\":\"%.*s\",\"source\":\"%.*s\",\"type\":\"%s\","
		     "\"tenant_id\":\"%s\",\"time\":%lld,\"subject\":\"%.*s\","
		     "\"data\":{",
		     (int)ev->id.len, ev->id.ptr, (int)ev->source.len,
		     ev->source.ptr, tally_meter_name(ev->meter), tenant,
		     (long long)ev->time_ms, (int)ev->subject.len,
		     ev->subject.ptr);
	if (w < 0 || (size_t)w >= n)
		return 0;
	switch (ev->meter) {
	case TALLY_METER_AI_TOKENS:
		w += snprintf(buf + w, n - (size_t)w,
			      "\"provider\":\"%.*s\",\"model\":\"%.*s\","
			      "\"input_tokens\":%lld,\"output_tokens\":%lld,"
			      "\"cache_read_tokens\":%lld,"
			      "\"cache_write_tokens\":%lld,"
			      "\"workflow_id\":\"%.*s\"}}",
			      (int)ev->provider.len, ev->provider.ptr,
			      (int)ev->model.len, ev->model.ptr,
			      (long long)ev->input_tokens,
			      (long long)ev->output_tokens,
			      (long long)ev->cache_read_tokens,
			      (long long)ev->cache_write_tokens,
			      (int)ev->workflow_id.len, ev->workflow_id.ptr);
		break;
	case TALLY_METER_WORKFLOW:
		w += snprintf(buf + w, n - (size_t)w,
			      "\"workflow_id\":\"%.*s\",\"steps\":%lld,"
			      "\"complexity\":%lld}}",
			      (int)ev->workflow_id.len, ev->workflow_id.ptr,
			      (long long)ev->steps, (long long)ev->complexity);
		break;
	case TALLY_METER_STORAGE:
		w += snprintf(buf + w, n - (size_t)w, "\"bytes\":%lld}}",
			      (long long)ev->bytes);
		break;
	default:
		w += snprintf(buf + w, n - (size_t)w, "\"count\":%lld}}",
			      (long long)ev->count);
		break;
	}
	return (size_t)w < n ? (size_t)w : 0;
}

void tally_gen_free(tally_gen *g)
{
	size_t i;

	if (g == NULL)
		return;
	for (i = 0; i < g->nmodels; i++) {
		free(g->models[i].provider);
		free(g->models[i].model);
		free(g->models[i].full);
	}
	free(g->models);
	free(g->tot);
	free(g->mtot);
	free(g);
}

int tally_gen_parse_time(int64_t *out, const char *s)
{
	char buf[40];
	size_t n = strlen(s);

	if (n == 10 && s[4] == '-' && s[7] == '-') {
		snprintf(buf, sizeof(buf), "%sT00:00:00Z", s);
		s = buf;
		n = strlen(s);
	} else if (n > 0 && s[0] >= '0' && s[0] <= '9' &&
		   strchr(s, '-') == NULL) {
		return tally_parse_i64(out, s) == 0 && *out >= 0 ? 0 : -1;
	}
	return tally_codec__parse_rfc3339(out, s, (uint32_t)n);
}

int tally_gen_parse_frac(int64_t *out, const char *s)
{
	if (tally_money_parse(out, s, strlen(s)) != 0 || *out < 0 ||
	    *out > PICO)
		return -1;
	return 0;
}

int tally_gen_parse_mix(int64_t mix[5], const char *s)
{
	static const char *const names[] = { NULL, "ai", "workflow",
					     "storage", "api" };
	const char *p = s;

	memset(mix, 0, 5 * sizeof(mix[0]));
	while (*p != '\0') {
		const char *eq = strchr(p, '='), *end = strchr(p, ',');
		int m, found = 0;

		if (end == NULL)
			end = p + strlen(p);
		if (eq == NULL || eq > end)
			return -1;
		for (m = 1; m <= 4; m++) {
			if (strlen(names[m]) == (size_t)(eq - p) &&
			    memcmp(names[m], p, (size_t)(eq - p)) == 0) {
				if (tally_money_parse(&mix[m], eq + 1,
						      (size_t)(end - eq - 1)) ||
				    mix[m] < 0)
					return -1;
				found = 1;
			}
		}
		if (!found)
			return -1;
		p = *end == ',' ? end + 1 : end;
	}
	return 0;
}

bool tally_gen_model_ok(const char *s)
{
	const char *c = strchr(s, ':');
	size_t i, n = strlen(s);

	if (c == NULL || c == s || c[1] == '\0' || c - s > 64 ||
	    n - (size_t)(c - s) - 1 > TALLY_ID_MAX)
		return false;
	for (i = 0; i < n; i++) {
		char ch = s[i];

		if (!((ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
		      (ch >= '0' && ch <= '9') || strchr("._:/@+-", ch)))
			return false;
	}
	return true;
}
