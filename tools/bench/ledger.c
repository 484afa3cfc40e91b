/* tally-bench: rated events as ledger rows (COPY text, PostgreSQL) */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include "tally/money.h"

#include <inttypes.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

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

const char LEDGER_COLS[] =
	"occurred_at, price_id, quantity, input_tokens, output_tokens,"
	" cache_read_tokens, cache_write_tokens, reasoning_tokens, tenant_id,"
	" digest, model_id, steps, meter_id, provider_id, cost";

/* fill the 15 column texts of one ledger row; NULL for SQL NULL */
void ledger_row(const tally_rated_event *re, char cols[NCOLS][64],
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

PGconn *pg_open(const char *dsn, const char *table)
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

typedef struct {
	FILE *fp;
	idmap seen;
	int64_t rows, dups, bad;
} ledger_out;

/* one ledger row per unique rated event (tenant, source, id) */
static int ledger_one(rd_kafka_message_t *m, void *ctx)
{
	ledger_out *o = ctx;
	tally_rated_event re;
	uint64_t h;

	if (!msg_id(m, true, &h, &re)) {
		o->bad++;
		return READ_NEXT;
	}
	h ^= (uint64_t)re.ev.tenant_id[0] << 56 ^
	     (uint64_t)re.ev.tenant_id[15] << 48;
	slot *s = map_get(&o->seen, h ? h : 1, true);
	if (s->seen++) {
		o->dups++;
	} else {
		char cols[NCOLS][64];
		const char *v[NCOLS];
		ledger_row(&re, cols, v);
		for (int i = 0; i < NCOLS; i++)
			fprintf(o->fp, "%s%s", i ? "\t" : "",
				v[i] ? v[i] : "\\N");
		fputc('\n', o->fp);
		o->rows++;
	}
	return READ_NEXT;
}

int cmd_ledger_rows(int argc, char **argv)
{
	const char *brokers = need(argc, argv, "-b");
	const char *topic = need(argc, argv, "--topic");
	const char *out = need(argc, argv, "--out");
	ledger_out o = { fopen(out, "w"), { 0 }, 0, 0, 0 };
	rd_kafka_t *rk;

	if (o.fp == NULL)
		die("cannot write %s", out);
	rk = mk_consumer(brokers);
	read_to_end(rk, topic, ledger_one, &o);
	fclose(o.fp);
	printf("{\"rows\":%" PRId64 ",\"duplicates\":%" PRId64
	       ",\"undecodable\":%" PRId64 "}\n", o.rows, o.dups, o.bad);
	free(o.seen.s);
	cons_destroy(rk);
	return 0;
}

int cmd_pgcopy(int argc, char **argv)
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
