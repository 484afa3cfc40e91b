/*
 * relay_kafka.c - tally-relay's hand-off to Kafka: the idempotent acks=all
 * producers (webhooks; usage events of the intake, through tally/producer.h),
 * their poll threads, and the delivery report that decides the answer
 * (200 or 503) and resumes the suspended connection.
 */
#define _POSIX_C_SOURCE 200809L
#include "relay/relay_int.h"
#include "tally/kafka.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

/* --- Kafka ---------------------------------------------------------------- */

/*
 * Record the answer and give the connection back to MHD, whose next
 * handler call sends it. r->pending drops only when the request completes
 * (tally_relay__completed_cb), i.e. after the answer went out or the client
 * left, so a drain never closes a connection that owes its client a 200.
 */
void tally_relay__finish(tally_relay__req *rq, tally_relay__outcome o)
{
	tally_relay *r = rq->r;
	struct MHD_Connection *conn = rq->conn;

	(void)r;
	atomic_store(&rq->result, (int)o);
	atomic_store(&rq->state, S_DONE);
	/* rq may be freed by an MHD thread from here on: don't touch it */
	MHD_resume_connection(conn);
}

/* The answer to an event Kafka did not take: a record too large for the
 * broker or topic never fits, so 413 rather than a 503 Stripe would retry
 * for days; anything else may pass. */
static tally_relay__outcome failed(rd_kafka_resp_err_t e)
{
	return e == RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE ? O_TOO_LARGE
							 : O_KAFKA;
}

/* Delivery report, on the poll thread. */
static void dr_cb(rd_kafka_t *rk, const rd_kafka_message_t *rkm, void *opaque)
{
	tally_relay *r = opaque;
	tally_relay__req *rq = rkm->_private;

	(void)rk;
	tally_histogram_observe(r->produce_lat,
				(uint64_t)(tally_mono_ns() - rq->produce_ns) /
					1000);
	if (rkm->err != RD_KAFKA_RESP_ERR_NO_ERROR) {
		tally_log(TALLY_WARN, "relay.produce_failed",
			  TALLY_KV_STR("event_id", rq->event_id),
			  TALLY_KV_STR("error", rd_kafka_err2str(rkm->err)));
		tally_counter_add(r->delivery_failed, 1);
		tally_relay__finish(rq, failed(rkm->err));
		return;
	}
	tally_counter_add(r->delivered, 1);
	tally_log(TALLY_DEBUG, "relay.accepted",
		  TALLY_KV_STR("event_id", rq->event_id),
		  TALLY_KV_INT("partition", rkm->partition),
		  TALLY_KV_INT("offset", rkm->offset));
	tally_relay__finish(rq, O_OK);
}

static void error_cb(rd_kafka_t *rk, int e, const char *reason, void *opaque)
{
	tally_relay *r = opaque;
	char buf[256];

	if (e == RD_KAFKA_RESP_ERR__FATAL) {
		rd_kafka_fatal_error(rk, buf, sizeof(buf));
		atomic_store(&r->fatal, 1);
		tally_log(TALLY_ERR, "relay.kafka_fatal",
			  TALLY_KV_STR("error", buf));
		return;
	}
	/* logs, and remembers a refused login for the start-up check */
	tally_kafka_error_cb(rk, e, reason, opaque);
}

void *tally_relay__poll_main(void *arg)
{
	tally_relay *r = arg;

	while (!atomic_load(&r->poll_stop))
		rd_kafka_poll(r->rk, 100);
	rd_kafka_poll(r->rk, 0);
	return NULL;
}

/* The usage producer's reports (tally_relay__intake_delivered). */
void *tally_relay__usage_poll_main(void *arg)
{
	tally_relay *r = arg;

	while (!atomic_load(&r->poll_stop))
		(void)tally_producer_poll(r->usage, 100);
	(void)tally_producer_poll(r->usage, 0);
	return NULL;
}

/* The intake's producer: topics.usage, the documented key and headers
 * (tally/producer.h), acks=all, a report within relay.produce_timeout_ms. */
int tally_relay__usage_setup(tally_relay *r, const tally_config *cfg,
			     tally_error *err)
{
	tally_producer_opts opts = { 0 };

	opts.on_delivery = tally_relay__intake_delivered;
	opts.payload = r;
	opts.linger_ms = 1;
	opts.message_timeout_ms = (int)r->produce_timeout_ms;
	return tally_producer_new(&r->usage, cfg, &opts, err);
}

/* Produce rq's body; the connection is already suspended. */
void tally_relay__produce(tally_relay *r, tally_relay__req *rq,
			  const char *key, const char *sig, const char *ctype)
{
	rd_kafka_headers_t *hdrs = rd_kafka_headers_new(3);
	rd_kafka_resp_err_t e;
	char at[24];

	snprintf(at, sizeof(at), "%lld", (long long)rq->received_ms);
	rd_kafka_header_add(hdrs, "stripe-signature", -1, sig, -1);
	rd_kafka_header_add(hdrs, "received-at", -1, at, -1);
	rd_kafka_header_add(hdrs, "content-type", -1, ctype, -1);
	rq->produce_ns = tally_mono_ns();
	e = rd_kafka_producev(r->rk, RD_KAFKA_V_TOPIC(r->topic),
			      RD_KAFKA_V_KEY(key, strlen(key)),
			      RD_KAFKA_V_VALUE(rq->body.p, rq->body.len),
			      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
			      RD_KAFKA_V_HEADERS(hdrs),
			      RD_KAFKA_V_OPAQUE(rq), RD_KAFKA_V_END);
	if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
		/* not enqueued: headers are still ours, no report will come */
		rd_kafka_headers_destroy(hdrs);
		tally_log(TALLY_WARN, "relay.produce_failed",
			  TALLY_KV_STR("event_id", rq->event_id),
			  TALLY_KV_STR("error", rd_kafka_err2str(e)));
		tally_relay__finish(rq, failed(e));
	}
}

/* relay.max_body must fit in one record (message.max.bytes of the
 * producer's configuration, librdkafka's default or a property). */
static int check_record_size(const tally_relay *r, rd_kafka_conf_t *conf,
			     tally_error *err)
{
	char v[32];
	size_t n = sizeof(v);
	int64_t mmb;

	if (rd_kafka_conf_get(conf, "message.max.bytes", v, &n) !=
		    RD_KAFKA_CONF_OK ||
	    tally_parse_i64(&mmb, v) != 0)
		return tally_error_set(err, TALLY_ERROR,
				       "relay: cannot read message.max.bytes");
	if ((int64_t)r->max_body + RECORD_OVERHEAD > mmb)
		return tally_error_set(
			err, TALLY_EINVALID,
			"relay.max_body (%zu) + %d bytes of key and headers "
			"exceeds the producer's message.max.bytes (%" PRId64
			"): lower relay.max_body, or raise message.max.bytes "
			"(relay.kafka.properties) and the topic's "
			"max.message.bytes",
			r->max_body, RECORD_OVERHEAD, mmb);
	return 0;
}

int tally_relay__kafka_setup(tally_relay *r, const tally_config *cfg,
			     tally_error *err)
{
	rd_kafka_conf_t *conf = tally_kafka_conf(cfg);
	char tmo[24];
	int rc;

	snprintf(tmo, sizeof(tmo), "%lld", (long long)r->produce_timeout_ms);
	rc = check_record_size(r, conf, err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "acks", "all", err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "enable.idempotence", "true",
					  err);
	if (rc == 0) /* a report (and so an answer) within the timeout */
		rc = tally_kafka_conf_set(conf, "message.timeout.ms", tmo, err);
	if (rc == 0) /* webhooks are latency-bound, not batch-bound */
		rc = tally_kafka_conf_set(conf, "linger.ms", "1", err);
	if (rc != 0) {
		rd_kafka_conf_destroy(conf);
		return rc;
	}
	rd_kafka_conf_set_dr_msg_cb(conf, dr_cb);
	rd_kafka_conf_set_error_cb(conf, error_cb);
	rd_kafka_conf_set_opaque(conf, r);
	return tally_kafka_producer_new(&r->rk, conf, err);
}
