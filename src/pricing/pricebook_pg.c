/*
 * pricebook_pg.c - loading the price book from PostgreSQL (the tables of
 * migrations/0002_prices.sql) in one REPEATABLE READ transaction, and the
 * book's version counter. Each row is turned into the same in-memory entry
 * the genai-prices file gives (pricebook_prices.c, pricebook_rules.c).
 */
#define _POSIX_C_SOURCE 200809L
#include "pricebook_int.h"
#include "tally/pricebook_pg.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

int tally_pricebook_pg_version(int64_t *out, tally_pg *pg, tally_error *err)
{
	PGresult *res = NULL;
	int rc;

	rc = tally_pg_exec(pg, &res,
			   "SELECT version FROM price_book_version", 0, NULL,
			   err);
	if (rc != 0)
		return rc;
	if (PQntuples(res) != 1 ||
	    tally_parse_i64(out, PQgetvalue(res, 0, 0)) != 0)
		rc = tally_error_set(err, TALLY_ERROR,
				     "price_book_version: no row");
	PQclear(res);
	return rc;
}

static int64_t col_ms(PGresult *res, int row, int col, int64_t dflt)
{
	int64_t v;

	if (PQgetisnull(res, row, col) ||
	    tally_parse_i64(&v, PQgetvalue(res, row, col)) != 0)
		return dflt;
	return v;
}

static const char *col_str(PGresult *res, int row, int col)
{
	return PQgetisnull(res, row, col) ? NULL : PQgetvalue(res, row, col);
}

#define MS_SQL(c)                                                         \
	"CASE WHEN " c " = '-infinity' OR " c " = 'infinity' THEN NULL "  \
	"ELSE (floor(extract(epoch FROM " c ") * 1000))::bigint END"

static const char providers_sql[] =
	"SELECT provider, provider_match::text, model_match::text, "
	"array_to_string(fallback_providers, ',') FROM price_providers "
	"ORDER BY position, provider";

static const char models_sql[] =
	"SELECT m.id, m.provider, m.model, m.match::text, m.constraint_type, "
	MS_SQL("m.start_at") ", m.time_start, m.time_end, m.currency, "
	"m.input_mtok::text, m.cache_read_mtok::text, "
	"m.cache_write_mtok::text, m.output_mtok::text, "
	"m.output_reasoning_mtok::text, m.requests_kcount::text, "
	"m.tiers::text, " MS_SQL("m.effective_from") ", "
	MS_SQL("m.effective_to") ", "
	"m.effective_from = '-infinity', m.effective_to = 'infinity' "
	"FROM model_prices m JOIN price_providers p USING (provider) "
	"ORDER BY p.position, m.provider, "
	"  max(m.model_position) OVER (PARTITION BY m.provider, m.model), "
	"  m.model, m.effective_from, m.cond_position";

static const char units_sql[] =
	"SELECT id, meter, price::text, " MS_SQL("effective_from") ", "
	MS_SQL("effective_to") ", effective_from = '-infinity', "
	"effective_to = 'infinity' FROM unit_prices ORDER BY meter, "
	"effective_from";

static const char overrides_sql[] =
	"SELECT o.id, t.id::text, coalesce(o.meter, ''), o.provider, o.model, "
	"o.multiplier::text, o.input_mtok::text, o.cache_read_mtok::text, "
	"o.cache_write_mtok::text, o.output_mtok::text, o.unit_price::text, "
	MS_SQL("o.effective_from") ", " MS_SQL("o.effective_to") ", "
	"o.effective_from = '-infinity', o.effective_to = 'infinity', "
	"CASE WHEN o.tenant_id IS NOT NULL THEN 2 ELSE 1 END "
	"FROM price_overrides o JOIN tenants t ON "
	"(o.tenant_id = t.id OR (o.tenant_id IS NULL AND "
	"  o.plan = t.subscription_plan)) "
	"UNION ALL SELECT 0, id::text, '', NULL, NULL, price_multiplier::text,"
	" NULL, NULL, NULL, NULL, NULL, NULL, NULL, true, true, 0 "
	"FROM tenants WHERE price_multiplier <> 1";

static int load_model_row(tally_pricebook *pb, PGresult *res, int r,
			  pb_provider *prov, tally_error *err)
{
	const char *model = PQgetvalue(res, r, 2);
	pb_model *m = prov->nmodels ? &prov->models[prov->nmodels - 1] : NULL;
	pb_version *ver;
	pb_cond *c;
	int64_t from = PQgetvalue(res, r, 18)[0] == 't'
			       ? INT64_MIN : col_ms(res, r, 16, INT64_MIN);
	int64_t to = PQgetvalue(res, r, 19)[0] == 't'
			     ? INT64_MAX : col_ms(res, r, 17, INT64_MAX);
	const char *ctype = PQgetvalue(res, r, 4);
	int k, rc;

	if (m == NULL || strcmp(m->id, model) != 0) {
		prov->models = tally_xrealloc(prov->models,
					      (prov->nmodels + 1) *
						      sizeof(pb_model));
		m = &prov->models[prov->nmodels++];
		memset(m, 0, sizeof(*m));
		m->id = tally_xstrdup(model);
	}
	/* the newest version's rule is the one used for matching */
	tally_pb__rule_dispose(&m->rule);
	rc = tally_pb__rule_parse_text(&m->rule, PQgetvalue(res, r, 3), err);
	if (rc != 0)
		return rc;
	ver = m->nversions ? &m->versions[m->nversions - 1] : NULL;
	if (ver == NULL || ver->from_ms != from) {
		m->versions = tally_xrealloc(m->versions,
					     (m->nversions + 1) *
						     sizeof(pb_version));
		ver = &m->versions[m->nversions++];
		memset(ver, 0, sizeof(*ver));
		ver->from_ms = from;
		ver->to_ms = to;
	}
	ver->conds = tally_xrealloc(ver->conds,
				    (ver->nconds + 1) * sizeof(pb_cond));
	c = &ver->conds[ver->nconds++];
	memset(c, 0, sizeof(*c));
	if (tally_parse_i64(&c->price_id, PQgetvalue(res, r, 0)) != 0)
		return tally_error_set(err, TALLY_EINVALID, "bad id");
	if (strcmp(ctype, "start_date") == 0) {
		c->kind = PB_C_START;
		c->start_ms = col_ms(res, r, 5, INT64_MIN);
	} else if (strcmp(ctype, "time_of_date") == 0) {
		c->kind = PB_C_TOD;
		if (tally_pb__parse_tod(&c->tod_start,
					PQgetvalue(res, r, 6)) != 0 ||
		    tally_pb__parse_tod(&c->tod_end,
					PQgetvalue(res, r, 7)) != 0)
			return tally_error_set(err, TALLY_EINVALID,
					       "price %" PRId64
					       ": bad time window",
					       c->price_id);
	}
	memcpy(pb->currency, PQgetvalue(res, r, 8), 3);
	for (k = 0; k < PB_K_N; k++) {
		const char *s = col_str(res, r, 9 + k);
		if (s == NULL)
			continue;
		c->p[k].set = true;
		rc = tally_pb__parse_price_text(&c->p[k].base, s,
						tally_pb__key_names[k], err);
		if (rc != 0)
			return rc;
	}
	return tally_pb__tiers_parse_text(c, col_str(res, r, 15), err);
}

/* One row of a query into the book being built; 0 or an error. */
typedef int (*row_fn)(tally_pricebook *pb, PGresult *res, int r,
		      tally_error *err);

/* Run sql and hand each row, in order, to fn; stops at the first error. */
static int load_rows(tally_pricebook *pb, tally_pg *pg, const char *sql,
		     row_fn fn, tally_error *err)
{
	PGresult *res = NULL;
	int rc, n, r;

	rc = tally_pg_exec(pg, &res, sql, 0, NULL, err);
	if (rc != 0)
		return rc;
	n = PQntuples(res);
	for (r = 0; r < n && rc == 0; r++)
		rc = fn(pb, res, r, err);
	PQclear(res);
	return rc;
}

static int provider_row(tally_pricebook *pb, PGresult *res, int r,
			tally_error *err)
{
	pb_provider *p;
	const char *fb = PQgetvalue(res, r, 3);
	int rc;

	pb->providers = tally_xrealloc(pb->providers, (pb->nproviders + 1) *
							      sizeof(*p));
	p = &pb->providers[pb->nproviders++];
	memset(p, 0, sizeof(*p));
	p->id = tally_xstrdup(PQgetvalue(res, r, 0));
	if (!PQgetisnull(res, r, 1)) {
		rc = tally_pb__rule_parse_text(&p->provider_match,
					       PQgetvalue(res, r, 1), err);
		if (rc != 0)
			return rc;
		p->has_pmatch = true;
	}
	if (!PQgetisnull(res, r, 2)) {
		rc = tally_pb__rule_parse_text(&p->model_match,
					       PQgetvalue(res, r, 2), err);
		if (rc != 0)
			return rc;
		p->has_mmatch = true;
	}
	while (fb != NULL && *fb) {
		const char *comma = strchr(fb, ',');
		size_t l = comma ? (size_t)(comma - fb) : strlen(fb);

		p->fallbacks = tally_xrealloc(
		    p->fallbacks, (p->nfallbacks + 1) * sizeof(char *));
		p->fallbacks[p->nfallbacks++] = tally_xstrndup(fb, l);
		fb = comma ? comma + 1 : NULL;
	}
	return 0;
}

/* a price of a provider that is not in price_providers is ignored */
static int model_row(tally_pricebook *pb, PGresult *res, int r,
		     tally_error *err)
{
	int pi = tally_pb__provider_index(pb, PQgetvalue(res, r, 1));

	if (pi < 0)
		return 0;
	return load_model_row(pb, res, r, &pb->providers[pi], err);
}

static int unit_row(tally_pricebook *pb, PGresult *res, int r,
		    tally_error *err)
{
	const char *meter = PQgetvalue(res, r, 1);
	pb_unit_price *u;
	int rc;

	pb->units = tally_xrealloc(pb->units, (pb->nunits + 1) * sizeof(*u));
	u = &pb->units[pb->nunits++];
	memset(u, 0, sizeof(*u));
	u->meter = tally_meter_parse(meter, (uint32_t)strlen(meter));
	if (tally_parse_i64(&u->price_id, PQgetvalue(res, r, 0)) != 0)
		return tally_error_set(err, TALLY_EINVALID, "bad id");
	rc = tally_pb__parse_price_text(&u->price, PQgetvalue(res, r, 2),
					meter, err);
	if (rc != 0)
		return rc;
	u->from_ms = PQgetvalue(res, r, 5)[0] == 't'
			     ? INT64_MIN : col_ms(res, r, 3, INT64_MIN);
	u->to_ms = PQgetvalue(res, r, 6)[0] == 't'
			   ? INT64_MAX : col_ms(res, r, 4, INT64_MAX);
	return 0;
}

/* one row of overrides_sql -> an override spec (strings borrowed from res) */
static int override_row(tally_override_spec *s, PGresult *res, int r,
			tally_error *err)
{
	const char *tid = PQgetvalue(res, r, 1);
	const char *meter = PQgetvalue(res, r, 2);

	memset(s, 0, sizeof(*s));
	if (tally_parse_i64(&s->id, PQgetvalue(res, r, 0)) != 0 ||
	    tally_uuid_parse(s->tenant_id, tid, (uint32_t)strlen(tid)) != 0)
		return tally_error_set(err, TALLY_EINVALID,
				       "bad override row");
	s->meter = tally_meter_parse(meter, (uint32_t)strlen(meter));
	s->provider = col_str(res, r, 3);
	s->model = col_str(res, r, 4);
	s->multiplier = col_str(res, r, 5);
	s->input_mtok = col_str(res, r, 6);
	s->cache_read_mtok = col_str(res, r, 7);
	s->cache_write_mtok = col_str(res, r, 8);
	s->output_mtok = col_str(res, r, 9);
	s->unit_price = col_str(res, r, 10);
	s->effective_from_ms = PQgetvalue(res, r, 13)[0] == 't'
				       ? INT64_MIN
				       : col_ms(res, r, 11, INT64_MIN);
	s->effective_to_ms = PQgetvalue(res, r, 14)[0] == 't'
				     ? INT64_MAX
				     : col_ms(res, r, 12, INT64_MAX);
	s->specificity = (int)(PQgetvalue(res, r, 15)[0] - '0');
	return 0;
}

static int override_add_row(tally_pricebook *pb, PGresult *res, int r,
			    tally_error *err)
{
	tally_override_spec s;
	int rc = override_row(&s, res, r, err);

	return rc != 0 ? rc : tally_pricebook_add_override(pb, &s, err);
}

static int load_pg_txn(tally_pg *pg, void *payload, tally_error *err)
{
	tally_pricebook **outp = payload;
	tally_pricebook *pb = tally_pb__book_new();
	int rc;

	rc = tally_pg_exec(pg, NULL,
			   "SET TRANSACTION ISOLATION LEVEL REPEATABLE READ, "
			   "READ ONLY", 0, NULL, err);
	if (rc == 0)
		rc = tally_pricebook_pg_version(&pb->version, pg, err);
	if (rc == 0)
		rc = load_rows(pb, pg, providers_sql, provider_row, err);
	if (rc == 0)
		rc = load_rows(pb, pg, models_sql, model_row, err);
	if (rc == 0)
		rc = load_rows(pb, pg, units_sql, unit_row, err);
	if (rc == 0)
		rc = load_rows(pb, pg, overrides_sql, override_add_row, err);
	if (rc != 0) {
		tally_pricebook_free(pb);
		return rc;
	}
	tally_pb__resolve_fallbacks(pb);
	tally_pricebook_free(*outp);
	*outp = pb;
	return 0;
}

int tally_pricebook_load_pg(tally_pricebook **out, tally_pg *pg,
			    tally_error *err)
{
	tally_pricebook *pb = NULL;
	int rc = tally_pg_txn(pg, load_pg_txn, &pb, 0, err);

	if (rc != 0) {
		tally_pricebook_free(pb);
		return rc;
	}
	*out = pb;
	return 0;
}
