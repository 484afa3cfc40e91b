/*
 * tally-bench - the C helpers of ops/bench (docs/bench.md). Everything on
 * the hot path of a measurement is here, in C; ops/bench (bash) drives it.
 *
 *   tally-bench topics  -b B -p P TOPIC...       create fresh topics
 *   tally-bench copy    -b B --from T --to T2 [--rate R] [--label L]
 *                       preload T into memory, then produce it to T2 (same
 *                       partition, key, headers; CreateTime = now), paced
 *                       at R events/s (0 = as fast as possible)
 *   tally-bench probe   ... event-to-committed latency + throughput timeline
 *   tally-bench naive   -b B --topic RATED --dsn D [--seconds S]
 *                       the naive baseline consumer: one INSERT ... ON
 *                       CONFLICT DO NOTHING and one COMMIT per event
 *   tally-bench ledger-rows -b B --topic RATED --out FILE
 *                       the ledger rows of a rated topic (deduplicated), as
 *                       COPY text
 *   tally-bench pgcopy  --dsn D --table T --file FILE   timed COPY FROM STDIN
 *   tally-bench delete  -b B TOPIC...           delete topics
 *   tally-bench count   -b B --topic T              data messages in T
 *   tally-bench gen     --config CFG --topic T [--events N --tenants T --dup F
 *                       --ooo F --late F --models FILE --expected FILE]
 *                       the workload (tally_gen) through the producer API
 *   tally-bench synth   -b B --topic T --kind usage|rated --events N
 *                       synthetic events (self-test of the benchmark only)
 *
 * Results are one JSON object on stdout; progress goes to stderr.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/codec.h"
#include "tally/common.h"
#include "tally/config.h"
#include "tally/gen.h"
#include "tally/producer.h"
#include "tally/event.h"
#include "tally/kafka.h"
#include "tally/money.h"
#include "tally/pg.h"

#include <errno.h>
#include <inttypes.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <openssl/evp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#define MAXPART 256

static volatile sig_atomic_t g_stop;
static void on_sig(int s) { (void)s; g_stop = 1; }

static void die(const char *fmt, ...) TALLY_PRINTF(1, 2) TALLY_NORETURN;
static void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "tally-bench: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	exit(2);
}

static int64_t now_ms(void) { return tally_now_ms(); }

/* ---- options: --name value ------------------------------------------ */

static const char *opt(int argc, char **argv, const char *name,
		       const char *def)
{
	for (int i = 1; i + 1 < argc; i++)
		if (strcmp(argv[i], name) == 0)
			return argv[i + 1];
	return def;
}

static int64_t opt_i(int argc, char **argv, const char *name, int64_t def)
{
	const char *s = opt(argc, argv, name, NULL);
	int64_t v;

	if (s == NULL)
		return def;
	if (tally_parse_i64(&v, s) != 0)
		die("bad number for %s", name);
	return v;
}

static const char *need(int argc, char **argv, const char *name)
{
	const char *s = opt(argc, argv, name, NULL);

	if (s == NULL)
		die("missing %s", name);
	return s;
}

/* ---- kafka ------------------------------------------------------------ */

static rd_kafka_t *mk_client(rd_kafka_type_t type, const char *brokers,
			     const char **kv)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char errstr[512];
	rd_kafka_t *rk;

	if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr,
			      sizeof(errstr)) != RD_KAFKA_CONF_OK)
		die("%s", errstr);
	for (; kv != NULL && kv[0] != NULL; kv += 2)
		if (rd_kafka_conf_set(conf, kv[0], kv[1], errstr,
				      sizeof(errstr)) != RD_KAFKA_CONF_OK)
			die("%s", errstr);
	rk = rd_kafka_new(type, conf, errstr, sizeof(errstr));
	if (rk == NULL)
		die("%s", errstr);
	return rk;
}

static rd_kafka_t *mk_consumer(const char *brokers)
{
	const char *kv[] = {"group.id", "tally-bench-unused",
			    "enable.auto.commit", "false",
			    "enable.partition.eof", "true",
			    "isolation.level", "read_committed",
			    "fetch.wait.max.ms", "10",
			    "queued.max.messages.kbytes", "65536", NULL};
	return mk_client(RD_KAFKA_CONSUMER, brokers, kv);
}

static int npartitions(rd_kafka_t *rk, const char *topic)
{
	const struct rd_kafka_metadata *md = NULL;
	rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
	int n = -1;

	for (int attempt = 0; attempt < 50 && n <= 0; attempt++) {
		if (rd_kafka_metadata(rk, 0, rkt, &md, 5000) ==
		    RD_KAFKA_RESP_ERR_NO_ERROR) {
			if (md->topic_cnt == 1 && md->topics[0].err == 0)
				n = md->topics[0].partition_cnt;
			rd_kafka_metadata_destroy(md);
		}
		if (n <= 0)
			tally_sleep_ms(100);
	}
	rd_kafka_topic_destroy(rkt);
	if (n <= 0 || n > MAXPART)
		die("no such topic (or too many partitions): %s", topic);
	return n;
}

/* assign()ed consumers never joined a group: no close handshake */
static void cons_destroy(rd_kafka_t *rk)
{
	rd_kafka_destroy_flags(rk, RD_KAFKA_DESTROY_F_NO_CONSUMER_CLOSE);
}

/* assign all partitions of topic from the beginning; returns count */
static int assign_all(rd_kafka_t *rk, const char *topic)
{
	int n = npartitions(rk, topic);
	rd_kafka_topic_partition_list_t *l =
		rd_kafka_topic_partition_list_new(n);

	for (int p = 0; p < n; p++)
		rd_kafka_topic_partition_list_add(l, topic, p)->offset =
			RD_KAFKA_OFFSET_BEGINNING;
	if (rd_kafka_assign(rk, l) != 0)
		die("assign %s failed", topic);
	rd_kafka_topic_partition_list_destroy(l);
	return n;
}

/* high watermarks; partitions that are empty count as already at eof */
static void watermarks(rd_kafka_t *rk, const char *topic, int n, int64_t *hi)
{
	for (int p = 0; p < n; p++) {
		int64_t lo = 0;
		hi[p] = 0;
		if (rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi[p],
						     10000) != 0)
			die("watermarks of %s failed", topic);
	}
}

/* ---- ids ------------------------------------------------------------- */

static uint64_t idhash(const tally_str *source, const tally_str *id)
{
	uint64_t h = 1469598103934665603ULL;

	for (uint32_t i = 0; i < source->len; i++)
		h = (h ^ (uint8_t)source->ptr[i]) * 1099511628211ULL;
	h = (h ^ 0xff) * 1099511628211ULL;
	for (uint32_t i = 0; i < id->len; i++)
		h = (h ^ (uint8_t)id->ptr[i]) * 1099511628211ULL;
	h ^= h >> 29;
	return h == 0 ? 1 : h;
}

/* decode usage or rated; on success fill *h */
static bool msg_id(const rd_kafka_message_t *m, bool rated, uint64_t *h,
		   tally_rated_event *re)
{
	tally_codec_error cerr;

	if (rated) {
		if (tally_codec_decode_rated(re, m->payload, m->len, &cerr) != 0)
			return false;
	} else {
		memset(re, 0, sizeof(*re));
		if (tally_codec_decode_usage(&re->ev, m->payload, m->len,
					     &cerr) != 0)
			return false;
	}
	*h = idhash(&re->ev.source, &re->ev.id);
	return true;
}

/* open-addressing map id hash -> up to two produce times */
typedef struct {
	uint64_t key;
	int64_t t[2];
	uint8_t seen, used;
} slot;
typedef struct {
	slot *s;
	size_t cap, n;
} idmap;

static slot *map_get(idmap *m, uint64_t key, bool insert)
{
	if (insert && (m->n + 1) * 10 > m->cap * 7) {
		idmap nm = {tally_xcalloc(m->cap ? m->cap * 2 : 1 << 16,
					  sizeof(slot)),
			    m->cap ? m->cap * 2 : 1 << 16, 0};
		for (size_t i = 0; i < m->cap; i++)
			if (m->s[i].key != 0) {
				slot *d = map_get(&nm, m->s[i].key, true);
				*d = m->s[i];
			}
		free(m->s);
		*m = nm;
	}
	if (m->cap == 0)
		return NULL;
	for (size_t i = key & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (m->s[i].key == key)
			return &m->s[i];
		if (m->s[i].key == 0) {
			if (!insert)
				return NULL;
			m->s[i].key = key;
			m->n++;
			return &m->s[i];
		}
	}
}

/* ---- topics ---------------------------------------------------------- */

static int cmd_topics(int argc, char **argv)
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

static int cmd_delete(int argc, char **argv)
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

static int cmd_count(int argc, char **argv)
{
	const char *brokers = need(argc, argv, "-b");
	const char *topic = need(argc, argv, "--topic");
	rd_kafka_t *rk = mk_consumer(brokers);
	int n = assign_all(rk, topic), eofs = 0;
	int64_t hi[MAXPART], count = 0, bytes = 0, t0 = tally_mono_ns();
	bool done[MAXPART] = {false};

	watermarks(rk, topic, n, hi);
	for (int p = 0; p < n; p++)
		if (hi[p] == 0) {
			done[p] = true;
			eofs++;
		}
	while (eofs < n) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 1000);
		if (m == NULL)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			if (!done[m->partition] && m->offset >= hi[m->partition]) {
				done[m->partition] = true;
				eofs++;
			}
		} else if (m->err == 0) {
			count++;
			bytes += (int64_t)m->len;
		}
		rd_kafka_message_destroy(m);
	}
	printf("{\"messages\":%" PRId64 ",\"bytes\":%" PRId64
	       ",\"seconds\":%.3f}\n",
	       count, bytes, (double)(tally_mono_ns() - t0) / 1e9);
	cons_destroy(rk);
	return 0;
}

/* ---- copy (and paced replay) ----------------------------------------- */

static int cmd_copy(int argc, char **argv)
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
	int n = assign_all(rc, from), eofs = 0;
	int64_t hi[MAXPART];
	bool done[MAXPART] = {false};
	rd_kafka_message_t **msgs = NULL;
	size_t nm = 0, cap = 0;
	int64_t t0, last = 0;

	watermarks(rc, from, n, hi);
	for (int p = 0; p < n; p++)
		if (hi[p] == 0) {
			done[p] = true;
			eofs++;
		}
	while (eofs < n && nm < max) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rc, 1000);
		if (m == NULL)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			if (!done[m->partition] && m->offset >= hi[m->partition]) {
				done[m->partition] = true;
				eofs++;
			}
			rd_kafka_message_destroy(m);
		} else if (m->err == 0) {
			if (nm == cap) {
				cap = cap ? cap * 2 : 65536;
				msgs = tally_xrealloc(msgs, cap * sizeof(*msgs));
			}
			msgs[nm++] = m;
		} else {
			rd_kafka_message_destroy(m);
		}
	}
	/* interleave partitions in offset order as they were read: the queue
	 * already mixes them; keep that order */
	rp = mk_client(RD_KAFKA_PRODUCER, brokers, pkv);
	signal(SIGINT, on_sig);
	signal(SIGTERM, on_sig);
	t0 = tally_mono_ns();
	for (size_t i = 0; i < nm && !g_stop; i++) {
		rd_kafka_message_t *m = msgs[i];
		rd_kafka_headers_t *hdrs = NULL, *copy = NULL;
		rd_kafka_resp_err_t e;

		if (rate > 0) {
			int64_t due = t0 + (int64_t)((double)i * 1e9 / (double)rate);
			int64_t now = tally_mono_ns();
			if (due > now + 200000) {
				struct timespec ts = {0, due - now};
				if (ts.tv_nsec >= 1000000000) {
					ts.tv_sec = ts.tv_nsec / 1000000000;
					ts.tv_nsec %= 1000000000;
				}
				nanosleep(&ts, NULL);
			}
		}
		if (rd_kafka_message_headers(m, &hdrs) == 0 && hdrs != NULL)
			copy = rd_kafka_headers_copy(hdrs);
		do {
			e = rd_kafka_producev(
				rp, RD_KAFKA_V_TOPIC(to),
				RD_KAFKA_V_PARTITION(m->partition),
				RD_KAFKA_V_KEY(m->key, m->key_len),
				RD_KAFKA_V_VALUE(m->payload, m->len),
				RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
				RD_KAFKA_V_HEADERS(copy), RD_KAFKA_V_END);
			if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
				rd_kafka_poll(rp, 10);
		} while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
		if (e != 0)
			die("produce: %s", rd_kafka_err2str(e));
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
	for (size_t i = 0; i < nm; i++)
		rd_kafka_message_destroy(msgs[i]);
	free(msgs);
	rd_kafka_destroy(rp);
	cons_destroy(rc);
	return 0;
}

/* ---- probe -------------------------------------------------------------
 * Online: consume DST (read_committed) and, in --mode pg, poll
 * consumer_offsets of GROUP every 20 ms, remembering when each partition's
 * next_offset advanced. In --mode kafka, a message is committed when a
 * read_committed consumer receives it (tally-rate's transactions).
 * Done when --expect messages are committed (or nothing moved for --idle-s).
 * Offline: read SRC (the stage's input, whose CreateTime is the produce
 * time) to map each event id to its produce time; latency = committed -
 * produced. Writes a JSON summary to stdout and a per-second timeline.
 */

typedef struct {
	int64_t t_ms, next;
} step;
typedef struct {
	step *v;
	size_t n, cap;
	int64_t maxoff; /* largest data offset seen in dst */
} psteps;
typedef struct {
	int64_t *v;
	size_t n, cap;
} offs;
typedef struct {
	uint64_t h;
	int64_t produced_ms; /* dst CreateTime (used when src == dst) */
	int64_t recv_ms;
	int64_t offset;
	int32_t part;
} sample;

static int64_t committed_at(const psteps *ps, int64_t off)
{
	size_t lo = 0, hi = ps->n;

	while (lo < hi) {
		size_t mid = (lo + hi) / 2;
		if (ps->v[mid].next > off)
			hi = mid;
		else
			lo = mid + 1;
	}
	return lo < ps->n ? ps->v[lo].t_ms : -1;
}

static int cmp_i64(const void *a, const void *b)
{
	int64_t x = *(const int64_t *)a, y = *(const int64_t *)b;
	return x < y ? -1 : x > y;
}

static int64_t pct(const int64_t *v, size_t n, double p)
{
	size_t i;

	if (n == 0)
		return -1;
	i = (size_t)(p * (double)(n - 1) + 0.5);
	return v[i < n ? i : n - 1];
}

typedef struct {
	int64_t end, lat;
} endlat;
static int cmp_end(const void *a, const void *b)
{
	int64_t x = ((const endlat *)a)->end, y = ((const endlat *)b)->end;
	return x < y ? -1 : x > y;
}

static int cmd_probe(int argc, char **argv)
{
	const char *brokers = need(argc, argv, "-b");
	const char *dst = need(argc, argv, "--dst");
	const char *src = opt(argc, argv, "--src", dst);
	const char *mode = opt(argc, argv, "--mode", "kafka");
	const char *dsn = opt(argc, argv, "--dsn", NULL);
	const char *group = opt(argc, argv, "--group", NULL);
	const char *label = opt(argc, argv, "--label", "probe");
	const char *tl_path = opt(argc, argv, "--timeline", NULL);
	bool src_rated = strcmp(opt(argc, argv, "--src-kind", "usage"),
				"rated") == 0;
	int64_t expect = opt_i(argc, argv, "--expect", 0);
	int64_t idle_s = opt_i(argc, argv, "--idle-s", 30);
	int64_t max_s = opt_i(argc, argv, "--max-s", 3600);
	int64_t t0 = opt_i(argc, argv, "--t0-ms", now_ms());
	bool pg = strcmp(mode, "pg") == 0, same = strcmp(src, dst) == 0;
	rd_kafka_t *rk = mk_consumer(brokers);
	int np = assign_all(rk, dst);
	psteps ps[MAXPART];
	offs po[MAXPART];
	int64_t lastnext[MAXPART];
	sample *sv = NULL;
	size_t ns = 0, scap = 0;
	PGconn *conn = NULL;
	int64_t last_poll = 0, last_progress = 0, last_move = now_ms();
	int64_t committed = 0, prev_committed = -1, undecodable = 0;
	bool complete = false, tty = isatty(2);
	tally_rated_event re;

	memset(ps, 0, sizeof(ps));
	memset(po, 0, sizeof(po));
	for (int p = 0; p < MAXPART; p++) {
		lastnext[p] = -1;
		ps[p].maxoff = -1;
	}
	if (pg) {
		if (dsn == NULL || group == NULL)
			die("%s", "--mode pg needs --dsn and --group");
		conn = PQconnectdb(dsn);
		if (PQstatus(conn) != CONNECTION_OK)
			die("pg: %s", PQerrorMessage(conn));
	}
	signal(SIGINT, on_sig);
	signal(SIGTERM, on_sig);
	while (!g_stop) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 5);
		int64_t now = now_ms();

		if (m != NULL) {
			if (m->err == 0 && m->partition < MAXPART) {
				uint64_t h = 0;
				rd_kafka_timestamp_type_t tt;
				if (!same && !msg_id(m, true, &h, &re))
					undecodable++;
				if (ns == scap) {
					scap = scap ? scap * 2 : 1 << 16;
					sv = tally_xrealloc(sv, scap * sizeof(*sv));
				}
				sv[ns].h = h;
				sv[ns].produced_ms = rd_kafka_message_timestamp(m, &tt);
				sv[ns].recv_ms = now;
				sv[ns].offset = m->offset;
				sv[ns].part = m->partition;
				ns++;
				if (m->offset > ps[m->partition].maxoff)
					ps[m->partition].maxoff = m->offset;
				{
					offs *o = &po[m->partition];
					if (o->n == o->cap) {
						o->cap = o->cap ? o->cap * 2 : 4096;
						o->v = tally_xrealloc(o->v, o->cap * sizeof(int64_t));
					}
					o->v[o->n++] = m->offset;
				}
				if (!pg) {
					committed++;
					last_move = now;
				}
			}
			rd_kafka_message_destroy(m);
		}
		if (pg && now - last_poll >= 20) {
			char q[512];
			PGresult *r;
			const char *pv[2] = {group, dst};
			last_poll = now;
			snprintf(q, sizeof(q), "%s",
				 "SELECT partition, next_offset FROM consumer_offsets"
				 " WHERE consumer_group = $1 AND topic = $2");
			r = PQexecParams(conn, q, 2, NULL, pv, NULL, NULL, 0);
			if (PQresultStatus(r) == PGRES_TUPLES_OK) {
				for (int i = 0; i < PQntuples(r); i++) {
					int p = atoi(PQgetvalue(r, i, 0));
					int64_t nx = strtoll(PQgetvalue(r, i, 1), NULL, 10);
					if (p < 0 || p >= MAXPART || nx == lastnext[p])
						continue;
					lastnext[p] = nx;
					if (ps[p].n == ps[p].cap) {
						ps[p].cap = ps[p].cap ? ps[p].cap * 2 : 1024;
						ps[p].v = tally_xrealloc(
							ps[p].v, ps[p].cap * sizeof(step));
					}
					ps[p].v[ps[p].n].t_ms = now;
					ps[p].v[ps[p].n].next = nx;
					ps[p].n++;
					last_move = now;
				}
			}
			PQclear(r);
			/* committed = received messages below their next_offset
			 * (offsets arrive in ascending order per partition) */
			committed = 0;
			for (int p = 0; p < np; p++) {
				size_t lo = 0, hi = po[p].n;
				while (lo < hi) {
					size_t mid = (lo + hi) / 2;
					if (po[p].v[mid] < lastnext[p])
						lo = mid + 1;
					else
						hi = mid;
				}
				committed += (int64_t)lo;
			}
		}
		if (now - last_progress >= 1000) {
			double el = (double)(now - t0) / 1000.0;
			last_progress = now;
			if (tty || (int64_t)el % 5 == 0)
				fprintf(stderr,
					"%s  %-28s %9" PRId64 "/%-9" PRId64
					" committed  %8.0f ev/s  %5.0fs   %s",
					tty ? "\r" : "", label, committed, expect,
					el > 0 ? (double)committed / el : 0.0, el,
					tty ? "" : "\n");
			if (committed == prev_committed && now - last_move > idle_s * 1000)
				break;
			prev_committed = committed;
		}
		if (expect > 0 && committed >= expect) {
			complete = true;
			break;
		}
		if (now - t0 > max_s * 1000)
			break;
	}
	if (tty)
		fprintf(stderr, "\n");
	cons_destroy(rk);
	if (conn != NULL)
		PQfinish(conn);

	/* offline: produce times from src */
	idmap map = {0};
	if (!same) {
		rd_kafka_t *rs = mk_consumer(brokers);
		int n = assign_all(rs, src), eofs = 0;
		int64_t hi[MAXPART];
		bool done[MAXPART] = {false};
		watermarks(rs, src, n, hi);
		for (int p = 0; p < n; p++)
			if (hi[p] == 0) {
				done[p] = true;
				eofs++;
			}
		while (eofs < n) {
			rd_kafka_message_t *m = rd_kafka_consumer_poll(rs, 1000);
			if (m == NULL)
				continue;
			if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
				if (!done[m->partition] && m->offset >= hi[m->partition]) {
					done[m->partition] = true;
					eofs++;
				}
			} else if (m->err == 0) {
				uint64_t h;
				rd_kafka_timestamp_type_t tt;
				if (msg_id(m, src_rated, &h, &re)) {
					slot *s = map_get(&map, h, true);
					if (s->seen < 2)
						s->t[s->seen] = rd_kafka_message_timestamp(m, &tt);
					if (s->seen < 255)
						s->seen++;
				}
			}
			rd_kafka_message_destroy(m);
		}
		cons_destroy(rs);
	}

	int64_t *lat = tally_xcalloc(ns + 1, sizeof(int64_t));
	endlat *el = tally_xcalloc(ns + 1, sizeof(endlat));
	size_t nl = 0;
	int64_t t_last = t0, unmatched = 0, uncommitted = 0;
	for (size_t i = 0; i < ns; i++) {
		int64_t start, end;
		if (pg) {
			end = committed_at(&ps[sv[i].part], sv[i].offset);
			if (end < 0) {
				uncommitted++;
				continue;
			}
		} else {
			end = sv[i].recv_ms;
		}
		if (end > t_last)
			t_last = end;
		if (same) {
			start = sv[i].produced_ms;
		} else {
			slot *s = map_get(&map, sv[i].h, false);
			if (s == NULL || s->seen == 0) {
				unmatched++;
				continue;
			}
			start = s->t[s->used < 2 && s->used < s->seen ? s->used : (s->seen > 1 ? 1 : 0)];
			if (s->used < 255)
				s->used++;
		}
		lat[nl] = end - start;
		el[nl].end = end;
		el[nl].lat = end - start;
		nl++;
	}
	double secs = (double)(t_last - t0) / 1000.0;
	/* timeline: per second since t0: committed events, p50/p99 latency */
	if (tl_path != NULL) {
		FILE *fp = fopen(tl_path, "w");
		if (fp == NULL)
			die("cannot write %s", tl_path);
		qsort(el, nl, sizeof(endlat), cmp_end);
		fprintf(fp, "# t_s\tevents_per_s\tp50_ms\tp99_ms\n");
		size_t i = 0;
		int64_t *buf = tally_xcalloc(nl + 1, sizeof(int64_t));
		for (int64_t sec = 0; i < nl; sec++) {
			size_t k = 0;
			while (i < nl && el[i].end < t0 + (sec + 1) * 1000) {
				buf[k++] = el[i].lat;
				i++;
			}
			qsort(buf, k, sizeof(int64_t), cmp_i64);
			fprintf(fp, "%" PRId64 "\t%zu\t%" PRId64 "\t%" PRId64 "\n",
				sec, k, k ? pct(buf, k, 0.5) : 0,
				k ? pct(buf, k, 0.99) : 0);
		}
		free(buf);
		fclose(fp);
	}
	qsort(lat, nl, sizeof(int64_t), cmp_i64);
	printf("{\"events\":%zu,\"expected\":%" PRId64 ",\"complete\":%s,"
	       "\"seconds\":%.3f,\"events_per_s\":%.1f,"
	       "\"latency_samples\":%zu,\"p50_ms\":%" PRId64 ",\"p99_ms\":%" PRId64
	       ",\"max_ms\":%" PRId64 ",\"unmatched\":%" PRId64
	       ",\"uncommitted\":%" PRId64 ",\"undecodable\":%" PRId64 "}\n",
	       ns, expect, complete ? "true" : "false", secs,
	       secs > 0 ? (double)(expect > 0 && complete ? expect : (int64_t)ns) / secs : 0.0,
	       nl, pct(lat, nl, 0.5), pct(lat, nl, 0.99),
	       nl ? lat[nl - 1] : -1, unmatched, uncommitted, undecodable);
	free(lat);
	free(el);
	free(sv);
	free(map.s);
	for (int p = 0; p < MAXPART; p++) {
		free(ps[p].v);
		free(po[p].v);
	}
	return complete ? 0 : 3;
}

/* ---- ledger rows --------------------------------------------------------- */

static void digest(uint8_t out[16], const tally_str *source,
		   const tally_str *id)
{
	EVP_MD_CTX *c = EVP_MD_CTX_new();
	char len[24];
	unsigned int ol = 16;
	int n = snprintf(len, sizeof(len), "%u:", source->len);

	EVP_DigestInit_ex(c, EVP_md5(), NULL);
	EVP_DigestUpdate(c, len, (size_t)n);
	EVP_DigestUpdate(c, source->ptr, source->len);
	EVP_DigestUpdate(c, id->ptr, id->len);
	EVP_DigestFinal_ex(c, out, &ol);
	EVP_MD_CTX_free(c);
}

/* small ids for provider/model names, like the lookup tables */
typedef struct {
	char name[64];
	int id;
} dict_e;
static dict_e g_dict[2][512];
static int g_ndict[2];
static int dict_id(int which, const tally_str *s)
{
	char b[64];
	size_t l = s->len < 63 ? s->len : 63;

	if (s->len == 0)
		return 0;
	memcpy(b, s->ptr, l);
	b[l] = 0;
	for (int i = 0; i < g_ndict[which]; i++)
		if (strcmp(g_dict[which][i].name, b) == 0)
			return g_dict[which][i].id;
	if (g_ndict[which] < 512) {
		memcpy(g_dict[which][g_ndict[which]].name, b, l + 1);
		g_dict[which][g_ndict[which]].id = g_ndict[which] + 1;
		g_ndict[which]++;
	}
	return g_ndict[which];
}

static const char LEDGER_COLS[] =
	"occurred_at, price_id, quantity, input_tokens, output_tokens,"
	" cache_read_tokens, cache_write_tokens, reasoning_tokens, tenant_id,"
	" digest, model_id, steps, meter_id, provider_id, cost";

#define NCOLS 15

/* fill the 15 column texts of one ledger row; NULL for SQL NULL */
static void ledger_row(const tally_rated_event *re, char cols[NCOLS][64],
		       const char *vals[NCOLS])
{
	const tally_usage_event *e = &re->ev;
	uint8_t d[16];
	time_t sec = (time_t)(e->time_ms / 1000);
	struct tm tm;
	bool ai = e->meter == TALLY_METER_AI_TOKENS;
	int64_t qty = ai ? 1 :
		      e->meter == TALLY_METER_WORKFLOW ? e->complexity :
		      e->meter == TALLY_METER_STORAGE ? e->bytes : e->count;

	gmtime_r(&sec, &tm);
	snprintf(cols[0], 64, "%04d-%02d-%02d %02d:%02d:%02d.%03d+00",
		 tm.tm_year + 1900, tm.tm_mon + 1, tm.tm_mday, tm.tm_hour,
		 tm.tm_min, tm.tm_sec, (int)(e->time_ms % 1000));
	snprintf(cols[1], 64, "%" PRId64, re->price_id);
	snprintf(cols[2], 64, "%" PRId64, qty);
	snprintf(cols[3], 64, "%" PRId64, e->input_tokens);
	snprintf(cols[4], 64, "%" PRId64, e->output_tokens);
	snprintf(cols[5], 64, "%" PRId64, e->cache_read_tokens);
	snprintf(cols[6], 64, "%" PRId64, e->cache_write_tokens);
	snprintf(cols[7], 64, "%" PRId64, e->reasoning_tokens);
	tally_uuid_fmt(cols[8], e->tenant_id);
	digest(d, &e->source, &e->id);
	tally_uuid_fmt(cols[9], d);
	snprintf(cols[10], 64, "%d", dict_id(1, &e->model));
	snprintf(cols[11], 64, "%" PRId64, e->steps);
	snprintf(cols[12], 64, "%d", (int)e->meter);
	snprintf(cols[13], 64, "%d", dict_id(0, &e->provider));
	tally_money_fmt(cols[14], 64, re->cost);
	for (int i = 0; i < NCOLS; i++)
		vals[i] = cols[i];
	if (!ai) {
		for (int i = 3; i <= 7; i++)
			vals[i] = NULL;
		vals[10] = vals[13] = NULL;
	}
	if (e->meter != TALLY_METER_WORKFLOW)
		vals[11] = NULL;
	if (re->unpriced)
		vals[1] = NULL;
}

static const char BENCH_TABLE[] =
	"CREATE TABLE IF NOT EXISTS %s ("
	" occurred_at timestamptz NOT NULL, price_id bigint,"
	" prev_price_id bigint, quantity bigint NOT NULL, input_tokens bigint,"
	" output_tokens bigint, cache_read_tokens bigint,"
	" cache_write_tokens bigint, reasoning_tokens bigint,"
	" tenant_id uuid NOT NULL, digest uuid NOT NULL, model_id integer,"
	" steps integer, meter_id smallint NOT NULL, provider_id smallint,"
	" cost numeric NOT NULL, PRIMARY KEY (tenant_id, digest))";

static PGconn *pg_open(const char *dsn, const char *table)
{
	PGconn *c = PQconnectdb(dsn);
	char q[1024];
	PGresult *r;

	if (PQstatus(c) != CONNECTION_OK)
		die("pg: %s", PQerrorMessage(c));
	snprintf(q, sizeof(q), BENCH_TABLE, table);
	r = PQexec(c, q);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die("pg: %s", PQerrorMessage(c));
	PQclear(r);
	return c;
}

static int cmd_ledger_rows(int argc, char **argv)
{
	const char *brokers = need(argc, argv, "-b");
	const char *topic = need(argc, argv, "--topic");
	const char *out = need(argc, argv, "--out");
	FILE *fp = fopen(out, "w");
	rd_kafka_t *rk = mk_consumer(brokers);
	int n = assign_all(rk, topic), eofs = 0;
	int64_t hi[MAXPART], rows = 0, dups = 0, bad = 0;
	bool done[MAXPART] = {false};
	idmap seen = {0};
	tally_rated_event re;

	if (fp == NULL)
		die("cannot write %s", out);
	watermarks(rk, topic, n, hi);
	for (int p = 0; p < n; p++)
		if (hi[p] == 0) {
			done[p] = true;
			eofs++;
		}
	while (eofs < n) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 1000);
		uint64_t h;
		if (m == NULL)
			continue;
		if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			if (!done[m->partition] && m->offset >= hi[m->partition]) {
				done[m->partition] = true;
				eofs++;
			}
		} else if (m->err == 0) {
			if (!msg_id(m, true, &h, &re)) {
				bad++;
			} else {
				/* dedupe on (tenant, source, id) */
				h ^= (uint64_t)re.ev.tenant_id[0] << 56 ^
				     (uint64_t)re.ev.tenant_id[15] << 48;
				slot *s = map_get(&seen, h ? h : 1, true);
				if (s->seen++) {
					dups++;
				} else {
					char cols[NCOLS][64];
					const char *v[NCOLS];
					ledger_row(&re, cols, v);
					for (int i = 0; i < NCOLS; i++)
						fprintf(fp, "%s%s", i ? "\t" : "",
							v[i] ? v[i] : "\\N");
					fputc('\n', fp);
					rows++;
				}
			}
		}
		rd_kafka_message_destroy(m);
	}
	fclose(fp);
	printf("{\"rows\":%" PRId64 ",\"duplicates\":%" PRId64
	       ",\"undecodable\":%" PRId64 "}\n", rows, dups, bad);
	free(seen.s);
	cons_destroy(rk);
	return 0;
}

static int cmd_pgcopy(int argc, char **argv)
{
	const char *dsn = need(argc, argv, "--dsn");
	const char *table = opt(argc, argv, "--table", "bench_copy");
	const char *file = need(argc, argv, "--file");
	PGconn *c = pg_open(dsn, table);
	FILE *fp = fopen(file, "r");
	char q[1024], *buf = tally_xmalloc(1 << 20);
	size_t got;
	int64_t rows = 0, t0;
	PGresult *r;

	if (fp == NULL)
		die("cannot read %s", file);
	snprintf(q, sizeof(q), "COPY %s (%s) FROM STDIN", table, LEDGER_COLS);
	t0 = tally_mono_ns();
	r = PQexec(c, q);
	if (PQresultStatus(r) != PGRES_COPY_IN)
		die("copy: %s", PQerrorMessage(c));
	PQclear(r);
	while ((got = fread(buf, 1, 1 << 20, fp)) > 0) {
		for (size_t i = 0; i < got; i++)
			rows += buf[i] == '\n';
		if (PQputCopyData(c, buf, (int)got) != 1)
			die("copy: %s", PQerrorMessage(c));
	}
	if (PQputCopyEnd(c, NULL) != 1)
		die("copy: %s", PQerrorMessage(c));
	r = PQgetResult(c);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die("copy: %s", PQerrorMessage(c));
	PQclear(r);
	double s = (double)(tally_mono_ns() - t0) / 1e9;
	printf("{\"rows\":%" PRId64 ",\"seconds\":%.3f,\"rows_per_s\":%.1f}\n",
	       rows, s, s > 0 ? (double)rows / s : 0.0);
	fclose(fp);
	free(buf);
	PQfinish(c);
	return 0;
}

/* ---- naive baseline ----------------------------------------------------- */

static int cmd_naive(int argc, char **argv)
{
	const char *brokers = need(argc, argv, "-b");
	const char *topic = need(argc, argv, "--topic");
	const char *dsn = need(argc, argv, "--dsn");
	const char *table = opt(argc, argv, "--table", "bench_naive");
	int64_t seconds = opt_i(argc, argv, "--seconds", 10);
	int64_t max = opt_i(argc, argv, "--max", INT64_MAX);
	PGconn *c = pg_open(dsn, table);
	rd_kafka_t *rk = mk_consumer(brokers);
	char q[1024];
	PGresult *r;
	int64_t n = 0, inserted = 0, t0 = 0, bad = 0;
	tally_rated_event re;

	snprintf(q, sizeof(q),
		 "INSERT INTO %s (%s) VALUES ($1,$2,$3,$4,$5,$6,$7,$8,$9,$10,"
		 "$11,$12,$13,$14,$15) ON CONFLICT DO NOTHING",
		 table, LEDGER_COLS);
	r = PQprepare(c, "ins", q, NCOLS, NULL);
	if (PQresultStatus(r) != PGRES_COMMAND_OK)
		die("prepare: %s", PQerrorMessage(c));
	PQclear(r);
	assign_all(rk, topic);
	signal(SIGINT, on_sig);
	signal(SIGTERM, on_sig);
	while (!g_stop && n < max) {
		rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 1000);
		uint64_t h;
		if (m == NULL)
			continue;
		if (m->err == 0) {
			if (t0 == 0)
				t0 = tally_mono_ns();
			if (!msg_id(m, true, &h, &re)) {
				bad++;
			} else {
				char cols[NCOLS][64];
				const char *v[NCOLS];
				ledger_row(&re, cols, v);
				/* autocommit: the INSERT is its own transaction
				 * (BEGIN ... COMMIT per event) */
				r = PQexecPrepared(c, "ins", NCOLS, v, NULL, NULL, 0);
				if (PQresultStatus(r) != PGRES_COMMAND_OK)
					die("insert: %s", PQerrorMessage(c));
				inserted += atoi(PQcmdTuples(r));
				PQclear(r);
			}
			n++;
			if (tally_mono_ns() - t0 > seconds * 1000000000LL) {
				rd_kafka_message_destroy(m);
				break;
			}
		} else if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
			/* keep waiting for more (or the time limit) */
		}
		rd_kafka_message_destroy(m);
	}
	double s = t0 ? (double)(tally_mono_ns() - t0) / 1e9 : 0;
	printf("{\"events\":%" PRId64 ",\"inserted\":%" PRId64
	       ",\"seconds\":%.3f,\"events_per_s\":%.1f,\"undecodable\":%" PRId64
	       "}\n", n, inserted, s, s > 0 ? (double)n / s : 0.0, bad);
	cons_destroy(rk);
	PQfinish(c);
	return 0;
}

/* ---- synthetic events (self-test only) ---------------------------------- */

static int cmd_synth(int argc, char **argv)
{
	const char *brokers = need(argc, argv, "-b");
	const char *topic = need(argc, argv, "--topic");
	bool rated = strcmp(opt(argc, argv, "--kind", "usage"), "rated") == 0;
	int64_t n = opt_i(argc, argv, "--events", 100000);
	int64_t tenants = opt_i(argc, argv, "--tenants", 1000);
	const char *pkv[] = {"linger.ms", "5", "batch.num.messages", "10000",
			     "queue.buffering.max.messages", "1000000", NULL};
	rd_kafka_t *rp = mk_client(RD_KAFKA_PRODUCER, brokers, pkv);
	msgpack_sbuffer sb;
	uint64_t x = 88172645463325252ULL;
	int64_t base = now_ms() - 3600 * 1000;
	static const char *models[] = {"gpt-4o", "gpt-4o-mini",
				       "claude-3-5-sonnet", "gemini-1.5-pro"};

	msgpack_sbuffer_init(&sb);
	for (int64_t i = 0; i < n; i++) {
		tally_rated_event re;
		char id[32], tid[37];
		int64_t t = i % 20 == 7 && i > 0 ? i - 1 : i; /* 5% dups */
		memset(&re, 0, sizeof(re));
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		snprintf(id, sizeof(id), "ev-%" PRId64, t);
		re.ev.id.ptr = id;
		re.ev.id.len = (uint32_t)strlen(id);
		re.ev.source.ptr = "bench/synth";
		re.ev.source.len = 11;
		memset(re.ev.tenant_id, 0x11, 16);
		re.ev.tenant_id[15] = (uint8_t)(t % tenants);
		re.ev.tenant_id[14] = (uint8_t)((t % tenants) >> 8);
		re.ev.tenant_id[6] = 0x41;
		re.ev.tenant_id[8] = 0x81;
		re.ev.time_ms = base + t * 10;
		re.ev.meter = TALLY_METER_AI_TOKENS;
		re.ev.provider.ptr = "openai";
		re.ev.provider.len = 6;
		re.ev.model.ptr = models[t % 4];
		re.ev.model.len = (uint32_t)strlen(models[t % 4]);
		re.ev.input_tokens = 1000 + (int64_t)(x % 5000);
		re.ev.output_tokens = 100 + (int64_t)(x % 700);
		re.ev.cache_read_tokens = 200;
		re.cost = re.ev.input_tokens * 2500000 + re.ev.output_tokens * 10000000;
		re.components[TALLY_COMP_INPUT] = re.ev.input_tokens * 2500000;
		re.components[TALLY_COMP_OUTPUT] = re.ev.output_tokens * 10000000;
		re.cost = re.components[0] + re.components[TALLY_COMP_OUTPUT];
		memcpy(re.currency, "USD", 4);
		re.price_id = 1 + t % 4;
		re.rated_at_ms = now_ms();
		msgpack_sbuffer_clear(&sb);
		if (rated)
			tally_codec_encode_rated(&sb, &re);
		else
			tally_codec_encode_usage(&sb, &re.ev);
		tally_uuid_fmt(tid, re.ev.tenant_id);
		rd_kafka_resp_err_t e;
		do {
			e = rd_kafka_producev(rp, RD_KAFKA_V_TOPIC(topic),
					      RD_KAFKA_V_KEY(tid, 36),
					      RD_KAFKA_V_VALUE(sb.data, sb.size),
					      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
					      RD_KAFKA_V_END);
			if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
				rd_kafka_poll(rp, 10);
		} while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
		rd_kafka_poll(rp, 0);
	}
	rd_kafka_flush(rp, 60000);
	msgpack_sbuffer_destroy(&sb);
	rd_kafka_destroy(rp);
	printf("{\"messages\":%" PRId64 "}\n", n);
	return 0;
}

/* ---- workload: the generator (tally_gen) through the producer API ----- */

static int64_t frac(int argc, char **argv, const char *name, const char *def)
{
	const char *s = opt(argc, argv, name, def);
	int64_t v;

	if (tally_money_parse(&v, s, strlen(s)) != 0 || v < 0 ||
	    v > INT64_C(1000000000000))
		die("bad fraction for %s: %s", name, s);
	return v;
}

static int cmd_gen(int argc, char **argv)
{
	const char *cfgp = need(argc, argv, "--config");
	const char *topic = need(argc, argv, "--topic");
	const char *expected = opt(argc, argv, "--expected", NULL);
	const char *models_path = opt(argc, argv, "--models", NULL);
	const char *label = opt(argc, argv, "--label", NULL);
	tally_gen_opts o;
	tally_gen *g = NULL;
	tally_config *cfg = NULL;
	tally_producer *pr = NULL;
	tally_producer_opts po = {0};
	tally_error err;
	char *models[512], line[512];
	size_t nmodels = 0;
	tally_usage_event ev;
	bool dup;
	uint64_t sent = 0, delivered = 0, failed = 0;
	int64_t t0 = tally_mono_ns(), last = 0, now = now_ms();

	tally_gen_opts_init(&o);
	o.events = (uint64_t)opt_i(argc, argv, "--events", 2000000);
	o.tenants = (uint32_t)opt_i(argc, argv, "--tenants", 1000);
	o.seed = (uint64_t)opt_i(argc, argv, "--seed", 1);
	/* recent event times: inside the aggregate's lateness window */
	o.to_ms = opt_i(argc, argv, "--to-ms", now - 10 * 60 * 1000);
	o.from_ms = opt_i(argc, argv, "--from-ms", o.to_ms - 2 * 86400000LL);
	o.dup_frac = frac(argc, argv, "--dup", "0.05");
	o.ooo_frac = frac(argc, argv, "--ooo", "0.02");
	o.late_frac = frac(argc, argv, "--late", "0.001");
	if (models_path != NULL) {
		FILE *fp = fopen(models_path, "r");
		if (fp == NULL)
			die("cannot read %s", models_path);
		while (nmodels < 512 && fgets(line, sizeof(line), fp) != NULL) {
			size_t l = strcspn(line, "\r\n");
			line[l] = 0;
			if (l == 0 || line[0] == '#')
				continue;
			models[nmodels++] = tally_xstrdup(line);
		}
		fclose(fp);
		o.models = (const char **)models;
		o.nmodels = nmodels;
	}
	if (tally_config_load(&cfg, cfgp, &err) != 0)
		die("%s", err.msg);
	if (tally_gen_new(&g, &o, &err) != 0)
		die("gen: %s", err.msg);
	po.topic = topic;
	if (tally_producer_new(&pr, cfg, &po, &err) != 0)
		die("producer: %s", err.msg);
	while (tally_gen_next(g, &ev, &dup)) {
		if (tally_producer_send_usage(pr, &ev, NULL, &err) != 0)
			die("send: %s", err.msg);
		sent++;
		if ((sent & 4095) == 0) {
			tally_producer_poll(pr, 0);
			if (label != NULL && tally_mono_ns() - last > 1000000000) {
				last = tally_mono_ns();
				fprintf(stderr, "\r  %s: %" PRIu64 "/%" PRIu64 "  ",
					label, sent, o.events);
			}
		}
	}
	if (tally_producer_flush(pr, 120000, &err) != 0)
		die("flush: %s", err.msg);
	tally_producer_counts(pr, &delivered, &failed);
	if (label != NULL)
		fprintf(stderr, "\r  %s: %" PRIu64 "/%" PRIu64 "  \n", label,
			sent, o.events);
	if (expected != NULL) {
		json_t *j = tally_gen_totals_json(g);
		json_object_set_new(j, "from_ms", json_integer(o.from_ms));
		json_object_set_new(j, "to_ms", json_integer(o.to_ms));
		if (json_dump_file(j, expected, JSON_COMPACT) != 0)
			die("cannot write %s", expected);
		json_decref(j);
	}
	printf("{\"sent\":%" PRIu64 ",\"delivered\":%" PRIu64
	       ",\"failed\":%" PRIu64 ",\"seconds\":%.3f}\n",
	       sent, delivered, failed, (double)(tally_mono_ns() - t0) / 1e9);
	tally_producer_free(pr);
	tally_gen_free(g);
	tally_config_free(cfg);
	for (size_t i = 0; i < nmodels; i++)
		free(models[i]);
	return failed == 0 && delivered == sent ? 0 : 1;
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: tally-bench topics|copy|probe|naive|"
				"ledger-rows|pgcopy|count|synth ...\n");
		return 2;
	}
	argc--;
	argv++;
	if (strcmp(argv[0], "topics") == 0)
		return cmd_topics(argc, argv);
	if (strcmp(argv[0], "copy") == 0)
		return cmd_copy(argc, argv);
	if (strcmp(argv[0], "probe") == 0)
		return cmd_probe(argc, argv);
	if (strcmp(argv[0], "naive") == 0)
		return cmd_naive(argc, argv);
	if (strcmp(argv[0], "ledger-rows") == 0)
		return cmd_ledger_rows(argc, argv);
	if (strcmp(argv[0], "pgcopy") == 0)
		return cmd_pgcopy(argc, argv);
	if (strcmp(argv[0], "delete") == 0)
		return cmd_delete(argc, argv);
	if (strcmp(argv[0], "count") == 0)
		return cmd_count(argc, argv);
	if (strcmp(argv[0], "gen") == 0)
		return cmd_gen(argc, argv);
	if (strcmp(argv[0], "synth") == 0)
		return cmd_synth(argc, argv);
	fprintf(stderr, "tally-bench: unknown command %s\n", argv[0]);
	return 2;
}
