#ifndef TALLY_COMMAND_H
#define TALLY_COMMAND_H

/**
 * @file tally/command.h
 * @brief Commands on billing.commands (DESIGN.md §3 "Commands",
 *        schemas/command.md): what the SaaS API asks the Stripe consumer to
 *        do for a tenant. Decoded strictly by the same codec as usage events;
 *        strings are borrowed views into the decoded buffer.
 */

#include <msgpack.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "tally/codec.h"
#include "tally/common.h"
#include "tally/event.h"

typedef enum {
	TALLY_CMD_NONE = 0,
	TALLY_CMD_CREATE_CUSTOMER = 1,     /* "create_customer" */
	TALLY_CMD_CREATE_SUBSCRIPTION = 2, /* "create_subscription" */
	TALLY_CMD_CHANGE_PLAN = 3,         /* "change_plan" */
	TALLY_CMD_CANCEL_SUBSCRIPTION = 4, /* "cancel_subscription" */
	TALLY_CMD_SYNC_TENANT = 5,         /* "sync_tenant" */
	/* provisioning (tally/tenant_admin.h): no Stripe call */
	TALLY_CMD_CREATE_TENANT = 6,       /* "create_tenant" */
	TALLY_CMD_UPDATE_TENANT = 7,       /* "update_tenant" */
	TALLY_CMD_SUSPEND_TENANT = 8,      /* "suspend_tenant" */
	TALLY_CMD_RESUME_TENANT = 9,       /* "resume_tenant" */
} tally_command_type;

#define TALLY_CMD_TYPE_MAX 9

typedef enum {
	TALLY_PRORATION_DEFAULT = 0,    /* absent: create_prorations */
	TALLY_PRORATION_CREATE = 1,     /* "create_prorations" */
	TALLY_PRORATION_NONE = 2,       /* "none" */
	TALLY_PRORATION_ALWAYS = 3,     /* "always_invoice" */
} tally_proration;

#define TALLY_PLAN_MAX 64

typedef struct tally_command {
	tally_str id;                /* ≤ 128; Stripe idempotency keys derive */
	tally_command_type type;
	uint8_t tenant_id[16];
	int64_t time_ms;
	tally_str plan;              /* create_subscription, change_plan */
	int64_t trial_days;          /* -1 when absent; 0..730 */
	tally_str payment_method_id; /* optional, ≤ 256 */
	tally_proration proration;   /* change_plan; DEFAULT when absent */
	bool at_period_end;          /* cancel_subscription */
	bool has_at_period_end;
	tally_str email;             /* optional (create_customer), ≤ 256 */
	tally_str name;              /* optional (create_customer), ≤ 256 */
	tally_str slug;              /* create_tenant, ≤ 256 */
	tally_str domain;            /* create_tenant, ≤ 256 */
	tally_str budget;            /* create/update_tenant: decimal, ≤ 64 */
} tally_command;

/** "create_customer" etc., or NULL. */
const char *tally_command_type_name(tally_command_type t);
/** "create_prorations" | "none" | "always_invoice"; NULL for DEFAULT. */
const char *tally_proration_name(tally_proration p);

/**
 * Decode one command. Strings in out point into buf. Rules as for usage
 * events (unknown keys ignored, trailing bytes rejected); `plan` must be one
 * of the plan matrix (starter, professional, enterprise,
 * white_label_starter, white_label_enterprise).
 * @return 0 or TALLY_EINVALID with err filled
 */
int tally_codec_decode_command(tally_command *out, const char *buf,
			       size_t len, tally_codec_error *err)
	TALLY_MUSTCHECK;

/** Append the msgpack encoding of cmd to sb. */
void tally_codec_encode_command(msgpack_sbuffer *sb, const tally_command *cmd);

#endif /* TALLY_COMMAND_H */
