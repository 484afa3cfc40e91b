/*
 * rate_batch.c - one batch of tally-rate: rate every input message into a
 * buffer (decode, price, encode; no Kafka call, so it can run while the
 * previous batch's transaction commits), then produce the buffer into the
 * open transaction: rated events to the rated topic, refusals to the dead
 * letter topic. Rated input messages are let go once rated, so that the
 * fetch buffers they hold are not kept while two batches are in hand.
 */
#define _POSIX_C_SOURCE 200809L
#include "rate_consumer_int.h"
#include "tally/codec.h"
#include "tally/log.h"

#include <stdio.h>
#include <string.h>

/* keep a dead letter for message i: its detail goes into the buffer */
static void stage_dead_letter(tally_rater *r, struct rate_batch *b, size_t i,
			      const char *reason, const char *detail)
{
	size_t len = strlen(detail) + 1;

	b->out[i].off = (uint32_t)r->sb.size;
	b->out[i].len = (uint32_t)len;
	b->out[i].reason = reason;
	(void)msgpack_sbuffer_write(&r->sb, detail, len);
	b->n_dlq++;
}

static void rate_one(tally_rater *r, struct rate_batch *b, size_t i)
{
	const rd_kafka_message_t *in = b->msgs[i];
	tally_usage_event ev;
	tally_rated_event re;
	tally_codec_error cerr;
	tally_error rerr;
	size_t off;
	int rc;

	memset(&cerr, 0, sizeof(cerr));
	if (tally_codec_decode_usage(&ev, in->payload, in->len, &cerr) != 0) {
		char detail[220];

		snprintf(detail, sizeof(detail), "%s: %s", cerr.field,
			 cerr.detail);
		stage_dead_letter(r, b, i, cerr.reason ? cerr.reason : "invalid",
				  detail);
		return;
	}
	tally_error_clear(&rerr);
	rc = tally_rate_event(&re, r->pb, &ev, r->ctx, &rerr);
	if (rc == TALLY_ENOTFOUND) {
		b->n_unpriced++;
		if (!r->unpriced_zero) {
			stage_dead_letter(r, b, i, "unpriced", rerr.msg);
			return;
		}
	} else if (rc != 0) {
		stage_dead_letter(r, b, i,
				  rc == TALLY_EOVERFLOW ? "cost_overflow"
							: "invalid_quantity",
				  rerr.msg);
		return;
	}
	re.rated_at_ms = b->rated_at_ms;
	off = r->sb.size;
	tally_codec_encode_rated(&r->sb, &re);
	b->out[i].off = (uint32_t)off;
	b->out[i].len = (uint32_t)(r->sb.size - off);
	b->out[i].key_off = (uint32_t)r->sb.size;
	b->out[i].key_len = (uint32_t)in->key_len;
	if (in->key_len > 0)
		(void)msgpack_sbuffer_write(&r->sb, in->key, in->key_len);
	b->out[i].reason = NULL;
	b->event_ms[b->n_rated++] = ev.time_ms;
}

void tally_rater__merge_offset(rd_kafka_topic_partition_list_t *l,
			       const char *topic, int32_t partition,
			       int64_t off, bool highest)
{
	rd_kafka_topic_partition_t *p =
		rd_kafka_topic_partition_list_find(l, topic, partition);

	if (p == NULL)
		rd_kafka_topic_partition_list_add(l, topic, partition)->offset =
			off;
	else if (highest ? off > p->offset : off < p->offset)
		p->offset = off;
}

void tally_rater__gathered(tally_rater *r, struct rate_batch *b)
{
	size_t i;

	b->gen = tally_consumer_generation(r->consumer);
	b->firsts = rd_kafka_topic_partition_list_new(8);
	b->nexts = rd_kafka_topic_partition_list_new(8);
	for (i = 0; i < b->n; i++) {
		const rd_kafka_message_t *m = b->msgs[i];
		const char *t = rd_kafka_topic_name(m->rkt);

		tally_rater__merge_offset(b->firsts, t, m->partition,
					  m->offset, false);
		tally_rater__merge_offset(b->nexts, t, m->partition,
					  m->offset + 1, true);
	}
}

void tally_rater__rate_batch(tally_rater *r, struct rate_batch *b)
{
	size_t i;

	r->sb.size = 0;
	b->n_rated = b->n_unpriced = b->n_dlq = 0;
	b->rated_at_ms = tally_now_ms();
	for (i = 0; i < b->n; i++) {
		rate_one(r, b, i);
		if (b->out[i].reason == NULL) {
			rd_kafka_message_destroy(b->msgs[i]);
			b->msgs[i] = NULL;
		}
	}
}

static int produce(tally_rater *r, const struct rate_out *o,
		   tally_error *err)
{
	const char *key = o->key_len > 0 ? r->sb.data + o->key_off : NULL;
	const char *val = r->sb.data + o->off;
	rd_kafka_resp_err_t e;

	for (;;) {
		e = rd_kafka_producev(r->producer, RD_KAFKA_V_RKT(r->out_rkt),
				      RD_KAFKA_V_KEY(key, o->key_len),
				      RD_KAFKA_V_VALUE((void *)val, o->len),
				      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				      RD_KAFKA_V_END);
		if (e != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			break;
		rd_kafka_poll(r->producer, 10);
	}
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
		return tally_error_set(err, TALLY_ETRANSIENT, "produce: %s",
				       rd_kafka_err2str(e));
	return 0;
}

static int dead_letter(tally_rater *r, const rd_kafka_message_t *in,
		       const char *reason, const char *detail,
		       tally_error *err)
{
	int rc;

	for (;;) {
		rc = tally_dlq_send(r->producer, r->dlq_topic, in, "tally-rate",
				    reason, detail, err);
		if (rc == 0 || !strstr(err->msg, "ueue full"))
			break;
		rd_kafka_poll(r->producer, 10);
	}
	return rc;
}

int tally_rater__produce_batch(tally_rater *r, const struct rate_batch *b,
			       tally_error *err)
{
	size_t i;
	int rc = 0;

	for (i = 0; i < b->n && rc == 0; i++) {
		const struct rate_out *o = &b->out[i];

		if (o->reason != NULL)
			rc = dead_letter(r, b->msgs[i], o->reason,
					 r->sb.data + o->off, err);
		else
			rc = produce(r, o, err);
	}
	return rc;
}

void tally_rater__drop_batch(struct rate_batch *b)
{
	while (b->n > 0) {
		rd_kafka_message_t *m = b->msgs[--b->n];

		if (m != NULL)
			rd_kafka_message_destroy(m);
	}
	if (b->firsts != NULL)
		rd_kafka_topic_partition_list_destroy(b->firsts);
	if (b->nexts != NULL)
		rd_kafka_topic_partition_list_destroy(b->nexts);
	b->firsts = b->nexts = NULL;
}
