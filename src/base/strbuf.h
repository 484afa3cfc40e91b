/*
 * strbuf.h - a growable NUL-terminated string (libtally-internal).
 *
 * The one string builder of the library: SQL array literals, form bodies,
 * Prometheus text, JSON. Allocation failure aborts (tally_xrealloc).
 */
#ifndef TALLY_BASE_STRBUF_H
#define TALLY_BASE_STRBUF_H

#include "tally/common.h"

#include <stddef.h>
#include <stdint.h>

typedef struct tally_strbuf {
	char *p;	/* NUL-terminated once anything was added; may be NULL */
	size_t len, cap;
} tally_strbuf;

#define TALLY_STRBUF_INIT { NULL, 0, 0 }

/** Make room for more bytes (plus the terminator). */
void tally_strbuf_reserve(tally_strbuf *b, size_t more);
/** Append n bytes of s. */
void tally_strbuf_add(tally_strbuf *b, const char *s, size_t n);
/** Append the C string s. */
void tally_strbuf_puts(tally_strbuf *b, const char *s);
/** Append printf-formatted text. */
void tally_strbuf_printf(tally_strbuf *b, const char *fmt, ...) TALLY_PRINTF(2, 3);
/** Append v in decimal. */
void tally_strbuf_i64(tally_strbuf *b, int64_t v);
void tally_strbuf_u64(tally_strbuf *b, uint64_t v);
/** One element of a PostgreSQL array literal: "..." with \ and " escaped. */
void tally_strbuf_pg_array_elem(tally_strbuf *b, const char *s, size_t n);
/** Cut the string back to its first len bytes (len <= b->len). */
void tally_strbuf_truncate(tally_strbuf *b, size_t len);
/** Empty the string, keeping its memory. */
void tally_strbuf_reset(tally_strbuf *b);
/** The text ("" when nothing was added); owned by b. */
const char *tally_strbuf_cstr(const tally_strbuf *b);
/** Hand the text over to the caller (never NULL) and empty b. */
char *tally_strbuf_detach(tally_strbuf *b);
/** Free the memory; b is empty afterwards. */
void tally_strbuf_free(tally_strbuf *b);

#endif
