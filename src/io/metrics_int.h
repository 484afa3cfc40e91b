#ifndef TALLY_METRICS_INT_H
#define TALLY_METRICS_INT_H

/*
 * metrics_int.h - pieces of the metrics HTTP server shared with other
 * libmicrohttpd servers of libtally (the relay serves /metrics, /healthz and
 * /readyz on its own listener).
 */

#include <microhttpd.h>
#include <stdarg.h>

#include "tally/metrics.h"

/*
 * If url is /metrics, /healthz or /readyz, queue the answer on conn and
 * return 1 (*result holds MHD_queue_response's result); otherwise return 0
 * and touch nothing. Methods other than GET/HEAD get 405.
 */
int tally_metrics__handle(enum MHD_Result *result, struct MHD_Connection *conn,
			  const char *method, const char *url,
			  tally_metrics *m, tally_health_fn health,
			  tally_health_fn ready, void *payload);

/* Queue a small text/plain answer (body copied). */
enum MHD_Result tally_metrics__respond_text(struct MHD_Connection *conn,
					    unsigned status, const char *text);

/* MHD_OPTION_EXTERNAL_LOGGER callback: MHD's messages into the JSON log. */
void tally_metrics__mhd_log(void *cls, const char *fmt, va_list ap)
	TALLY_PRINTF(2, 0);

#endif /* TALLY_METRICS_INT_H */
