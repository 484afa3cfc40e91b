#ifndef TALLY_STRIPE_EVENT_H
#define TALLY_STRIPE_EVENT_H

/**
 * @file tally/stripe_event.h
 * @brief A Stripe webhook event read into what tally-stripe applies: its
 *        envelope (id, type, created, data.object and the object's kind),
 *        the family of its type, and the orderings the mirrors keep
 *        (a newer version of an object replaces an older one only when it
 *        ranks at least as high). Pure: jansson only, no I/O.
 */

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/common.h"

/** String member key of obj, or NULL (absent, not a string, obj NULL). */
const char *tally_stripe_jstr(const json_t *obj, const char *key);
/** Integer member key of obj, or 0. */
int64_t tally_stripe_jint(const json_t *obj, const char *key);
/** An id member: the string, or the "id" of an expanded object; or NULL. */
const char *tally_stripe_jid(const json_t *obj, const char *key);

/** Which mirror an event's type feeds. */
typedef enum {
	TALLY_STRIPE_EVENT_IGNORED = 0,  /* a type the sync does not mirror */
	TALLY_STRIPE_EVENT_SUBSCRIPTION, /* customer.subscription.* */
	TALLY_STRIPE_EVENT_INVOICE,      /* invoice.* */
	TALLY_STRIPE_EVENT_PAYMENT,      /* payment_intent.*, charge.* */
	TALLY_STRIPE_EVENT_CUSTOMER,     /* customer.created/updated/deleted */
} tally_stripe_family;

/** A parsed event; the strings and obj borrow from root. */
typedef struct tally_stripe_event {
	json_t *root;        /* the whole event; tally_stripe_event_free() */
	const json_t *obj;   /* data.object, a JSON object */
	const char *id;      /* "evt_..." */
	const char *type;    /* "invoice.paid", ... */
	const char *object;  /* data.object.object: "invoice", ... */
	int64_t created;     /* unix seconds, > 0 */
	tally_stripe_family family;
} tally_stripe_event;

/**
 * Parse a webhook body: a JSON object with string id and type, a positive
 * integer created and data.object an object with a string "object".
 * @return 0, or TALLY_EINVALID (ev->root is then NULL)
 */
int tally_stripe_event_parse(tally_stripe_event *ev, const char *body,
			     size_t len) TALLY_MUSTCHECK;

/** Release ev->root; ev may be zeroed or already freed. */
void tally_stripe_event_free(tally_stripe_event *ev);

/** The family of an event type (never NULL). */
tally_stripe_family tally_stripe_event_family(const char *type);

/** Version rank of an invoice: draft < open (by attempts) < uncollectible
 *  (by attempts) < paid/void. */
int tally_stripe_invoice_rank(const json_t *inv);

/** The subscription an invoice bills (older and newer API shapes), or NULL. */
const char *tally_stripe_invoice_subscription(const json_t *inv);

/** Version rank of a payment intent, charge or dispute (object) in status,
 *  by the event's type. */
int tally_stripe_payment_rank(const char *object, const char *status,
			      const char *type);

/** Rank of a subscription event's type: created < updated < deleted. */
int tally_stripe_subscription_event_rank(const char *type);

/** The tenant status a subscription status maps to, or NULL (unknown). */
const char *tally_stripe_tenant_status_for(const char *sub_status);

#endif /* TALLY_STRIPE_EVENT_H */
