/*
 * deltas.c - the batch's deltas pre-aggregated in C (hourly, open period,
 * closed-period adjustment): one row per key reaches PostgreSQL.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "base/calendar.h"

#include <assert.h>
#include <stdlib.h>
#include <string.h>

static void acc_reset(accmap *m, size_t hint)
{
	m->n = 0;
	if (m->cap < hint) {
		free(m->v);
		m->cap = hint;
		m->v = tally_xmalloc(m->cap * sizeof(acc));
	}
	tally_hashset_init(&m->h, hint);
}

static acc *acc_get(accmap *m, const uint8_t *tenant, int64_t t, int meter,
		    int32_t pid, int32_t mid)
{
	acc *a = &m->v[m->n];
	uint32_t k;

	assert(m->n < m->cap);
	memset(a, 0, sizeof(*a));
	memcpy(a->k.tenant, tenant, 16);
	a->k.t = t;
	a->k.meter = meter;
	a->k.provider_id = pid;
	a->k.model_id = mid;
	k = tally_hashset_put(&m->h, (const uint8_t *)m->v, sizeof(acc), sizeof(acc_key),
		     (uint32_t)m->n);
	if (k == (uint32_t)m->n)
		m->n++;
	return &m->v[k];
}

void agg_accumulate(tally_agg *agg)
{
	size_t i, hint = agg->n + 1;

	acc_reset(&agg->hourly, hint);
	acc_reset(&agg->period, hint);
	acc_reset(&agg->adj, hint);
	agg->nstorage = 0;
	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];
		const agg_event *ev = &it->re.ev;
		bool ai = ev->meter == TALLY_METER_AI_TOKENS;
		int32_t pid = ai ? it->provider_id : 0, mid = ai ? it->model_id : 0;
		int64_t q = agg_item_qty(ev);
		acc *h, *p;

		if (it->status != ST_OK)
			continue;
		if (ev->meter == TALLY_METER_STORAGE)
			agg->nstorage++;
		h = acc_get(&agg->hourly, it->key,
			    tally_floor_div(ev->time_ms, 3600000) * 3600000,
			    (int)ev->meter, pid, mid);
		h->events++;
		if (ev->meter == TALLY_METER_STORAGE)
			h->quantity = q > h->quantity ? q : h->quantity;
		else
			h->quantity += q;
		if (ai) {
			h->in += ev->input_tokens;
			h->out += ev->output_tokens;
			h->cr += ev->cache_read_tokens;
			h->cw += ev->cache_write_tokens;
			h->rs += ev->reasoning_tokens;
		}
		h->cost += it->re.cost;
		if (it->closed)
			p = acc_get(&agg->adj, it->key, it->ps,
				    (int)ev->meter, pid, mid);
		else
			p = acc_get(&agg->period, it->key, it->ps, 0, 0, 0);
		p->pe = it->pe;
		p->accepted++;
		p->events++;
		p->quantity += q;
		if (ai) {
			p->ai++;
			p->in += ev->input_tokens;
			p->out += ev->output_tokens;
			p->cr += ev->cache_read_tokens;
			p->cw += ev->cache_write_tokens;
			p->rs += ev->reasoning_tokens;
		} else if (ev->meter == TALLY_METER_WORKFLOW) {
			p->wf++;
			p->wu += q;
		} else if (ev->meter == TALLY_METER_API_CALL) {
			p->api += q;
		} else if (ev->meter == TALLY_METER_STORAGE) {
			p->ss++;
		}
		p->cost += it->re.cost;
	}
}
