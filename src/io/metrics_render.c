/*
 * metrics_render.c - the registry as Prometheus text exposition format.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/metrics_registry.h"
#include "base/strbuf.h"

#include <assert.h>
#include <stdbool.h>
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Microseconds as exact decimal seconds: 250 -> "0.00025", 1000000 -> "1". */
static void sb_seconds(tally_strbuf *b, uint64_t us)
{
	char t[48];
	int n;
	uint64_t frac = us % 1000000;

	if (frac == 0) {
		n = snprintf(t, sizeof(t), "%" PRIu64, us / 1000000);
	} else {
		n = snprintf(t, sizeof(t), "%" PRIu64 ".%06" PRIu64,
			     us / 1000000, frac);
		while (t[n - 1] == '0')
			n--;
	}
	tally_strbuf_add(b, t, (size_t)n);
}

/* HELP text escaping: backslash and newline. */
static void sb_help(tally_strbuf *b, const char *s)
{
	for (; *s != '\0'; s++) {
		if (*s == '\\')
			tally_strbuf_puts(b, "\\\\");
		else if (*s == '\n')
			tally_strbuf_puts(b, "\\n");
		else
			tally_strbuf_add(b, s, 1);
	}
}

/* name{labels[,extra]} */
static void sb_name(tally_strbuf *b, const char *name, const char *suffix,
		    const char *labels, const char *extra)
{
	bool any = *labels != '\0' || extra != NULL;

	tally_strbuf_puts(b, name);
	tally_strbuf_puts(b, suffix);
	if (!any)
		return;
	tally_strbuf_puts(b, "{");
	tally_strbuf_puts(b, labels);
	if (extra != NULL) {
		if (*labels != '\0')
			tally_strbuf_puts(b, ",");
		tally_strbuf_puts(b, extra);
	}
	tally_strbuf_puts(b, "}");
}

static void render_histogram(tally_strbuf *b, const family *f, series *s)
{
	tally_histogram *h = &s->u.h;
	uint64_t cum = 0;
	size_t i;
	char le[64];

	for (i = 0; i <= h->nbounds; i++) {
		cum += atomic_load_explicit(&h->buckets[i],
					    memory_order_relaxed);
		if (i < h->nbounds) {
			tally_strbuf t = TALLY_STRBUF_INIT;

			sb_seconds(&t, h->bounds[i]);
			snprintf(le, sizeof(le), "le=\"%s\"",
				 tally_strbuf_cstr(&t));
			tally_strbuf_free(&t);
		} else {
			snprintf(le, sizeof(le), "le=\"+Inf\"");
		}
		sb_name(b, f->name, "_bucket", s->labels, le);
		tally_strbuf_puts(b, " ");
		tally_strbuf_u64(b, cum);
		tally_strbuf_puts(b, "\n");
	}
	sb_name(b, f->name, "_sum", s->labels, NULL);
	tally_strbuf_puts(b, " ");
	sb_seconds(b, atomic_load_explicit(&h->sum_us, memory_order_relaxed));
	tally_strbuf_puts(b, "\n");
	sb_name(b, f->name, "_count", s->labels, NULL);
	tally_strbuf_puts(b, " ");
	/* the +Inf bucket, so that _count equals it even mid-update */
	tally_strbuf_u64(b, cum);
	tally_strbuf_puts(b, "\n");
}

void tally_metrics_render(char **out, size_t *len_out, tally_metrics *m)
{
	tally_strbuf b = TALLY_STRBUF_INIT;
	family *f;
	series *s;
	tally_metrics_hook hook;
	void *hp;
	static const char *const tname[] = { "counter", "gauge", "histogram" };

	pthread_mutex_lock(&m->mu);
	hook = m->hook;
	hp = m->hook_payload;
	pthread_mutex_unlock(&m->mu);
	if (hook != NULL)
		hook(m, hp); /* may register or set gauges: no lock held */

	tally_strbuf_add(&b, "", 0); /* "" not NULL for an empty registry */
	pthread_mutex_lock(&m->mu);
	for (f = m->first; f != NULL; f = f->next) {
		tally_strbuf_puts(&b, "# HELP ");
		tally_strbuf_puts(&b, f->name);
		tally_strbuf_puts(&b, " ");
		sb_help(&b, f->help);
		tally_strbuf_puts(&b, "\n# TYPE ");
		tally_strbuf_puts(&b, f->name);
		tally_strbuf_puts(&b, " ");
		tally_strbuf_puts(&b, tname[f->type]);
		tally_strbuf_puts(&b, "\n");
		for (s = f->first; s != NULL; s = s->next) {
			char t[32];

			if (f->type == MT_HISTOGRAM) {
				render_histogram(&b, f, s);
				continue;
			}
			sb_name(&b, f->name, "", s->labels, NULL);
			if (f->type == MT_COUNTER)
				snprintf(t, sizeof(t), " %" PRIu64 "\n",
					 (uint64_t)atomic_load_explicit(
						 &s->u.c.v,
						 memory_order_relaxed));
			else
				snprintf(t, sizeof(t), " %" PRId64 "\n",
					 (int64_t)atomic_load_explicit(
						 &s->u.g.v,
						 memory_order_relaxed));
			tally_strbuf_puts(&b, t);
		}
	}
	pthread_mutex_unlock(&m->mu);
	*out = b.p;
	if (len_out != NULL)
		*len_out = b.len;
}

void tally_metrics_escape_label(char *out, size_t outlen, const char *value)
{
	size_t o = 0;

	assert(outlen > 0);
	for (; *value != '\0'; value++) {
		const char *rep = NULL;
		size_t rl = 1;

		if (*value == '\\')
			rep = "\\\\";
		else if (*value == '"')
			rep = "\\\"";
		else if (*value == '\n')
			rep = "\\n";
		if (rep != NULL)
			rl = 2;
		if (o + rl >= outlen)
			break;
		if (rep != NULL)
			memcpy(out + o, rep, rl);
		else
			out[o] = *value;
		o += rl;
	}
	out[o] = '\0';
}
