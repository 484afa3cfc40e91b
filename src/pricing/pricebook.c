/*
 * pricebook.c - the immutable price book in memory: its life cycle (new,
 * free, fallback providers resolved by index) and tenant / plan overrides.
 * Building a book from its sources is in pricebook_genai.c (data file) and
 * pricebook_pg.c (PostgreSQL); reading it is rating.c.
 */
#include "pricebook_int.h"
#include "tally/pricebook.h"

#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

const char *const tally_pb__key_names[PB_K_N] = {
	"input_mtok", "cache_read_mtok", "cache_write_mtok", "output_mtok",
	"output_reasoning_mtok", "requests_kcount",
};

static atomic_uint_fast64_t pb_serial = 1;


static void model_dispose(pb_model *m)
{
	uint32_t v, c;

	free(m->id);
	tally_pb__rule_dispose(&m->rule);
	for (v = 0; v < m->nversions; v++) {
		for (c = 0; c < m->versions[v].nconds; c++)
			tally_pb__cond_dispose(&m->versions[v].conds[c]);
		free(m->versions[v].conds);
	}
	free(m->versions);
}

void tally_pricebook_free(tally_pricebook *pb)
{
	uint32_t i, j;

	if (pb == NULL)
		return;
	for (i = 0; i < pb->nproviders; i++) {
		pb_provider *p = &pb->providers[i];

		free(p->id);
		tally_pb__rule_dispose(&p->provider_match);
		tally_pb__rule_dispose(&p->model_match);
		for (j = 0; j < p->nfallbacks; j++)
			free(p->fallbacks[j]);
		free(p->fallbacks);
		free(p->fallback_idx);
		for (j = 0; j < p->nmodels; j++)
			model_dispose(&p->models[j]);
		free(p->models);
	}
	free(pb->providers);
	free(pb->units);
	for (i = 0; i < pb->noverrides; i++) {
		free(pb->overrides[i].provider);
		free(pb->overrides[i].model);
		tally_pb__cond_dispose(&pb->overrides[i].cond);
	}
	free(pb->overrides);
	free(pb);
}

tally_pricebook *tally_pb__book_new(void)
{
	tally_pricebook *pb = tally_xcalloc(1, sizeof(*pb));

	pb->serial = atomic_fetch_add(&pb_serial, 1);
	memcpy(pb->currency, "USD", 4);
	return pb;
}

int tally_pb__provider_index(const tally_pricebook *pb, const char *id)
{
	uint32_t i;

	for (i = 0; i < pb->nproviders; i++)
		if (strcmp(pb->providers[i].id, id) == 0)
			return (int)i;
	return -1;
}

void tally_pb__resolve_fallbacks(tally_pricebook *pb)
{
	uint32_t i, j;

	pb->nmodels = 0;
	for (i = 0; i < pb->nproviders; i++) {
		pb_provider *p = &pb->providers[i];

		pb->nmodels += p->nmodels;
		p->fallback_idx = tally_xcalloc(p->nfallbacks + 1, sizeof(int));
		for (j = 0; j < p->nfallbacks; j++)
			p->fallback_idx[j] =
				tally_pb__provider_index(pb, p->fallbacks[j]);
	}
}

int64_t tally_pricebook_version(const tally_pricebook *pb)
{
	return pb->version;
}

size_t tally_pricebook_models(const tally_pricebook *pb)
{
	return pb->nmodels;
}

/* ------------------------------------------------------------------ */
/* overrides                                                           */

static int cmp_override(const void *a, const void *b)
{
	const pb_override *x = a, *y = b;

	return memcmp(x->tenant_id, y->tenant_id, 16);
}

static int opt_price(pb_price *p, const char *s, const char *what,
		     tally_error *err)
{
	if (s == NULL || *s == '\0')
		return 0;
	p->set = true;
	return tally_pb__parse_price_text(&p->base, s, what, err);
}

int tally_pricebook_add_override(tally_pricebook *pb,
				 const tally_override_spec *spec,
				 tally_error *err)
{
	pb_override o;
	int rc = 0;

	memset(&o, 0, sizeof(o));
	o.id = spec->id;
	memcpy(o.tenant_id, spec->tenant_id, 16);
	o.meter = spec->meter;
	o.provider = spec->provider && *spec->provider
			     ? tally_pb__lower_dup(spec->provider) : NULL;
	o.model = spec->model && *spec->model ? tally_xstrdup(spec->model)
					       : NULL;
	o.from_ms = spec->effective_from_ms;
	o.to_ms = spec->effective_to_ms;
	o.specificity = spec->specificity;
	if (spec->multiplier != NULL && *spec->multiplier) {
		o.is_multiplier = true;
		rc = tally_pb__parse_price_text(&o.multiplier, spec->multiplier,
				      "multiplier", err);
	} else {
		rc = opt_price(&o.cond.p[PB_K_INPUT], spec->input_mtok,
			       "input_mtok", err);
		if (rc == 0)
			rc = opt_price(&o.cond.p[PB_K_CACHE_READ],
				       spec->cache_read_mtok,
				       "cache_read_mtok", err);
		if (rc == 0)
			rc = opt_price(&o.cond.p[PB_K_CACHE_WRITE],
				       spec->cache_write_mtok,
				       "cache_write_mtok", err);
		if (rc == 0)
			rc = opt_price(&o.cond.p[PB_K_OUTPUT],
				       spec->output_mtok, "output_mtok", err);
		if (rc == 0 && spec->unit_price && *spec->unit_price) {
			o.has_unit = true;
			rc = tally_pb__parse_price_text(
			    &o.unit_price, spec->unit_price, "unit_price", err);
		}
		o.cond.price_id = spec->id;
	}
	if (rc != 0) {
		free(o.provider);
		free(o.model);
		return rc;
	}
	pb->overrides = tally_xrealloc(pb->overrides, (pb->noverrides + 1) *
							  sizeof(pb_override));
	pb->overrides[pb->noverrides++] = o;
	qsort(pb->overrides, pb->noverrides, sizeof(pb_override),
	      cmp_override);
	return 0;
}

