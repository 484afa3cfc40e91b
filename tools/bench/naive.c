/* tally-bench: the naive baseline (one INSERT and COMMIT per event) */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>

int cmd_naive(int argc, char **argv)
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
