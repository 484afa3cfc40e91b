/*
 * models.c - provider and model names -> the small ids the ledger stores.
 * Names are stored in their canonical form (tally_model_name_norm), so
 * every spelling of a name ("OpenAI", " openai") is one row and one id.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "base/model_names.h"

#include <stdlib.h>
#include <string.h>

static model_ids *model_find(tally_agg *agg, const tally_str *p,
			     const tally_str *m)
{
	size_t i;

	/* linear: a deployment prices a few hundred models at most */
	for (i = 0; i < agg->nmodels; i++) {
		model_ids *x = &agg->models[i];
		if (tally_model_name_is(x->provider, strlen(x->provider),
					p->ptr, p->len) &&
		    tally_model_name_is(x->model, strlen(x->model), m->ptr,
					m->len))
			return x;
	}
	return NULL;
}

/* Remember the ids of res (provider, model, provider id, model id). */
static void cache_models(tally_agg *agg, const PGresult *res)
{
	int r;

	for (r = 0; r < PQntuples(res); r++) {
		model_ids *x;
		int64_t pid = 0, mid = 0;

		if (tally_parse_i64(&pid, PQgetvalue(res, r, 2)) != 0 ||
		    tally_parse_i64(&mid, PQgetvalue(res, r, 3)) != 0)
			continue;
		if (agg->nmodels == agg->capmodels) {
			agg->capmodels = agg->capmodels ? agg->capmodels * 2 : 64;
			agg->models = tally_xrealloc(
				agg->models, agg->capmodels * sizeof(*agg->models));
		}
		x = &agg->models[agg->nmodels++];
		x->provider = tally_xstrdup(PQgetvalue(res, r, 0));
		x->model = tally_xstrdup(PQgetvalue(res, r, 1));
		x->provider_id = (int32_t)pid;
		x->model_id = (int32_t)mid;
	}
}

/*
 * Insert the names (array literals params[0], params[1]) that are not
 * there yet and cache the ids of all of them, outside the batch's
 * transaction (each statement commits on its own).
 */
static int insert_models(tally_agg *agg, const char *const params[2],
			 tally_error *err)
{
	PGresult *res = NULL;
	int rc;

	rc = tally_pg_exec(agg->pg, NULL,
			   /* only names not there yet draw an identity value:
			    * ON CONFLICT alone spends one per row on every
			    * start, and providers.id is a smallint */
			   "INSERT INTO providers (name) SELECT DISTINCT x"
			   " FROM unnest($1::text[]) x WHERE NOT EXISTS"
			   " (SELECT 1 FROM providers p WHERE p.name = x)"
			   " ORDER BY x ON CONFLICT (name) DO NOTHING", 1,
			   params, err);
	if (rc == 0)
		rc = tally_pg_exec(agg->pg, NULL,
				   "INSERT INTO models (provider_id, name)"
				   " SELECT DISTINCT p.id, x.m FROM unnest($1::text[],"
				   " $2::text[]) x(p, m) JOIN providers p"
				   " ON p.name = x.p WHERE NOT EXISTS"
				   " (SELECT 1 FROM models m WHERE"
				   " m.provider_id = p.id AND m.name = x.m)"
				   " ORDER BY 1, 2"
				   " ON CONFLICT (provider_id, name) DO NOTHING",
				   2, params, err);
	if (rc == 0)
		rc = tally_pg_exec(agg->pg, &res,
				   "SELECT DISTINCT p.name, m.name, p.id, m.id"
				   " FROM unnest($1::text[], $2::text[]) x(p, m)"
				   " JOIN providers p ON p.name = x.p"
				   " JOIN models m ON m.provider_id = p.id"
				   " AND m.name = x.m", 2, params, err);
	if (rc == 0)
		cache_models(agg, res);
	PQclear(res);
	return rc;
}

/* Give the batch's AI events their cached provider and model ids. */
static int assign_models(tally_agg *agg, tally_error *err)
{
	size_t i;

	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];
		model_ids *x;

		if (it->status != ST_OK || it->re.ev.meter != TALLY_METER_AI_TOKENS)
			continue;
		x = model_find(agg, &it->re.ev.provider, &it->re.ev.model);
		if (x == NULL)
			return tally_error_set(err, TALLY_ERROR,
					       "model lookup failed");
		it->provider_id = x->provider_id;
		it->model_id = x->model_id;
	}
	return 0;
}

/*
 * Resolve the (provider, model) pairs of the batch. Unknown names are
 * inserted in their own short transaction before the batch's: an id is
 * only cached once it is committed, so a rolled-back batch never leaves an
 * id behind that does not exist. 64 unknown pairs per pass.
 */
int agg_resolve_models(tally_agg *agg, tally_error *err)
{
	tally_strbuf pa = TALLY_STRBUF_INIT, ma = TALLY_STRBUF_INIT;
	const char *params[2];
	char name[TALLY_ID_MAX + 1];
	size_t i, missing = 0;
	int rc = 0;

	tally_strbuf_puts(&pa, "{");
	tally_strbuf_puts(&ma, "{");
	for (i = 0; i < agg->n && missing < 64; i++) {
		item *it = &agg->items[i];

		if (it->status != ST_OK ||
		    it->re.ev.meter != TALLY_METER_AI_TOKENS ||
		    model_find(agg, &it->re.ev.provider, &it->re.ev.model) != NULL)
			continue;
		/* a duplicate pair in the list is harmless */
		if (missing > 0) {
			tally_strbuf_puts(&pa, ",");
			tally_strbuf_puts(&ma, ",");
		}
		tally_strbuf_pg_array_elem(
			&pa, name, tally_model_name_norm(name, sizeof(name),
					it->re.ev.provider.ptr,
					it->re.ev.provider.len));
		tally_strbuf_pg_array_elem(
			&ma, name, tally_model_name_norm(name, sizeof(name),
					it->re.ev.model.ptr,
					it->re.ev.model.len));
		missing++;
	}
	tally_strbuf_puts(&pa, "}");
	tally_strbuf_puts(&ma, "}");
	params[0] = pa.p;
	params[1] = ma.p;
	if (missing > 0)
		rc = insert_models(agg, params, err);
	tally_strbuf_free(&pa);
	tally_strbuf_free(&ma);
	if (rc != 0)
		return rc;
	if (missing >= 64)
		return agg_resolve_models(agg, err); /* the next pass */
	return assign_models(agg, err);
}
