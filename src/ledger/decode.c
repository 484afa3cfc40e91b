/*
 * decode.c - a batch decoded and classified (no I/O): rated events into
 * items with their dedupe key, dead letters for the undecodable and the
 * out-of-window, duplicates within the batch or committed lately.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "tally/codec.h"
#include "tally/dedupe_key.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/*
 * Dead-letter details live in one buffer per batch (offset 0 is ""), so an
 * item stays small: two batches of items are alive while the poll thread
 * gathers the next one (RSS).
 */
void agg_item_set_detail(tally_agg *agg, item *it, const char *fmt, ...)
{
	char buf[160];
	va_list ap;

	va_start(ap, fmt);
	vsnprintf(buf, sizeof(buf), fmt, ap);
	va_end(ap);
	it->detail = (uint32_t)agg->details.len;
	tally_strbuf_add(&agg->details, buf, strlen(buf) + 1);
}

const char *agg_item_detail(const tally_agg *agg, const item *it)
{
	return agg->details.p + it->detail;
}

static void decoded_reset(tally_agg_decoded *d)
{
	size_t k;

	for (k = 0; k < d->nblocks; k++)
		free(d->blocks[k]);
	d->nblocks = 0;
	d->n = 0;
}

static void to_item(agg_rated *out, const tally_rated_event *re)
{
	const tally_usage_event *ev = &re->ev;
	agg_event *o = &out->ev;

	o->provider = ev->provider;
	o->model = ev->model;
	o->workflow_id = ev->workflow_id;
	o->subject = ev->subject;
	o->time_ms = ev->time_ms;
	o->input_tokens = ev->input_tokens;
	o->output_tokens = ev->output_tokens;
	o->cache_read_tokens = ev->cache_read_tokens;
	o->cache_write_tokens = ev->cache_write_tokens;
	o->reasoning_tokens = ev->reasoning_tokens;
	o->steps = ev->steps;
	o->complexity = ev->complexity;
	o->bytes = ev->bytes;
	o->count = ev->count;
	o->meter = ev->meter;
	out->cost = re->cost;
	out->price_id = re->price_id;
	out->unpriced = re->unpriced;
}

void tally_agg_decode_range(tally_agg_decoded *d, const tally_agg_msg *msgs,
			    size_t from, size_t to)
{
	tally_rated_event re;
	size_t i;

	if (from == 0)
		decoded_reset(d);
	d->ordered = false;
	if (d->cap < to) {
		size_t cap = d->cap ? d->cap : 1024;

		while (cap < to)
			cap *= 2;
		d->items = tally_xrealloc(d->items, cap * sizeof(item));
		if (d->errs != NULL) {
			d->errs = tally_xrealloc(d->errs, cap * sizeof(*d->errs));
			memset(d->errs + d->cap, 0,
			       (cap - d->cap) * sizeof(*d->errs));
		}
		d->cap = cap;
	}
	d->n = to;
	d->msgs = msgs;
	for (i = from; i < to; i++) {
		const tally_agg_msg *m = &msgs[i];
		item *it = &d->items[i];
		tally_codec_error ce;

		memset(it, 0, sizeof(*it));
		memset(&ce, 0, sizeof(ce));
		if (tally_codec_decode_rated(&re, m->payload, m->len, &ce) !=
		    0) {
			if (d->errs == NULL)
				d->errs = tally_xcalloc(d->cap, sizeof(*d->errs));
			d->errs[i] = ce;
			it->bad = true;
			continue;
		}
		memcpy(it->key, re.ev.tenant_id, 16);
		(void)tally_dedupe_key(it->key + 16, re.ev.source.ptr,
				       re.ev.source.len, re.ev.id.ptr,
				       re.ev.id.len, d->timeled_from_ms);
		it->khash = (uint32_t)tally_hash_bytes(it->key, 32);
		to_item(&it->re, &re);
	}
}

void tally_agg_decode(tally_agg_decoded *d, const tally_agg_msg *msgs,
		      size_t n)
{
	tally_agg_decode_range(d, msgs, 0, n);
}

tally_agg_decoded *tally_agg_decoded_new(void)
{
	tally_agg_decoded *d = tally_xcalloc(1, sizeof(tally_agg_decoded));

	d->timeled_from_ms = TALLY_DEDUPE_TIMELED_ALWAYS;
	return d;
}

void tally_agg_decoded_use(tally_agg_decoded *d, const tally_agg *agg)
{
	d->timeled_from_ms = agg->timeled_from_ms;
}

void tally_agg_decoded_free(tally_agg_decoded *d)
{
	if (d == NULL)
		return;
	decoded_reset(d);
	free(d->blocks);
	free(d->items);
	free(d->errs);
	free(d->order);
	free(d);
}

/*
 * The strings of one range, each distinct value copied once: a batch's
 * providers, models, workflows and users repeat (a few models, a
 * tenant's users), and two batches of them are alive at a time. A
 * direct-mapped table of the values copied so far; a collision only
 * copies again.
 */
#define INTERN_SLOTS 512

typedef struct interned {
	const char *p;
	size_t len;
} interned;

/* the slot of s's value: holding it already (a string of the range) or
 * to be filled */
static interned *intern_slot_of(interned *tab, const tally_str *s,
				bool *seen)
{
	interned *e = &tab[tally_hash_bytes((const uint8_t *)s->ptr, s->len) %
			   INTERN_SLOTS];

	*seen = e->p != NULL && e->len == s->len &&
		memcmp(e->p, s->ptr, s->len) == 0;
	return e;
}

static void detach_str(tally_str *s, char **pool, interned *tab)
{
	bool seen;
	interned *e;

	if (s->len == 0) {
		s->ptr = *pool;
		return;
	}
	e = intern_slot_of(tab, s, &seen);
	if (!seen) {
		memcpy(*pool, s->ptr, s->len);
		e->p = *pool;
		e->len = s->len;
		*pool += s->len;
	}
	s->ptr = e->p;
}

/* bytes s adds to the block: what detach_str will copy, as it decides */
static size_t detach_need(const tally_str *s, interned *tab)
{
	bool seen;
	interned *e;

	if (s->len == 0)
		return 0;
	e = intern_slot_of(tab, s, &seen);
	if (seen)
		return 0;
	e->p = s->ptr;
	e->len = s->len;
	return s->len;
}

size_t tally_agg_detach_range(const tally_agg *agg, tally_agg_decoded *d,
			      int64_t now_ms, bool *keep, size_t from,
			      size_t to)
{
	interned *tab = tally_xcalloc(INTERN_SLOTS, sizeof(*tab));
	size_t i, need = 0, n = 0;
	char *pool, *block;

	for (i = from; i < to; i++) {
		const agg_event *ev = &d->items[i].re.ev;

		/* the very test agg_classify() makes with the same now_ms */
		keep[i] = d->items[i].bad ||
			  agg_window_check(agg, &d->items[i], now_ms) != WIN_OK;
		if (!keep[i])
			need += detach_need(&ev->provider, tab) +
				detach_need(&ev->model, tab) +
				detach_need(&ev->workflow_id, tab) +
				detach_need(&ev->subject, tab);
	}
	/* a block per range: earlier ranges' strings never move; the same
	 * values in the same order make the same decisions again */
	if (d->nblocks == d->capblocks) {
		d->capblocks = d->capblocks ? d->capblocks * 2 : 16;
		d->blocks = tally_xrealloc(d->blocks,
					   d->capblocks * sizeof(*d->blocks));
	}
	pool = block = d->blocks[d->nblocks++] = tally_xmalloc(need + 1);
	memset(tab, 0, INTERN_SLOTS * sizeof(*tab));
	for (i = from; i < to; i++) {
		agg_event *ev = &d->items[i].re.ev;

		if (keep[i])
			continue;
		detach_str(&ev->provider, &pool, tab);
		detach_str(&ev->model, &pool, tab);
		detach_str(&ev->workflow_id, &pool, tab);
		detach_str(&ev->subject, &pool, tab);
		n++;
	}
	if ((size_t)(pool - block) != need)
		abort(); /* the two passes decided differently: a bug */
	free(tab);
	return n;
}

/* Where an item's event time and id time fall against the batch's clock. */
int agg_window_check(const tally_agg *agg, const item *it, int64_t now_ms)
{
	int64_t t = it->re.ev.time_ms;

	if (t < now_ms - agg->lateness_ms)
		return WIN_LATE;
	if (t > now_ms + agg->future_ms)
		return WIN_FUTURE;
	if (agg_id_before_window(agg, it, now_ms))
		return WIN_ID_OLD;
	if (agg_id_in_future(agg, it, now_ms))
		return WIN_ID_FUTURE;
	return WIN_OK;
}

/*
 * Statuses of the decoded batch: undecodable or outside the time window
 * (dead letters), repeated within the batch or committed lately (ring),
 * else ST_OK. Resets what a previous attempt at the batch changed.
 */
void agg_classify(tally_agg *agg)
{
	size_t i;

	tally_strbuf_reset(&agg->details);
	tally_strbuf_add(&agg->details, "", 1);
	tally_hashset_init(&agg->dedupe, agg->n);
	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];
		int64_t t;

		it->status = ST_OK;
		it->reason = NULL;
		it->detail = 0;
		/* provider_id and model_id stay: set by the decoder's
		 * thread ahead (tally_agg_prefetch_models) or by an earlier
		 * attempt at this batch, they name a pair registered for
		 * good (models.c); 0 is looked up */
		it->ps = it->pe = 0;
		it->closed = it->dup_db = it->dl_sent = false;
		if (it->bad) {
			const tally_codec_error *ce = &agg->dec->errs[i];

			it->status = ST_DLQ;
			it->reason = ce->reason ? ce->reason : "invalid";
			agg_item_set_detail(agg, it, "%.40s: %.110s", ce->field,
				   ce->detail);
			continue;
		}
		t = it->re.ev.time_ms;
		switch (agg_window_check(agg, it, agg->now_ms)) {
		case WIN_OK:
			break;
		case WIN_LATE:
			it->status = ST_DLQ;
			it->reason = "too_late";
			agg_item_set_detail(agg, it,
				 "event time is %" PRId64 " s before the "
				 "lateness window", (agg->now_ms -
				 agg->lateness_ms - t) / 1000);
			continue;
		case WIN_FUTURE:
			it->status = ST_DLQ;
			it->reason = "future_timestamp";
			agg_item_set_detail(agg, it,
				 "event time is %" PRId64 " s in the future",
				 (t - agg->now_ms) / 1000);
			continue;
		case WIN_ID_OLD:
			it->status = ST_DLQ;
			it->reason = "id_too_old";
			agg_item_set_detail(agg, it,
				 "event id time is %" PRId64 " s before the "
				 "dedupe window (id made %" PRId64 " s ago)",
				 (agg->now_ms - agg->lateness_ms - AGG_DEDUPE_MARGIN_MS -
				  agg_key_time_ms(it)) / 1000,
				 (agg->now_ms - agg_key_time_ms(it)) / 1000);
			continue;
		default: /* WIN_ID_FUTURE */
			it->status = ST_DLQ;
			it->reason = "id_in_future";
			agg_item_set_detail(agg, it,
				 "event id time is %" PRId64 " s in the future",
				 (agg_key_time_ms(it) - agg->now_ms) / 1000);
			continue;
		}
		if (tally_hashset_put_h(&agg->dedupe, (const uint8_t *)agg->items,
					sizeof(item), 32, (uint32_t)i,
					it->khash) != (uint32_t)i ||
		    agg_seen_has(&agg->seen, it))
			it->status = ST_DUP;
	}
}
