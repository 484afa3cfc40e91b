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

/* "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ" of gmtime_r, the slow way (years
 * outside 1970..9999) */
static void fmt_time_ms_libc(char out[32], int64_t ms)
{
	time_t secs;
	int64_t rem = ms % 1000;
	struct tm tm;
	char buf[96];

	if (rem < 0)
		rem += 1000;
	secs = (time_t)((ms - rem) / 1000);
	gmtime_r(&secs, &tm);
	snprintf(buf, sizeof(buf), "%04d-%02d-%02dT%02d:%02d:%02d.%03dZ",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)rem);
	memcpy(out, buf, 31);
	out[31] = '\0';
}

static void put_digits(char *p, unsigned v, int n)
{
	while (n-- > 0) {
		p[n] = (char)('0' + v % 10);
		v /= 10;
	}
}

/*
 * The same text by arithmetic (days to a civil date, H. Hinnant's
 * algorithm): glibc's gmtime_r takes a process-wide lock, and this runs
 * for every message `tally produce`'s threads send (ce_time).
 */
void tally_fmt_time_ms(char out[32], int64_t ms)
{
	/* 10000-01-01T00:00:00Z */
	const int64_t year10000 = INT64_C(253402300800000);
	int64_t secs, days;
	unsigned sod, doe, yoe, doy, mp, y, m, d;

	if (ms < 0 || ms >= year10000) {
		fmt_time_ms_libc(out, ms);
		return;
	}
	secs = ms / 1000;
	days = secs / 86400;
	sod = (unsigned)(secs % 86400);
	days += 719468; /* from 0000-03-01 */
	doe = (unsigned)(days % 146097);
	yoe = (doe - doe / 1460 + doe / 36524 - doe / 146096) / 365;
	doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
	mp = (5 * doy + 2) / 153;
	d = doy - (153 * mp + 2) / 5 + 1;
	m = mp < 10 ? mp + 3 : mp - 9;
	y = (unsigned)(days / 146097) * 400 + yoe + (m <= 2);
	memcpy(out, "0000-00-00T00:00:00.000Z", 25);
	put_digits(out, y, 4);
	put_digits(out + 5, m, 2);
	put_digits(out + 8, d, 2);
	put_digits(out + 11, sod / 3600, 2);
	put_digits(out + 14, sod / 60 % 60, 2);
	put_digits(out + 17, sod % 60, 2);
	put_digits(out + 20, (unsigned)(ms % 1000), 3);
}
