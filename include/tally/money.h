#ifndef TALLY_MONEY_H
#define TALLY_MONEY_H

/**
 * @file tally/money.h
 * @brief Exact money: int64 pico-units (1e-12 of the currency unit) per
 *        event, 128-bit sums, decimal strings at the edges. No floating
 *        point anywhere: amounts enter as decimal text and leave as text.
 *
 * Rounding to the currency's minor unit happens once, when an invoice line is
 * produced: tally_money_round_minor() rounds half away from zero
 * ("commercial rounding"), the rule finance expects.
 */

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/common.h"

#define TALLY_PICO_PER_UNIT INT64_C(1000000000000)

__extension__ typedef __int128 tally_money128;

/**
 * Parse an exact decimal ("3", "-0.075", "1.5e-3", "2E+2") into pico-units.
 * Digits beyond 12 fractional places must be zeros (no silent rounding).
 * @return 0, TALLY_EINVALID (syntax, inexact) or TALLY_EOVERFLOW.
 */
int tally_money_parse(int64_t *out, const char *s, size_t len) TALLY_MUSTCHECK;

/**
 * tally_money_parse() into 128 bits (sums, such as a month's revenue,
 * that may pass int64 pico-units: 9.2 million currency units).
 */
int tally_money_parse128(tally_money128 *out, const char *s, size_t len)
	TALLY_MUSTCHECK;

/**
 * Write pico as an exact decimal in the currency unit, trailing fractional
 * zeros trimmed: 13963000000 -> "0.013963", 0 -> "0", -5e11 -> "-0.5".
 * @return the length written (out always NUL-terminated; 48 bytes suffice
 *         for any 128-bit value).
 */
size_t tally_money_fmt(char *out, size_t outlen, int64_t pico);
size_t tally_money_fmt128(char *out, size_t outlen, tally_money128 pico);

/** Bytes of tally_money_pgnumeric(): header 8 + 10 base-10000 digits. */
#define TALLY_PGNUMERIC_LEN 28

/**
 * pico as PostgreSQL's binary numeric (numeric_send/numeric_recv layout:
 * ndigits, weight, sign, dscale, base-10000 digits, big-endian), exact:
 * seven integer and three fractional digit groups; dscale is the number
 * of fractional decimal digits without trailing zeros, so the value reads
 * as tally_money_fmt128() writes it. For binary COPY and array parameters.
 * Returns TALLY_PGNUMERIC_LEN.
 */
size_t tally_money_pgnumeric(uint8_t out[TALLY_PGNUMERIC_LEN],
			     tally_money128 pico);

/** out = a + b, or TALLY_EOVERFLOW. */
int tally_money_add(int64_t *out, int64_t a, int64_t b) TALLY_MUSTCHECK;

/**
 * out = round_half_even(qty * price / div) with a 128-bit intermediate.
 * div > 0. Used to turn a per-million price into a per-event cost.
 * @return 0 or TALLY_EOVERFLOW if the result does not fit in int64.
 */
int tally_money_muldiv(int64_t *out, int64_t qty, int64_t price, int64_t div)
	TALLY_MUSTCHECK;

/**
 * Round pico to the minor unit with `digits` fractional digits (2 for
 * cents), half away from zero; result is in minor units (cents).
 */
tally_money128 tally_money_round_minor(tally_money128 pico, int digits);

#endif /* TALLY_MONEY_H */
