#ifndef TALLY_PRICEBOOK_INT_H
#define TALLY_PRICEBOOK_INT_H

/*
 * pricebook_int.h - the in-memory layout of a price book, shared by the
 * files that build it (pricebook*.c) and rating.c (reading it). The layout mirrors
 * genai-prices: providers in file order, each with its models in file order
 * (first match wins), each model with one or more versions in time
 * (effective_from/effective_to, from PostgreSQL) and, inside a version, the
 * list of conditional prices (last matching constraint wins).
 */

#include <jansson.h>
#include <regex.h>
#include <stdbool.h>
#include <stdint.h>

#include "tally/pricebook.h"

/* Price keys the rating of our events can use. Others in the data (audio,
 * images, web searches...) are never reported by our events, so their
 * leaf quantity is always 0 (see docs/pricing.md); they are kept in the
 * database for traceability only. */
typedef enum {
	PB_K_INPUT = 0,    /* input_mtok          input_tokens */
	PB_K_CACHE_READ,   /* cache_read_mtok     cache_read_tokens */
	PB_K_CACHE_WRITE,  /* cache_write_mtok    cache_write_tokens */
	PB_K_OUTPUT,       /* output_mtok         output_tokens */
	PB_K_REASONING,    /* output_reasoning_mtok output_reasoning_tokens */
	PB_K_REQUESTS,     /* requests_kcount     1 per event */
	PB_K_N
} pb_key;

extern const char *const tally_pb__key_names[PB_K_N];

typedef struct pb_tier {
	int64_t start; /* applies when input_tokens > start */
	int64_t price; /* pico per MTok (per K requests) */
} pb_tier;

typedef struct pb_price {
	bool set;
	int64_t base;
	uint32_t ntiers; /* sorted by start ascending */
	pb_tier *tiers;
} pb_price;

typedef enum { PB_C_NONE = 0, PB_C_START, PB_C_TOD } pb_ckind;

typedef struct pb_cond {
	pb_ckind kind;
	int64_t start_ms;           /* PB_C_START */
	int32_t tod_start, tod_end; /* PB_C_TOD: ms of the UTC day */
	int64_t price_id;
	bool any_tier;
	pb_price p[PB_K_N];
} pb_cond;

typedef enum {
	PB_R_EQ, PB_R_SW, PB_R_EW, PB_R_CONTAINS, PB_R_REGEX, PB_R_AND,
	PB_R_OR, PB_R_NEVER
} pb_rkind;

typedef struct pb_rule {
	pb_rkind kind;
	char *s;   /* lower-cased operand (not for regex) */
	size_t len;
	/* regex: translated to POSIX ERE; a leading negative look-ahead
	 * ^(?!X)Y becomes "not ^X and ^Y" */
	bool has_re, has_not;
	regex_t re, re_not;
	uint32_t nkids;
	struct pb_rule *kids;
} pb_rule;

typedef struct pb_version {
	int64_t from_ms, to_ms; /* [from, to) */
	uint32_t nconds;
	pb_cond *conds;
} pb_version;

typedef struct pb_model {
	char *id;
	pb_rule rule;
	uint32_t nversions; /* sorted by from_ms */
	pb_version *versions;
} pb_model;

typedef struct pb_provider {
	char *id;
	bool has_pmatch, has_mmatch;
	pb_rule provider_match, model_match;
	uint32_t nfallbacks;
	char **fallbacks;
	int *fallback_idx; /* resolved, -1 if absent */
	uint32_t nmodels;
	pb_model *models;
} pb_provider;

typedef struct pb_unit_price {
	tally_meter meter;
	int64_t from_ms, to_ms;
	int64_t price; /* pico per unit (GB-month for storage) */
	int64_t price_id;
} pb_unit_price;

typedef struct pb_override {
	int64_t id;
	uint8_t tenant_id[16];
	tally_meter meter;  /* NONE = any */
	char *provider;     /* NULL = any */
	char *model;        /* NULL = any */
	bool is_multiplier;
	int64_t multiplier; /* pico-scaled: 1.25 -> 1.25e12 */
	pb_cond cond;       /* explicit token prices (kind NONE) */
	bool has_unit;
	int64_t unit_price;
	int64_t from_ms, to_ms;
	int specificity;
} pb_override;

struct tally_pricebook {
	uint64_t serial; /* unique per load in this process */
	int64_t version;
	char currency[4];
	uint32_t nproviders;
	pb_provider *providers;
	uint32_t nunits;
	pb_unit_price *units;
	uint32_t noverrides;
	pb_override *overrides; /* sorted by tenant_id */
	size_t nmodels;
};

/* pricebook.c: a new empty book (unique serial, USD), and the fallback
 * providers' indexes resolved once every provider is in. */
tally_pricebook *tally_pb__book_new(void);
void tally_pb__resolve_fallbacks(tally_pricebook *pb);

/* Index of a provider by id, or -1. */
int tally_pb__provider_index(const tally_pricebook *pb, const char *id);

/* pricebook_rules.c: parse a match rule (a JSON object, or its text) into
 * r; free it with tally_pb__rule_dispose() even after an error. */
int tally_pb__rule_parse(pb_rule *r, json_t *j, tally_error *err);
int tally_pb__rule_parse_text(pb_rule *r, const char *text,
			      tally_error *err);
void tally_pb__rule_dispose(pb_rule *r);
char *tally_pb__lower_dup(const char *s);

/* Match a rule against a lower-cased, trimmed, NUL-terminated name. */
bool tally_pb__match(const pb_rule *r, const char *name, size_t len);

/* rating_match.c: the provider and model an event's names resolve to;
 * *outp NULL: no such provider, *outm NULL: no price for the model. */
void tally_pb__resolve(const tally_pricebook *pb, const tally_str *provider,
		       const tally_str *model, const pb_provider **outp,
		       const pb_model **outm);

/* pricebook_prices.c: an exact non-negative decimal price -> pico */
int tally_pb__parse_price_text(int64_t *out, const char *s, const char *what,
			       tally_error *err);
/* "YYYY-MM-DD" -> unix ms at 00:00 UTC; 0 or -1 */
int tally_pb__parse_date(int64_t *out, const char *s);
/* "HH:MM:SS[.fff](Z|+HH:MM|-HH:MM)" -> ms of the UTC day; 0 or -1 */
int tally_pb__parse_tod(int32_t *out, const char *s);
/* a price entry of the data ({"constraint": ..., "prices": {...}}), or
 * only its prices object; the tiers column of PostgreSQL (JSON text) */
int tally_pb__cond_parse(pb_cond *c, json_t *entry, tally_error *err);
int tally_pb__cond_prices_parse(pb_cond *c, json_t *prices,
				tally_error *err);
int tally_pb__tiers_parse_text(pb_cond *c, const char *text,
			       tally_error *err);
void tally_pb__cond_dispose(pb_cond *c);

/* pricebook_genai.c: copy of text with every JSON number outside strings
 * quoted, so jansson keeps its exact text; free() the result. */
char *tally_pb__quote_numbers(const char *text, size_t len, size_t *outlen);

#endif /* TALLY_PRICEBOOK_INT_H */
