/*
 * rate_prices.c - keeping tally-rate's price book current: LISTEN for the
 * tally_prices notification, check the book's version, and swap a newly
 * loaded book in between batches only, so a batch is never priced with two
 * books.
 */
#define _POSIX_C_SOURCE 200809L
#include "rate_consumer_int.h"
#include "tally/log.h"
#include "tally/pricebook_pg.h"
#include "tally/program.h"

#include <string.h>

/*
 * true when the book may have changed: a tally_prices notification arrived
 * (the 0002 trigger sends one on every change), or the connection is new
 * and LISTEN was (re)issued, so notifications may have been missed. Never
 * blocks: PQconsumeInput reads only what the socket already holds (libpq's
 * socket is non-blocking), and no query is in flight between batches.
 */
bool tally_rater__prices_notified(tally_rater *r)
{
	PGconn *conn;
	PGnotify *nt;
	PGresult *res = NULL;
	tally_error lerr;
	bool hit = false;

	tally_error_clear(&lerr);
	if (tally_pg_ensure(r->pg, &lerr) != 0)
		return false; /* the version check reports it */
	conn = tally_pg_conn(r->pg);
	if (conn != r->listen_conn) {
		if (tally_pg_exec(r->pg, &res, "LISTEN tally_prices", 0, NULL,
				  &lerr) != 0) {
			tally_log(TALLY_WARN, "rate.listen_failed",
				  TALLY_KV_STR("error", lerr.msg));
			return false;
		}
		PQclear(res);
		r->listen_conn = conn;
		hit = true;
	}
	if (PQconsumeInput(conn) == 0)
		return hit; /* broken: the next tally_pg_ensure reconnects */
	for (;;) {
		nt = PQnotifies(conn);
		if (nt == NULL)
			break;
		if (strcmp(nt->relname, "tally_prices") == 0)
			hit = true;
		PQfreemem(nt);
	}
	return hit;
}

int tally_rater__load_book(tally_rater *r, bool force, tally_error *err)
{
	tally_pricebook *pb = NULL;
	int64_t v = 0;
	int rc;

	if (!force && r->pb != NULL) {
		rc = tally_pricebook_pg_version(&v, r->pg, err);
		if (rc != 0)
			return rc;
		if (v == tally_pricebook_version(r->pb))
			return 0;
	}
	rc = tally_pricebook_load_pg(&pb, r->pg, err);
	if (rc != 0)
		return rc;
	tally_pricebook_free(r->pb); /* only between batches: no reader */
	r->pb = pb;
	if (r->g_version != NULL)
		tally_gauge_set(r->g_version, tally_pricebook_version(pb));
	if (r->c_reloads != NULL)
		tally_counter_add(r->c_reloads, 1);
	tally_log(TALLY_INFO, "rate.prices_loaded",
		  TALLY_KV_INT("version", tally_pricebook_version(pb)),
		  TALLY_KV_INT("models", (int64_t)tally_pricebook_models(pb)));
	return 0;
}


void tally_rater__refresh_prices(tally_rater *r, bool reload)
{
	int64_t check_ns = tally_config_int(r->cfg, "rate.price_check_s") *
			   INT64_C(1000000000);
	tally_error perr;

	/*
	 * A NOTIFY makes the next batch use the new book; the periodic
	 * version check stays as a safety net (a notification is lost
	 * while the connection is down, and LISTEN is only re-issued
	 * on the next call).
	 */
	if (!tally_rater__prices_notified(r) && !reload &&
	    tally_mono_ns() - r->last_check_ns < check_ns)
		return;
	tally_error_clear(&perr);
	/* between batches: no event is being rated */
	if (tally_pg_ensure(r->pg, &perr) != 0 ||
	    tally_rater__load_book(r, reload, &perr) != 0)
		tally_log(TALLY_WARN, "rate.prices_check_failed",
			  TALLY_KV_STR("error", perr.msg));
	r->last_check_ns = tally_mono_ns();
}
