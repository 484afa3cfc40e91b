#ifndef TALLY_IO_SD_NOTIFY_H
#define TALLY_IO_SD_NOTIFY_H

/*
 * sd_notify.h - the systemd notification protocol for Type=notify units
 * (libsystemd's sd_notify): READY=1 once the program has started (config
 * loaded, signal handlers installed: tally_program_start), STOPPING=1 when
 * SIGTERM/SIGINT asks it to stop, and WATCHDOG=1 every half WatchdogSec.
 * Without $NOTIFY_SOCKET (not under systemd) every call is a no-op.
 *
 * The watchdog pings come from a thread of their own. A main loop that
 * calls tally_sd_heartbeat() each iteration makes them conditional: once
 * it has called it, the thread stops pinging when the last heartbeat is
 * older than WatchdogSec, so systemd restarts a loop that hangs.
 */

/* Send READY=1 and start the watchdog/stop thread (once per process). */
void tally_sd_notify_start(void);

/* The main loop is alive (cheap: one relaxed atomic store). */
void tally_sd_heartbeat(void);

#endif /* TALLY_IO_SD_NOTIFY_H */
