#ifndef TALLY_TESTS_PROGRAM_SUPPORT_H
#define TALLY_TESTS_PROGRAM_SUPPORT_H

/*
 * program_support.h - for tests that run the programs as children: read a
 * whole log file, scrape a child's /metrics, and import the genai price
 * book into a database (what tally-rate needs to price the usual test
 * models).
 */

#include <check.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "tally/common.h"
#include "tally/pg.h"
#include "tally/pricebook_pg.h"

/* The file's text (at most 4 MiB; "" if unreadable); caller frees. */
static inline char *prog_slurp(const char *path)
{
	FILE *fp = fopen(path, "rb");
	char *buf = tally_xcalloc(1, 1 << 22);

	if (fp != NULL) {
		size_t n = fread(buf, 1, (1 << 22) - 1, fp);

		buf[n] = '\0';
		fclose(fp);
	}
	return buf;
}

/*
 * The sum of the lines of series on the /metrics of the child whose log
 * (level info) is log_path: series is a name, or a name with its labels
 * (`name{a="b"}`), matched up to the value.
 */
static inline int64_t prog_metric(const char *log_path, const char *series)
{
	char *text = prog_slurp(log_path), *p, cmd[128], line[512];
	size_t n = strlen(series);
	int64_t sum = 0;
	long port;
	FILE *fp;

	p = strstr(text, "\"metrics.listening\"");
	ck_assert_msg(p != NULL && (p = strstr(p, "\"port\":")) != NULL,
		      "%s logs its metrics port", log_path);
	port = strtol(p + 7, NULL, 10);
	free(text);
	snprintf(cmd, sizeof(cmd), "curl -sf http://127.0.0.1:%ld/metrics",
		 port);
	fp = popen(cmd, "r");
	ck_assert(fp != NULL);
	while (fgets(line, sizeof(line), fp) != NULL)
		if (strncmp(line, series, n) == 0 &&
		    (line[n] == ' ' || line[n] == '{'))
			sum += strtoll(strrchr(line, ' ') + 1, NULL, 10);
	ck_assert_int_eq(pclose(fp), 0);
	return sum;
}

/* data/genai-prices-*.json into the database at dsn */
static inline void prog_import_prices(const char *dsn)
{
	char *text = prog_slurp(TALLY_SOURCE_DIR "/data/genai-prices-0.1.8.json");
	tally_price_import_stats st;
	tally_pg *pg = NULL;
	tally_error err;

	ck_assert_msg(*text != '\0', "price data missing");
	ck_assert(tally_pg_connect(&pg, dsn, 10000, &err) == 0);
	ck_assert_msg(tally_pricebook_import_genai(pg, text, strlen(text),
						   "test", tally_now_ms(), &st,
						   &err) == 0,
		      "import: %s", err.msg);
	free(text);
	tally_pg_free(pg);
}

#endif /* TALLY_TESTS_PROGRAM_SUPPORT_H */
