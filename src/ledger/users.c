/*
 * users.c - a batch's active users: the distinct (tenant, open period,
 * subject) of its accepted events, found in memory, as the array
 * parameters of the totals statement (totals_outbox.c), which inserts them
 * into tenant_period_users with ON CONFLICT DO NOTHING and counts the new
 * ones into tenant_period_usage.users, in the batch's transaction.
 *
 * Only events that passed the dedupe get here, so a re-sent or replayed
 * event adds no user; events without a subject count none; closed periods
 * are left alone (their invoice is out), as for distinct workflows.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* tenant, period and subject of an item, hashed as one key */
static uint64_t user_hash(const item *it)
{
	uint8_t k[24];
	const tally_str *s = &it->re.ev.subject;

	memcpy(k, it->key, 16);
	memcpy(k + 16, &it->ps, 8);
	return tally_hash_bytes(k, sizeof(k)) ^
	       (tally_hash_bytes((const uint8_t *)s->ptr, s->len) *
		UINT64_C(0x9e3779b97f4a7c15));
}

static bool same_user(const item *a, const item *b)
{
	return a->ps == b->ps && a->re.ev.subject.len == b->re.ev.subject.len &&
	       memcmp(a->key, b->key, 16) == 0 &&
	       memcmp(a->re.ev.subject.ptr, b->re.ev.subject.ptr,
		      a->re.ev.subject.len) == 0;
}

/*
 * Open-addressing table of item indexes + 1 (0 = empty), twice the batch
 * at least; exact: a hash match is confirmed by comparing the subjects.
 * Returns true when it is the first item of its user in the batch.
 */
static bool first_of_user(tally_agg *agg, size_t i)
{
	const item *it = &agg->items[i];
	size_t m = agg->us_cap - 1, s = (size_t)user_hash(it) & m;

	for (;; s = (s + 1) & m) {
		uint32_t v = agg->us_idx[s];

		if (v == 0) {
			agg->us_idx[s] = (uint32_t)i + 1;
			return true;
		}
		if (same_user(&agg->items[v - 1], it))
			return false;
	}
}

static void reset_table(tally_agg *agg)
{
	size_t cap = 16;

	while (cap < agg->n * 2)
		cap *= 2;
	if (agg->us_cap < cap) {
		free(agg->us_idx);
		agg->us_idx = tally_xcalloc(cap, sizeof(*agg->us_idx));
		agg->us_cap = cap;
	} else {
		memset(agg->us_idx, 0, agg->us_cap * sizeof(*agg->us_idx));
	}
}

void agg_collect_users(tally_agg *agg)
{
	tally_strbuf *t = &agg->us_t, *p = &agg->us_p, *s = &agg->us_s;
	size_t i, n = 0;
	bool any = false;

	tally_strbuf_reset(t);
	tally_strbuf_reset(p);
	tally_strbuf_reset(s);
	tally_strbuf_puts(t, "{");
	tally_strbuf_puts(p, "{");
	tally_strbuf_puts(s, "{");
	for (i = 0; i < agg->nsorted && !any; i++)
		any = agg->sorted[i]->re.ev.subject.len > 0;
	if (any)
		reset_table(agg);
	/* in key order (tenant first): the inserts stay on the leaf pages
	 * of one tenant after another instead of hopping between tenants */
	for (i = 0; any && i < agg->nsorted; i++) {
		const item *it = agg->sorted[i];
		const tally_str *sub = &it->re.ev.subject;

		if (it->status != ST_OK || it->closed || sub->len == 0 ||
		    !first_of_user(agg, (size_t)(it - agg->items)) ||
		    agg_known(agg, TALLY_KNOWN_USER, it, sub))
			continue;
		agg_uuid_arr(t, it->key, n == 0);
		tally_strbuf_printf(p, "%s%" PRId64, n ? "," : "", it->ps);
		if (n > 0)
			tally_strbuf_add(s, ",", 1);
		tally_strbuf_pg_array_elem(s, sub->ptr, sub->len);
		n++;
	}
	tally_strbuf_puts(t, "}");
	tally_strbuf_puts(p, "}");
	tally_strbuf_puts(s, "}");
}

void agg_users_free(tally_agg *agg)
{
	tally_strbuf_free(&agg->us_t);
	tally_strbuf_free(&agg->us_p);
	tally_strbuf_free(&agg->us_s);
	free(agg->us_idx);
	agg->us_idx = NULL;
	agg->us_cap = 0;
}
