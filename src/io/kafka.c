/*
 * kafka.c - librdkafka plumbing. The consumer wraps the consumer queue with
 * a batch poll and an eager rebalance callback that asks the caller for
 * start offsets; positions live in PostgreSQL, so a rebalance simply seeks
 * each new partition to what the database says was last committed.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/kafka.h"
#include "tally/log.h"
#include "tally/pg.h"
#include "io/kafka_lag.h"
#include "io/kafka_stall.h"
#include "io/kafka_start.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct tally_consumer {
	rd_kafka_t *rk;
	rd_kafka_queue_t *q;
	tally_consumer_opts opts;
	unsigned generation;
	/* start offsets of the current assignment (NULL when none) */
	rd_kafka_topic_partition_list_t *assigned;
	tally_kafka_stall stall; /* kafka.rejoin_timeout_ms */
};

static void log_cb(const rd_kafka_t *rk, int level, const char *fac,
		   const char *buf)
{
	/* runs on librdkafka threads: must not call librdkafka APIs */
	tally_log_level lv = level <= 3 ? TALLY_ERR :
			     level <= 4 ? TALLY_WARN :
			     level <= 6 ? TALLY_INFO : TALLY_DEBUG;

	(void)rk;
	tally_log(lv, "kafka.log", TALLY_KV_STR("facility", fac),
		  TALLY_KV_STR("message", buf));
}

/*
 * The last authentication or TLS failure seen by this thread's client
 * (error_cb runs in the thread that polls): preflight() reports it.
 */
static _Thread_local char auth_failure[512];

void tally_kafka_error_cb(rd_kafka_t *rk, int e, const char *reason,
			  void *opaque)
{
	(void)opaque;
	/* librdkafka's reason names the broker ("sasl_ssl://host:port/id:
	 * SASL authentication error: ...") and never holds the password */
	if (e == RD_KAFKA_RESP_ERR__AUTHENTICATION ||
	    e == RD_KAFKA_RESP_ERR__SSL) {
		snprintf(auth_failure, sizeof(auth_failure), "%s", reason);
		tally_log(TALLY_ERR, "kafka.auth_failed",
			  TALLY_KV_STR("client", rd_kafka_name(rk)),
			  TALLY_KV_STR("error", reason));
		return;
	}
	tally_log(e == RD_KAFKA_RESP_ERR__FATAL ? TALLY_ERR : TALLY_WARN,
		  "kafka.error",
		  TALLY_KV_STR("code", rd_kafka_err2name((rd_kafka_resp_err_t)e)),
		  TALLY_KV_STR("error", reason));
}

/* librdkafka before 2.6.1 sends a SCRAM proof Kafka 4.x rejects (#4895) */
static const char *scram_hint(rd_kafka_t *rk)
{
	char mech[32];
	size_t n = sizeof(mech);

	if (rd_kafka_version() < 0x020601ff &&
	    rd_kafka_conf_get(rd_kafka_conf(rk), "sasl.mechanisms", mech, &n) ==
		    RD_KAFKA_CONF_OK &&
	    strncmp(mech, "SCRAM", 5) == 0)
		return " (librdkafka before 2.6.1 cannot log in with SCRAM to "
		       "Kafka 4.x: use a newer librdkafka, or PLAIN over TLS)";
	return "";
}

/*
 * Credentials or a CA the broker rejects do not heal by retrying, and a
 * client would retry them for ever: a new client first asks for metadata
 * (up to 10 s) and fails with librdkafka's cause if the broker refused it.
 * A broker that does not answer at all is left to the usual retries.
 */
static int preflight(rd_kafka_t *rk, tally_error *err)
{
	int64_t deadline = tally_mono_ns() + INT64_C(10000000000);
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_resp_err_t e;

	auth_failure[0] = '\0';
	do {
		e = rd_kafka_metadata(rk, 0, NULL, &md, 500);
		if (md != NULL)
			rd_kafka_metadata_destroy(md);
		md = NULL;
		rd_kafka_poll(rk, 0); /* serves error_cb */
		if (auth_failure[0] != '\0')
			return tally_error_set(err, TALLY_EINVALID, "kafka: %s%s",
					       auth_failure, scram_hint(rk));
	} while (e != RD_KAFKA_RESP_ERR_NO_ERROR && tally_mono_ns() < deadline);
	return 0;
}

/* kafka.properties, the program's own, then the secrets from $KAFKA_* */
static void apply_properties(rd_kafka_conf_t *conf, const tally_config *cfg)
{
	static const char *const secrets[][2] = {
		{ "kafka.sasl_password", "sasl.password" },
		{ "kafka.ssl_key_password", "ssl.key.password" },
	};
	const char *name, *value;
	char errstr[256];
	size_t i;

	/* each pair was checked against librdkafka when the file loaded */
	for (i = 0; tally_config_kafka_property(cfg, i, &name, &value); i++)
		if (rd_kafka_conf_set(conf, name, value, errstr,
				      sizeof(errstr)) != RD_KAFKA_CONF_OK)
			tally_log(TALLY_ERR, "kafka.conf",
				  TALLY_KV_STR("error", errstr));
	for (i = 0; i < sizeof(secrets) / sizeof(secrets[0]); i++) {
		value = tally_config_str(cfg, secrets[i][0]);
		if (*value != '\0' &&
		    rd_kafka_conf_set(conf, secrets[i][1], value, errstr,
				      sizeof(errstr)) != RD_KAFKA_CONF_OK)
			tally_log(TALLY_ERR, "kafka.conf",
				  TALLY_KV_STR("property", secrets[i][1]));
	}
}

rd_kafka_conf_t *tally_kafka_conf(const tally_config *cfg)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char errstr[256];

	rd_kafka_conf_set_log_cb(conf, log_cb);
	rd_kafka_conf_set_error_cb(conf, tally_kafka_error_cb);
	if (rd_kafka_conf_set(conf, "bootstrap.servers",
			      tally_config_str(cfg, "kafka.brokers"), errstr,
			      sizeof(errstr)) != RD_KAFKA_CONF_OK ||
	    rd_kafka_conf_set(conf, "client.id",
			      tally_config_str(cfg, "kafka.client_id"), errstr,
			      sizeof(errstr)) != RD_KAFKA_CONF_OK)
		tally_log(TALLY_ERR, "kafka.conf", TALLY_KV_STR("error", errstr));
	/* TALLY_KAFKA_DEBUG=cgrp,fetch turns on librdkafka's debug contexts */
	if (getenv("TALLY_KAFKA_DEBUG") != NULL &&
	    rd_kafka_conf_set(conf, "debug", getenv("TALLY_KAFKA_DEBUG"), errstr,
			      sizeof(errstr)) != RD_KAFKA_CONF_OK)
		tally_log(TALLY_ERR, "kafka.conf", TALLY_KV_STR("error", errstr));
	/*
	 * librdkafka spaces a client's new connections by half of
	 * reconnect.backoff.ms (100 ms by default): each program would wait
	 * ~50 ms for the broker it learned from the bootstrap one before its
	 * first request. With 20 ms: 11 ms (its floor). Reconnects after a
	 * failure still back off exponentially to reconnect.backoff.max.ms.
	 */
	if (rd_kafka_conf_set(conf, "reconnect.backoff.ms", "20", errstr,
			      sizeof(errstr)) != RD_KAFKA_CONF_OK)
		tally_log(TALLY_ERR, "kafka.conf", TALLY_KV_STR("error", errstr));
	apply_properties(conf, cfg);
	return conf;
}

int tally_kafka_conf_set(rd_kafka_conf_t *conf, const char *name,
			 const char *value, tally_error *err)
{
	char errstr[256];

	if (rd_kafka_conf_set(conf, name, value, errstr, sizeof(errstr)) !=
	    RD_KAFKA_CONF_OK)
		return tally_error_set(err, TALLY_EINVALID, "kafka %s: %s", name,
				       errstr);
	return 0;
}

int tally_kafka_conf_default(rd_kafka_conf_t *conf, const tally_config *cfg,
			     const char *name, const char *value,
			     tally_error *err)
{
	const char *n, *v;
	size_t i;

	for (i = 0; tally_config_kafka_property(cfg, i, &n, &v); i++)
		if (strcmp(n, name) == 0)
			return 0;
	return tally_kafka_conf_set(conf, name, value, err);
}

int tally_kafka_conf_defaults(rd_kafka_conf_t *conf, const tally_config *cfg,
			      const char *const kv[][2], size_t n,
			      tally_error *err)
{
	size_t i;
	int rc = 0;

	for (i = 0; i < n && rc == 0; i++)
		rc = tally_kafka_conf_default(conf, cfg, kv[i][0], kv[i][1],
					      err);
	return rc;
}

int tally_kafka_producer_new(rd_kafka_t **out, rd_kafka_conf_t *conf,
			     tally_error *err)
{
	char errstr[512], v[16];
	size_t vlen = sizeof(v);
	rd_kafka_t *rk;

	if (rd_kafka_conf_get(conf, "enable.idempotence", v, &vlen) ==
		    RD_KAFKA_CONF_OK &&
	    strcmp(v, "false") == 0) {
		char tid[8];
		size_t tlen = sizeof(tid);
		/* transactional producers imply idempotence */
		if (rd_kafka_conf_get(conf, "transactional.id", tid, &tlen) !=
			    RD_KAFKA_CONF_OK || tlen <= 1)
			rd_kafka_conf_set(conf, "enable.idempotence", "true",
					  errstr, sizeof(errstr));
	}
	rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, errstr, sizeof(errstr));
	if (rk == NULL) {
		rd_kafka_conf_destroy(conf);
		return tally_error_set(err, TALLY_ERROR, "kafka producer: %s",
				       errstr);
	}
	if (preflight(rk, err) != 0) {
		rd_kafka_destroy(rk);
		return TALLY_EINVALID;
	}
	*out = rk;
	return 0;
}

/*
 * A lost assignment (session expired, member fenced) is revoked with the
 * stored offsets still set, and the unassign commits them before the
 * consumer may rejoin (librdkafka clears the lost flag in assign(NULL)
 * before it serves the removal; its #5585, after 2.12.1): to a coordinator
 * that is just gone (a broker restart) that commit waits, and it would be
 * refused anyway (the member is no longer in the group). Positions are in PostgreSQL (or re-read
 * from Kafka's last commit, then redone idempotently), so they are
 * forgotten instead: RD_KAFKA_OFFSET_INVALID is nothing to commit.
 */
static void forget_stored(rd_kafka_t *rk,
			  const rd_kafka_topic_partition_list_t *parts)
{
	rd_kafka_topic_partition_list_t *l =
		rd_kafka_topic_partition_list_copy(parts);
	int i;

	for (i = 0; i < l->cnt; i++)
		l->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
	(void)rd_kafka_offsets_store(rk, l);
	rd_kafka_topic_partition_list_destroy(l);
	tally_log(TALLY_WARN, "kafka.assignment_lost",
		  TALLY_KV_INT("partitions", parts->cnt));
}

static void rebalance_cb(rd_kafka_t *rk, rd_kafka_resp_err_t e,
			 rd_kafka_topic_partition_list_t *parts, void *opaque)
{
	tally_consumer *c = opaque;
	int i, attempt = 0;

	c->generation++;
	if (e == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS) {
		for (i = 0; i < parts->cnt; i++)
			parts->elems[i].offset = RD_KAFKA_OFFSET_INVALID;
		while (c->opts.on_assign != NULL &&
		       c->opts.on_assign(parts, c->opts.payload) != 0) {
			int64_t wait = tally_backoff_ms(attempt++, 200, 5000);
			tally_log(TALLY_WARN, "kafka.assign_retry",
				  TALLY_KV_INT("wait_ms", wait));
			tally_sleep_ms(wait);
		}
		(void)tally_kafka_start_unpositioned(rk, parts, 5000);
		for (i = 0; i < parts->cnt; i++)
			tally_log(TALLY_INFO, "kafka.assigned",
				  TALLY_KV_STR("topic", parts->elems[i].topic),
				  TALLY_KV_INT("partition", parts->elems[i].partition),
				  TALLY_KV_INT("offset", parts->elems[i].offset));
		if (c->assigned != NULL)
			rd_kafka_topic_partition_list_destroy(c->assigned);
		c->assigned = rd_kafka_topic_partition_list_copy(parts);
		rd_kafka_assign(rk, parts);
		tally_kafka_stall_assigned(&c->stall);
	} else {
		if (c->opts.on_revoke != NULL)
			c->opts.on_revoke(parts, c->opts.payload);
		/* after on_revoke: the batch it finishes may store offsets */
		if (rd_kafka_assignment_lost(rk))
			forget_stored(rk, parts);
		for (i = 0; i < parts->cnt; i++)
			tally_log(TALLY_INFO, "kafka.revoked",
				  TALLY_KV_STR("topic", parts->elems[i].topic),
				  TALLY_KV_INT("partition", parts->elems[i].partition));
		if (c->assigned != NULL)
			rd_kafka_topic_partition_list_destroy(c->assigned);
		c->assigned = NULL;
		rd_kafka_assign(rk, NULL);
		tally_kafka_stall_revoked(&c->stall, tally_mono_ns());
	}
}

/* librdkafka statistics (on the polling thread) -> lag gauges */
static int stats_cb(rd_kafka_t *rk, char *json, size_t len, void *opaque)
{
	tally_consumer *c = opaque;
	tally_error err;

	(void)rk;
	if (tally_kafka_lag_update(c->opts.metrics, c->opts.group, json, len,
				   &err) != 0)
		tally_log(TALLY_WARN, "kafka.stats_bad",
			  TALLY_KV_STR("error", err.msg));
	return 0; /* librdkafka frees json */
}

int tally_consumer_new(tally_consumer **out, rd_kafka_conf_t *conf,
		       const tally_consumer_opts *opts, tally_error *err)
{
	tally_consumer *c = tally_xcalloc(1, sizeof(*c));
	char errstr[512];
	rd_kafka_topic_partition_list_t *subs = NULL;
	rd_kafka_conf_t *probe;
	rd_kafka_resp_err_t kerr;
	int rc, n;

	c->opts = *opts;
	rc = tally_kafka_conf_set(conf, "group.id", opts->group, err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "enable.auto.offset.store",
					  "false", err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "auto.offset.reset", "earliest",
					  err);
	if (rc == 0)
		rc = tally_kafka_conf_set(conf, "isolation.level",
					  opts->read_committed ?
					  "read_committed" : "read_uncommitted",
					  err);
	if (rc == 0 && opts->metrics != NULL)
		rc = tally_kafka_lag_enable(conf, stats_cb, err);
	if (rc != 0) {
		rd_kafka_conf_destroy(conf);
		free(c);
		return rc;
	}
	/* the liveness probe's own client: brokers, security, no group */
	probe = opts->rejoin_timeout_ms > 0 ? tally_kafka_stall_conf(conf) :
					      NULL;
	rd_kafka_conf_set_rebalance_cb(conf, rebalance_cb);
	rd_kafka_conf_set_opaque(conf, c);
	c->rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, errstr, sizeof(errstr));
	if (c->rk == NULL) {
		rd_kafka_conf_destroy(conf);
		if (probe != NULL)
			rd_kafka_conf_destroy(probe);
		free(c);
		return tally_error_set(err, TALLY_ERROR, "kafka consumer: %s",
				       errstr);
	}
	if (preflight(c->rk, err) != 0) {
		rd_kafka_destroy(c->rk);
		if (probe != NULL)
			rd_kafka_conf_destroy(probe);
		free(c);
		return TALLY_EINVALID;
	}
	rd_kafka_poll_set_consumer(c->rk);
	c->q = rd_kafka_queue_get_consumer(c->rk);
	tally_kafka_stall_init(&c->stall, opts->rejoin_timeout_ms, probe,
			       tally_mono_ns());
	for (n = 0; opts->topics[n] != NULL; n++)
		;
	subs = rd_kafka_topic_partition_list_new(n);
	for (n = 0; opts->topics[n] != NULL; n++)
		rd_kafka_topic_partition_list_add(subs, opts->topics[n],
						  RD_KAFKA_PARTITION_UA);
	kerr = rd_kafka_subscribe(c->rk, subs);
	rd_kafka_topic_partition_list_destroy(subs);
	if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		tally_consumer_free(c);
		return tally_error_set(err, TALLY_ERROR, "kafka subscribe: %s",
				       rd_kafka_err2str(kerr));
	}
	*out = c;
	return 0;
}

/*
 * After a rebalance inside one consume call, only messages of the new
 * assignment may stay: partition assigned now, offset at or after the start
 * offset chosen in on_assign, strictly increasing per partition. last[i] is
 * the highest offset kept so far for c->assigned->elems[i] (-1: none), so
 * the check is O(1) per message, not a scan of what was kept (a scan made
 * the first 50 000-message batch after an assignment cost seconds).
 */
static bool after_assign(tally_consumer *c, int64_t *last,
			 const rd_kafka_message_t *m)
{
	rd_kafka_topic_partition_t *p;
	const char *t = rd_kafka_topic_name(m->rkt);
	size_t i;

	if (c->assigned == NULL)
		return false;
	p = rd_kafka_topic_partition_list_find(c->assigned, t, m->partition);
	if (p == NULL || (p->offset >= 0 && m->offset < p->offset))
		return false;
	i = (size_t)(p - c->assigned->elems);
	if (m->offset <= last[i])
		return false;
	last[i] = m->offset;
	return true;
}

size_t tally_consumer_poll_batch(tally_consumer *c, rd_kafka_message_t **msgs,
				 size_t max, int timeout_ms)
{
	size_t n = 0, i, end;
	int64_t deadline = tally_mono_ns() + (int64_t)timeout_ms * 1000000;
	unsigned gen = c->generation;
	int64_t *last = NULL;
	bool rebalanced;

	while (n < max) {
		int64_t left = (deadline - tally_mono_ns()) / 1000000;
		ssize_t got;

		if (left <= 0)
			break;
		got = rd_kafka_consume_batch_queue(c->q, (int)left, msgs + n,
						   max - n);
		rebalanced = c->generation != gen;
		if (rebalanced) {
			/* what we gathered before belongs to the old assignment */
			for (i = 0; i < n; i++)
				rd_kafka_message_destroy(msgs[i]);
			if (got > 0)
				memmove(msgs, msgs + n, (size_t)got * sizeof(*msgs));
			n = 0;
			gen = c->generation;
			free(last);
			last = NULL;
			if (c->assigned != NULL) {
				int k, cnt = c->assigned->cnt;

				last = tally_xmalloc((size_t)(cnt > 0 ? cnt : 1) *
						     sizeof(*last));
				for (k = 0; k < cnt; k++)
					last[k] = -1;
			}
		}
		if (got <= 0)
			continue;
		/* compact out EOFs, errors and (after a rebalance) stale ones */
		end = n + (size_t)got;
		for (i = n; i < end; i++) {
			rd_kafka_message_t *m = msgs[i];
			if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR &&
			    (!rebalanced || after_assign(c, last, m))) {
				msgs[n++] = m;
				continue;
			}
			if (m->err != RD_KAFKA_RESP_ERR_NO_ERROR &&
			    m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
				tally_log(TALLY_WARN, "kafka.consume_error",
					  TALLY_KV_STR("error",
						       rd_kafka_message_errstr(m)));
			rd_kafka_message_destroy(m);
		}
	}
	free(last);
	(void)tally_kafka_stall_check(&c->stall, c->opts.group,
				      c->opts.metrics);
	return n;
}

unsigned tally_consumer_generation(const tally_consumer *c)
{
	return c->generation;
}

bool tally_consumer_stalled(const tally_consumer *c)
{
	return c->stall.fired;
}

bool tally_kafka_stalled(void)
{
	return tally_kafka_stall_seen();
}

void tally_offsets_note(rd_kafka_topic_partition_list_t *l, const char *topic,
			int32_t partition, int64_t offset)
{
	rd_kafka_topic_partition_t *p =
		rd_kafka_topic_partition_list_find(l, topic, partition);

	if (p == NULL)
		p = rd_kafka_topic_partition_list_add(l, topic, partition);
	if (offset + 1 > p->offset)
		p->offset = offset + 1;
}

int tally_consumer_store_list(tally_consumer *c,
			      const rd_kafka_topic_partition_list_t *l,
			      tally_error *err)
{
	rd_kafka_resp_err_t kerr;

	if (l->cnt == 0)
		return 0;
	/* rd_kafka_offsets_store() takes a non-const list it does not keep */
	kerr = rd_kafka_offsets_store(c->rk,
				      (rd_kafka_topic_partition_list_t *)l);
	if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR)
		return tally_error_set(err, TALLY_ERROR, "kafka store: %s",
				       rd_kafka_err2str(kerr));
	return 0;
}

int tally_consumer_store(tally_consumer *c, rd_kafka_message_t **msgs,
			 size_t n, tally_error *err)
{
	rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(8);
	size_t i;
	int rc;

	for (i = 0; i < n; i++)
		tally_offsets_note(l, rd_kafka_topic_name(msgs[i]->rkt),
				   msgs[i]->partition, msgs[i]->offset);
	rc = tally_consumer_store_list(c, l, err);
	rd_kafka_topic_partition_list_destroy(l);
	return rc;
}

rd_kafka_t *tally_consumer_rk(tally_consumer *c)
{
	return c->rk;
}

void tally_consumer_free(tally_consumer *c)
{
	if (c == NULL)
		return;
	if (c->stall.fired) {
		/* close and destroy wait for the rebalance that is stuck */
		tally_kafka_stall_close(c->rk, c->q, 10000);
	} else {
		if (c->q != NULL)
			rd_kafka_queue_destroy(c->q);
		rd_kafka_consumer_close(c->rk);
		rd_kafka_destroy(c->rk);
	}
	if (c->assigned != NULL)
		rd_kafka_topic_partition_list_destroy(c->assigned);
	tally_kafka_stall_free(&c->stall);
	free(c);
}

int tally_dlq_send(rd_kafka_t *producer, const char *dlq_topic,
		   const rd_kafka_message_t *rkm, const char *consumer,
		   const char *reason, const char *detail, tally_error *err)
{
	rd_kafka_headers_t *hdrs = NULL, *orig = NULL;
	rd_kafka_resp_err_t kerr;
	char part[16], off[24];

	if (rd_kafka_message_headers(rkm, &orig) == RD_KAFKA_RESP_ERR_NO_ERROR)
		hdrs = rd_kafka_headers_copy(orig);
	else
		hdrs = rd_kafka_headers_new(8);
	snprintf(part, sizeof(part), "%d", (int)rkm->partition);
	snprintf(off, sizeof(off), "%lld", (long long)rkm->offset);
	rd_kafka_header_add(hdrs, "x-tally-reason", -1, reason, -1);
	rd_kafka_header_add(hdrs, "x-tally-detail", -1, detail, -1);
	rd_kafka_header_add(hdrs, "x-tally-source-topic", -1,
			    rkm->rkt ? rd_kafka_topic_name(rkm->rkt) : "", -1);
	rd_kafka_header_add(hdrs, "x-tally-source-partition", -1, part, -1);
	rd_kafka_header_add(hdrs, "x-tally-source-offset", -1, off, -1);
	rd_kafka_header_add(hdrs, "x-tally-consumer", -1, consumer, -1);
	kerr = rd_kafka_producev(producer, RD_KAFKA_V_TOPIC(dlq_topic),
				 RD_KAFKA_V_KEY(rkm->key, rkm->key_len),
				 RD_KAFKA_V_VALUE(rkm->payload, rkm->len),
				 RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				 RD_KAFKA_V_HEADERS(hdrs), RD_KAFKA_V_END);
	if (kerr != RD_KAFKA_RESP_ERR_NO_ERROR) {
		rd_kafka_headers_destroy(hdrs);
		return tally_error_set(err, TALLY_ETRANSIENT, "dlq produce: %s",
				       rd_kafka_err2str(kerr));
	}
	return 0;
}
