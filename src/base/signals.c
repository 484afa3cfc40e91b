/*
 * signals.c - signal handlers that only set flags (async-signal-safe).
 *
 * The one exception to "only a flag" is the fast exit: a second
 * SIGTERM/SIGINT calls _exit(1), which is async-signal-safe, so that an
 * operator can always get rid of a process whose drain hangs.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/signals.h"

#include <signal.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t stop_flag;
static volatile sig_atomic_t reload_flag;

static void on_stop(int sig)
{
	(void)sig;
	if (stop_flag)
		_exit(1); /* second signal: fast exit */
	stop_flag = 1;
}

static void on_hup(int sig)
{
	(void)sig;
	reload_flag = 1;
}

void tally_signals_install(void)
{
	struct sigaction sa;

	stop_flag = 0;
	reload_flag = 0;
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	sa.sa_flags = SA_RESTART;
	sa.sa_handler = on_stop;
	sigaction(SIGTERM, &sa, NULL);
	sigaction(SIGINT, &sa, NULL);
	sa.sa_handler = on_hup;
	sigaction(SIGHUP, &sa, NULL);
	sa.sa_handler = SIG_IGN;
	sigaction(SIGPIPE, &sa, NULL);
}

bool tally_signals_stop_requested(void)
{
	return stop_flag != 0;
}

bool tally_signals_reload_requested(void)
{
	if (!reload_flag)
		return false;
	reload_flag = 0;
	return true;
}

void tally_signals_request_stop(void)
{
	stop_flag = 1;
}

bool tally_signals_sleep_ms(long ms)
{
	struct timespec ts;

	while (ms > 0 && !stop_flag) {
		long step = ms < 50 ? ms : 50;

		ts.tv_sec = 0;
		ts.tv_nsec = step * 1000000L;
		nanosleep(&ts, NULL);
		ms -= step;
	}
	return stop_flag != 0;
}
