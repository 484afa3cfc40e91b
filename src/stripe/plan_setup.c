/*
 * plan_setup.c - Stripe Products and monthly Prices for the rows of plans
 * (`tally stripe setup`), and the stored price ids for tally-stripe.
 * See include/tally/plan_setup.h for the idempotency rules.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/plan_setup.h"
#include "tally/money.h"
#include "tally/usage_lines.h"

#include <ctype.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

typedef struct plan_row {
	const char *id, *name, *price, *currency, *product_id, *price_id;
} plan_row;

/* The plan's price in the currency's minor unit; -1 if not exact. */
static int64_t minor_amount(const plan_row *p, char cur[4])
{
	int digits = tally_currency_minor_digits(p->currency);
	tally_money128 m, back;
	int64_t pico;
	int i;

	for (i = 0; i < 3; i++)
		cur[i] = (char)tolower((unsigned char)p->currency[i]);
	cur[3] = '\0';
	if (digits < 0 || tally_money_parse(&pico, p->price,
					    strlen(p->price)) != 0)
		return -1;
	m = tally_money_round_minor(pico, digits);
	for (back = m, i = 0; i < 12 - digits; i++)
		back *= 10;
	return back == pico ? (int64_t)m : -1;
}

static int store(tally_pg *pg, const char *col_sql, const char *plan,
		 const char *id, tally_error *err)
{
	return tally_pg_exec(pg, NULL, col_sql, 2,
			     (const char *[]){ plan, id }, err);
}

static int ensure_product(tally_pg *pg, tally_stripe *stripe,
			  const plan_row *p, char *id, size_t idlen,
			  int *created, tally_error *err)
{
	tally_stripe_error se;
	char key[256];
	json_t *params, *prod = NULL;
	int rc;

	snprintf(id, idlen, "tally_plan_%s", p->id);
	params = json_pack("{s:s, s:s, s:{s:s}}", "id", id, "name", p->name,
			   "metadata", "tally_plan", p->id);
	tally_stripe_idempotency_key(key, "setup", p->id, "product");
	rc = tally_stripe_request(stripe, &prod, "POST", "/v1/products",
				  params, key, &se, err);
	json_decref(params);
	if (rc == 0) {
		if (tally_stripe_jstr(prod, "id"))
			snprintf(id, idlen, "%s", tally_stripe_jstr(prod, "id"));
		(*created)++;
	} else if (rc == TALLY_EINVALID &&
		   strcmp(se.code, "resource_already_exists") == 0) {
		rc = 0; /* made by an earlier run: the fixed id is ours */
	}
	json_decref(prod);
	if (rc == 0)
		rc = store(pg, "UPDATE plans SET stripe_product_id = $2 "
			   "WHERE id = $1", p->id, id, err);
	return rc;
}

/* Find the price by lookup_key (answer of GET /v1/prices). */
static const char *price_in(const json_t *list, const char *lookup)
{
	const json_t *v;
	size_t i;

	json_array_foreach(json_object_get(list, "data"), i, v) {
		const char *lk = tally_stripe_jstr(v, "lookup_key");

		if (lk && strcmp(lk, lookup) == 0)
			return tally_stripe_jstr(v, "id");
	}
	return NULL;
}

static int ensure_price(tally_pg *pg, tally_stripe *stripe,
			const plan_row *p, const char *product, char *id,
			size_t idlen, int *created, tally_error *err)
{
	tally_stripe_error se;
	char lookup[200], key[256], cur[4];
	int64_t amount = minor_amount(p, cur);
	json_t *q, *list = NULL, *price = NULL;
	int rc;

	if (amount < 0)
		return tally_error_set(err, TALLY_EINVALID, "plan %s: price %s"
				       " %s is not whole minor units", p->id,
				       p->price, p->currency);
	snprintf(lookup, sizeof(lookup), "tally_%s_month_%s_%" PRId64, p->id,
		 cur, amount);
	q = json_pack("{s:[s], s:s}", "lookup_keys", lookup, "product",
		      product);
	rc = tally_stripe_request(stripe, &list, "GET", "/v1/prices", q,
				  NULL, &se, err);
	json_decref(q);
	if (rc == 0 && price_in(list, lookup)) {
		snprintf(id, idlen, "%s", price_in(list, lookup));
	} else if (rc == 0) {
		q = json_pack("{s:s, s:s, s:I, s:{s:s}, s:s, s:{s:s}}",
			      "product", product, "currency", cur,
			      "unit_amount", (json_int_t)amount, "recurring",
			      "interval", "month", "lookup_key", lookup,
			      "metadata", "tally_plan", p->id);
		tally_stripe_idempotency_key(key, "setup", p->id, lookup);
		rc = tally_stripe_request(stripe, &price, "POST", "/v1/prices",
					  q, key, &se, err);
		json_decref(q);
		if (rc == 0 && tally_stripe_jstr(price, "id") == NULL)
			rc = tally_error_set(err, TALLY_ERROR,
					     "price without an id");
		if (rc == 0) {
			snprintf(id, idlen, "%s", tally_stripe_jstr(price, "id"));
			(*created)++;
		}
	}
	json_decref(list);
	json_decref(price);
	if (rc == 0)
		rc = store(pg, "UPDATE plans SET stripe_price_id = $2 "
			   "WHERE id = $1", p->id, id, err);
	return rc;
}

int tally_plan_setup(tally_pg *pg, tally_stripe *stripe, FILE *out,
		     int *created, tally_error *err)
{
	PGresult *res = NULL;
	int rc, i, n, made = 0;

	rc = tally_pg_exec(pg, &res, "SELECT id, name, monthly_price::text, "
			   "currency, coalesce(stripe_product_id, ''), "
			   "coalesce(stripe_price_id, '') FROM plans ORDER BY "
			   "rank, id", 0, NULL, err);
	n = rc == 0 ? PQntuples(res) : 0;
	for (i = 0; rc == 0 && i < n; i++) {
		plan_row p = { PQgetvalue(res, i, 0), PQgetvalue(res, i, 1),
			       PQgetvalue(res, i, 2), PQgetvalue(res, i, 3),
			       PQgetvalue(res, i, 4), PQgetvalue(res, i, 5) };
		char prod[256], price[256];
		int before = made;

		snprintf(prod, sizeof(prod), "%s", p.product_id);
		snprintf(price, sizeof(price), "%s", p.price_id);
		if (prod[0] == '\0')
			rc = ensure_product(pg, stripe, &p, prod, sizeof(prod),
					    &made, err);
		if (rc == 0 && price[0] == '\0')
			rc = ensure_price(pg, stripe, &p, prod, price,
					  sizeof(price), &made, err);
		if (rc == 0 && out)
			fprintf(out, "%s\t%s\t%s\t%s\n", p.id, prod, price,
				made > before ? "created" : "unchanged");
	}
	PQclear(res);
	if (created)
		*created = made;
	return rc;
}

/* ---- stored prices -------------------------------------------------------- */

struct tally_plan_prices {
	PGresult *res; /* plan id, price id */
};

int tally_plan_prices_load(tally_pg *pg, tally_plan_prices **out,
			   tally_error *err)
{
	PGresult *res = NULL;
	int rc;

	*out = NULL;
	rc = tally_pg_exec(pg, &res, "SELECT id, stripe_price_id FROM plans "
			   "WHERE stripe_price_id IS NOT NULL", 0, NULL, err);
	if (rc != 0)
		return rc;
	*out = tally_xcalloc(1, sizeof(**out));
	(*out)->res = res;
	return 0;
}

const char *tally_plan_prices_get(const tally_plan_prices *pp,
				  const char *plan)
{
	int i;

	if (pp == NULL || plan == NULL)
		return "";
	for (i = 0; i < PQntuples(pp->res); i++)
		if (strcmp(PQgetvalue(pp->res, i, 0), plan) == 0)
			return PQgetvalue(pp->res, i, 1);
	return "";
}

void tally_plan_prices_free(tally_plan_prices *pp)
{
	if (pp == NULL)
		return;
	PQclear(pp->res);
	free(pp);
}
