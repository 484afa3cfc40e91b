#ifndef TALLY_PLAN_SETUP_H
#define TALLY_PLAN_SETUP_H
/**
 * @file tally/plan_setup.h
 * @brief `tally stripe setup`: a Stripe Product and a monthly Price for
 *        each row of plans, their ids kept in plans.stripe_product_id /
 *        stripe_price_id; and those ids read back for tally-stripe.
 *
 * Idempotent: the product gets a fixed id ("tally_plan_<plan>"; Stripe
 * answers resource_already_exists when it is there), the price a lookup_key
 * ("tally_<plan>_month_<currency>_<minor amount>") looked up before it is
 * created; a plan whose ids are stored makes no call at all. A changed
 * monthly_price gets a new price once its stripe_price_id is cleared.
 * The configured price (stripe.price_<plan>, STRIPE_PRICE_ID_<PLAN>) still
 * wins over the stored one.
 */
#include <stdio.h>
#include "tally/common.h"
#include "tally/pg.h"
#include "tally/stripe.h"

/**
 * Create what is missing on Stripe and store the ids.
 * @param out one line per plan: plan, product id, price id, what was done
 * @param[out] created Stripe objects created (may be NULL)
 */
int tally_plan_setup(tally_pg *pg, tally_stripe *stripe, FILE *out,
		     int *created, tally_error *err) TALLY_MUSTCHECK;

/** The stored Stripe price ids of all plans, read once. */
typedef struct tally_plan_prices tally_plan_prices;

int tally_plan_prices_load(tally_pg *pg, tally_plan_prices **out,
			   tally_error *err) TALLY_MUSTCHECK;
/** The stored price of plan, or "" (never NULL; pp may be NULL). */
const char *tally_plan_prices_get(const tally_plan_prices *pp,
				  const char *plan);
void tally_plan_prices_free(tally_plan_prices *pp);

#endif /* TALLY_PLAN_SETUP_H */
