/*
 * fuzz_stripe_sig.c - libFuzzer target for the Stripe-Signature header
 * parser. The input is "<header>\n<body>". Checks: the cheap pre-check
 * (tally_webhook_check_header) and the full verification agree on headers
 * that cannot parse; a verification never succeeds on a header that the
 * pre-check rejects; the body signed by tally_webhook_sign() verifies,
 * also with the fuzzed header's items after it.
 * Run: tests/fuzz/run.sh 60 stripe_sig
 */
#include "fuzz.h"
#include "tally/webhook.h"

#include <stdio.h>

#define SECRET "whsec_fuzz"
#define NOW_S INT64_C(1700000000)

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	const uint8_t *nl = memchr(data, '\n', size);
	size_t hlen = nl ? (size_t)(nl - data) : size;
	char *header = fuzz_cstr(data, hlen);
	const char *body = nl ? (const char *)nl + 1 : "";
	size_t blen = nl ? size - hlen - 1 : 0;
	const char *secrets[] = { "", SECRET };
	char good[TALLY_WEBHOOK_SIG_HEADER_MAX], *both;
	tally_webhook_reason pre, why;
	int rc;

	pre = tally_webhook_check_header(header, 8192);
	rc = tally_webhook_verify(header, body, blen, secrets, 2, NOW_S, 300,
				  &why);
	if ((rc == 0) != (why == TALLY_WEBHOOK_OK))
		abort();
	if (rc == 0 && pre != TALLY_WEBHOOK_OK)
		abort();
	if ((pre == TALLY_WEBHOOK_MISSING_HEADER ||
	     pre == TALLY_WEBHOOK_NO_V1) && why != pre)
		abort();
	if (pre == TALLY_WEBHOOK_MALFORMED_HEADER && hlen <= 8192 &&
	    why != pre)
		abort();
	if (tally_webhook_reason_name(why) == NULL)
		abort();
	/* a correct signature verifies, whatever follows it */
	tally_webhook_sign(good, sizeof(good), body, blen, SECRET, NOW_S - 10);
	if (tally_webhook_verify(good, body, blen, secrets, 2, NOW_S, 300,
				 &why) != 0)
		abort();
	both = malloc(sizeof(good) + hlen + 2);
	if (both == NULL)
		abort();
	sprintf(both, "%s,%s", good, header);
	rc = tally_webhook_verify(both, body, blen, secrets, 2, NOW_S, 300,
				  &why);
	/* only another t= or an unparsable item may make it fail */
	if (rc != 0 && why != TALLY_WEBHOOK_MALFORMED_HEADER)
		abort();
	free(both);
	free(header);
	return 0;
}
