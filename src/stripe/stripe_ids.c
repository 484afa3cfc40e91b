/*
 * stripe_ids.c - the Stripe ids that may stand in a request path. An id
 * comes from commands, events and the database, so it is checked before
 * it becomes part of a URL: "x/../../customers/cus_X#" must never reach
 * another endpoint. tally_stripe_request and tally_stripe_list check
 * every path with tally_stripe_path_valid (no request for a bad one).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/stripe.h"

#include <string.h>

#define MAX_ID 255

/* Collections whose next path segment is an object id, and its prefix. */
static const struct {
	const char *collection;
	const char *prefix;
} id_prefixes[] = {
	{ "customers", "cus_" },
	{ "subscriptions", "sub_" },
	{ "subscription_schedules", "sub_sched_" },
	{ "invoices", "in_" },
	{ "invoiceitems", "ii_" },
	{ "charges", "ch_" },
	{ "payment_methods", "pm_" },
	{ "prices", "price_" },
	{ "products", "prod_" },
};

static bool id_char(char ch)
{
	return (ch >= 'a' && ch <= 'z') || (ch >= 'A' && ch <= 'Z') ||
	       (ch >= '0' && ch <= '9') || ch == '_';
}

/* n bytes of s: prefix, then at least one of [A-Za-z0-9_]. */
static bool id_span_valid(const char *s, size_t n, const char *prefix)
{
	size_t pl = strlen(prefix), i;

	if (n <= pl || n > MAX_ID || strncmp(s, prefix, pl) != 0)
		return false;
	for (i = pl; i < n; i++)
		if (!id_char(s[i]))
			return false;
	return true;
}

bool tally_stripe_id_valid(const char *id, const char *prefix)
{
	return id != NULL && prefix != NULL &&
	       id_span_valid(id, strlen(id), prefix);
}

static const char *prefix_of(const char *seg, size_t n)
{
	size_t i;

	for (i = 0; i < sizeof(id_prefixes) / sizeof(id_prefixes[0]); i++)
		if (strlen(id_prefixes[i].collection) == n &&
		    strncmp(id_prefixes[i].collection, seg, n) == 0)
			return id_prefixes[i].prefix;
	return NULL;
}

bool tally_stripe_path_valid(const char *path)
{
	const char *p, *want = NULL;

	if (path == NULL || strncmp(path, "/v1/", 4) != 0)
		return false;
	for (p = path + 4; *p != '\0';) {
		size_t n = strcspn(p, "/"), i;

		if (n == 0)
			return false; /* "//" or a trailing "/" */
		for (i = 0; i < n; i++)
			if (!id_char(p[i]))
				return false;
		if (want != NULL && !id_span_valid(p, n, want))
			return false;
		/* the segment after a collection is its object's id */
		want = want == NULL ? prefix_of(p, n) : NULL;
		p += n;
		if (*p == '/')
			p++;
		if (*p == '\0' && p[-1] == '/')
			return false;
	}
	return true;
}
