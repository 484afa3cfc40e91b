/*
 * codec_encode.c - encoding usage events, rated usage events and commands
 * to msgpack (the schemas/ directory) into the caller's sbuffer: events by
 * a direct writer (below), commands with msgpack-c's packer. Amounts are
 * decimal strings, times unix ms.
 */
#define _POSIX_C_SOURCE 200809L
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

/*
 * Usage and rated events (tally-rate's hot path, ~1 µs per event budget)
 * are written straight into the sbuffer: room for the whole event is
 * reserved once, constant keys are copied as pre-encoded fixstr bytes and
 * every header is chosen exactly as msgpack-c's packer chooses it (the
 * smallest form), so the bytes are those of msgpack_pack_*; the golden
 * vectors in schemas/vectors and test_codec_encode check it.
 */
typedef struct mpw {
	uint8_t *p;
} mpw;

/* the most an event can take besides its variable strings (keys, ints,
 * money strings, uuid, headers: under 1 KiB) */
#define EV_FIXED_MAX 1536

static void w_reserve(mpw *w, msgpack_sbuffer *sb, size_t n)
{
	if (sb->alloc - sb->size < n) {
		size_t a = sb->alloc ? sb->alloc : MSGPACK_SBUFFER_INIT_SIZE;

		while (a - sb->size < n)
			a *= 2;
		sb->data = tally_xrealloc(sb->data, a);
		sb->alloc = a;
	}
	w->p = (uint8_t *)sb->data + sb->size;
}

static void w_done(const mpw *w, msgpack_sbuffer *sb)
{
	sb->size = (size_t)(w->p - (uint8_t *)sb->data);
}

static inline void w_be(mpw *w, uint64_t v, int n)
{
	int i;

	for (i = n - 1; i >= 0; i--)
		*w->p++ = (uint8_t)(v >> (8 * i));
}

static inline void w_map(mpw *w, size_t n)
{
	if (n < 16) {
		*w->p++ = (uint8_t)(0x80 | n);
	} else if (n < 65536) {
		*w->p++ = 0xde;
		w_be(w, n, 2);
	} else {
		*w->p++ = 0xdf;
		w_be(w, n, 4);
	}
}

static inline void w_str(mpw *w, const void *s, size_t n)
{
	if (n < 32) {
		*w->p++ = (uint8_t)(0xa0 | n);
	} else if (n < 256) {
		*w->p++ = 0xd9;
		*w->p++ = (uint8_t)n;
	} else if (n < 65536) {
		*w->p++ = 0xda;
		w_be(w, n, 2);
	} else {
		*w->p++ = 0xdb;
		w_be(w, n, 4);
	}
	memcpy(w->p, s, n);
	w->p += n;
}

/* a constant key (a literal under 32 bytes): one fixstr, length known at
 * compile time */
#define W_KEY(w, lit)                                                  \
	do {                                                           \
		_Static_assert(sizeof(lit) - 1 < 32, "fixstr key");    \
		*(w)->p++ = (uint8_t)(0xa0 | (sizeof(lit) - 1));        \
		memcpy((w)->p, lit, sizeof(lit) - 1);                  \
		(w)->p += sizeof(lit) - 1;                             \
	} while (0)

static inline void w_int(mpw *w, int64_t d)
{
	if (d < -(1LL << 5)) {
		if (d < -(1LL << 31)) {
			*w->p++ = 0xd3;
			w_be(w, (uint64_t)d, 8);
		} else if (d < -(1LL << 15)) {
			*w->p++ = 0xd2;
			w_be(w, (uint32_t)(int32_t)d, 4);
		} else if (d < -(1LL << 7)) {
			*w->p++ = 0xd1;
			w_be(w, (uint16_t)(int16_t)d, 2);
		} else {
			*w->p++ = 0xd0;
			*w->p++ = (uint8_t)(int8_t)d;
		}
	} else if (d < (1LL << 7)) {
		*w->p++ = (uint8_t)(int8_t)d;
	} else if (d < (1LL << 8)) {
		*w->p++ = 0xcc;
		*w->p++ = (uint8_t)d;
	} else if (d < (1LL << 16)) {
		*w->p++ = 0xcd;
		w_be(w, (uint64_t)d, 2);
	} else if (d < (1LL << 32)) {
		*w->p++ = 0xce;
		w_be(w, (uint64_t)d, 4);
	} else {
		*w->p++ = 0xcf;
		w_be(w, (uint64_t)d, 8);
	}
}

#define W_STR(w, key, v)                                               \
	do {                                                           \
		W_KEY(w, key);                                         \
		w_str(w, (v).ptr, (v).len);                            \
	} while (0)
#define W_INT(w, key, v)                                               \
	do {                                                           \
		W_KEY(w, key);                                         \
		w_int(w, v);                                           \
	} while (0)

/* the 36 characters of tally_uuid_fmt (lower-case, 8-4-4-4-12) */
static void w_uuid(mpw *w, const uint8_t u[16])
{
	static const char hex[] = "0123456789abcdef";
	int i;

	*w->p++ = 0xd9; /* str 8: 36 is over fixstr's 31 */
	*w->p++ = 36;
	for (i = 0; i < 16; i++) {
		if (i == 4 || i == 6 || i == 8 || i == 10)
			*w->p++ = '-';
		*w->p++ = (uint8_t)hex[u[i] >> 4];
		*w->p++ = (uint8_t)hex[u[i] & 15];
	}
}

static void w_money(mpw *w, int64_t pico)
{
	char buf[48];

	w_str(w, buf, tally_money_fmt(buf, sizeof(buf), pico));
}

static size_t usage_keys(const tally_usage_event *ev)
{
	return 6 + (ev->subject.len > 0);
}

/* room for an event: the fixed part and its variable strings */
static size_t usage_room(const tally_usage_event *ev)
{
	return EV_FIXED_MAX + (size_t)ev->id.len + ev->source.len +
	       ev->subject.len + ev->provider.len + ev->model.len +
	       ev->workflow_id.len;
}

static void w_meter(mpw *w, tally_meter meter)
{
	const char *name = tally_meter_name(meter);

	w_str(w, name != NULL ? name : "", name != NULL ? strlen(name) : 0);
}

static void pack_usage_body(mpw *w, const tally_usage_event *ev)
{
	W_STR(w, "id", ev->id);
	W_STR(w, "source", ev->source);
	W_KEY(w, "type");
	w_meter(w, ev->meter);
	W_KEY(w, "tenant_id");
	w_uuid(w, ev->tenant_id);
	W_INT(w, "time", ev->time_ms);
	if (ev->subject.len > 0)
		W_STR(w, "subject", ev->subject);
	W_KEY(w, "data");
	switch (ev->meter) {
	case TALLY_METER_AI_TOKENS:
		w_map(w, 6 + ev->has_reasoning + (ev->workflow_id.len > 0));
		W_STR(w, "provider", ev->provider);
		W_STR(w, "model", ev->model);
		W_INT(w, "input_tokens", ev->input_tokens);
		W_INT(w, "output_tokens", ev->output_tokens);
		W_INT(w, "cache_read_tokens", ev->cache_read_tokens);
		W_INT(w, "cache_write_tokens", ev->cache_write_tokens);
		if (ev->has_reasoning)
			W_INT(w, "reasoning_tokens", ev->reasoning_tokens);
		if (ev->workflow_id.len > 0)
			W_STR(w, "workflow_id", ev->workflow_id);
		break;
	case TALLY_METER_WORKFLOW:
		w_map(w, 3);
		W_STR(w, "workflow_id", ev->workflow_id);
		W_INT(w, "steps", ev->steps);
		W_INT(w, "complexity", ev->complexity);
		break;
	case TALLY_METER_STORAGE:
		w_map(w, 1);
		W_INT(w, "bytes", ev->bytes);
		break;
	case TALLY_METER_API_CALL:
		w_map(w, 1);
		W_INT(w, "count", ev->count);
		break;
	default:
		w_map(w, 0);
		break;
	}
}

void tally_codec_encode_usage(msgpack_sbuffer *sb, const tally_usage_event *ev)
{
	mpw w;

	w_reserve(&w, sb, usage_room(ev));
	w_map(&w, usage_keys(ev));
	pack_usage_body(&w, ev);
	w_done(&w, sb);
}

void tally_codec_encode_rated(msgpack_sbuffer *sb, const tally_rated_event *re)
{
	mpw w;
	size_t nc = 0;
	int i;

	for (i = 0; i < TALLY_COMP_N; i++)
		nc += re->components[i] != 0;
	w_reserve(&w, sb, usage_room(&re->ev));
	w_map(&w, usage_keys(&re->ev) + 6);
	pack_usage_body(&w, &re->ev);
	W_KEY(&w, "cost");
	w_money(&w, re->cost);
	W_KEY(&w, "components");
	w_map(&w, nc);
	for (i = 0; i < TALLY_COMP_N; i++) {
		const char *name = tally_codec__comp_names[i];

		if (re->components[i] == 0)
			continue;
		w_str(&w, name, strlen(name));
		w_money(&w, re->components[i]);
	}
	W_KEY(&w, "currency");
	w_str(&w, re->currency, strnlen(re->currency, sizeof(re->currency)));
	W_INT(&w, "price_id", re->price_id);
	W_KEY(&w, "unpriced");
	*w.p++ = re->unpriced ? 0xc3 : 0xc2;
	W_INT(&w, "rated_at", re->rated_at_ms);
	w_done(&w, sb);
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
