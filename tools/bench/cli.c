/* tally-bench: options (--name value), fatal errors and the stop signal */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

volatile sig_atomic_t g_stop;
void on_sig(int s) { (void)s; g_stop = 1; }

void die(const char *fmt, ...)
{
	va_list ap;

	fprintf(stderr, "tally-bench: ");
	va_start(ap, fmt);
	vfprintf(stderr, fmt, ap);
	va_end(ap);
	fprintf(stderr, "\n");
	exit(2);
}

/* ---- options: --name value ------------------------------------------ */

const char *opt(int argc, char **argv, const char *name,
		const char *def)
{
	for (int i = 1; i + 1 < argc; i++)
		if (strcmp(argv[i], name) == 0)
			return argv[i + 1];
	return def;
}

int64_t opt_i(int argc, char **argv, const char *name, int64_t def)
{
	const char *s = opt(argc, argv, name, NULL);
	int64_t v;

	if (s == NULL)
		return def;
	if (tally_parse_i64(&v, s) != 0)
		die("bad number for %s", name);
	return v;
}

const char *need(int argc, char **argv, const char *name)
{
	const char *s = opt(argc, argv, name, NULL);

	if (s == NULL)
		die("missing %s", name);
	return s;
}
