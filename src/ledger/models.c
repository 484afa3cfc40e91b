/*
 * models.c - provider and model names -> the small ids the ledger stores,
 * and the cap on the distinct names of a tenant.
 *
 * Names are stored in their canonical form (tally_model_name_norm), so
 * every spelling of a name ("OpenAI", " openai") is one row and one id.
 * A (tenant, provider, model) is known once its pair is in tenant_models
 * (migration 0015); a tenant that already has agg->max_models pairs gets
 * no new one: its event is a dead letter too_many_models, and no id is
 * drawn for it. New names and pairs go in before the batch's transaction,
 * in a short one of their own that holds the tenants' advisory locks (so
 * two lanes or instances never both take a tenant's last free place); an
 * id is cached only once committed. A pair PostgreSQL refuses (a provider
 * id past the smallint range, 2200H) is tried alone, and its events are
 * dead letters (agg_refusal_reason).
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "base/model_names.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

/* distinct unknown pairs per pass */
#define PASS_MAX 4096
/* the known pairs cached; the cache starts again empty when full */
#define TMS_MAX (1u << 20)
/* advisory lock class of the per-tenant cap (pg_advisory_xact_lock(int, int)) */
#define CAP_LOCK_CLASS "1952541028"

enum { P_NEW = 0, P_OK, P_ADMIT, P_OVER, P_REFUSED };

typedef struct pending {
	uint8_t tenant[16];
	char key[AGG_MODEL_KEY]; /* tenant + key: the hash key */
	int state;
	int32_t provider_id, model_id;
	int64_t count;           /* the tenant's pairs (first entry of a tenant) */
	uint32_t first;          /* the tenant's first entry */
	tally_error why;         /* P_REFUSED */
} pending;

#define PENDING_KEY (16 + AGG_MODEL_KEY)

typedef struct pass {
	pending *v;
	size_t n;
	tally_hashset h, th; /* by tenant + key; by tenant */
	size_t cap_max;
} pass;

void agg_models_free(tally_agg *agg)
{
	free(agg->models);
	tally_hashset_free(&agg->models_h);
	free(agg->tms);
	tally_hashset_free(&agg->tms_h);
	free(agg->model_slot);
}

static void make_key(char key[AGG_MODEL_KEY], const agg_event *ev)
{
	size_t n;

	memset(key, 0, AGG_MODEL_KEY);
	n = tally_model_name_norm(key, 65, ev->provider.ptr, ev->provider.len);
	tally_model_name_norm(key + n + 1, TALLY_ID_MAX + 1, ev->model.ptr,
			      ev->model.len);
}

static const char *key_model(const char *key)
{
	return key + strlen(key) + 1;
}

static void cache_model(tally_agg *agg, const char *key, int32_t pid,
			int32_t mid)
{
	model_ids *x;
	size_t i;

	if (agg->nmodels == agg->capmodels) {
		agg->capmodels = agg->capmodels ? agg->capmodels * 2 : 64;
		agg->models = tally_xrealloc(agg->models,
					     agg->capmodels * sizeof(*x));
		tally_hashset_init(&agg->models_h, agg->capmodels);
		for (i = 0; i < agg->nmodels; i++)
			tally_hashset_put(&agg->models_h,
					  (const uint8_t *)agg->models,
					  sizeof(*x), AGG_MODEL_KEY, (uint32_t)i);
	}
	x = &agg->models[agg->nmodels];
	memcpy(x->key, key, AGG_MODEL_KEY);
	x->provider_id = pid;
	x->model_id = mid;
	if (tally_hashset_put(&agg->models_h, (const uint8_t *)agg->models,
			      sizeof(*x), AGG_MODEL_KEY,
			      (uint32_t)agg->nmodels) == agg->nmodels)
		agg->nmodels++;
}

static void cache_pair(tally_agg *agg, const uint8_t *tenant, int32_t mid)
{
	tenant_model *x;

	if (agg->ntms == TMS_MAX)
		agg->ntms = 0; /* start again: the pairs are still in PostgreSQL */
	if (agg->ntms == 0 || agg->ntms == agg->captms) {
		size_t i;

		if (agg->ntms == agg->captms) {
			agg->captms = agg->captms ? agg->captms * 2 : 1024;
			agg->tms = tally_xrealloc(agg->tms,
						  agg->captms * sizeof(*x));
		}
		tally_hashset_init(&agg->tms_h, agg->captms);
		for (i = 0; i < agg->ntms; i++)
			tally_hashset_put(&agg->tms_h, (const uint8_t *)agg->tms,
					  sizeof(*x), sizeof(*x), (uint32_t)i);
	}
	x = &agg->tms[agg->ntms];
	memset(x, 0, sizeof(*x));
	memcpy(x->tenant, tenant, 16);
	x->model_id = mid;
	if (tally_hashset_put(&agg->tms_h, (const uint8_t *)agg->tms,
			      sizeof(*x), sizeof(*x),
			      (uint32_t)agg->ntms) == agg->ntms)
		agg->ntms++;
}

/* The cached ids of (tenant, key), if the pair is known: true. */
static bool cached(const tally_agg *agg, const uint8_t *tenant,
		   const char *key, int32_t *pid, int32_t *mid)
{
	tenant_model tm;
	uint32_t k;

	if (agg->nmodels == 0 || agg->ntms == 0)
		return false;
	k = tally_hashset_find(&agg->models_h, (const uint8_t *)agg->models,
			       sizeof(model_ids), AGG_MODEL_KEY,
			       (const uint8_t *)key);
	if (k == UINT32_MAX)
		return false;
	memset(&tm, 0, sizeof(tm));
	memcpy(tm.tenant, tenant, 16);
	tm.model_id = agg->models[k].model_id;
	if (tally_hashset_find(&agg->tms_h, (const uint8_t *)agg->tms,
			       sizeof(tm), sizeof(tm),
			       (const uint8_t *)&tm) == UINT32_MAX)
		return false;
	*pid = agg->models[k].provider_id;
	*mid = agg->models[k].model_id;
	return true;
}

/* The entry of (tenant, key) in the pass, added if new and there is room:
 * its index, or UINT32_MAX when the pass is full. */
static uint32_t pass_add(pass *p, const uint8_t *tenant, const char *key)
{
	pending *e = &p->v[p->n];
	uint32_t k, t;

	memcpy(e->tenant, tenant, 16);
	memcpy(e->key, key, AGG_MODEL_KEY);
	k = tally_hashset_find(&p->h, (const uint8_t *)p->v, sizeof(*e),
			       PENDING_KEY, (const uint8_t *)e);
	if (k != UINT32_MAX)
		return k;
	if (p->n == p->cap_max)
		return UINT32_MAX;
	e->state = P_NEW;
	e->provider_id = e->model_id = 0;
	e->count = 0;
	k = (uint32_t)p->n++;
	tally_hashset_put(&p->h, (const uint8_t *)p->v, sizeof(*e), PENDING_KEY,
			  k);
	t = tally_hashset_put(&p->th, (const uint8_t *)p->v, sizeof(*e), 16, k);
	e->first = t;
	return k;
}

/* Array literals of the entries [from, to) whose state is `state` (-1:
 * all): tenants, providers, models; returns how many. */
static size_t pass_arrays(const pass *p, size_t from, size_t to, int state,
			  tally_strbuf a[3])
{
	size_t i, n = 0;

	for (i = 0; i < 3; i++) {
		tally_strbuf_reset(&a[i]);
		tally_strbuf_puts(&a[i], "{");
	}
	for (i = from; i < to; i++) {
		const pending *e = &p->v[i];

		if (state >= 0 && e->state != state)
			continue;
		agg_uuid_arr(&a[0], e->tenant, n == 0);
		if (n > 0) {
			tally_strbuf_puts(&a[1], ",");
			tally_strbuf_puts(&a[2], ",");
		}
		tally_strbuf_pg_array_elem(&a[1], e->key, strlen(e->key));
		tally_strbuf_pg_array_elem(&a[2], key_model(e->key),
					   strlen(key_model(e->key)));
		n++;
	}
	for (i = 0; i < 3; i++)
		tally_strbuf_puts(&a[i], "}");
	return n;
}

/* The pass's entries [from, to) and what a transaction decided for them. */
typedef struct pass_run {
	tally_agg *agg;
	tally_pg *pg;       /* the lane's, or the poll thread's (prefetch) */
	pass *p;
	size_t from, to;
	tally_strbuf a[3];
} pass_run;

/* each tenant's pairs counted once, not once per entry */
static const char STATE_SQL[] =
	"WITH x AS (SELECT * FROM unnest($1::uuid[], $2::text[], $3::text[])"
	" WITH ORDINALITY x(t, p, m, i)),"
	" c AS (SELECT c.tenant_id, count(*) AS n FROM tenant_models c"
	" WHERE c.tenant_id IN (SELECT DISTINCT t FROM x) GROUP BY 1)"
	" SELECT x.i, p.id, m.id, tm.tenant_id IS NOT NULL, coalesce(c.n, 0)"
	" FROM x LEFT JOIN providers p ON p.name = x.p"
	" LEFT JOIN models m ON m.provider_id = p.id AND m.name = x.m"
	" LEFT JOIN tenant_models tm ON tm.tenant_id = x.t"
	" AND tm.model_id = m.id LEFT JOIN c ON c.tenant_id = x.t"
	" ORDER BY x.i";

/*
 * Read which entries' pairs are in tenant_models (P_OK, with their ids).
 * decide: the others are P_ADMIT while their tenant has room under the
 * cap, else P_OVER; otherwise (after the inserts) every P_ADMIT one must
 * be there now.
 */
static int read_state(pass_run *r, bool decide, tally_error *err)
{
	pass *p = r->p;
	const char *params[3];
	PGresult *res = NULL;
	int rc, row;
	size_t i;

	pass_arrays(p, r->from, r->to, -1, r->a);
	params[0] = r->a[0].p;
	params[1] = r->a[1].p;
	params[2] = r->a[2].p;
	rc = tally_pg_exec(r->pg, &res, STATE_SQL, 3, params, err);
	if (rc != 0)
		return rc;
	for (i = r->from; i < r->to; i++)
		p->v[p->v[i].first].count = -1;
	for (row = 0; row < PQntuples(res); row++) {
		int64_t x = 0, pid = 0, mid = 0, count = 0;
		pending *e, *f;

		if (tally_parse_i64(&x, PQgetvalue(res, row, 0)) != 0 || x < 1 ||
		    (size_t)x > r->to - r->from ||
		    tally_parse_i64(&count, PQgetvalue(res, row, 4)) != 0) {
			rc = tally_error_set(err, TALLY_ERROR, "models: bad row");
			break;
		}
		e = &p->v[r->from + (size_t)x - 1];
		f = &p->v[e->first];
		if (f->count < 0)
			f->count = count;
		if (PQgetvalue(res, row, 3)[0] == 't' &&
		    tally_parse_i64(&pid, PQgetvalue(res, row, 1)) == 0 &&
		    tally_parse_i64(&mid, PQgetvalue(res, row, 2)) == 0) {
			e->state = P_OK;
			e->provider_id = (int32_t)pid;
			e->model_id = (int32_t)mid;
		} else if (!decide) {
			if (e->state == P_OVER)
				continue;
			rc = tally_error_set(err, TALLY_ERROR,
					     "models: pair not registered");
			break;
		} else if ((size_t)f->count < r->agg->max_models) {
			e->state = P_ADMIT;
			f->count++;
		} else {
			e->state = P_OVER;
		}
	}
	PQclear(res);
	return rc;
}

/* The admitted entries' names (ids drawn only for names not there yet:
 * providers.id is a smallint) and their pairs. */
static int insert_admitted(pass_run *r, tally_error *err)
{
	const char *params[3];
	int rc;

	if (pass_arrays(r->p, r->from, r->to, P_ADMIT, r->a) == 0)
		return 0;
	params[0] = r->a[0].p;
	params[1] = r->a[1].p;
	params[2] = r->a[2].p;
	rc = tally_pg_exec(r->pg, NULL,
			   "INSERT INTO providers (name) SELECT DISTINCT x"
			   " FROM unnest($1::text[]) x WHERE NOT EXISTS"
			   " (SELECT 1 FROM providers p WHERE p.name = x)"
			   " ORDER BY x ON CONFLICT (name) DO NOTHING", 1,
			   params + 1, err);
	if (rc == 0)
		rc = tally_pg_exec(r->pg, NULL,
				   "INSERT INTO models (provider_id, name)"
				   " SELECT DISTINCT p.id, x.m FROM unnest($1::text[],"
				   " $2::text[]) x(p, m) JOIN providers p"
				   " ON p.name = x.p WHERE NOT EXISTS"
				   " (SELECT 1 FROM models m WHERE"
				   " m.provider_id = p.id AND m.name = x.m)"
				   " ORDER BY 1, 2"
				   " ON CONFLICT (provider_id, name) DO NOTHING",
				   2, params + 1, err);
	if (rc == 0)
		rc = tally_pg_exec(r->pg, NULL,
				   "INSERT INTO tenant_models (tenant_id, model_id)"
				   " SELECT DISTINCT x.t, m.id FROM unnest($1::uuid[],"
				   " $2::text[], $3::text[]) x(t, p, m)"
				   " JOIN providers p ON p.name = x.p"
				   " JOIN models m ON m.provider_id = p.id"
				   " AND m.name = x.m ORDER BY 1, 2"
				   " ON CONFLICT DO NOTHING", 3, params, err);
	return rc;
}

/* One transaction: lock the tenants' caps, decide, insert, read the ids. */
static int pass_txn(tally_pg *pg, void *payload, tally_error *err)
{
	pass_run *r = payload;
	const char *param;
	int rc;

	(void)pg;
	pass_arrays(r->p, r->from, r->to, -1, r->a);
	param = r->a[0].p;
	rc = tally_pg_exec(r->pg, NULL,
			   "SELECT pg_advisory_xact_lock(" CAP_LOCK_CLASS ","
			   " hashtext(t::text)) FROM (SELECT DISTINCT t FROM"
			   " unnest($1::uuid[]) t ORDER BY 1) s", 1, &param,
			   err);
	if (rc == 0)
		rc = read_state(r, true, err);
	if (rc == 0)
		rc = insert_admitted(r, err);
	if (rc == 0)
		rc = read_state(r, false, err);
	return rc;
}

/* The pass's registered pairs [from, to) into the cache. */
static void cache_pass(tally_agg *agg, const pass *p, size_t from, size_t to)
{
	size_t i;

	pthread_mutex_lock(&agg->models_mu);
	for (i = from; i < to; i++)
		if (p->v[i].state == P_OK) {
			cache_model(agg, p->v[i].key, p->v[i].provider_id,
				    p->v[i].model_id);
			cache_pair(agg, p->v[i].tenant, p->v[i].model_id);
		}
	pthread_mutex_unlock(&agg->models_mu);
}

/*
 * Run the pass [from, to) on pg, at most max_attempts times (0: as
 * tally_pg_txn); a pair PostgreSQL refuses is tried alone when split.
 */
static int run_pass(tally_agg *agg, tally_pg *pg, pass *p, size_t from,
		    size_t to, int max_attempts, bool split, tally_error *err)
{
	pass_run r = { .agg = agg, .pg = pg, .p = p, .from = from, .to = to };
	size_t i;
	int rc, k;

	rc = tally_pg_txn(pg, pass_txn, &r, max_attempts, err);
	for (k = 0; k < 3; k++)
		tally_strbuf_free(&r.a[k]);
	if (rc == 0) {
		cache_pass(agg, p, from, to);
		return 0;
	}
	if (!split || !agg_refused_for_data(err))
		return rc;
	if (to - from == 1) {
		p->v[from].state = P_REFUSED;
		p->v[from].why = *err;
		return 0;
	}
	for (i = from; i < to; i++) {
		rc = run_pass(agg, pg, p, i, i + 1, max_attempts, true, err);
		if (rc != 0)
			return rc;
	}
	return 0;
}

/* Give an item the outcome of its pair e: ids, or a dead letter. */
static void settle(tally_agg *agg, item *it, const pass *p, const pending *e)
{
	switch (e->state) {
	case P_OK:
		it->provider_id = e->provider_id;
		it->model_id = e->model_id;
		break;
	case P_OVER:
		it->status = ST_DLQ;
		it->reason = "too_many_models";
		agg_item_set_detail(agg, it,
				    "the tenant uses %" PRId64 " provider/model"
				    " names, the cap (aggregate."
				    "max_models_per_tenant) is %zu",
				    p->v[e->first].count, agg->max_models);
		break;
	default: /* P_REFUSED */
		it->status = ST_DLQ;
		it->reason = agg_refusal_reason(&e->why);
		agg_item_set_detail(agg, it, "%.150s", e->why.msg);
		break;
	}
}

static bool needs_ids(const item *it)
{
	return it->status == ST_OK &&
	       it->re.ev.meter == TALLY_METER_AI_TOKENS && it->provider_id == 0;
}

/*
 * Collect the batch's unknown pairs (at most PASS_MAX; *more: others
 * wait for the next pass); the known ones get their ids at once.
 */
static void collect(tally_agg *agg, pass *p, bool *more)
{
	char key[AGG_MODEL_KEY];
	size_t i;

	*more = false;
	p->n = 0;
	tally_hashset_init(&p->h, PASS_MAX);
	tally_hashset_init(&p->th, PASS_MAX);
	pthread_mutex_lock(&agg->models_mu);
	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];

		agg->model_slot[i] = UINT32_MAX;
		if (!needs_ids(it))
			continue;
		make_key(key, &it->re.ev);
		if (cached(agg, it->key, key, &it->provider_id,
			   &it->model_id))
			continue;
		if (p->v == NULL)
			p->v = tally_xmalloc((PASS_MAX + 1) * sizeof(*p->v));
		agg->model_slot[i] = pass_add(p, it->key, key);
		if (agg->model_slot[i] == UINT32_MAX)
			*more = true;
	}
	pthread_mutex_unlock(&agg->models_mu);
}

/*
 * Give the batch's AI events their provider and model ids, inserting the
 * names and pairs not known yet (see the top of the file); events over
 * their tenant's cap or refused become dead letters.
 */
int agg_resolve_models(tally_agg *agg, tally_error *err)
{
	pass p = { .cap_max = PASS_MAX };
	bool more;
	size_t i;
	int rc = 0;

	if (agg->cap_model_slot < agg->n) {
		agg->cap_model_slot = agg->n;
		agg->model_slot = tally_xrealloc(agg->model_slot,
						 agg->n * sizeof(uint32_t));
	}
	do {
		collect(agg, &p, &more);
		if (p.n == 0)
			break;
		rc = run_pass(agg, agg->pg, &p, 0, p.n, 0, true, err);
		if (rc != 0)
			break;
		for (i = 0; i < agg->n; i++)
			if (agg->model_slot[i] != UINT32_MAX &&
			    needs_ids(&agg->items[i]))
				settle(agg, &agg->items[i], &p,
				       &p.v[agg->model_slot[i]]);
	} while (more);
	free(p.v);
	tally_hashset_free(&p.h);
	tally_hashset_free(&p.th);
	return rc;
}

/*
 * The pairs of a gathered batch not cached yet, registered ahead on pg
 * (the poll thread's connection) while the lane's thread is in the batch
 * before: the same transaction as agg_resolve_models() runs, so its cap
 * and locks hold, and what it registers is only cached. Items that
 * agg_classify() will turn away (undecodable, outside the time window)
 * are left out. One attempt and one pass of at most PASS_MAX pairs: what
 * is left, refused or over a cap is the lane's to settle as before.
 */
int tally_agg_prefetch_models(tally_agg *agg, tally_pg *pg,
			      tally_agg_decoded *dec, int64_t now_ms,
			      size_t *registered, tally_error *err)
{
	pass p = { .cap_max = PASS_MAX };
	char key[AGG_MODEL_KEY];
	int32_t pid, mid;
	size_t i;
	int rc = 0;

	*registered = 0;
	tally_hashset_init(&p.h, PASS_MAX);
	tally_hashset_init(&p.th, PASS_MAX);
	pthread_mutex_lock(&agg->models_mu);
	for (i = 0; i < dec->n && p.n < PASS_MAX; i++) {
		item *it = &dec->items[i];

		if (it->bad || it->re.ev.meter != TALLY_METER_AI_TOKENS ||
		    agg_window_check(agg, it, now_ms) != WIN_OK)
			continue;
		make_key(key, &it->re.ev);
		if (cached(agg, it->key, key, &pid, &mid)) {
			/* ids of a cached pair never change: the lane
			 * keeps them (agg_classify leaves them) */
			it->provider_id = pid;
			it->model_id = mid;
			continue;
		}
		if (p.v == NULL)
			p.v = tally_xmalloc((PASS_MAX + 1) * sizeof(*p.v));
		(void)pass_add(&p, it->key, key);
	}
	pthread_mutex_unlock(&agg->models_mu);
	if (p.n > 0)
		rc = run_pass(agg, pg, &p, 0, p.n, 1, false, err);
	for (i = 0; rc == 0 && i < p.n; i++)
		if (p.v[i].state == P_OK)
			(*registered)++;
	free(p.v);
	tally_hashset_free(&p.h);
	tally_hashset_free(&p.th);
	return rc;
}
