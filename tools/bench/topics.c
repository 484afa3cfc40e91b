/* tally-bench: create, delete, count and copy (paced replay) topics */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include "tally/kafka.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

int cmd_topics(int argc, char **argv)
{
	const char *brokers = need(argc, argv, "-b");
	int parts = (int)opt_i(argc, argv, "-p", 4);
	const char *topics[64];
	int n = 0;
	tally_error err;
	rd_kafka_t *rk = mk_client(RD_KAFKA_PRODUCER, brokers, NULL);

	for (int i = 1; i < argc && n < 63; i++) {
		if (argv[i][0] == '-') {
			i++;
			continue;
		}
		topics[n++] = argv[i];
	}
	topics[n] = NULL;
	if (n > 0 && tally_kafka_create_topics(rk, topics, parts, &err) != 0)
		die("%s", err.msg);
	for (int i = 0; i < n; i++)
		npartitions(rk, topics[i]); /* wait until visible */
	rd_kafka_destroy(rk);
	return 0;
}

int cmd_delete(int argc, char **argv)
{
	const char *brokers = need(argc, argv, "-b");
	rd_kafka_t *rk = mk_client(RD_KAFKA_PRODUCER, brokers, NULL);
	rd_kafka_DeleteTopic_t *dt[256];
	rd_kafka_queue_t *q = rd_kafka_queue_new(rk);
	rd_kafka_event_t *ev;
	int n = 0;

	for (int i = 1; i < argc && n < 256; i++) {
		if (argv[i][0] == '-') {
			i++;
			continue;
		}
		dt[n++] = rd_kafka_DeleteTopic_new(argv[i]);
	}
	if (n > 0) {
		rd_kafka_DeleteTopics(rk, dt, (size_t)n, NULL, q);
		ev = rd_kafka_queue_poll(q, 30000);
		if (ev != NULL)
			rd_kafka_event_destroy(ev);
		rd_kafka_DeleteTopic_destroy_array(dt, (size_t)n);
	}
	rd_kafka_queue_destroy(q);
	rd_kafka_destroy(rk);
	return 0;
}

/* ---- count ------------------------------------------------------------ */

typedef struct {
	int64_t count, bytes;
} counted;

static int count_one(rd_kafka_message_t *m, void *ctx)
{
	counted *c = ctx;

	c->count++;
	c->bytes += (int64_t)m->len;
	return READ_NEXT;
}

int cmd_count(int argc, char **argv)
{
	const char *brokers = need(argc, argv, "-b");
	const char *topic = need(argc, argv, "--topic");
	rd_kafka_t *rk = mk_consumer(brokers);
	counted c = { 0, 0 };
	int64_t t0 = tally_mono_ns();

	read_to_end(rk, topic, count_one, &c);
	printf("{\"messages\":%" PRId64 ",\"bytes\":%" PRId64
	       ",\"seconds\":%.3f}\n",
	       c.count, c.bytes, (double)(tally_mono_ns() - t0) / 1e9);
	cons_destroy(rk);
	return 0;
}

/* ---- copy (and paced replay) ----------------------------------------- */

typedef struct {
	rd_kafka_message_t **msgs;
	size_t n, cap, max;
} kept;

static int keep_one(rd_kafka_message_t *m, void *ctx)
{
	kept *k = ctx;

	if (k->n == k->cap) {
		k->cap = k->cap ? k->cap * 2 : 65536;
		k->msgs = tally_xrealloc(k->msgs, k->cap * sizeof(*k->msgs));
	}
	k->msgs[k->n++] = m;
	return READ_KEEP | (k->n >= k->max ? READ_STOP : 0);
}

int cmd_copy(int argc, char **argv)
{
	const char *brokers = need(argc, argv, "-b");
	const char *from = need(argc, argv, "--from");
	const char *to = need(argc, argv, "--to");
	const char *label = opt(argc, argv, "--label", NULL);
	int64_t rate = opt_i(argc, argv, "--rate", 0);
	size_t max = (size_t)opt_i(argc, argv, "--max", INT64_MAX);
	rd_kafka_t *rc = mk_consumer(brokers);
	const char *pkv[] = {"linger.ms", "5", "batch.num.messages", "10000",
			     "queue.buffering.max.messages", "1000000",
			     "queue.buffering.max.kbytes", "1048576",
			     "enable.idempotence", "true", NULL};
	rd_kafka_t *rp;
	kept k = { NULL, 0, 0, max };
	rd_kafka_message_t **msgs;
	rd_kafka_headers_t **hdr_copies;
	size_t nm;
	int64_t t0, last = 0;

	if (max > 0)
		read_to_end(rc, from, keep_one, &k);
	msgs = k.msgs;
	nm = k.n;
	/* interleave partitions in offset order as they were read: the queue
	 * already mixes them; keep that order */
	rp = mk_client(RD_KAFKA_PRODUCER, brokers, pkv);
	/*
	 * Before the clock: the destination's metadata and the idempotent
	 * producer's id. Until both are there the first messages wait in
	 * this producer with their CreateTime already set, and a paced run
	 * would count that wait as the consumers' latency.
	 */
	(void)npartitions(rp, to);
	for (int w = 0; w < 10; w++)
		rd_kafka_poll(rp, 30);
	signal(SIGINT, on_sig);
	signal(SIGTERM, on_sig);
	/*
	 * The generator shares the machine with what it measures, so its own
	 * work per message is kept small: each message's headers are copied
	 * before the clock, the payload and key are produced in place (the
	 * consumed messages outlive the flush below), and pacing sleeps only
	 * once at least a millisecond ahead (CreateTime has millisecond
	 * resolution anyway).
	 */
	hdr_copies = tally_xcalloc(nm ? nm : 1, sizeof(*hdr_copies));
	for (size_t i = 0; i < nm; i++) {
		rd_kafka_headers_t *hdrs = NULL;

		if (rd_kafka_message_headers(msgs[i], &hdrs) == 0 && hdrs != NULL)
			hdr_copies[i] = rd_kafka_headers_copy(hdrs);
	}
	t0 = tally_mono_ns();
	for (size_t i = 0; i < nm && !g_stop; i++) {
		rd_kafka_message_t *m = msgs[i];
		rd_kafka_resp_err_t e;

		if (rate > 0) {
			int64_t due = t0 + (int64_t)((double)i * 1e9 / (double)rate);
			int64_t now = tally_mono_ns();
			if (due > now + 1000000) {
				struct timespec ts = {0, due - now};
				if (ts.tv_nsec >= 1000000000) {
					ts.tv_sec = ts.tv_nsec / 1000000000;
					ts.tv_nsec %= 1000000000;
				}
				nanosleep(&ts, NULL);
			}
		}
		do {
			e = rd_kafka_producev(
				rp, RD_KAFKA_V_TOPIC(to),
				RD_KAFKA_V_PARTITION(m->partition),
				RD_KAFKA_V_KEY(m->key, m->key_len),
				RD_KAFKA_V_VALUE(m->payload, m->len),
				RD_KAFKA_V_HEADERS(hdr_copies[i]), RD_KAFKA_V_END);
			if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
				rd_kafka_poll(rp, 10);
		} while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
		if (e == 0)
			hdr_copies[i] = NULL; /* the producer owns them now */
		if (e != 0)
			die("produce: %s", rd_kafka_err2str(e));
		if ((i & 1023) == 0)
			rd_kafka_poll(rp, 0);
		if (label != NULL && (i & 1023) == 0) {
			int64_t t = tally_mono_ns();
			if (t - last > 1000000000) {
				last = t;
				fprintf(stderr, "\r  %s: produced %zu/%zu  ", label,
					i, nm);
			}
		}
	}
	rd_kafka_flush(rp, 120000);
	if (label != NULL)
		fprintf(stderr, "\r  %s: produced %zu/%zu  \n", label, nm, nm);
	printf("{\"messages\":%zu,\"seconds\":%.3f}\n", nm,
	       (double)(tally_mono_ns() - t0) / 1e9);
	fflush(stdout);
	rd_kafka_destroy(rp);
	for (size_t i = 0; i < nm; i++) {
		if (hdr_copies[i] != NULL)
			rd_kafka_headers_destroy(hdr_copies[i]);
		rd_kafka_message_destroy(msgs[i]);
	}
	free(hdr_copies);
	free(msgs);
	cons_destroy(rc);
	return 0;
}
