/*
 * strbuf.c - a growable NUL-terminated string.
 */
#include "base/strbuf.h"

#include <inttypes.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void tally_strbuf_reserve(tally_strbuf *b, size_t more)
{
	size_t cap = b->cap ? b->cap : 256;

	if (b->len + more + 1 <= b->cap)
		return;
	while (b->len + more + 1 > cap)
		cap *= 2;
	b->p = tally_xrealloc(b->p, cap);
	b->cap = cap;
}

void tally_strbuf_add(tally_strbuf *b, const char *s, size_t n)
{
	tally_strbuf_reserve(b, n);
	if (n > 0)
		memcpy(b->p + b->len, s, n);
	b->len += n;
	b->p[b->len] = '\0';
}

void tally_strbuf_puts(tally_strbuf *b, const char *s)
{
	tally_strbuf_add(b, s, strlen(s));
}

void tally_strbuf_printf(tally_strbuf *b, const char *fmt, ...)
{
	va_list ap;
	int n;

	va_start(ap, fmt);
	n = vsnprintf(NULL, 0, fmt, ap);
	va_end(ap);
	if (n < 0)
		abort(); /* a bad format string is a programming error */
	tally_strbuf_reserve(b, (size_t)n);
	va_start(ap, fmt);
	vsnprintf(b->p + b->len, (size_t)n + 1, fmt, ap);
	va_end(ap);
	b->len += (size_t)n;
}

void tally_strbuf_i64(tally_strbuf *b, int64_t v)
{
	char t[24];
	int n = snprintf(t, sizeof(t), "%" PRId64, v);

	tally_strbuf_add(b, t, (size_t)n);
}

void tally_strbuf_u64(tally_strbuf *b, uint64_t v)
{
	char t[24];
	int n = snprintf(t, sizeof(t), "%" PRIu64, v);

	tally_strbuf_add(b, t, (size_t)n);
}

void tally_strbuf_pg_array_elem(tally_strbuf *b, const char *s, size_t n)
{
	size_t i;

	tally_strbuf_add(b, "\"", 1);
	for (i = 0; i < n; i++) {
		if (s[i] == '"' || s[i] == '\\')
			tally_strbuf_add(b, "\\", 1);
		tally_strbuf_add(b, s + i, 1);
	}
	tally_strbuf_add(b, "\"", 1);
}

void tally_strbuf_truncate(tally_strbuf *b, size_t len)
{
	if (len >= b->len)
		return;
	b->len = len;
	b->p[len] = '\0';
}

void tally_strbuf_reset(tally_strbuf *b)
{
	b->len = 0;
	if (b->p != NULL)
		b->p[0] = '\0';
}

const char *tally_strbuf_cstr(const tally_strbuf *b)
{
	return b->p != NULL ? b->p : "";
}

char *tally_strbuf_detach(tally_strbuf *b)
{
	char *p = b->p != NULL ? b->p : tally_xstrdup("");

	b->p = NULL;
	b->len = b->cap = 0;
	return p;
}

void tally_strbuf_free(tally_strbuf *b)
{
	free(b->p);
	b->p = NULL;
	b->len = b->cap = 0;
}
