/*
 * codec_encode.c - encoding usage events, rated usage events and commands
 * to msgpack (the schemas/ directory) with msgpack-c's packer into the
 * caller's sbuffer. Amounts are decimal strings, times unix ms.
 */
#include "codec_int.h"

#include <string.h>

#include "tally/money.h"

static void pk_cstr(msgpack_packer *pk, const char *s)
{
	size_t n = strlen(s);

	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, s, n);
}

static void pk_str(msgpack_packer *pk, const char *key, tally_str v)
{
	pk_cstr(pk, key);
	msgpack_pack_str(pk, v.len);
	msgpack_pack_str_body(pk, v.ptr, v.len);
}

static void pk_int(msgpack_packer *pk, const char *key, int64_t v)
{
	pk_cstr(pk, key);
	msgpack_pack_int64(pk, v);
}

static void pk_uuid(msgpack_packer *pk, const char *key, const uint8_t u[16])
{
	char t[37];

	tally_uuid_fmt(t, u);
	pk_cstr(pk, key);
	msgpack_pack_str(pk, 36);
	msgpack_pack_str_body(pk, t, 36);
}

static size_t usage_keys(const tally_usage_event *ev)
{
	return 6 + (ev->subject.len > 0);
}

static void pack_usage_body(msgpack_packer *pk, const tally_usage_event *ev)
{
	size_t nd = 0;

	pk_str(pk, "id", ev->id);
	pk_str(pk, "source", ev->source);
	pk_cstr(pk, "type");
	pk_cstr(pk, tally_meter_name(ev->meter) != NULL ?
			    tally_meter_name(ev->meter) : "");
	pk_uuid(pk, "tenant_id", ev->tenant_id);
	pk_int(pk, "time", ev->time_ms);
	if (ev->subject.len > 0)
		pk_str(pk, "subject", ev->subject);
	pk_cstr(pk, "data");
	switch (ev->meter) {
	case TALLY_METER_AI_TOKENS:
		nd = 6 + ev->has_reasoning + (ev->workflow_id.len > 0);
		msgpack_pack_map(pk, nd);
		pk_str(pk, "provider", ev->provider);
		pk_str(pk, "model", ev->model);
		pk_int(pk, "input_tokens", ev->input_tokens);
		pk_int(pk, "output_tokens", ev->output_tokens);
		pk_int(pk, "cache_read_tokens", ev->cache_read_tokens);
		pk_int(pk, "cache_write_tokens", ev->cache_write_tokens);
		if (ev->has_reasoning)
			pk_int(pk, "reasoning_tokens", ev->reasoning_tokens);
		if (ev->workflow_id.len > 0)
			pk_str(pk, "workflow_id", ev->workflow_id);
		break;
	case TALLY_METER_WORKFLOW:
		msgpack_pack_map(pk, 3);
		pk_str(pk, "workflow_id", ev->workflow_id);
		pk_int(pk, "steps", ev->steps);
		pk_int(pk, "complexity", ev->complexity);
		break;
	case TALLY_METER_STORAGE:
		msgpack_pack_map(pk, 1);
		pk_int(pk, "bytes", ev->bytes);
		break;
	case TALLY_METER_API_CALL:
		msgpack_pack_map(pk, 1);
		pk_int(pk, "count", ev->count);
		break;
	default:
		msgpack_pack_map(pk, 0);
		break;
	}
}

void tally_codec_encode_usage(msgpack_sbuffer *sb, const tally_usage_event *ev)
{
	msgpack_packer pk;

	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, usage_keys(ev));
	pack_usage_body(&pk, ev);
}

static void pk_money(msgpack_packer *pk, int64_t pico)
{
	char buf[48];
	size_t n = tally_money_fmt(buf, sizeof(buf), pico);

	msgpack_pack_str(pk, n);
	msgpack_pack_str_body(pk, buf, n);
}

void tally_codec_encode_rated(msgpack_sbuffer *sb, const tally_rated_event *re)
{
	msgpack_packer pk;
	size_t nc = 0;
	int i;

	for (i = 0; i < TALLY_COMP_N; i++)
		nc += re->components[i] != 0;
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, usage_keys(&re->ev) + 6);
	pack_usage_body(&pk, &re->ev);
	pk_cstr(&pk, "cost");
	pk_money(&pk, re->cost);
	pk_cstr(&pk, "components");
	msgpack_pack_map(&pk, nc);
	for (i = 0; i < TALLY_COMP_N; i++) {
		if (re->components[i] == 0)
			continue;
		pk_cstr(&pk, tally_codec__comp_names[i]);
		pk_money(&pk, re->components[i]);
	}
	pk_cstr(&pk, "currency");
	pk_cstr(&pk, re->currency);
	pk_int(&pk, "price_id", re->price_id);
	pk_cstr(&pk, "unpriced");
	if (re->unpriced)
		msgpack_pack_true(&pk);
	else
		msgpack_pack_false(&pk);
	pk_int(&pk, "rated_at", re->rated_at_ms);
}

void tally_codec_encode_command(msgpack_sbuffer *sb, const tally_command *cmd)
{
	msgpack_packer pk;
	size_t n = 4;

	n += cmd->plan.len > 0;
	n += cmd->trial_days >= 0;
	n += cmd->payment_method_id.len > 0;
	n += cmd->proration != TALLY_PRORATION_DEFAULT;
	n += cmd->has_at_period_end;
	n += cmd->email.len > 0;
	n += cmd->name.len > 0;
	n += cmd->slug.len > 0;
	n += cmd->domain.len > 0;
	n += cmd->budget.len > 0;
	msgpack_packer_init(&pk, sb, msgpack_sbuffer_write);
	msgpack_pack_map(&pk, n);
	pk_str(&pk, "id", cmd->id);
	pk_cstr(&pk, "type");
	pk_cstr(&pk, tally_command_type_name(cmd->type) != NULL ?
			     tally_command_type_name(cmd->type) : "");
	pk_uuid(&pk, "tenant_id", cmd->tenant_id);
	pk_int(&pk, "time", cmd->time_ms);
	if (cmd->plan.len > 0)
		pk_str(&pk, "plan", cmd->plan);
	if (cmd->trial_days >= 0)
		pk_int(&pk, "trial_days", cmd->trial_days);
	if (cmd->payment_method_id.len > 0)
		pk_str(&pk, "payment_method_id", cmd->payment_method_id);
	if (cmd->proration != TALLY_PRORATION_DEFAULT) {
		pk_cstr(&pk, "proration");
		pk_cstr(&pk, tally_proration_name(cmd->proration));
	}
	if (cmd->has_at_period_end) {
		pk_cstr(&pk, "at_period_end");
		if (cmd->at_period_end)
			msgpack_pack_true(&pk);
		else
			msgpack_pack_false(&pk);
	}
	if (cmd->email.len > 0)
		pk_str(&pk, "email", cmd->email);
	if (cmd->name.len > 0)
		pk_str(&pk, "name", cmd->name);
	if (cmd->slug.len > 0)
		pk_str(&pk, "slug", cmd->slug);
	if (cmd->domain.len > 0)
		pk_str(&pk, "domain", cmd->domain);
	if (cmd->budget.len > 0)
		pk_str(&pk, "budget", cmd->budget);
}
