/*
 * outbox.c - produce outbox rows and follow each through its delivery
 * report to the list of acknowledged row identities.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/outbox.h"
#include "tally/pg.h"

#include <stdlib.h>
#include <string.h>

#define PENDING_MAGIC 0x6f757462U /* "outb" */

/* A tracked message's opaque: on its owner's in-flight list until its
 * delivery report frees it (or the owner is freed). */
typedef struct pending {
	uint32_t magic;
	tally_outbox *owner;
	struct pending *prev, *next;
	unsigned char ident[]; /* owner->ident_len bytes */
} pending;

struct tally_outbox {
	rd_kafka_t *producer;
	char *topic;
	size_t ident_len;
	size_t inflight, failed;
	pending *flying;       /* the tracked messages in flight */
	unsigned char *acked;  /* nacked identities, oldest first */
	size_t nacked, capacked;
	tally_outbox_failed_fn on_failed;
	void *on_failed_ctx;
};

tally_outbox *tally_outbox_new(rd_kafka_t *producer, const char *topic,
			       size_t ident_len)
{
	tally_outbox *o = tally_xcalloc(1, sizeof(*o));

	o->producer = producer;
	o->topic = tally_xstrdup(topic);
	o->ident_len = ident_len;
	return o;
}

void tally_outbox_free(tally_outbox *o)
{
	if (o == NULL)
		return;
	while (o->flying != NULL) {
		pending *p = o->flying;

		o->flying = p->next;
		p->magic = 0;
		free(p);
	}
	free(o->topic);
	free(o->acked);
	free(o);
}

void tally_outbox_on_failure(tally_outbox *o, tally_outbox_failed_fn fn,
			     void *ctx)
{
	o->on_failed = fn;
	o->on_failed_ctx = ctx;
}

/* The message's headers (NULL: none); the producer owns them once sent. */
static rd_kafka_headers_t *headers_of(const tally_outbox_msg *m)
{
	rd_kafka_headers_t *h;
	size_t i, n = 0;

	if (m->headers == NULL)
		return NULL;
	while (m->headers[n] != NULL)
		n++;
	h = rd_kafka_headers_new(n / 2);
	for (i = 0; i + 1 < n; i += 2)
		(void)rd_kafka_header_add(h, m->headers[i], -1,
					  m->headers[i + 1], -1);
	return h;
}

int tally_outbox_produce(tally_outbox *o, const tally_outbox_msg *m,
			 tally_error *err)
{
	pending *p = NULL;
	rd_kafka_headers_t *h = headers_of(m);
	rd_kafka_resp_err_t e;

	if (m->ident != NULL) {
		p = tally_xmalloc(sizeof(*p) + o->ident_len);
		p->magic = PENDING_MAGIC;
		p->owner = o;
		memcpy(p->ident, m->ident, o->ident_len);
	}
	e = rd_kafka_producev(o->producer, RD_KAFKA_V_TOPIC(o->topic),
			      RD_KAFKA_V_KEY(m->key, m->key_len),
			      RD_KAFKA_V_VALUE((void *)m->value, m->len),
			      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			      RD_KAFKA_V_HEADERS(h), RD_KAFKA_V_OPAQUE(p),
			      RD_KAFKA_V_END);
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
		if (h != NULL)
			rd_kafka_headers_destroy(h);
		free(p);
		return tally_error_set(err, TALLY_ETRANSIENT, "%s: produce: %s",
				       o->topic, rd_kafka_err2str(e));
	}
	if (p != NULL) {
		p->prev = NULL;
		p->next = o->flying;
		if (o->flying != NULL)
			o->flying->prev = p;
		o->flying = p;
		o->inflight++;
	}
	return 0;
}

bool tally_outbox_delivered(tally_outbox *o, const rd_kafka_message_t *rkm)
{
	pending *p = rkm->_private;

	if (p == NULL || p->magic != PENDING_MAGIC || p->owner != o)
		return false;
	if (o->inflight > 0)
		o->inflight--;
	if (p->prev != NULL)
		p->prev->next = p->next;
	else
		o->flying = p->next;
	if (p->next != NULL)
		p->next->prev = p->prev;
	if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		o->failed++;
		if (o->on_failed != NULL)
			o->on_failed(p->ident, rkm->err, o->on_failed_ctx);
	} else {
		if (o->nacked == o->capacked) {
			o->capacked = o->capacked ? o->capacked * 2 : 64;
			o->acked = tally_xrealloc(o->acked,
						  o->capacked * o->ident_len);
		}
		memcpy(o->acked + o->nacked * o->ident_len, p->ident,
		       o->ident_len);
		o->nacked++;
	}
	p->magic = 0;
	free(p);
	return true;
}

bool tally_outbox_report(const rd_kafka_message_t *rkm)
{
	const pending *p = rkm->_private;

	if (p == NULL || p->magic != PENDING_MAGIC)
		return false;
	return tally_outbox_delivered(p->owner, rkm);
}

size_t tally_outbox_inflight(const tally_outbox *o)
{
	return o->inflight;
}

void tally_outbox_each_inflight(const tally_outbox *o,
				void (*fn)(const void *ident, void *ctx),
				void *ctx)
{
	const pending *p;

	for (p = o->flying; p != NULL; p = p->next)
		fn(p->ident, ctx);
}

size_t tally_outbox_failed(const tally_outbox *o)
{
	return o->failed;
}

const void *tally_outbox_acked(const tally_outbox *o, size_t *n)
{
	*n = o->nacked;
	return o->acked;
}

void tally_outbox_forget(tally_outbox *o, size_t n)
{
	if (n > o->nacked)
		n = o->nacked;
	if (n == 0)
		return;
	memmove(o->acked, o->acked + n * o->ident_len,
		(o->nacked - n) * o->ident_len);
	o->nacked -= n;
}

size_t tally_outbox_wait(tally_outbox *o, int timeout_ms)
{
	int64_t deadline = tally_mono_ns() + (int64_t)timeout_ms * 1000000;

	while (o->inflight > 0 && tally_mono_ns() < deadline)
		rd_kafka_poll(o->producer, 50);
	return o->inflight;
}
