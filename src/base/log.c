/*
 * log.c - JSON-lines logger. Each line is assembled in a stack buffer and
 * written with a single write(2) so lines from librdkafka's threads never
 * interleave with ours.
 */
#define _POSIX_C_SOURCE 200809L
#include <stddef.h>
#include "tally/log.h"
#include "tally/common.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

volatile int tally_log__min_level = TALLY_INFO;
static char log_program[64] = "tally";

static const char *level_names[] = { "debug", "info", "warn", "error",
				     "fatal" };

void tally_log_init(const char *program, tally_log_level min)
{
	const char *env = getenv("TALLY_LOG_LEVEL");
	int lv = env != NULL ? tally_log_level_parse(env) : -1;

	snprintf(log_program, sizeof(log_program), "%s", program);
	/* the environment wins, so tests and tools can be made verbose */
	tally_log__min_level = lv >= 0 ? lv : (int)min;
}

const char *tally_log_program(void)
{
	return log_program;
}

void tally_log_set_level(tally_log_level min)
{
	tally_log__min_level = (int)min;
}

int tally_log_level_parse(const char *s)
{
	int i;

	for (i = 0; i < 5; i++)
		if (strcmp(s, level_names[i]) == 0)
			return i;
	if (strcmp(s, "err") == 0)
		return TALLY_ERR;
	return -1;
}

typedef struct lbuf {
	char b[4096];
	size_t n;
} lbuf;

static void put(lbuf *lb, const char *s, size_t len)
{
	if (len > sizeof(lb->b) - 8 - lb->n)
		len = sizeof(lb->b) - 8 - lb->n;
	memcpy(lb->b + lb->n, s, len);
	lb->n += len;
}

static void put_json_str(lbuf *lb, const char *s)
{
	static const char hex[] = "0123456789abcdef";
	char esc[8];

	put(lb, "\"", 1);
	for (; s != NULL && *s; s++) {
		unsigned char c = (unsigned char)*s;

		if (c == '"' || c == '\\') {
			esc[0] = '\\';
			esc[1] = (char)c;
			put(lb, esc, 2);
		} else if (c == '\n') {
			put(lb, "\\n", 2);
		} else if (c < 0x20) {
			memcpy(esc, "\\u00", 4);
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
			put(lb, esc, 6);
		} else {
			put(lb, (const char *)&c, 1);
		}
	}
	put(lb, "\"", 1);
}

void tally_log__write(tally_log_level level, const char *event, ...)
{
	lbuf lb;
	char ts[32], num[32];
	va_list ap;
	tally_kv kv;
	int n;

	lb.n = 0;
	tally_fmt_time_ms(ts, tally_now_ms());
	put(&lb, "{\"ts\":\"", 7);
	put(&lb, ts, strlen(ts));
	put(&lb, "\",\"level\":\"", 11);
	put(&lb, level_names[level], strlen(level_names[level]));
	put(&lb, "\",\"program\":", 12);
	put_json_str(&lb, log_program);
	put(&lb, ",\"event\":", 9);
	put_json_str(&lb, event);
	va_start(ap, event);
	for (;;) {
		kv = va_arg(ap, tally_kv);
		if (kv.type == TALLY_KV_T_END)
			break;
		put(&lb, ",", 1);
		put_json_str(&lb, kv.key);
		put(&lb, ":", 1);
		switch (kv.type) {
		case TALLY_KV_T_STR:
			put_json_str(&lb, kv.s);
			break;
		case TALLY_KV_T_INT:
			n = snprintf(num, sizeof(num), "%lld", (long long)kv.i);
			put(&lb, num, (size_t)n);
			break;
		case TALLY_KV_T_RAW:
			put(&lb, kv.s, strlen(kv.s));
			break;
		default:
			break;
		}
	}
	va_end(ap);
	lb.b[lb.n++] = '}';
	lb.b[lb.n++] = '\n';
	if (write(STDERR_FILENO, lb.b, lb.n) < 0) {
		/* nowhere left to report it */
	}
}

void tally_log_redact_url(char *out, size_t outlen, const char *url)
{
	const char *scheme = strstr(url, "://");
	const char *at, *colon;

	if (outlen == 0)
		return;
	if (scheme == NULL) {
		/* key=value form: hide password=... */
		const char *pw = strstr(url, "password=");
		if (pw == NULL) {
			snprintf(out, outlen, "%s", url);
		} else {
			const char *end = strchr(pw, ' ');
			snprintf(out, outlen, "%.*spassword=***%s",
				 (int)(pw - url), url, end ? end : "");
		}
		return;
	}
	at = strchr(scheme + 3, '@');
	colon = at ? memchr(scheme + 3, ':', (size_t)(at - scheme - 3)) : NULL;
	if (colon == NULL)
		snprintf(out, outlen, "%s", url);
	else
		snprintf(out, outlen, "%.*s:***%s", (int)(colon - url), url, at);
}
