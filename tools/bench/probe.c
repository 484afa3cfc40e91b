/* tally-bench: event-to-committed latency and throughput of a stage */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

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

/* the first two produce times of each event id of the source topic */
typedef struct {
	idmap *map;
	bool rated;
} produce_times;

static int note_produce_time(rd_kafka_message_t *m, void *ctx)
{
	produce_times *pt = ctx;
	tally_rated_event re;
	rd_kafka_timestamp_type_t tt;
	uint64_t h;

	if (msg_id(m, pt->rated, &h, &re)) {
		slot *s = map_get(pt->map, h, true);
		if (s->seen < 2)
			s->t[s->seen] = rd_kafka_message_timestamp(m, &tt);
		if (s->seen < 255)
			s->seen++;
	}
	return READ_NEXT;
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

int cmd_probe(int argc, char **argv)
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
		produce_times pt = { &map, src_rated };

		read_to_end(rs, src, note_produce_time, &pt);
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
	/* steady: the second half of the events over their own time span,
	 * past the consumers' start-up (as the peer's steady rows/s) */
	double steady = 0.0;
	qsort(el, nl, sizeof(endlat), cmp_end);
	if (nl >= 2 && t_last > el[nl / 2].end)
		steady = (double)(nl - nl / 2) /
			 ((double)(t_last - el[nl / 2].end) / 1000.0);
	/* timeline: per second since t0: committed events, p50/p99 latency */
	if (tl_path != NULL) {
		FILE *fp = fopen(tl_path, "w");
		if (fp == NULL)
			die("cannot write %s", tl_path);
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
	       "\"steady_events_per_s\":%.1f,"
	       "\"latency_samples\":%zu,\"p50_ms\":%" PRId64 ",\"p99_ms\":%" PRId64
	       ",\"max_ms\":%" PRId64 ",\"unmatched\":%" PRId64
	       ",\"uncommitted\":%" PRId64 ",\"undecodable\":%" PRId64 "}\n",
	       ns, expect, complete ? "true" : "false", secs,
	       secs > 0 ? (double)(expect > 0 && complete ? expect : (int64_t)ns) / secs : 0.0,
	       steady,
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
