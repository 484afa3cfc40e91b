/*
 * tenant_erasure_stripe.c - the Stripe half of an erasure: DELETE
 * /v1/customers/{id} for the customer tenant_erasures names, recorded as
 * deleted (also when Stripe no longer knows it) or left pending with
 * Stripe's error code, for the next run to finish.
 */
#include "tally/stripe.h"
#include "tenants/tenant_data_int.h"

#include <stdlib.h>
#include <string.h>

typedef struct stripe_outcome {
	const char *tenant, *why, *error;
	bool deleted;
	int audited;
} stripe_outcome;

static int record_txn(tally_pg *pg, void *payload, tally_error *err)
{
	stripe_outcome *o = payload;
	const char *params[3] = { o->tenant, o->deleted ? "deleted" :
				  "pending", o->error };
	PGresult *res = NULL;
	int rc, n;

	o->audited = 0;
	rc = tally_pg_exec(pg, &res, "UPDATE tenant_erasures SET"
		" stripe_attempts = stripe_attempts + 1, stripe_status = $2,"
		" stripe_error = $3, completed_at = CASE WHEN $2 = 'deleted'"
		" THEN now() END WHERE tenant_id = $1::uuid"
		" AND stripe_status = 'pending'", 3, params, err);
	if (rc != 0)
		return rc;
	n = (int)strtol(PQcmdTuples(res), NULL, 10);
	PQclear(res);
	if (n == 1 && o->deleted)
		rc = tally_tenant__audit(pg, o->tenant,
					 "erase_stripe_customer",
					 "{\"erasure\": \"stripe customer"
					 " deleted\"}",
					 o->why, &o->audited, err);
	return rc;
}

/* The erasure's Stripe state: status and customer id. */
static int load_state(tally_pg *pg, const char *tenant, char status[16],
		      char customer[256], tally_error *err)
{
	const char *params[1] = { tenant };
	PGresult *res = NULL;
	int rc = tally_pg_exec(pg, &res, "SELECT stripe_status,"
		" coalesce(stripe_customer_id, '') FROM tenant_erasures"
		" WHERE tenant_id = $1::uuid", 1, params, err);

	if (rc != 0)
		return rc;
	if (PQntuples(res) != 1) {
		PQclear(res);
		return tally_error_set(err, TALLY_ENOTFOUND,
				       "tenant %s has no erasure", tenant);
	}
	snprintf(status, 16, "%s", PQgetvalue(res, 0, 0));
	snprintf(customer, 256, "%s", PQgetvalue(res, 0, 1));
	PQclear(res);
	return 0;
}

int tally_tenant__erase_stripe(tally_pg *pg, tally_stripe *stripe,
			       const char *tenant, const char *why,
			       tally_tenant_erase_result *res,
			       tally_error *err)
{
	char status[16], customer[256], path[300], key[256];
	stripe_outcome o = { tenant, why, NULL, false, 0 };
	tally_stripe_error se;
	tally_error serr;
	json_t *out = NULL;
	int rc;

	rc = load_state(pg, tenant, status, customer, err);
	if (rc != 0)
		return rc;
	res->stripe = strcmp(status, "none") == 0 ?
		TALLY_ERASURE_STRIPE_NONE : strcmp(status, "deleted") == 0 ?
		TALLY_ERASURE_STRIPE_DELETED : TALLY_ERASURE_STRIPE_PENDING;
	if (res->stripe != TALLY_ERASURE_STRIPE_PENDING)
		return 0;
	if (stripe == NULL) {
		snprintf(res->stripe_error, sizeof(res->stripe_error),
			 "no Stripe client configured");
		return 0;
	}
	memset(&se, 0, sizeof(se));
	tally_error_clear(&serr);
	snprintf(path, sizeof(path), "/v1/customers/%s", customer);
	tally_stripe_idempotency_key(key, "erase", tenant, "customer");
	rc = tally_stripe_request(stripe, &out, "DELETE", path, NULL, key,
				  &se, &serr);
	json_decref(out);
	o.deleted = rc == 0 || rc == TALLY_ENOTFOUND;
	if (!o.deleted) {
		/* Stripe's code, or the kind of failure: no message text */
		snprintf(res->stripe_error, sizeof(res->stripe_error), "%s",
			 se.code[0] ? se.code : tally_err_name(rc));
		o.error = res->stripe_error;
	}
	rc = tally_pg_txn(pg, record_txn, &o, 5, err);
	if (rc != 0)
		return rc;
	res->audited += o.audited;
	if (o.deleted)
		res->stripe = TALLY_ERASURE_STRIPE_DELETED;
	return 0;
}

int tally_tenant_erase_pending(tally_pg *pg, tally_stripe *stripe,
			       int *done, int *pending, tally_error *err)
{
	PGresult *res = NULL;
	int i, rc;

	*done = *pending = 0;
	rc = tally_pg_exec(pg, &res, "SELECT tenant_id::text FROM"
			   " tenant_erasures WHERE stripe_status = 'pending'"
			   " ORDER BY requested_at", 0, NULL, err);
	if (rc != 0)
		return rc;
	for (i = 0; rc == 0 && i < PQntuples(res); i++) {
		tally_tenant_erase_result r;

		memset(&r, 0, sizeof(r));
		rc = tally_tenant__erase_stripe(pg, stripe,
						PQgetvalue(res, i, 0),
						"tally tenant erase --pending",
						&r, err);
		if (rc == 0 && r.stripe == TALLY_ERASURE_STRIPE_DELETED)
			(*done)++;
		else if (rc == 0)
			(*pending)++;
	}
	PQclear(res);
	return rc;
}
