/*
 * rating.c - the pure rating function: usage event + price book -> exact
 * cost in pico-units, with genai-prices' semantics (see rating.h and
 * docs/pricing.md).
 *
 * Key decision: matching a (provider, model) pair against the book's rules
 * (case-insensitive compares, regexes, fallbacks) is slow and the result
 * depends only on the two strings and the book, so each thread keeps a
 * small open-addressing cache of resolved pairs in its tally_rate_ctx; the
 * hot path is one hash, one memcmp, a walk over at most a few conditional
 * prices and 64-bit multiply/divide-by-constant arithmetic (128-bit only
 * when a product would overflow).
 */
#define _POSIX_C_SOURCE 200809L
#include "pricebook_int.h"
#include "tally/money.h"
#include "tally/rating.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

_Static_assert((int)PB_K_INPUT == (int)TALLY_COMP_INPUT &&
		       (int)PB_K_CACHE_READ == (int)TALLY_COMP_CACHE_READ &&
		       (int)PB_K_CACHE_WRITE == (int)TALLY_COMP_CACHE_WRITE &&
		       (int)PB_K_OUTPUT == (int)TALLY_COMP_OUTPUT &&
		       (int)PB_K_REASONING == (int)TALLY_COMP_REASONING &&
		       (int)PB_K_REQUESTS == (int)TALLY_COMP_REQUESTS,
	       "price keys and cost components share their order");

#define CACHE_SLOTS 4096 /* power of two */
#define CACHE_KEY_MAX 192

typedef struct cache_slot {
	uint64_t hash;
	uint16_t plen, mlen; /* plen == 0xffff: empty */
	const pb_provider *prov;
	const pb_model *model; /* NULL: known not to be priced */
	char key[CACHE_KEY_MAX];
} cache_slot;

struct tally_rate_ctx {
	uint64_t serial; /* book the cache belongs to */
	const tally_pricebook *pb;
	size_t used;
	cache_slot *slots;
};

tally_rate_ctx *tally_rate_ctx_new(void)
{
	tally_rate_ctx *ctx = tally_xcalloc(1, sizeof(*ctx));
	size_t i;

	ctx->slots = tally_xcalloc(CACHE_SLOTS, sizeof(cache_slot));
	for (i = 0; i < CACHE_SLOTS; i++)
		ctx->slots[i].plen = 0xffff;
	return ctx;
}

void tally_rate_ctx_free(tally_rate_ctx *ctx)
{
	if (ctx == NULL)
		return;
	free(ctx->slots);
	free(ctx);
}

static void cache_clear(tally_rate_ctx *ctx)
{
	size_t i;

	for (i = 0; i < CACHE_SLOTS; i++)
		ctx->slots[i].plen = 0xffff;
	ctx->used = 0;
}

static uint64_t fnv1a(const char *a, size_t al, const char *b, size_t bl)
{
	uint64_t h = UINT64_C(14695981039346656037);
	size_t i;

	for (i = 0; i < al; i++)
		h = (h ^ (uint8_t)a[i]) * UINT64_C(1099511628211);
	h = (h ^ 0xff) * UINT64_C(1099511628211);
	for (i = 0; i < bl; i++)
		h = (h ^ (uint8_t)b[i]) * UINT64_C(1099511628211);
	return h;
}

/* ------------------------------------------------------------------ */
/* arithmetic                                                          */

int tally_rate__muldiv(int64_t *out, int64_t qty, int64_t price, int64_t div)
{
	return tally_money_muldiv(out, qty, price, div);
}

/* round_half_even(q * p / 10^6) for q, p >= 0; 64-bit fast path */
static inline int mul_mtok(int64_t *out, int64_t q, int64_t p)
{
	int64_t prod, d, r;

	if (TALLY_UNLIKELY(__builtin_mul_overflow(q, p, &prod)))
		return tally_money_muldiv(out, q, p, 1000000);
	d = prod / 1000000;
	r = prod % 1000000;
	if (r > 500000 || (r == 500000 && (d & 1)))
		d++;
	*out = d;
	return 0;
}

/* ------------------------------------------------------------------ */
/* resolved names, cached per thread                                   */

static void lookup(const tally_pricebook *pb, tally_rate_ctx *ctx,
		   const tally_str *provider, const tally_str *model,
		   const pb_provider **outp, const pb_model **outm)
{
	uint64_t h;
	size_t i, probes;
	cache_slot *s;

	if (ctx == NULL ||
	    (size_t)provider->len + model->len > CACHE_KEY_MAX) {
		tally_pb__resolve(pb, provider, model, outp, outm);
		return;
	}
	if (ctx->pb != pb || ctx->serial != pb->serial) {
		cache_clear(ctx);
		ctx->pb = pb;
		ctx->serial = pb->serial;
	}
	h = fnv1a(provider->ptr, provider->len, model->ptr, model->len);
	i = (size_t)h & (CACHE_SLOTS - 1);
	for (probes = 0; probes < 16; probes++) {
		s = &ctx->slots[(i + probes) & (CACHE_SLOTS - 1)];
		if (s->plen == 0xffff)
			break;
		if (s->hash == h && s->plen == provider->len &&
		    s->mlen == model->len &&
		    memcmp(s->key, provider->ptr, provider->len) == 0 &&
		    memcmp(s->key + provider->len, model->ptr, model->len) ==
			    0) {
			*outp = s->prov;
			*outm = s->model;
			return;
		}
	}
	tally_pb__resolve(pb, provider, model, outp, outm);
	if (probes == 16 || ctx->used > CACHE_SLOTS * 3 / 4) {
		cache_clear(ctx);
		s = &ctx->slots[i];
	}
	s->hash = h;
	s->plen = (uint16_t)provider->len;
	s->mlen = (uint16_t)model->len;
	memcpy(s->key, provider->ptr, provider->len);
	memcpy(s->key + provider->len, model->ptr, model->len);
	s->prov = *outp;
	s->model = *outm;
	ctx->used++;
}

/* ------------------------------------------------------------------ */
/* price selection                                                     */

static const pb_version *version_at(const pb_model *m, int64_t t)
{
	uint32_t i;

	for (i = m->nversions; i > 0; i--) {
		const pb_version *v = &m->versions[i - 1];
		if (t >= v->from_ms && t < v->to_ms)
			return v;
	}
	return NULL;
}

/* genai-prices: walk from the last conditional price; first match wins */
static const pb_cond *cond_at(const pb_version *v, int64_t t)
{
	uint32_t i;

	for (i = v->nconds; i > 0; i--) {
		const pb_cond *c = &v->conds[i - 1];

		if (c->kind == PB_C_NONE)
			return c;
		if (c->kind == PB_C_START) {
			if (t >= c->start_ms)
				return c;
		} else {
			int64_t sod = t % 86400000;

			if (sod < 0)
				sod += 86400000;
			if (c->tod_end < c->tod_start) {
				if (sod >= c->tod_start || sod < c->tod_end)
					return c;
			} else if (sod >= c->tod_start && sod < c->tod_end) {
				return c;
			}
		}
	}
	return &v->conds[0];
}

static inline int64_t price_for(const pb_price *p, int64_t input_tokens)
{
	int64_t v = p->base;
	uint32_t i;

	for (i = 0; i < p->ntiers; i++)
		if (input_tokens > p->tiers[i].start)
			v = p->tiers[i].price;
	return v;
}

static const pb_override *find_override(const tally_pricebook *pb,
					const uint8_t *tenant, tally_meter meter,
					const char *prov, const char *model,
					int64_t t)
{
	size_t lo = 0, hi = pb->noverrides, i;
	const pb_override *best = NULL;
	int best_score = -1;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (memcmp(pb->overrides[mid].tenant_id, tenant, 16) < 0)
			lo = mid + 1;
		else
			hi = mid;
	}
	for (i = lo; i < pb->noverrides &&
		     memcmp(pb->overrides[i].tenant_id, tenant, 16) == 0;
	     i++) {
		const pb_override *o = &pb->overrides[i];
		int score;

		if (t < o->from_ms || t >= o->to_ms)
			continue;
		if (o->meter != TALLY_METER_NONE && o->meter != meter)
			continue;
		if (o->provider != NULL &&
		    (prov == NULL || strcmp(o->provider, prov) != 0))
			continue;
		if (o->model != NULL &&
		    (model == NULL || strcmp(o->model, model) != 0))
			continue;
		score = o->specificity * 8 + (o->model ? 4 : 0) +
			(o->provider ? 2 : 0) +
			(o->meter != TALLY_METER_NONE ? 1 : 0);
		if (score > best_score) {
			best = o;
			best_score = score;
		}
	}
	return best;
}

static int rate_tokens(tally_rated_event *out, const pb_cond *c,
		       const tally_usage_event *ev, tally_error *err)
{
	int64_t in = ev->input_tokens, cr = ev->cache_read_tokens;
	int64_t cw = ev->cache_write_tokens, op = ev->output_tokens;
	int64_t rs = ev->has_reasoning ? ev->reasoning_tokens : 0;
	int64_t q[PB_K_N];
	int k, rc;

	if (TALLY_UNLIKELY(in < 0 || cr < 0 || cw < 0 || op < 0 || rs < 0 ||
			   cr > in || cw > in - cr || rs > op))
		return tally_error_set(err, TALLY_EINVALID,
				       "token counts: cache tokens exceed "
				       "input or reasoning exceeds output");
	/* leaf quantities: a kind without its own price stays inside the
	 * kind that contains it (genai-prices' unit lattice) */
	q[PB_K_CACHE_READ] = cr;
	q[PB_K_CACHE_WRITE] = cw;
	q[PB_K_REASONING] = rs;
	q[PB_K_INPUT] = in - (c->p[PB_K_CACHE_READ].set ? cr : 0) -
			(c->p[PB_K_CACHE_WRITE].set ? cw : 0);
	q[PB_K_OUTPUT] = op - (c->p[PB_K_REASONING].set ? rs : 0);
	for (k = 0; k < PB_K_REQUESTS; k++) {
		int64_t price, cost;

		if (!c->p[k].set || q[k] == 0)
			continue;
		price = c->any_tier ? price_for(&c->p[k], in) : c->p[k].base;
		rc = mul_mtok(&cost, q[k], price);
		if (rc != 0)
			return tally_error_set(err, TALLY_EOVERFLOW,
					       "cost overflow");
		out->components[k] = cost; /* PB_K_* == TALLY_COMP_* */
	}
	if (c->p[PB_K_REQUESTS].set) {
		int64_t price = c->any_tier ? price_for(&c->p[PB_K_REQUESTS], in)
					    : c->p[PB_K_REQUESTS].base;
		rc = tally_money_muldiv(&out->components[TALLY_COMP_REQUESTS],
					1, price, 1000);
		(void)rc; /* 1 * price / 1000 cannot overflow */
	}
	return 0;
}

static const pb_unit_price *unit_at(const tally_pricebook *pb,
				    tally_meter m, int64_t t)
{
	uint32_t i;

	for (i = pb->nunits; i > 0; i--) {
		const pb_unit_price *u = &pb->units[i - 1];
		if (u->meter == m && t >= u->from_ms && t < u->to_ms)
			return u;
	}
	return NULL;
}

/* The event has no price: marked unpriced, TALLY_ENOTFOUND. */
static int unpriced(tally_rated_event *out, const tally_usage_event *ev,
		    tally_error *err)
{
	const char *meter = tally_meter_name(ev->meter);

	out->unpriced = true;
	out->price_id = 0;
	return tally_error_set(err, TALLY_ENOTFOUND,
			       "no price for %s '%.*s' / '%.*s'",
			       meter ? meter : "?", (int)ev->provider.len,
			       ev->provider.ptr ? ev->provider.ptr : "",
			       (int)ev->model.len,
			       ev->model.ptr ? ev->model.ptr : "");
}

/* An ai.tokens event: the model's price in force (or the tenant's own). */
static int price_ai(tally_rated_event *out, tally_rate_detail *detail,
		    const tally_pricebook *pb, const tally_usage_event *ev,
		    tally_rate_ctx *ctx, const pb_override **ov,
		    int64_t *base_id, tally_error *err)
{
	const pb_provider *prov = NULL;
	const pb_model *model = NULL;
	const pb_version *ver;
	const pb_cond *c;
	int64_t t = ev->time_ms;

	lookup(pb, ctx, &ev->provider, &ev->model, &prov, &model);
	if (detail != NULL && prov != NULL)
		detail->provider_id = prov->id;
	if (model == NULL)
		return unpriced(out, ev, err);
	if (detail != NULL)
		detail->model_id = model->id;
	ver = version_at(model, t);
	if (ver == NULL)
		return unpriced(out, ev, err);
	c = cond_at(ver, t);
	out->price_id = *base_id = c->price_id;
	if (pb->noverrides > 0) {
		*ov = find_override(pb, ev->tenant_id, ev->meter, prov->id,
				    model->id, t);
		if (*ov != NULL && !(*ov)->is_multiplier) {
			c = &(*ov)->cond;
			out->price_id = (*ov)->id;
		}
	}
	return rate_tokens(out, c, ev, err);
}

/* A workflow, API or storage event: its meter's unit price. */
static int price_units(tally_rated_event *out, const tally_pricebook *pb,
		       const tally_usage_event *ev, const pb_override **ov,
		       int64_t *base_id, tally_error *err)
{
	const pb_unit_price *u = unit_at(pb, ev->meter, ev->time_ms);
	int64_t price, qty;

	if (u == NULL)
		return unpriced(out, ev, err);
	price = u->price;
	out->price_id = *base_id = u->price_id;
	if (pb->noverrides > 0) {
		*ov = find_override(pb, ev->tenant_id, ev->meter, NULL, NULL,
				    ev->time_ms);
		if (*ov != NULL && !(*ov)->is_multiplier) {
			if ((*ov)->has_unit) {
				price = (*ov)->unit_price;
				out->price_id = (*ov)->id;
			} else {
				*ov = NULL;
			}
		}
	}
	/* storage is a gauge: priced per GB-month by aggregation
	 * (tally_rate_storage_cost); the snapshot alone costs 0 */
	qty = ev->meter == TALLY_METER_WORKFLOW ? ev->complexity
	      : ev->meter == TALLY_METER_API_CALL ? ev->count
						   : 0;
	if (qty < 0)
		return tally_error_set(err, TALLY_EINVALID, "negative quantity");
	if (tally_money_muldiv(&out->components[TALLY_COMP_UNITS], qty, price,
			       1) != 0)
		return tally_error_set(err, TALLY_EOVERFLOW, "cost overflow");
	return 0;
}

int tally_rate_event_ex(tally_rated_event *out, tally_rate_detail *detail,
			const tally_pricebook *pb, const tally_usage_event *ev,
			tally_rate_ctx *ctx, tally_error *err)
{
	const pb_override *ov = NULL;
	int64_t sum = 0, base_id = 0;
	int k, rc;

	memset(out, 0, sizeof(*out));
	out->ev = *ev;
	memcpy(out->currency, pb->currency, 4);
	if (detail != NULL)
		memset(detail, 0, sizeof(*detail));
	if (ev->meter == TALLY_METER_AI_TOKENS)
		rc = price_ai(out, detail, pb, ev, ctx, &ov, &base_id, err);
	else if (ev->meter == TALLY_METER_WORKFLOW ||
		 ev->meter == TALLY_METER_API_CALL ||
		 ev->meter == TALLY_METER_STORAGE)
		rc = price_units(out, pb, ev, &ov, &base_id, err);
	else
		return tally_error_set(err, TALLY_EINVALID, "unknown meter");
	if (rc != 0)
		return rc;
	if (detail != NULL) {
		detail->base_price_id = base_id;
		detail->override_id = ov != NULL ? ov->id : 0;
	}
	for (k = 0; k < TALLY_COMP_N; k++) {
		if (ov != NULL && ov->is_multiplier && out->components[k] != 0 &&
		    tally_money_muldiv(&out->components[k], out->components[k],
				       ov->multiplier,
				       TALLY_PICO_PER_UNIT) != 0)
			return tally_error_set(err, TALLY_EOVERFLOW,
					       "cost overflow");
		if (tally_money_add(&sum, sum, out->components[k]) != 0)
			return tally_error_set(err, TALLY_EOVERFLOW,
					       "cost overflow");
	}
	out->cost = sum;
	return 0;
}

int tally_rate_event(tally_rated_event *out, const tally_pricebook *pb,
		     const tally_usage_event *ev, tally_rate_ctx *ctx,
		     tally_error *err)
{
	return tally_rate_event_ex(out, NULL, pb, ev, ctx, err);
}

int tally_rate_storage_cost(int64_t *out, int64_t *price_id,
			    const tally_pricebook *pb,
			    const uint8_t *tenant_id, int64_t time_ms,
			    int64_t bytes, int64_t duration_ms,
			    tally_error *err)
{
	const pb_unit_price *u = unit_at(pb, TALLY_METER_STORAGE, time_ms);
	const pb_override *ov = NULL;
	int64_t price;
	unsigned __int128 num, den, q, r;

	if (u == NULL)
		return tally_error_set(err, TALLY_ENOTFOUND,
				       "no storage price");
	price = u->price;
	*price_id = u->price_id;
	if (tenant_id != NULL && pb->noverrides > 0)
		ov = find_override(pb, tenant_id, TALLY_METER_STORAGE, NULL,
				   NULL, time_ms);
	if (ov != NULL && !ov->is_multiplier && ov->has_unit) {
		price = ov->unit_price;
		*price_id = ov->id;
	}
	if (bytes < 0 || duration_ms < 0 || bytes > TALLY_MAX_QUANTITY ||
	    duration_ms > INT64_C(1) << 40)
		return tally_error_set(err, TALLY_EINVALID,
				       "bad storage quantity");
	/* bytes*ms <= 2^40*2^40; times price (< 2^63) can overflow 128
	 * bits, so divide in two exact steps: (bytes*ms) = a*den + b */
	den = (unsigned __int128)TALLY_STORAGE_GB * TALLY_STORAGE_MONTH_MS;
	num = (unsigned __int128)bytes * (unsigned __int128)duration_ms;
	{
		unsigned __int128 a = num / den, b = num % den;
		unsigned __int128 hi = a * (unsigned __int128)price;
		unsigned __int128 lo = b * (unsigned __int128)price;

		q = hi + lo / den;
		r = lo % den;
	}
	if (r * 2 > den || (r * 2 == den && (q & 1)))
		q++;
	if (q > (unsigned __int128)INT64_MAX)
		return tally_error_set(err, TALLY_EOVERFLOW, "cost overflow");
	*out = (int64_t)q;
	if (ov != NULL && ov->is_multiplier &&
	    tally_money_muldiv(out, *out, ov->multiplier,
			       TALLY_PICO_PER_UNIT) != 0)
		return tally_error_set(err, TALLY_EOVERFLOW, "cost overflow");
	return 0;
}
