/*
 * common.c - error convention, aborting allocators and small parsers shared
 * by every module. Allocation failure aborts: input is at-least-once, so a
 * crash is recoverable where a half-handled out-of-memory error is not.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/common.h"

#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

int tally_error_set(tally_error *err, tally_err code, const char *fmt, ...)
{
	va_list ap;

	if (err != NULL) {
		err->code = code;
		va_start(ap, fmt);
		vsnprintf(err->msg, sizeof(err->msg), fmt, ap);
		va_end(ap);
	}
	return code;
}

void tally_error_clear(tally_error *err)
{
	if (err == NULL)
		return;
	err->code = TALLY_OK;
	err->msg[0] = '\0';
}

const char *tally_err_name(int code)
{
	switch (code) {
	case TALLY_OK: return "ok";
	case TALLY_ENOTFOUND: return "not_found";
	case TALLY_EINVALID: return "invalid";
	case TALLY_EDUPLICATE: return "duplicate";
	case TALLY_ETRANSIENT: return "transient";
	case TALLY_EOVERFLOW: return "overflow";
	case TALLY_EFENCED: return "fenced";
	default: return "error";
	}
}

static void oom(size_t n)
{
	fprintf(stderr, "{\"level\":\"fatal\",\"event\":\"oom\",\"bytes\":%zu}\n",
		n);
	abort();
}

void *tally_xmalloc(size_t n)
{
	void *p = malloc(n ? n : 1);

	if (p == NULL)
		oom(n);
	return p;
}

void *tally_xcalloc(size_t n, size_t size)
{
	void *p = calloc(n ? n : 1, size ? size : 1);

	if (p == NULL)
		oom(n * size);
	return p;
}

void *tally_xrealloc(void *p, size_t n)
{
	void *q = realloc(p, n ? n : 1);

	if (q == NULL)
		oom(n);
	return q;
}

char *tally_xstrdup(const char *s)
{
	return tally_xstrndup(s, strlen(s));
}

char *tally_xstrndup(const char *s, size_t n)
{
	char *p = tally_xmalloc(n + 1);

	memcpy(p, s, n);
	p[n] = '\0';
	return p;
}

int tally_parse_i64(int64_t *out, const char *s)
{
	char *end = NULL;
	long long v;

	if (s == NULL || *s == '\0')
		return TALLY_EINVALID;
	errno = 0;
	v = strtoll(s, &end, 10);
	if (errno != 0 || end == s || *end != '\0')
		return TALLY_EINVALID;
	*out = (int64_t)v;
	return 0;
}

int64_t tally_now_ms(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_REALTIME, &ts);
	return (int64_t)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

int64_t tally_mono_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

void tally_fmt_time_ms(char out[32], int64_t ms)
{
	time_t secs;
	int64_t rem = ms % 1000;
	struct tm tm;

	if (rem < 0)
		rem += 1000;
	secs = (time_t)((ms - rem) / 1000);
	char buf[96];

	gmtime_r(&secs, &tm);
	snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)rem);
	memcpy(out, buf, 31);
	out[31] = '\0';
}
