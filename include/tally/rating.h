#ifndef TALLY_RATING_H
#define TALLY_RATING_H

/**
 * @file tally/rating.h
 * @brief The rating function: usage event + price book -> exact cost.
 *
 * Pure and deterministic: the result depends only on the event (its own
 * timestamp chooses the price) and the book; no clock, no I/O, no floating
 * point. Token semantics are genai-prices' (docs/pricing.md):
 *  - input_tokens includes cache tokens; uncached = input - cache_read -
 *    cache_write; output_tokens includes reasoning tokens;
 *  - a kind of token the price does not list is charged at the price of the
 *    kind that contains it (cache read without cache_read_mtok -> input);
 *  - tiers apply to the whole request when total input tokens are strictly
 *    greater than the tier's start;
 *  - conditional prices: the last matching constraint wins (start_date at
 *    00:00 UTC; time_of_date windows, possibly crossing midnight), else the
 *    first price;
 *  - requests_kcount counts one request per event.
 * Each component is round_half_even(tokens * pico_per_mtok / 10^6) (pico),
 * the cost is the exact sum of the components; overflow is an error.
 */

#include <stdbool.h>
#include <stdint.h>

#include "tally/common.h"
#include "tally/event.h"
#include "tally/pricebook.h"

/**
 * Per-thread rating context: a cache of (provider, model) string ->
 * resolved price entry, and counters. Not thread-safe: one per thread. It
 * notices by itself when it is used with a different book and empties its
 * cache (books are identified by pointer and a load serial).
 */
typedef struct tally_rate_ctx tally_rate_ctx;

/** New context; aborts on out-of-memory. Free with tally_rate_ctx_free(). */
tally_rate_ctx *tally_rate_ctx_new(void);
void tally_rate_ctx_free(tally_rate_ctx *ctx);

/** What the rating used, for explanations (strings borrowed from the book). */
typedef struct tally_rate_detail {
	const char *provider_id; /* genai-prices provider id, or NULL */
	const char *model_id;    /* genai-prices model id, or NULL */
	int64_t override_id;     /* tenant/plan override applied, or 0 */
	int64_t base_price_id;   /* the book's price before any override */
} tally_rate_detail;

/**
 * Rate one event. out->ev is a copy of *ev (strings still borrowed).
 * @param ctx     cache; may be NULL (slower: every event is matched)
 * @param detail  may be NULL
 * @return 0 (priced);
 *         TALLY_ENOTFOUND: no price for this provider/model (or meter) at
 *           the event's time; out is filled with cost 0 and unpriced=true,
 *           and the caller applies rate.unpriced (dead_letter | zero);
 *         TALLY_EINVALID: impossible quantities (cache_read + cache_write >
 *           input_tokens, reasoning > output where reasoning is priced);
 *         TALLY_EOVERFLOW: a component or the sum does not fit in int64.
 */
int tally_rate_event_ex(tally_rated_event *out, tally_rate_detail *detail,
			const tally_pricebook *pb, const tally_usage_event *ev,
			tally_rate_ctx *ctx, tally_error *err) TALLY_MUSTCHECK;

/** tally_rate_event_ex() without details. */
int tally_rate_event(tally_rated_event *out, const tally_pricebook *pb,
		     const tally_usage_event *ev, tally_rate_ctx *ctx,
		     tally_error *err) TALLY_MUSTCHECK;

/**
 * Storage is a gauge billed per GB-month by time-weighting (aggregation
 * knows how long a snapshot stood). A storage.snapshot event rated alone has
 * cost 0 and the unit price's price_id; the aggregation prices each
 * interval with this function:
 *   cost = round_half_even(bytes * duration_ms * price_per_gbmonth
 *                          / (10^9 * 2 592 000 000))
 * with the price (and any tenant override) in force at time_ms.
 * @param tenant_id may be NULL (no overrides)
 * @return 0, TALLY_ENOTFOUND (no storage price) or TALLY_EOVERFLOW
 */
int tally_rate_storage_cost(int64_t *out, int64_t *price_id,
			    const tally_pricebook *pb,
			    const uint8_t *tenant_id, int64_t time_ms,
			    int64_t bytes, int64_t duration_ms,
			    tally_error *err) TALLY_MUSTCHECK;

/** round_half_even(qty * price / div), 128-bit intermediate; div > 0. */
int tally_rate__muldiv(int64_t *out, int64_t qty, int64_t price,
		       int64_t div);

#endif /* TALLY_RATING_H */
