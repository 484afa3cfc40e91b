/*
 * relay_event.c - what makes a webhook request acceptable to tally-relay:
 * a valid Stripe-Signature (tally_webhook_verify, current or previous
 * secret, within the tolerance) and then a body that is a Stripe event,
 * whose customer becomes the message key.
 */
#define _POSIX_C_SOURCE 200809L
#include "relay/relay_int.h"
#include "tally/webhook.h"

#include <jansson.h>
#include <stdio.h>
#include <string.h>

static const char *jstr(json_t *o, const char *k)
{
	json_t *v = json_is_object(o) ? json_object_get(o, k) : NULL;

	return json_is_string(v) ? json_string_value(v) : NULL;
}

/*
 * Check that body is a Stripe event and pick the message key. Only called
 * on authenticated bodies (after the signature), so junk from strangers is
 * never parsed.
 */
static int parse_event(char *key, size_t keylen, char *evt, size_t evtlen,
		       const char *body, size_t len)
{
	json_error_t jerr;
	json_t *root, *obj;
	const char *id, *type, *k = NULL;
	int rc = -1;

	root = json_loadb(body, len, JSON_REJECT_DUPLICATES, &jerr);
	if (!json_is_object(root))
		goto cleanup;
	id = jstr(root, "id");
	type = jstr(root, "type");
	if (id == NULL || strncmp(id, "evt_", 4) != 0 || strlen(id) >= evtlen ||
	    type == NULL || *type == '\0')
		goto cleanup;
	snprintf(evt, evtlen, "%s", id);
	obj = json_object_get(json_object_get(root, "data"), "object");
	if (json_is_object(obj)) {
		json_t *cus = json_object_get(obj, "customer");
		const char *otype = jstr(obj, "object");

		if (json_is_string(cus))
			k = json_string_value(cus);
		else if (json_is_object(cus)) /* expanded */
			k = jstr(cus, "id");
		else if (otype != NULL && strcmp(otype, "customer") == 0)
			k = jstr(obj, "id");
	}
	if (k == NULL || *k == '\0' || strlen(k) > MAX_KEY)
		k = id;
	snprintf(key, keylen, "%s", k);
	rc = 0;
cleanup:
	json_decref(root);
	return rc;
}

tally_relay__outcome tally_relay__verify(tally_relay *r, tally_relay__req *rq,
					 const char *sig, char *key,
					 size_t keylen)
{
	tally_webhook_reason why;
	int64_t now_s = rq->received_ms / 1000;

	if (tally_webhook_verify(
		sig, tally_strbuf_cstr(&rq->body), rq->body.len, r->secret_list,
		r->nsecrets, now_s, atomic_load(&r->tolerance_s), &why) != 0) {
		switch (why) {
		case TALLY_WEBHOOK_MISSING_HEADER:
			return O_MISSING_HEADER;
		case TALLY_WEBHOOK_MALFORMED_HEADER:
			return O_MALFORMED_HEADER;
		case TALLY_WEBHOOK_NO_V1:
			return O_NO_V1;
		case TALLY_WEBHOOK_EXPIRED:
			return O_EXPIRED;
		default:
			return O_BAD_SIGNATURE;
		}
	}
	if (parse_event(key, keylen, rq->event_id, sizeof(rq->event_id),
			tally_strbuf_cstr(&rq->body), rq->body.len) != 0)
		return O_MALFORMED_BODY;
	return O_OK;
}
