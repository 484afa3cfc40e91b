/*
 * bench.h - what the parts of tally-bench (tools/bench) share: options,
 * Kafka clients, event ids, the ledger rows and the commands.
 */
#ifndef TALLY_BENCH_H
#define TALLY_BENCH_H

#include "tally/codec.h"
#include "tally/common.h"
#include "tally/event.h"

#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdbool.h>
#include <stdint.h>

#define MAXPART 256

/* set by on_sig (SIGINT/SIGTERM): stop producing or consuming */
extern volatile sig_atomic_t g_stop;
void on_sig(int s);

void die(const char *fmt, ...) TALLY_PRINTF(1, 2) TALLY_NORETURN;

static inline int64_t now_ms(void) { return tally_now_ms(); }

/* options: --name value */
const char *opt(int argc, char **argv, const char *name, const char *def);
int64_t opt_i(int argc, char **argv, const char *name, int64_t def);
const char *need(int argc, char **argv, const char *name);

/* kafka */
rd_kafka_t *mk_client(rd_kafka_type_t type, const char *brokers,
		      const char **kv);
rd_kafka_t *mk_consumer(const char *brokers);
int npartitions(rd_kafka_t *rk, const char *topic);
void cons_destroy(rd_kafka_t *rk);
int assign_all(rd_kafka_t *rk, const char *topic);
void watermarks(rd_kafka_t *rk, const char *topic, int n, int64_t *hi);
/* what a read_to_end callback did with a message (flags) */
enum { READ_NEXT = 0, READ_KEEP = 1, READ_STOP = 2 };
typedef int (*read_fn)(rd_kafka_message_t *m, void *ctx);
void read_to_end(rd_kafka_t *rk, const char *topic, read_fn fn, void *ctx);

/* ids */
bool msg_id(const rd_kafka_message_t *m, bool rated, uint64_t *h,
	    tally_rated_event *re);

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

slot *map_get(idmap *m, uint64_t key, bool insert);

/* ledger rows */
extern const char LEDGER_COLS[];

#define NCOLS 15

void ledger_row(const tally_rated_event *re, char cols[NCOLS][64],
		const char *vals[NCOLS]);
PGconn *pg_open(const char *dsn, const char *table);

/* the commands; each returns the exit status */
int cmd_topics(int argc, char **argv);
int cmd_delete(int argc, char **argv);
int cmd_count(int argc, char **argv);
int cmd_group_ready(int argc, char **argv);
int cmd_copy(int argc, char **argv);
int cmd_probe(int argc, char **argv);
int cmd_ledger_rows(int argc, char **argv);
int cmd_pgcopy(int argc, char **argv);
int cmd_naive(int argc, char **argv);
int cmd_synth(int argc, char **argv);
int cmd_gen(int argc, char **argv);

#endif
