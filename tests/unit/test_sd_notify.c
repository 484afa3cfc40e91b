/*
 * test_sd_notify.c - under a (fake) systemd notify socket a program sends
 * READY=1 at start, WATCHDOG=1 within WatchdogSec, and STOPPING=1 when a
 * stop is requested; a main loop that heartbeats and then hangs stops the
 * pings. Forked so the process-wide state starts clean in each test.
 */
#define _POSIX_C_SOURCE 200809L
#include "check_main.h"
#include "io/sd_notify.h"
#include "tally/signals.h"

#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

static int sock;
static char path[108];

static void remove_socket(void)
{
	unlink(path);
}

static void listen_notify(long watchdog_us)
{
	struct sockaddr_un a = { .sun_family = AF_UNIX };
	char v[32];

	snprintf(a.sun_path, sizeof(a.sun_path), "/tmp/tally-sd-%d.sock",
		 (int)getpid());
	snprintf(path, sizeof(path), "%s", a.sun_path);
	unlink(path);
	atexit(remove_socket);
	sock = socket(AF_UNIX, SOCK_DGRAM, 0);
	ck_assert_int_ge(sock, 0);
	ck_assert_int_eq(bind(sock, (struct sockaddr *)&a, sizeof(a)), 0);
	setenv("NOTIFY_SOCKET", a.sun_path, 1);
	snprintf(v, sizeof(v), "%ld", watchdog_us);
	setenv("WATCHDOG_USEC", v, 1);
	snprintf(v, sizeof(v), "%d", (int)getpid());
	setenv("WATCHDOG_PID", v, 1);
}

/* Next datagram within ms, or "" on timeout. */
static const char *next_msg(int ms)
{
	static char buf[256];
	struct pollfd p = { .fd = sock, .events = POLLIN };
	ssize_t n;

	buf[0] = '\0';
	if (poll(&p, 1, ms) == 1 && (n = recv(sock, buf, sizeof(buf) - 1, 0)) > 0)
		buf[n] = '\0';
	return buf;
}

START_TEST(test_sd_ready_watchdog_stopping)
{
	const char *msg;
	int i, pings = 0;

	listen_notify(200000); /* WatchdogSec=200ms: a ping every 100 ms */
	tally_signals_install();
	tally_sd_notify_start();
	ck_assert_str_eq(next_msg(1000), "READY=1");
	for (i = 0; i < 3; i++)
		if (strcmp(next_msg(1000), "WATCHDOG=1") == 0)
			pings++;
	ck_assert_int_eq(pings, 3);
	tally_signals_request_stop();
	do
		msg = next_msg(1000);
	while (strcmp(msg, "WATCHDOG=1") == 0);
	ck_assert_str_eq(msg, "STOPPING=1");
}
END_TEST

START_TEST(test_sd_hung_loop_stops_pings)
{
	listen_notify(200000);
	tally_signals_install();
	tally_sd_heartbeat(); /* the loop beats once, then hangs */
	tally_sd_notify_start();
	ck_assert_str_eq(next_msg(1000), "READY=1");
	/* at most one ping while the beat is fresh, then silence */
	(void)next_msg(150);
	ck_assert_str_eq(next_msg(500), "");
	tally_sd_heartbeat(); /* alive again: pings resume */
	ck_assert_str_eq(next_msg(500), "WATCHDOG=1");
}
END_TEST

START_TEST(test_sd_without_systemd_is_silent)
{
	unsetenv("NOTIFY_SOCKET");
	tally_sd_notify_start(); /* nothing to talk to: must not fail */
	tally_sd_heartbeat();
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("sd_notify");
	TCase *tc = tcase_create("core");

	tcase_set_timeout(tc, 10);
	tcase_add_test(tc, test_sd_ready_watchdog_stopping);
	tcase_add_test(tc, test_sd_hung_loop_stops_pings);
	tcase_add_test(tc, test_sd_without_systemd_is_silent);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(suite)
