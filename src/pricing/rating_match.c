/*
 * rating_match.c - which provider and model of the book an event's
 * (provider, model) strings name, with genai-prices' rules: names in
 * their canonical form (tally_model_name_norm: trimmed, lower-cased); the
 * provider by id, then by provider_match; "litellm" and an empty provider
 * resolved through "<provider>/<model>" names or model_match; the model by its match rule, in the provider, then in its
 * fallback providers, then again with "-YYYYMMDD" read as "-YYYY-MM-DD".
 * The slow path of rating: rating.c caches the result per thread.
 */
#include "pricebook_int.h"
#include "base/calendar.h"
#include "base/model_names.h"

#include <ctype.h>
#include <string.h>

#define NAME_MAX_LEN 512

static const pb_provider *find_provider(const tally_pricebook *pb,
					const char *pid, size_t plen)
{
	uint32_t i;

	for (i = 0; i < pb->nproviders; i++)
		if (strlen(pb->providers[i].id) == plen &&
		    memcmp(pb->providers[i].id, pid, plen) == 0)
			return &pb->providers[i];
	for (i = 0; i < pb->nproviders; i++)
		if (pb->providers[i].has_pmatch &&
		    tally_pb__match(&pb->providers[i].provider_match, pid,
				    plen))
			return &pb->providers[i];
	return NULL;
}

static const pb_model *find_in(const pb_provider *p, const char *name,
			       size_t len)
{
	uint32_t i;

	for (i = 0; i < p->nmodels; i++)
		if (tally_pb__match(&p->models[i].rule, name, len))
			return &p->models[i];
	return NULL;
}

static const pb_model *find_model(const tally_pricebook *pb,
				  const pb_provider *p, const char *name,
				  size_t len)
{
	const pb_model *m = find_in(p, name, len);
	uint32_t i;

	if (m != NULL)
		return m;
	for (i = 0; i < p->nfallbacks; i++) {
		if (p->fallback_idx[i] < 0)
			continue;
		m = find_in(&pb->providers[p->fallback_idx[i]], name, len);
		if (m != NULL)
			return m;
	}
	return NULL;
}

/* genai-prices' retry: "-YYYYMMDD" (followed by -, : or end) ->
 * "-YYYY-MM-DD" when it is a real date. Returns the new length. */
static size_t normalise_dates(char *out, const char *in, size_t len)
{
	size_t i = 0, n = 0;

	while (i < len && n + 3 < NAME_MAX_LEN) {
		if (in[i] == '-' && i + 8 < len && in[i + 1] == '2' &&
		    in[i + 2] == '0') {
			const char *d = in + i + 1;
			bool all = true;
			int k;

			for (k = 0; k < 8; k++)
				if (!isdigit((unsigned char)d[k]))
					all = false;
			if (all && (i + 9 == len || in[i + 9] == '-' ||
				    in[i + 9] == ':')) {
				int y = (d[0] - '0') * 1000 +
					(d[1] - '0') * 100 +
					(d[2] - '0') * 10 + (d[3] - '0');
				int m = (d[4] - '0') * 10 + (d[5] - '0');
				int dd = (d[6] - '0') * 10 + (d[7] - '0');

				if (m >= 1 && m <= 12 && dd >= 1 &&
				    dd <= tally_days_in_month(y, m) &&
				    n + 12 < NAME_MAX_LEN) {
					out[n++] = '-';
					memcpy(out + n, d, 4);
					n += 4;
					out[n++] = '-';
					memcpy(out + n, d + 4, 2);
					n += 2;
					out[n++] = '-';
					memcpy(out + n, d + 6, 2);
					n += 2;
					i += 9;
					continue;
				}
			}
		}
		out[n++] = in[i++];
	}
	out[n] = '\0';
	return n;
}

void tally_pb__resolve(const tally_pricebook *pb, const tally_str *provider,
		       const tally_str *model, const pb_provider **outp,
		       const pb_model **outm)
{
	char name[NAME_MAX_LEN], pid[NAME_MAX_LEN], alt[NAME_MAX_LEN];
	size_t nlen = tally_model_name_norm(name, sizeof(name), model->ptr,
					    model->len);
	size_t plen = tally_model_name_norm(pid, sizeof(pid), provider->ptr,
					    provider->len);
	const pb_provider *p = NULL;
	const pb_model *m;
	uint32_t i;

	*outp = NULL;
	*outm = NULL;
	if (plen == 7 && memcmp(pid, "litellm", 7) == 0) {
		char *slash = memchr(name, '/', nlen);

		if (slash != NULL && slash != name && slash + 1 < name + nlen &&
		    find_provider(pb, name, (size_t)(slash - name)) != NULL) {
			plen = (size_t)(slash - name);
			memcpy(pid, name, plen);
			pid[plen] = '\0';
			nlen -= plen + 1;
			memmove(name, slash + 1, nlen + 1);
		}
	}
	if (plen > 0)
		p = find_provider(pb, pid, plen);
	if (p == NULL && (plen == 0 || strcmp(pid, "litellm") == 0)) {
		for (i = 0; i < pb->nproviders; i++)
			if (pb->providers[i].has_mmatch &&
			    tally_pb__match(&pb->providers[i].model_match, name,
					    nlen)) {
				p = &pb->providers[i];
				break;
			}
	}
	if (p == NULL)
		return;
	*outp = p;
	m = find_model(pb, p, name, nlen);
	if (m == NULL) {
		size_t alen = normalise_dates(alt, name, nlen);

		if (alen != nlen || memcmp(alt, name, nlen) != 0)
			m = find_model(pb, p, alt, alen);
	}
	*outm = m;
}
