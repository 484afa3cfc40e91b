#ifndef TALLY_SIGNALS_H
#define TALLY_SIGNALS_H

/**
 * @file tally/signals.h
 * @brief SIGTERM/SIGINT/SIGHUP as flags that the main loop polls.
 *
 * The handlers only set `volatile sig_atomic_t` flags; the loop does the
 * work (drain, commit, leave the group; reload the config). A second
 * SIGTERM or SIGINT while a stop is already pending exits at once with
 * _exit(1) ("fast exit"), for an operator who insists. SIGPIPE is ignored
 * (sockets report EPIPE instead). Process-wide by nature: one set of flags.
 */

#include <stdbool.h>

/**
 * Install the handlers (sigaction, SA_RESTART) and ignore SIGPIPE.
 * Call once from main() before starting threads. Clears pending flags.
 */
void tally_signals_install(void);

/** True once SIGTERM or SIGINT arrived (or tally_signals_request_stop()). */
bool tally_signals_stop_requested(void);

/** True if SIGHUP arrived since the last call; clears the flag. */
bool tally_signals_reload_requested(void);

/** Ask the loop to stop, as SIGTERM would (tests, fatal errors). */
void tally_signals_request_stop(void);

/**
 * Sleep up to ms milliseconds, returning early (true) when a stop is
 * requested. Granularity 50 ms.
 */
bool tally_signals_sleep_ms(long ms);

#endif /* TALLY_SIGNALS_H */
