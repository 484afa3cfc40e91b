/*
 * test_dumpable.c - the programs hold secrets and make themselves
 * non-dumpable at start (prctl PR_SET_DUMPABLE 0): no core dump, no ptrace
 * or /proc/<pid>/mem by other processes of the same user. The kernel shows
 * it by giving the files of /proc/<pid> to root. tally-relay is started as
 * an unprivileged user (it needs no database; with no broker it waits in
 * its start-up check), and its /proc files must belong to root.
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "program_support.h"
#include "tally/pg.h" /* tally_sleep_ms */

#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <unistd.h>

#define NOBODY 65534

START_TEST(test_dumpable_relay_not_dumpable)
{
	char cfg[64], proc[64];
	char *argv[] = { "tally-relay", "--config", cfg, NULL };
	const char *set[] = { "ASAN_OPTIONS=detect_leaks=0",
			      "STRIPE_WEBHOOK_SECRET=whsec_dumpable_test", NULL };
	const char *unset[] = { "KAFKA_BROKERS", NULL };
	char **envp;
	struct stat st;
	FILE *fp;
	pid_t pid;
	int i, status;

	snprintf(cfg, sizeof(cfg), "/tmp/tally_dumpable_%d.cfg", (int)getpid());
	fp = fopen(cfg, "w");
	ck_assert(fp != NULL);
	fputs("kafka: { brokers = \"127.0.0.1:1\"; };\n"
	      "relay: { listen = \"127.0.0.1:0\"; };\n", fp);
	fclose(fp);
	chmod(cfg, 0644);
	envp = prog_env(set, unset);
	pid = fork();
	ck_assert(pid >= 0);
	if (pid == 0) {
		/* async-signal-safe calls only (prog_env) */
		prctl(PR_SET_PDEATHSIG, SIGKILL);
		if (setgid(NOBODY) != 0 || setuid(NOBODY) != 0)
			_exit(126);
		execve(TALLY_BINARY_DIR "/tally-relay", argv, envp);
		_exit(127);
	}
	free(envp);
	/* running as nobody (exec done) before looking at /proc */
	snprintf(proc, sizeof(proc), "/proc/%d/status", (int)pid);
	for (i = 0; i < 100; i++) {
		char exe[256];
		char link[64];
		ssize_t n;

		snprintf(link, sizeof(link), "/proc/%d/exe", (int)pid);
		n = readlink(link, exe, sizeof(exe) - 1);
		if (n > 0) {
			exe[n] = '\0';
			if (strstr(exe, "tally-relay") != NULL)
				break;
		}
		tally_sleep_ms(20);
	}
	tally_sleep_ms(300); /* past tally_program_start() */
	ck_assert_msg(waitpid(pid, &status, WNOHANG) == 0,
		      "tally-relay exited early (status %d)", status);
	ck_assert_int_eq(stat(proc, &st), 0);
	kill(pid, SIGKILL);
	waitpid(pid, NULL, 0);
	unlink(cfg);
	ck_assert_msg(st.st_uid == 0,
		      "/proc/<pid> of a non-dumpable process belongs to root, "
		      "this one to uid %d", (int)st.st_uid);
}
END_TEST

static Suite *dumpable_suite(void)
{
	Suite *s = suite_create("dumpable");
	TCase *tc = tcase_create("Core");

	if (getuid() != 0) {
		fprintf(stderr, "skipped: test_dumpable starts a child as "
				"another user, which needs root\n");
		exit(77);
	}
	tcase_set_timeout(tc, 30);
	tcase_add_test(tc, test_dumpable_relay_not_dumpable);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(dumpable_suite)
