#ifndef TALLY_USAGE_LINES_H
#define TALLY_USAGE_LINES_H
/**
 * @file tally/usage_lines.h
 * @brief Invoice lines from a period's charges: grouping (per model, per
 *        meter, single) and rounding to the currency's minor unit. Pure: no
 *        database, no network.
 *
 * Each line's exact amount is the 128-bit sum of its charges in pico-units;
 * it is rounded once, half away from zero (tally_money_round_minor), to the
 * currency's minor unit. Lines whose exact sum is 0 are left out. A plan's
 * included usage is deducted from the period's usage (not from adjustments
 * of earlier periods) as one negative line, never below zero usage.
 */
#include <stddef.h>
#include "tally/common.h"
#include "tally/money.h"

typedef enum tally_usage_grouping {
	TALLY_GROUP_PER_MODEL = 0, /* one line per meter, provider and model */
	TALLY_GROUP_PER_METER,     /* one line per meter */
	TALLY_GROUP_SINGLE         /* one line for everything */
} tally_usage_grouping;

/** "per_model", "per_meter" or "single" ("" = per_model).
 *  @return 0 or TALLY_EINVALID */
int tally_usage_grouping_parse(const char *s, tally_usage_grouping *out)
	TALLY_MUSTCHECK;
const char *tally_usage_grouping_name(tally_usage_grouping g);

/** Fractional digits of a currency's minor unit (ISO 4217 as Stripe uses
 *  them: USD 2, JPY 0, KWD 3), case-insensitive; -1 when unknown. */
int tally_currency_minor_digits(const char *code);

/** One charge of the period. kind is "usage" (the period's own usage,
 *  storage included) or an adjustment kind ("late_usage", "rerate",
 *  "storage"); provider and model may be "". */
typedef struct tally_usage_charge {
	const char *kind;
	const char *meter;
	const char *provider;
	const char *model;
	tally_money128 pico;
} tally_usage_charge;

#define TALLY_USAGE_KEY_MAX 256

typedef struct tally_usage_line {
	char key[TALLY_USAGE_KEY_MAX];         /* stable: the line's identity */
	char description[TALLY_USAGE_KEY_MAX];
	tally_money128 exact_pico;
	int64_t minor;                         /* rounded, in minor units */
} tally_usage_line;

/**
 * Group charges into invoice lines, sorted by key.
 * @param included_pico usage included in the plan (>= 0)
 * @param digits the currency's minor digits (0..4)
 * @param[out] out malloc'd array (caller frees; NULL when *nout is 0)
 * @return 0, TALLY_EINVALID (a name too long for a key, bad digits) or
 *         TALLY_EOVERFLOW (a rounded line beyond int64)
 */
int tally_usage_lines_build(const tally_usage_charge *charges, size_t n,
			    tally_usage_grouping g, tally_money128 included_pico,
			    int digits, tally_usage_line **out, size_t *nout,
			    tally_error *err) TALLY_MUSTCHECK;

#endif /* TALLY_USAGE_LINES_H */
