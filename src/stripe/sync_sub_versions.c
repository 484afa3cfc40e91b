/*
 * sync_sub_versions.c - the history of a Stripe subscription for finance:
 * each version seen (webhook or API read), with its items (price, quantity,
 * billing interval) and discounts (coupon, duration, start, end), recorded
 * once, even when it arrives after a newer version (MRR of a past month is
 * computed from the version in force then; docs/finance.md). A malformed
 * item or discount is left out and logged; the version is kept. Discounts
 * a webhook names only by id are read from Stripe before the transaction.
 */
#define _POSIX_C_SOURCE 200809L
#include "stripe/sync_int.h"
#include "tally/log.h"
#include "tally/money.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

/* items and discounts kept per version: more is not a real subscription */
#define MAX_ENTRIES 100

/* The subscription version's key, as text parameters. */
typedef struct ver_key {
	const char *tenant, *sub;
	ss_numbuf as_of, rank;
} ver_key;

/* An exact decimal from a JSON number or string ("2000", "12.5",
 * 33.33): written canonically into out, or NULL when not one. Reals are
 * read at 15 significant digits, the precision a decimal survives a
 * double with. */
static const char *jdecimal(char *out, size_t n, const json_t *v)
{
	char tmp[64];
	int64_t pico;

	if (json_is_integer(v)) {
		if (json_integer_value(v) < 0)
			return NULL;
		snprintf(out, n, "%lld", (long long)json_integer_value(v));
		return out;
	}
	if (json_is_real(v))
		snprintf(tmp, sizeof(tmp), "%.15g", json_real_value(v));
	else if (json_is_string(v) && json_string_length(v) < sizeof(tmp))
		snprintf(tmp, sizeof(tmp), "%s", json_string_value(v));
	else
		return NULL;
	if (tally_money_parse(&pico, tmp, strlen(tmp)) != 0 || pico < 0)
		return NULL;
	tally_money_fmt(out, n, pico);
	return out;
}

static bool one_of(const char *s, const char *const *set)
{
	for (; s && *set; set++)
		if (strcmp(s, *set) == 0)
			return true;
	return false;
}

/* A positive integer field in [1, max] as text, else NULL. */
static const char *jcount(ss_numbuf b, const json_t *o, const char *k,
			  int64_t max)
{
	const char *s = tally_ss__jnum(b, o, k);
	int64_t v = tally_ss__to_i64(s);

	return s && v >= 1 && v <= max ? s : NULL;
}

/* A unix time Stripe could send (year 1970 to 9999) as text, else NULL. */
static const char *jtime(ss_numbuf b, const json_t *o, const char *k)
{
	const char *s = tally_ss__jnum(b, o, k);
	int64_t v = tally_ss__to_i64(s);

	return s && v >= 0 && v <= INT64_C(253402300799) ? s : NULL;
}

/* A three-letter currency code, else NULL. */
static const char *currency3(const json_t *o, const char *k)
{
	const char *s = tally_stripe_jstr(o, k);

	return s && strlen(s) == 3 && strspn(s, "abcdefghijklmnopqrstuvwxyz"
				       "ABCDEFGHIJKLMNOPQRSTUVWXYZ") == 3
		? s : NULL;
}

static void skipped(const ver_key *k, const char *what, const char *id,
		    const char *why)
{
	tally_log(TALLY_WARN, "stripe.subscription_entry_skipped",
		  TALLY_KV_STR("subscription_id", k->sub),
		  TALLY_KV_STR("entry", what),
		  TALLY_KV_STR("id", id ? id : ""),
		  TALLY_KV_STR("reason", why));
}

static int record_item(tally_stripe_sync *ss, const ver_key *k,
		       const json_t *item, tally_error *err)
{
	static const char *const intervals[] = { "day", "week", "month",
						 "year", NULL };
	const json_t *price = json_object_get(item, "price");
	const json_t *rec = json_object_get(price, "recurring");
	const char *id = tally_stripe_jstr(item, "id");
	const char *interval = tally_stripe_jstr(rec, "interval");
	const char *usage = tally_stripe_jstr(rec, "usage_type");
	const char *amount, *qty;
	char dec[64];
	ss_numbuf qb, cb;
	const char *count;

	if (id == NULL || !json_is_object(price))
		return skipped(k, "item", id, "no id or price"), 0;
	qty = tally_ss__jnum(qb, item, "quantity");
	if (qty == NULL)
		qty = "1"; /* metered items carry no quantity */
	if (tally_ss__to_i64(qty) < 0)
		return skipped(k, "item", id, "negative quantity"), 0;
	amount = jdecimal(dec, sizeof(dec),
			  json_object_get(price, "unit_amount_decimal"));
	if (amount == NULL)
		amount = jdecimal(dec, sizeof(dec),
				  json_object_get(price, "unit_amount"));
	if (!one_of(interval, intervals))
		interval = NULL;
	count = interval ? jcount(cb, rec, "interval_count", 1000) : NULL;
	if (interval && count == NULL)
		return skipped(k, "item", id, "bad interval_count"), 0;
	return tally_ss__ex(ss, NULL, err,
		"INSERT INTO subscription_version_items (tenant_id, "
		"subscription_id, as_of, as_of_rank, item_id, price_id, "
		"quantity, unit_amount, currency, recurring_interval, "
		"interval_count, usage_type) VALUES ($1, $2, "
		"to_timestamp($3::bigint), $4::smallint, $5, $6, $7::bigint, "
		"$8::numeric, upper($9), $10, $11::integer, "
		"coalesce($12, 'licensed')) ON CONFLICT DO NOTHING",
		12, k->tenant, k->sub, k->as_of, k->rank, id,
		tally_stripe_jstr(price, "id"), qty, amount,
		currency3(price, "currency"), interval, count,
		usage && strcmp(usage, "metered") == 0 ? "metered" : NULL);
}

/* percent_off in (0, 100] */
static bool percent_ok(const char *pct)
{
	int64_t pico;

	return tally_money_parse(&pico, pct, strlen(pct)) == 0 && pico > 0 &&
	       pico <= 100 * TALLY_PICO_PER_UNIT;
}

/* A discount object (the coupon expanded, on the discount in API versions
 * before 2025 or under source.coupon after); one given only by id is
 * skipped: its coupon is not in the event. */
static int record_discount(tally_stripe_sync *ss, const ver_key *k,
			   const json_t *d, const char *item_id, int position,
			   tally_error *err)
{
	static const char *const durations[] = { "once", "repeating",
						 "forever", NULL };
	const json_t *coupon = json_object_get(d, "coupon");
	const char *id = tally_stripe_jstr(d, "id");
	const char *duration, *pct, *amt;
	char pbuf[64], abuf[64], pos[16];
	ss_numbuf sb, eb, mb;
	const char *start, *months;

	if (!json_is_object(coupon))
		coupon = tally_ss__jpath(d, "source", "coupon");
	if (id == NULL || !json_is_object(coupon))
		return skipped(k, "discount", id, "no coupon object"), 0;
	duration = tally_stripe_jstr(coupon, "duration");
	pct = jdecimal(pbuf, sizeof(pbuf), json_object_get(coupon,
							   "percent_off"));
	amt = json_is_integer(json_object_get(coupon, "amount_off"))
		? jdecimal(abuf, sizeof(abuf),
			   json_object_get(coupon, "amount_off")) : NULL;
	start = jtime(sb, d, "start");
	months = jcount(mb, coupon, "duration_in_months", 1200);
	if (!one_of(duration, durations) || start == NULL ||
	    (pct == NULL) == (amt == NULL) ||
	    (strcmp(duration, "repeating") == 0 && months == NULL))
		return skipped(k, "discount", id, "bad coupon"), 0;
	if (pct && !percent_ok(pct))
		return skipped(k, "discount", id, "percent_off out of range"),
		       0;
	snprintf(pos, sizeof(pos), "%d", position);
	return tally_ss__ex(ss, NULL, err,
		"INSERT INTO subscription_version_discounts (tenant_id, "
		"subscription_id, as_of, as_of_rank, discount_id, position, "
		"item_id, coupon_id, percent_off, amount_off, currency, "
		"duration, duration_in_months, starts_at, ends_at) VALUES ($1, "
		"$2, to_timestamp($3::bigint), $4::smallint, $5, $6::integer, "
		"$7, $8, $9::numeric, $10::numeric, upper($11), $12, "
		"$13::integer, to_timestamp($14::bigint), "
		"to_timestamp($15::bigint)) ON CONFLICT DO NOTHING",
		15, k->tenant, k->sub, k->as_of, k->rank, id, pos, item_id,
		tally_stripe_jstr(coupon, "id"), pct, amt,
		currency3(coupon, "currency"), duration,
		strcmp(duration, "repeating") == 0 ? months : NULL, start,
		jtime(eb, d, "end"));
}

/* The discounts of an array (objects; ids alone are skipped). */
static int record_discounts(tally_stripe_sync *ss, const ver_key *k,
			    const json_t *arr, const char *item_id,
			    int *position, tally_error *err)
{
	const json_t *d;
	size_t i;
	int rc = 0;

	json_array_foreach(arr, i, d) {
		if (i >= MAX_ENTRIES || rc != 0)
			break;
		if (json_is_object(d))
			rc = record_discount(ss, k, d, item_id, (*position)++,
					     err);
		else
			skipped(k, "discount", json_string_value(d),
				"not expanded");
	}
	return rc;
}

static bool has_bare_id(const json_t *arr);

/* Whether sub or one of its items names a discount by id only. */
static bool sub_has_bare_id(const json_t *sub)
{
	const json_t *it;
	size_t i;
	bool bare = has_bare_id(json_object_get(sub, "discounts"));

	json_array_foreach(tally_ss__jpath(sub, "items", "data"), i, it)
		bare = bare || has_bare_id(json_object_get(it, "discounts"));
	return bare;
}

int tally_ss__record_sub_version(tally_stripe_sync *ss, const ss_tenant *t,
				 const json_t *sub, int64_t as_of, int rank,
				 tally_error *err)
{
	const json_t *items = tally_ss__jpath(sub, "items", "data");
	const json_t *item, *legacy;
	PGresult *res = NULL;
	ver_key k;
	ss_numbuf anchor;
	size_t i;
	int rc, position = 0;

	k.tenant = t->id;
	k.sub = tally_stripe_jstr(sub, "id");
	tally_ss__i64s(k.as_of, as_of);
	tally_ss__i64s(k.rank, rank);
	/* an API read as of now whose discounts stayed ids would be the
	 * version in force without them: not recorded (events are, at their
	 * own time, the ids Stripe no longer has skipped) */
	if (rank == API_READ_RANK && sub_has_bare_id(sub))
		return skipped(&k, "subscription_version", k.sub,
			       "discounts not expanded"), 0;
	rc = tally_ss__ex(ss, &res, err,
		"INSERT INTO subscription_versions (tenant_id, subscription_id, "
		"as_of, as_of_rank, status, currency, billing_cycle_anchor) "
		"VALUES ($1, $2, to_timestamp($3::bigint), $4::smallint, $5, "
		"upper($6), to_timestamp($7::bigint)) ON CONFLICT DO NOTHING "
		"RETURNING 1",
		7, k.tenant, k.sub, k.as_of, k.rank,
		tally_stripe_jstr(sub, "status"),
		currency3(sub, "currency"),
		jtime(anchor, sub, "billing_cycle_anchor"));
	if (rc != 0 || PQntuples(res) == 0) {
		PQclear(res); /* recorded before: the same version again */
		return rc;
	}
	PQclear(res);
	json_array_foreach(items, i, item) {
		if (i >= MAX_ENTRIES || rc != 0)
			break;
		rc = record_item(ss, &k, item, err);
		if (rc == 0)
			rc = record_discounts(ss, &k,
					      json_object_get(item, "discounts"),
					      tally_stripe_jstr(item, "id"),
					      &position, err);
	}
	if (rc == 0)
		rc = record_discounts(ss, &k, json_object_get(sub, "discounts"),
				      NULL, &position, err);
	/* API versions before 2025: the one discount, also in discounts[] */
	legacy = json_object_get(sub, "discount");
	if (rc == 0 && json_is_object(legacy))
		rc = record_discount(ss, &k, legacy, NULL, position, err);
	return rc;
}

/* Whether an array of discounts holds an id without its object. */
static bool has_bare_id(const json_t *arr)
{
	const json_t *d;
	size_t i;

	json_array_foreach(arr, i, d)
		if (json_is_string(d))
			return true;
	return false;
}

/* Replace the bare ids of arr by the objects of the same id in byid. */
static void fill_ids(json_t *arr, const json_t *byid)
{
	json_t *d;
	size_t i;

	json_array_foreach(arr, i, d) {
		const json_t *o = json_is_string(d)
			? json_object_get(byid, json_string_value(d)) : NULL;

		if (o != NULL)
			json_array_set(arr, i, (json_t *)o);
	}
}

static void index_discounts(json_t *byid, const json_t *arr)
{
	const json_t *d;
	size_t i;

	json_array_foreach(arr, i, d)
		if (json_is_object(d) && tally_stripe_jstr(d, "id"))
			json_object_set(byid, tally_stripe_jstr(d, "id"),
					(json_t *)d);
}

/*
 * Webhooks carry a subscription's discounts as ids (Stripe expands them
 * only on request): before the transaction, the subscription is read with
 * its discounts expanded and each id of the event gets its object (a
 * discount's coupon, start and end do not change). An id Stripe no longer
 * has stays bare and is skipped when recorded; a transient failure
 * delivers the event again. API answers (event_id NULL) are read the
 * same way: the calls that return a subscription do not expand it.
 */
int tally_ss__expand_sub_discounts(tally_stripe_sync *ss, json_t *sub,
				   const char *event_id, tally_error *err)
{
	json_t *items = (json_t *)tally_ss__jpath(sub, "items", "data");
	json_t *it, *fetched = NULL, *params, *byid;
	const char *id = tally_stripe_jstr(sub, "id");
	tally_stripe_error se;
	PGresult *res = NULL;
	bool seen;
	char path[320];
	size_t i;
	int rc;

	if (!sub_has_bare_id(sub) || ss->stripe == NULL || id == NULL ||
	    !tally_stripe_id_valid(id, "sub_"))
		return 0;
	/* a redelivered event is a duplicate: nothing to read for it; one
	 * left for an unknown tenant is processed again, so read */
	if (event_id != NULL) {
		rc = tally_ss__ex(ss, &res, err, "SELECT 1 FROM stripe_events "
				  "WHERE event_id = $1 AND outcome <> "
				  "'unknown_tenant'", 1, event_id);
		seen = rc == 0 && PQntuples(res) > 0;
		PQclear(res);
		if (rc != 0 || seen)
			return rc;
	}
	snprintf(path, sizeof(path), "/v1/subscriptions/%s", id);
	params = json_pack("{s:[s,s]}", "expand", "discounts",
			   "items.data.discounts");
	rc = tally_stripe_request(ss->stripe, &fetched, "GET", path, params,
				  NULL, &se, err);
	json_decref(params);
	if (rc == TALLY_ENOTFOUND || rc == TALLY_EINVALID) {
		tally_log(TALLY_WARN, "stripe.subscription_discounts_unavailable",
			  TALLY_KV_STR("event_id", event_id),
			  TALLY_KV_STR("subscription_id", id),
			  TALLY_KV_INT("http_status", se.http_status));
		return 0;
	}
	if (rc != 0)
		return rc == TALLY_ERROR ? TALLY_ETRANSIENT : rc;
	byid = json_object();
	index_discounts(byid, json_object_get(fetched, "discounts"));
	json_array_foreach(tally_ss__jpath(fetched, "items", "data"), i, it)
		index_discounts(byid, json_object_get(it, "discounts"));
	fill_ids(json_object_get(sub, "discounts"), byid);
	json_array_foreach(items, i, it)
		fill_ids(json_object_get(it, "discounts"), byid);
	json_decref(byid);
	json_decref(fetched);
	return 0;
}
