/*
 * producer.c - the producer API for workflow engines (tally/producer.h).
 * A thin layer over librdkafka's idempotent producer: each event is
 * encoded into one reused sbuffer, checked by decoding it back with the
 * strict codec (the exact bytes consumers will see), and queued with the
 * tenant id as key and CloudEvents headers. Delivery reports come back
 * through librdkafka's dr_msg_cb on the polling thread.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/producer.h"

#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally/codec.h"
#include "tally/kafka.h"
#include "tally/log.h"

struct tally_producer {
	rd_kafka_t *rk;
	rd_kafka_topic_t *rkt;
	char *topic;
	char *ce_source;
	tally_delivery_fn on_delivery;
	void *payload;
	pthread_mutex_t lock; /* guards sb */
	msgpack_sbuffer sb;
	uint64_t delivered; /* touched only on the polling thread(s) */
	uint64_t failed;
};

static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
	tally_producer *p = opaque;
	tally_delivery dr;

	(void)rk;
	dr.code = 0;
	dr.errstr = NULL;
	if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		/* idempotence makes most errors retriable by re-sending;
		 * fatal ones come back as TALLY_ERROR */
		dr.code = rd_kafka_fatal_error(rk, NULL, 0) ? TALLY_ERROR :
							      TALLY_ETRANSIENT;
		dr.errstr = rd_kafka_err2str(rkm->err);
		__atomic_add_fetch(&p->failed, 1, __ATOMIC_RELAXED);
	} else {
		__atomic_add_fetch(&p->delivered, 1, __ATOMIC_RELAXED);
	}
	dr.topic = rkm->rkt != NULL ? rd_kafka_topic_name(rkm->rkt) : p->topic;
	dr.partition = rkm->partition;
	dr.offset = rkm->err ? -1 : rkm->offset;
	dr.opaque = rkm->_private;
	if (p->on_delivery != NULL)
		p->on_delivery(&dr, p->payload);
}

int tally_producer_new(tally_producer **out, const tally_config *cfg,
		       const tally_producer_opts *opts, tally_error *err)
{
	tally_producer_opts def = { 0 };
	tally_producer *p = NULL;
	rd_kafka_conf_t *conf = NULL;
	char linger[16], tmo[16];
	int rc;

	if (opts == NULL)
		opts = &def;
	p = tally_xcalloc(1, sizeof(*p));
	p->topic = tally_xstrdup(opts->topic != NULL ?
					 opts->topic :
					 tally_config_str(cfg, "topics.usage"));
	p->ce_source = tally_xstrdup(opts->ce_source != NULL ?
					     opts->ce_source : "tally");
	p->on_delivery = opts->on_delivery;
	p->payload = opts->payload;
	pthread_mutex_init(&p->lock, NULL);
	msgpack_sbuffer_init(&p->sb);

	conf = tally_kafka_conf(cfg);
	snprintf(linger, sizeof(linger), "%d",
		 opts->linger_ms > 0 ? opts->linger_ms : 5);
	rc = tally_kafka_conf_set(conf, "enable.idempotence", "true", err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "acks", "all", err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "linger.ms", linger, err);
	/* bulk: requests of up to 100 000 messages / 8 MiB */
	if (rc == 0 && opts->bulk)
		rc = tally_kafka_conf_set(conf, "batch.num.messages", "100000",
					  err);
	if (rc == 0 && opts->bulk)
		rc = tally_kafka_conf_set(conf, "batch.size", "8388608", err);
	if (rc == 0 && opts->message_timeout_ms > 0) {
		snprintf(tmo, sizeof(tmo), "%d", opts->message_timeout_ms);
		rc = tally_kafka_conf_set(conf, "message.timeout.ms", tmo, err);
	}
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "compression.codec", "lz4",
					  err);
	/* bulk: 100 000 queued (0.5 s at 200 K/s) bound the memory of a
	 * backfill that parses faster than the broker takes (400+ MiB of
	 * queued messages and headers at 1 000 000) */
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "queue.buffering.max.messages",
					  opts->bulk ? "100000" : "1000000",
					  err);
	if (rc < 0) {
		rd_kafka_conf_destroy(conf);
		goto cleanup;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
	rd_kafka_conf_set_opaque(conf, p);
	rc = tally_kafka_producer_new(&p->rk, conf, err);
	conf = NULL; /* owned by librdkafka now, even on error */
	if (rc < 0)
		goto cleanup;
	p->rkt = rd_kafka_topic_new(p->rk, p->topic, NULL);
	if (p->rkt == NULL) {
		rc = tally_error_set(err, TALLY_ERROR, "kafka topic %s: %s",
				     p->topic,
				     rd_kafka_err2str(rd_kafka_last_error()));
		goto cleanup;
	}
	*out = p;
	p = NULL;
cleanup:
	tally_producer_free(p);
	return rc;
}

int tally_producer_send_raw(tally_producer *p, const uint8_t tenant[16],
			    const char *ce_id, uint32_t ce_id_len,
			    const char *ce_source, uint32_t ce_source_len,
			    const char *ce_type, int64_t time_ms,
			    const void *value, size_t len, void *opaque,
			    tally_error *err)
{
	char key[37], ce_time[32];
	rd_kafka_resp_err_t kerr;
	int64_t deadline = 0;

	tally_uuid_fmt(key, tenant);
	tally_fmt_time_ms(ce_time, time_ms);
	for (;;) {
		kerr = rd_kafka_producev(
			p->rk, RD_KAFKA_V_RKT(p->rkt),
			RD_KAFKA_V_KEY(key, 36),
			RD_KAFKA_V_VALUE((void *)value, len),
			RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			RD_KAFKA_V_HEADER("ce_id", ce_id, (ssize_t)ce_id_len),
			RD_KAFKA_V_HEADER("ce_source", ce_source,
					  (ssize_t)ce_source_len),
			RD_KAFKA_V_HEADER("ce_type", ce_type, -1),
			RD_KAFKA_V_HEADER("ce_time", ce_time, -1),
			RD_KAFKA_V_HEADER("ce_specversion", "1.0", 3),
			RD_KAFKA_V_HEADER("content-type",
					  "application/msgpack", -1),
			RD_KAFKA_V_OPAQUE(opaque), RD_KAFKA_V_END);
		if (kerr != RD_KAFKA_RESP_ERR__QUEUE_FULL)
			break;
		/* back-pressure: serve reports to make room */
		if (deadline == 0)
			deadline = tally_now_ms() + 10000;
		else if (tally_now_ms() > deadline)
			break;
		rd_kafka_poll(p->rk, 50);
	}
	if (kerr == RD_KAFKA_RESP_ERR_NO_ERROR)
		return 0;
	if (kerr == RD_KAFKA_RESP_ERR__QUEUE_FULL)
		return tally_error_set(err, TALLY_ETRANSIENT,
				       "producer queue full for 10 s");
	return tally_error_set(err, rd_kafka_fatal_error(p->rk, NULL, 0) ?
					    TALLY_ERROR : TALLY_ETRANSIENT,
			       "produce to %s: %s", p->topic,
			       rd_kafka_err2str(kerr));
}

static int reject(tally_error *err, const tally_codec_error *ce)
{
	return tally_error_set(err, TALLY_EINVALID, "%s %s: %s", ce->reason,
			       ce->field, ce->detail);
}

int tally_producer_send_usage_sb(tally_producer *p,
				 const tally_usage_event *ev,
				 msgpack_sbuffer *sb, void *opaque,
				 tally_error *err)
{
	tally_usage_event chk;
	tally_codec_error ce;

	msgpack_sbuffer_clear(sb);
	tally_codec_encode_usage(sb, ev);
	if (tally_codec_decode_usage(&chk, sb->data, sb->size, &ce) < 0)
		return reject(err, &ce);
	return tally_producer_send_raw(p, chk.tenant_id, chk.id.ptr,
				       chk.id.len, chk.source.ptr,
				       chk.source.len,
				       tally_meter_name(chk.meter),
				       chk.time_ms, sb->data, sb->size,
				       opaque, err);
}

int tally_producer_send_usage(tally_producer *p, const tally_usage_event *ev,
			      void *opaque, tally_error *err)
{
	int rc;

	pthread_mutex_lock(&p->lock);
	rc = tally_producer_send_usage_sb(p, ev, &p->sb, opaque, err);
	pthread_mutex_unlock(&p->lock);
	return rc;
}

int tally_producer_send_rated_sb(tally_producer *p,
				 const tally_rated_event *re,
				 msgpack_sbuffer *sb, void *opaque,
				 tally_error *err)
{
	tally_rated_event chk;
	tally_codec_error ce;

	msgpack_sbuffer_clear(sb);
	tally_codec_encode_rated(sb, re);
	if (tally_codec_decode_rated(&chk, sb->data, sb->size, &ce) < 0)
		return reject(err, &ce);
	return tally_producer_send_raw(p, chk.ev.tenant_id, chk.ev.id.ptr,
				       chk.ev.id.len, chk.ev.source.ptr,
				       chk.ev.source.len,
				       tally_meter_name(chk.ev.meter),
				       chk.ev.time_ms, sb->data, sb->size,
				       opaque, err);
}

int tally_producer_send_rated(tally_producer *p, const tally_rated_event *re,
			      void *opaque, tally_error *err)
{
	int rc;

	pthread_mutex_lock(&p->lock);
	rc = tally_producer_send_rated_sb(p, re, &p->sb, opaque, err);
	pthread_mutex_unlock(&p->lock);
	return rc;
}

int tally_producer_send_command_sb(tally_producer *p,
				   const tally_command *cmd,
				   msgpack_sbuffer *sb, void *opaque,
				   tally_error *err)
{
	tally_command chk;
	tally_codec_error ce;
	char type[64];

	msgpack_sbuffer_clear(sb);
	tally_codec_encode_command(sb, cmd);
	if (tally_codec_decode_command(&chk, sb->data, sb->size, &ce) < 0)
		return reject(err, &ce);
	snprintf(type, sizeof(type), "tally.command.%s",
		 tally_command_type_name(chk.type));
	return tally_producer_send_raw(p, chk.tenant_id, chk.id.ptr,
				       chk.id.len, p->ce_source,
				       (uint32_t)strlen(p->ce_source), type,
				       chk.time_ms, sb->data, sb->size,
				       opaque, err);
}

int tally_producer_send_command(tally_producer *p, const tally_command *cmd,
				void *opaque, tally_error *err)
{
	int rc;

	pthread_mutex_lock(&p->lock);
	rc = tally_producer_send_command_sb(p, cmd, &p->sb, opaque, err);
	pthread_mutex_unlock(&p->lock);
	return rc;
}

int tally_producer_poll(tally_producer *p, int timeout_ms)
{
	return rd_kafka_poll(p->rk, timeout_ms);
}

int tally_producer_outstanding(tally_producer *p)
{
	return rd_kafka_outq_len(p->rk);
}

int tally_producer_flush(tally_producer *p, int timeout_ms, tally_error *err)
{
	/* rd_kafka_flush() serves dr_msg_cb on this thread */
	if (rd_kafka_flush(p->rk, timeout_ms) == RD_KAFKA_RESP_ERR_NO_ERROR)
		return 0;
	return tally_error_set(err, TALLY_ETRANSIENT,
			       "%d messages not delivered after %d ms",
			       rd_kafka_outq_len(p->rk), timeout_ms);
}

void tally_producer_counts(tally_producer *p, uint64_t *delivered,
			   uint64_t *failed)
{
	*delivered = __atomic_load_n(&p->delivered, __ATOMIC_RELAXED);
	*failed = __atomic_load_n(&p->failed, __ATOMIC_RELAXED);
}

struct rd_kafka_s *tally_producer_rk(tally_producer *p)
{
	return p->rk;
}

void tally_producer_free(tally_producer *p)
{
	if (p == NULL)
		return;
	if (p->rk != NULL) {
		if (rd_kafka_flush(p->rk, 30000) != RD_KAFKA_RESP_ERR_NO_ERROR)
			tally_log(TALLY_WARN, "producer.unflushed",
				  TALLY_KV_STR("topic", p->topic),
				  TALLY_KV_INT("messages",
					       rd_kafka_outq_len(p->rk)));
		if (p->rkt != NULL)
			rd_kafka_topic_destroy(p->rkt);
		rd_kafka_destroy(p->rk);
	}
	msgpack_sbuffer_destroy(&p->sb);
	pthread_mutex_destroy(&p->lock);
	free(p->topic);
	free(p->ce_source);
	free(p);
}
