/*
 * price_import.c - `tally prices import`: a genai-prices data file into the
 * versioned price book of migrations/0002_prices.sql.
 *
 * Key decision: idempotence by content hash. Each provider and each model
 * entry of the file is hashed (SHA-256 of its canonical JSON, numbers kept
 * as their exact text); an entry whose hash equals the open version's is
 * left alone, so importing the same file twice issues no write at all (and
 * does not bump the book's version). A changed model closes its open rows
 * at the import instant and opens new ones from the same instant; a model
 * that left the file is closed; nothing is ever deleted. A model seen for
 * the first time is effective from -infinity: genai-prices' own start_date
 * constraints carry the history it knows.
 */
#define _POSIX_C_SOURCE 200809L
#include "pricebook_int.h"
#include "tally/log.h"
#include "tally/pricebook_pg.h"

#include <inttypes.h>
#include <jansson.h>
#include <openssl/evp.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct known {
	char *provider, *model, *sha;
	int64_t position;
	bool open, seen;
} known;

typedef struct import_state {
	json_t *root;
	int64_t now_ms;
	const char *source;
	tally_price_import_stats *st;
	known *k;
	size_t nk;
} import_state;

static void sha256_json(char out[65], json_t *j)
{
	char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
	unsigned char md[EVP_MAX_MD_SIZE];
	unsigned int mdlen = 0, i;

	EVP_Digest(s, strlen(s), md, &mdlen, EVP_sha256(), NULL);
	for (i = 0; i < mdlen && i < 32; i++)
		snprintf(out + 2 * i, 3, "%02x", md[i]);
	out[64] = '\0';
	free(s);
}

static char *dump_or_null(json_t *j)
{
	if (j == NULL || json_is_null(j))
		return NULL;
	return json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
}

static known *find_known(import_state *is, const char *p, const char *m)
{
	size_t i;

	for (i = 0; i < is->nk; i++)
		if (strcmp(is->k[i].provider, p) == 0 &&
		    ((m == NULL && is->k[i].model == NULL) ||
		     (m != NULL && is->k[i].model != NULL &&
		      strcmp(is->k[i].model, m) == 0)))
			return &is->k[i];
	return NULL;
}

static void free_known(import_state *is)
{
	size_t i;

	for (i = 0; i < is->nk; i++) {
		free(is->k[i].provider);
		free(is->k[i].model);
		free(is->k[i].sha);
	}
	free(is->k);
	is->k = NULL;
	is->nk = 0;
}

static void add_known(import_state *is, const char *p, const char *m,
		      const char *sha, int64_t pos, bool open)
{
	known *k;

	is->k = tally_xrealloc(is->k, (is->nk + 1) * sizeof(known));
	k = &is->k[is->nk++];
	k->provider = tally_xstrdup(p);
	k->model = m ? tally_xstrdup(m) : NULL;
	k->sha = tally_xstrdup(sha ? sha : "");
	k->position = pos;
	k->open = open;
	k->seen = false;
}

#define TS_SQL(n) "CASE WHEN $" #n "::bigint IS NULL THEN '-infinity'::timestamptz " \
		  "ELSE 'epoch'::timestamptz + $" #n "::bigint * interval '1 millisecond' END"

static const char insert_sql[] =
	"INSERT INTO model_prices (provider, model, model_position, match, "
	"cond_position, constraint_type, start_at, time_start, time_end, "
	"input_mtok, cache_read_mtok, cache_write_mtok, output_mtok, "
	"output_reasoning_mtok, requests_kcount, tiers, other_prices, "
	"effective_from, source, content_sha256) VALUES ($1, $2, $3, "
	"$4::jsonb, $5, $6, ($7::date)::timestamp AT TIME ZONE 'UTC', $8, $9, "
	"$10, $11, $12, $13, $14, $15, $16::jsonb, $17::jsonb, "
	TS_SQL(18) ", $19, $20)";

/* A model's price entries: its list of conditional prices, or its one
 * price object as a list of one entry. The caller owns the list. */
static json_t *price_entries(json_t *jm)
{
	json_t *prices = json_object_get(jm, "prices");
	json_t *list = json_is_array(prices) ? json_incref(prices) : json_array();

	if (!json_is_array(prices)) {
		json_t *e = json_object();
		json_object_set(e, "prices", prices);
		json_array_append_new(list, e);
	}
	return list;
}

/* An entry's constraint: none, a start_date, or a time_of_date window. */
static void read_constraint(json_t *con, const char **ctype, const char **sd,
			    const char **ts, const char **te)
{
	*ctype = "none";
	*sd = *ts = *te = NULL;
	if (con == NULL || json_is_null(con))
		return;
	if (json_is_string(json_object_get(con, "start_date"))) {
		*ctype = "start_date";
		*sd = json_string_value(json_object_get(con, "start_date"));
	} else {
		*ctype = "time_of_date";
		*ts = json_string_value(json_object_get(con, "start_time"));
		*te = json_string_value(json_object_get(con, "end_time"));
	}
}

/* An entry's prices: a known key's base price into vals (its tiers, if
 * any, into tiers); an unknown key into other. */
static void split_prices(json_t *p, const char *vals[PB_K_N], json_t *tiers,
			 json_t *other)
{
	const char *key;
	json_t *v;
	int k;

	json_object_foreach(p, key, v) {
		bool known_key = false;

		for (k = 0; k < PB_K_N; k++) {
			if (strcmp(key, tally_pb__key_names[k]) != 0)
				continue;
			known_key = true;
			if (json_is_string(v)) {
				vals[k] = json_string_value(v);
			} else if (json_is_object(v)) {
				vals[k] = json_string_value(
					json_object_get(v, "base"));
				json_object_set(tiers, key, v);
			}
		}
		if (!known_key)
			json_object_set(other, key, v);
	}
}

/* One model_prices row per price entry of model jm. */
static int insert_model(tally_pg *pg, import_state *is, const char *prov,
			json_t *jm, int64_t pos, const char *sha, bool first,
			tally_error *err)
{
	json_t *list = price_entries(jm);
	char *match = dump_or_null(json_object_get(jm, "match"));
	char posbuf[24], cpos[24], from[24];
	size_t ci;
	json_t *entry;
	int rc = 0;

	snprintf(posbuf, sizeof(posbuf), "%" PRId64, pos);
	snprintf(from, sizeof(from), "%" PRId64, is->now_ms);
	json_array_foreach(list, ci, entry) {
		json_t *tiers = json_object(), *other = json_object();
		const char *ctype, *sd, *ts, *te;
		const char *vals[PB_K_N] = { NULL };
		char *tiers_s, *other_s;

		read_constraint(json_object_get(entry, "constraint"), &ctype,
				&sd, &ts, &te);
		split_prices(json_object_get(entry, "prices"), vals, tiers,
			     other);
		tiers_s = json_object_size(tiers) ? dump_or_null(tiers) : NULL;
		other_s = json_object_size(other) ? dump_or_null(other) : NULL;
		snprintf(cpos, sizeof(cpos), "%zu", ci);
		{
			const char *params[20] = {
				prov, json_string_value(json_object_get(jm, "id")),
				posbuf, match, cpos, ctype, sd, ts, te,
				vals[0], vals[1], vals[2], vals[3], vals[4],
				vals[5], tiers_s, other_s, first ? NULL : from,
				is->source, sha,
			};
			rc = tally_pg_exec(pg, NULL, insert_sql, 20, params,
					   err);
		}
		free(tiers_s);
		free(other_s);
		json_decref(tiers);
		json_decref(other);
		if (rc != 0)
			break;
	}
	free(match);
	json_decref(list);
	return rc;
}

static int close_model(tally_pg *pg, import_state *is, const char *prov,
		       const char *model, tally_error *err)
{
	char now[24];
	const char *params[3] = { prov, model, now };

	snprintf(now, sizeof(now), "%" PRId64, is->now_ms);
	return tally_pg_exec(pg, NULL,
			     "UPDATE model_prices SET effective_to = "
			     "'epoch'::timestamptz + $3::bigint * "
			     "interval '1 millisecond' WHERE provider = $1 "
			     "AND model = $2 AND effective_to = 'infinity'",
			     3, params, err);
}

/* What the book holds now: each provider and each model's open version. */
static int load_known(tally_pg *pg, import_state *is, tally_error *err)
{
	PGresult *res = NULL;
	int rc, r;

	rc = tally_pg_exec(pg, &res,
			   "SELECT provider, NULL, content_sha256, position, "
			   "true FROM price_providers UNION ALL "
			   "SELECT provider, model, min(content_sha256) FILTER "
			   "(WHERE effective_to = 'infinity'), "
			   "max(model_position), bool_or(effective_to = "
			   "'infinity') FROM model_prices GROUP BY 1, 2",
			   0, NULL, err);
	if (rc != 0)
		return rc;
	for (r = 0; r < PQntuples(res); r++) {
		int64_t pos = 0;

		if (tally_parse_i64(&pos, PQgetvalue(res, r, 3)) != 0)
			pos = -1;
		add_known(is, PQgetvalue(res, r, 0),
			  PQgetisnull(res, r, 1) ? NULL : PQgetvalue(res, r, 1),
			  PQgetisnull(res, r, 2) ? NULL : PQgetvalue(res, r, 2),
			  pos, PQgetvalue(res, r, 4)[0] == 't');
	}
	PQclear(res);
	return 0;
}

/* fallback_model_providers as a text[] literal; the caller frees it. */
static char *fallbacks_literal(json_t *jp)
{
	json_t *fbj = json_object_get(jp, "fallback_model_providers");
	json_t *fbt = json_array();
	size_t f;
	json_t *fv;
	char *fb;

	json_array_foreach(fbj, f, fv)
		json_array_append(fbt, fv);
	fb = json_dumps(fbt, JSON_COMPACT);
	fb[0] = '{';
	fb[strlen(fb) - 1] = '}';
	json_decref(fbt);
	return fb;
}

/* Provider jp (without its models) into price_providers, new or updated. */
static int upsert_provider(tally_pg *pg, import_state *is, json_t *jp,
			   const char *prov, const char *pos, const char *sha,
			   tally_error *err)
{
	char *pm = dump_or_null(json_object_get(jp, "provider_match"));
	char *mm = dump_or_null(json_object_get(jp, "model_match"));
	char *fb = fallbacks_literal(jp);
	const char *params[8] = {
		prov, json_string_value(json_object_get(jp, "name")),
		pos, pm, mm, fb, is->source, sha,
	};
	int rc;

	if (params[1] == NULL)
		params[1] = prov;
	rc = tally_pg_exec(pg, NULL,
			   "INSERT INTO price_providers (provider, name, "
			   "position, provider_match, model_match, "
			   "fallback_providers, source, content_sha256) "
			   "VALUES ($1, $2, $3, $4::jsonb, $5::jsonb, "
			   "$6::text[], $7, $8) ON CONFLICT (provider) DO "
			   "UPDATE SET name = $2, position = $3, "
			   "provider_match = $4::jsonb, model_match = "
			   "$5::jsonb, fallback_providers = $6::text[], "
			   "source = $7, content_sha256 = $8, "
			   "updated_at = now()",
			   8, params, err);
	free(pm);
	free(mm);
	free(fb);
	return rc;
}

/* Provider jp at position pi: written only if its content or place moved. */
static int import_provider(tally_pg *pg, import_state *is, json_t *jp,
			   size_t pi, tally_error *err)
{
	json_t *copy = json_deep_copy(jp);
	const char *prov = json_string_value(json_object_get(jp, "id"));
	char sha[65], pos[24];
	known *k = find_known(is, prov, NULL);
	int rc;

	json_object_del(copy, "models");
	sha256_json(sha, copy);
	json_decref(copy);
	snprintf(pos, sizeof(pos), "%zu", pi);
	if (k != NULL && strcmp(k->sha, sha) == 0 && k->position == (int64_t)pi)
		return 0;
	rc = upsert_provider(pg, is, jp, prov, pos, sha, err);
	if (rc != 0)
		return rc;
	is->st->providers_changed++;
	return 0;
}

/* Model jm at position mi: unchanged (its position updated if it moved),
 * changed (open rows closed, new ones opened) or new. */
static int import_model(tally_pg *pg, import_state *is, const char *prov,
			json_t *jm, size_t mi, tally_error *err)
{
	tally_price_import_stats *st = is->st;
	const char *mid = json_string_value(json_object_get(jm, "id"));
	char msha[65], mpos[24];
	known *k;
	int rc;

	sha256_json(msha, jm);
	snprintf(mpos, sizeof(mpos), "%zu", mi);
	k = find_known(is, prov, mid);
	if (k != NULL)
		k->seen = true;
	if (k != NULL && k->open && strcmp(k->sha, msha) == 0) {
		if (k->position != (int64_t)mi) {
			const char *params[3] = { prov, mid, mpos };
			rc = tally_pg_exec(pg, NULL,
					   "UPDATE model_prices SET "
					   "model_position = $3 WHERE "
					   "provider = $1 AND model = $2 "
					   "AND effective_to = 'infinity'",
					   3, params, err);
			if (rc != 0)
				return rc;
		}
		st->models_unchanged++;
		return 0;
	}
	if (k != NULL && k->open) {
		rc = close_model(pg, is, prov, mid, err);
		if (rc != 0)
			return rc;
		st->models_changed++;
	} else {
		st->models_new++;
	}
	return insert_model(pg, is, prov, jm, (int64_t)mi, msha, k == NULL,
			    err);
}

/* Closes the open models that are no longer in the file. */
static int close_missing(tally_pg *pg, import_state *is, tally_error *err)
{
	size_t i;
	int rc;

	for (i = 0; i < is->nk; i++) {
		known *k = &is->k[i];

		if (k->model == NULL || !k->open || k->seen)
			continue;
		rc = close_model(pg, is, k->provider, k->model, err);
		if (rc != 0)
			return rc;
		is->st->models_closed++;
	}
	return 0;
}

static int import_txn(tally_pg *pg, void *payload, tally_error *err)
{
	import_state *is = payload;
	json_t *jp, *models, *jm;
	size_t pi, mi;
	int rc;

	memset(is->st, 0, sizeof(*is->st));
	free_known(is);
	rc = tally_pg_exec(pg, NULL,
			   "SELECT pg_advisory_xact_lock(hashtext("
			   "'tally.prices.import'))", 0, NULL, err);
	if (rc != 0)
		return rc;
	rc = load_known(pg, is, err);
	if (rc != 0)
		return rc;
	json_array_foreach(is->root, pi, jp) {
		const char *prov = json_string_value(json_object_get(jp, "id"));

		rc = import_provider(pg, is, jp, pi, err);
		if (rc != 0)
			return rc;
		models = json_object_get(jp, "models");
		json_array_foreach(models, mi, jm) {
			rc = import_model(pg, is, prov, jm, mi, err);
			if (rc != 0)
				return rc;
		}
	}
	return close_missing(pg, is, err);
}

int tally_pricebook_import_genai(tally_pg *pg, const char *text, size_t len,
				 const char *source, int64_t now_ms,
				 tally_price_import_stats *st,
				 tally_error *err)
{
	tally_pricebook *check = NULL;
	import_state is;
	char *quoted;
	size_t qlen;
	int rc;

	/* refuse the whole file if any part of it would not load */
	rc = tally_pricebook_load_genai_buf(&check, text, len, err);
	if (rc != 0)
		return rc;
	tally_pricebook_free(check);
	memset(&is, 0, sizeof(is));
	quoted = tally_pb__quote_numbers(text, len, &qlen);
	is.root = json_loadb(quoted, qlen, 0, NULL);
	free(quoted);
	if (is.root == NULL)
		return tally_error_set(err, TALLY_EINVALID, "bad JSON");
	is.now_ms = now_ms;
	is.source = source;
	is.st = st;
	rc = tally_pg_txn(pg, import_txn, &is, 0, err);
	free_known(&is);
	json_decref(is.root);
	return rc;
}
