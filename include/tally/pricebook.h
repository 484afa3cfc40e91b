#ifndef TALLY_PRICEBOOK_H
#define TALLY_PRICEBOOK_H

/**
 * @file tally/pricebook.h
 * @brief The price book (DESIGN.md §4): token prices per provider and model
 *        with genai-prices' semantics, unit prices for the other meters, and
 *        per-tenant / per-plan overrides. Immutable once loaded.
 *
 * Every amount is an int64 count of pico-units (1e-12 of the currency unit)
 * per "per" quantity: token prices are pico per million tokens (MTok),
 * requests_kcount is pico per thousand requests, unit prices are pico per
 * unit. Prices enter as decimal text (PostgreSQL numeric, or JSON numbers
 * that are turned into strings before jansson sees them) and are parsed with
 * tally_money_parse(), so no price ever passes through a double.
 *
 * A book is built once (from a genai-prices data file, or from PostgreSQL
 * with tally/pricebook_pg.h)
 * and then only read; any number of threads may rate against it at the same
 * time. A reload builds a new book; the caller swaps pointers between
 * batches, so one batch is never priced with two books.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/common.h"
#include "tally/event.h"

typedef struct tally_pricebook tally_pricebook;

/** Default unit prices (also seeded by migrations/0002_prices.sql). */
#define TALLY_PRICE_WORKFLOW_UNIT "0.002"   /* USD per complexity unit */
#define TALLY_PRICE_STORAGE_GBMONTH "0.10"  /* USD per GB-month */
#define TALLY_PRICE_API_CALL "0.0001"       /* USD per call */

/** A storage GB-month: 10^9 bytes held for 30 days (2 592 000 000 ms). */
#define TALLY_STORAGE_GB INT64_C(1000000000)
#define TALLY_STORAGE_MONTH_MS INT64_C(2592000000)

/**
 * Build a book from a genai-prices data file (the JSON list of providers
 * that @pydantic/genai-prices bundles). Price ids are assigned
 * deterministically: 1 + the index of the (provider, model, conditional
 * price) in file order, so the same file always gives the same ids. Unit
 * prices are the defaults above (ids 900000001..3); there are no overrides.
 * @param[out] out new book; free with tally_pricebook_free()
 * @return 0, TALLY_EINVALID (bad JSON, unparsable price or rule) or
 *         TALLY_ERROR (unreadable file)
 */
int tally_pricebook_load_genai_file(tally_pricebook **out, const char *path,
				    tally_error *err) TALLY_MUSTCHECK;

/** Same, from a buffer holding the file's text. */
int tally_pricebook_load_genai_buf(tally_pricebook **out, const char *text,
				   size_t len, tally_error *err)
	TALLY_MUSTCHECK;

/** Version the book was loaded at (0 for file books). */
int64_t tally_pricebook_version(const tally_pricebook *pb);

/** Number of (provider, model) entries; for logs. */
size_t tally_pricebook_models(const tally_pricebook *pb);

/**
 * Add a tenant override to a book that is not shared yet (tests, tools).
 * Exactly one of multiplier / prices applies:
 * - multiplier: decimal text ("1.25" = +25 %), applied to every component
 *   (round half even at the pico);
 * - explicit: the per-MTok prices input, cache_read, cache_write, output
 *   (decimal text, NULL = not listed, with genai-prices' containment rule)
 *   and unit_price for the unit meters.
 * provider/model NULL = any; meter TALLY_METER_NONE = any.
 * @return 0 or TALLY_EINVALID
 */
typedef struct tally_override_spec {
	int64_t id;
	uint8_t tenant_id[16];
	tally_meter meter;
	const char *provider; /* genai-prices provider id */
	const char *model;    /* genai-prices model id */
	const char *multiplier;
	const char *input_mtok, *cache_read_mtok, *cache_write_mtok,
		*output_mtok, *unit_price;
	int64_t effective_from_ms, effective_to_ms; /* INT64_MIN/MAX = open */
	int specificity; /* higher wins; tenant rows beat plan rows */
} tally_override_spec;

int tally_pricebook_add_override(tally_pricebook *pb,
				 const tally_override_spec *spec,
				 tally_error *err) TALLY_MUSTCHECK;

/** Free a book. NULL is a no-op. */
void tally_pricebook_free(tally_pricebook *pb);

#endif /* TALLY_PRICEBOOK_H */
