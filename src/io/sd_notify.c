/*
 * sd_notify.c - READY/STOPPING/WATCHDOG for systemd (see sd_notify.h).
 * Built without libsystemd (TALLY_HAVE_LIBSYSTEMD unset) it does nothing.
 */
#define _POSIX_C_SOURCE 200809L
#include "io/sd_notify.h"
#include "tally/common.h"
#include "tally/log.h"
#include "tally/signals.h"

#include <stdatomic.h>
#include <stdint.h>

static atomic_int_fast64_t last_beat_ms; /* 0: the loop never called */

void tally_sd_heartbeat(void)
{
	atomic_store_explicit(&last_beat_ms, tally_now_ms(),
			      memory_order_relaxed);
}

#ifdef TALLY_HAVE_LIBSYSTEMD
#include <pthread.h>
#include <stdbool.h>
#include <stdlib.h>
#include <systemd/sd-daemon.h>

static int64_t watchdog_ms; /* 0: no WatchdogSec */

static bool loop_alive(void)
{
	int64_t beat = atomic_load_explicit(&last_beat_ms,
					    memory_order_relaxed);

	return beat == 0 || tally_now_ms() - beat < watchdog_ms;
}

static void *notify_thread(void *arg)
{
	/* ping at half the watchdog period; otherwise only watch for stop */
	long tick = watchdog_ms > 0 ? (long)(watchdog_ms / 2) : 1000;

	(void)arg;
	while (!tally_signals_sleep_ms(tick))
		if (watchdog_ms > 0 && loop_alive())
			(void)sd_notify(0, "WATCHDOG=1");
	(void)sd_notify(0, "STOPPING=1");
	return NULL;
}

void tally_sd_notify_start(void)
{
	static atomic_flag started = ATOMIC_FLAG_INIT;
	uint64_t usec = 0;
	pthread_t t;
	int rc;

	if (getenv("NOTIFY_SOCKET") == NULL ||
	    atomic_flag_test_and_set(&started))
		return;
	if (sd_watchdog_enabled(0, &usec) > 0)
		watchdog_ms = (int64_t)(usec / 1000);
	(void)sd_notify(0, "READY=1");
	rc = pthread_create(&t, NULL, notify_thread, NULL);
	if (rc == 0)
		(void)pthread_detach(t);
	else
		tally_log(TALLY_ERR, "systemd.notify_thread",
			  TALLY_KV_INT("errno", rc));
	tally_log(TALLY_INFO, "systemd.ready",
		  TALLY_KV_INT("watchdog_ms", watchdog_ms));
}
#else
void tally_sd_notify_start(void)
{
}
#endif
