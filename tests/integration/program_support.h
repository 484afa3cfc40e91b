#ifndef TALLY_TESTS_PROGRAM_SUPPORT_H
#define TALLY_TESTS_PROGRAM_SUPPORT_H

/*
 * program_support.h - for tests that run the programs as children: read a
 * whole log file, scrape a child's /metrics, and import the genai price
 * book into a database (what tally-rate needs to price the usual test
 * models), and start a program as a child (prog_spawn, or
 * prog_fork_exec for one that must die with the test process).
 */

#include <check.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/types.h>
#include <unistd.h>

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

extern char **environ;

/* Whether entry ("NAME=value") names one of the NULL-ended names. */
static inline int prog_env_named(const char *entry, const char *const *names)
{
	size_t n = strcspn(entry, "=");

	for (; names != NULL && *names != NULL; names++)
		if (strlen(*names) == n && strncmp(entry, *names, n) == 0)
			return 1;
	return 0;
}

/*
 * Our environment with set ("NAME=value", NULL-ended) added or replacing
 * and unset (names, NULL-ended) removed, for execve() or posix_spawn():
 * built before the child exists, since a forked child of the threaded
 * test process (librdkafka's and libpq's threads) may only make
 * async-signal-safe calls before exec, which setenv is not. The strings
 * stay ours and set's; the caller frees the array.
 */
static inline char **prog_env(const char *const set[],
			      const char *const unset[])
{
	const char *const none[] = { NULL };
	size_t n = 0, k = 0, i;
	char **envp;

	set = set != NULL ? set : none;
	while (environ[n] != NULL)
		n++;
	for (i = 0; set[i] != NULL; i++)
		n++;
	envp = tally_xcalloc(n + 1, sizeof(*envp));
	for (i = 0; environ[i] != NULL; i++) {
		/* a name in set is replaced below, one in unset dropped */
		size_t m = strcspn(environ[i], "=");
		int in_set = 0;

		for (size_t j = 0; set[j] != NULL; j++)
			if (strncmp(set[j], environ[i], m + 1) == 0)
				in_set = 1;
		if (!in_set && !prog_env_named(environ[i], unset))
			envp[k++] = environ[i];
	}
	for (i = 0; set[i] != NULL; i++)
		envp[k++] = (char *)set[i];
	envp[k] = NULL;
	return envp;
}

/*
 * Start path with argv as a child whose stderr is appended to log (NULL:
 * inherited), in prog_env(set, unset), by posix_spawn. A child that
 * cannot be started fails the test, saying why. The caller kills and
 * reaps it.
 */
static inline pid_t prog_spawn(const char *path, char *const argv[],
			       const char *log, const char *const set[],
			       const char *const unset[])
{
	posix_spawn_file_actions_t fa;
	char **envp = prog_env(set, unset);
	pid_t pid = -1;
	int rc, tries = 0;

	ck_assert(posix_spawn_file_actions_init(&fa) == 0);
	if (log != NULL)
		ck_assert(posix_spawn_file_actions_addopen(
				  &fa, 2, log, O_WRONLY | O_CREAT | O_APPEND,
				  0644) == 0);
	/* EAGAIN: out of processes for a moment; try for a few seconds */
	while ((rc = posix_spawn(&pid, path, &fa, NULL, argv, envp)) ==
		       EAGAIN && ++tries < 50)
		tally_sleep_ms(100);
	posix_spawn_file_actions_destroy(&fa);
	free(envp);
	ck_assert_msg(rc == 0, "cannot start %s: %s", path, strerror(rc));
	return pid;
}

/*
 * Like prog_spawn, but forked, and the child gets SIGKILL when the test
 * process ends (PR_SET_PDEATHSIG, which posix_spawn cannot set): for
 * children a failing test must not leave running. log is opened with
 * O_WRONLY | O_CREAT | oflags (O_APPEND or O_TRUNC), mode 0600. Between
 * fork and exec the child makes async-signal-safe calls only.
 */
static inline pid_t prog_fork_exec(const char *path, char *const argv[],
				   const char *log, int oflags,
				   const char *const set[],
				   const char *const unset[])
{
	char **envp = prog_env(set, unset);
	pid_t pid = fork();

	ck_assert_msg(pid >= 0, "fork: %s", strerror(errno));
	if (pid == 0) {
		int fd = log != NULL ? open(log, O_WRONLY | O_CREAT | oflags,
					    0600) : -1;

		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (fd >= 0) {
			dup2(fd, 2);
			close(fd);
		}
		execve(path, argv, envp);
		_exit(127);
	}
	free(envp);
	return pid;
}

#endif /* TALLY_TESTS_PROGRAM_SUPPORT_H */
