/* tally-bench: event ids (hash of source and id) and the id map */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include <stdlib.h>
#include <string.h>

static uint64_t idhash(const tally_str *source, const tally_str *id)
{
	uint64_t h = 1469598103934665603ULL;

	for (uint32_t i = 0; i < source->len; i++)
		h = (h ^ (uint8_t)source->ptr[i]) * 1099511628211ULL;
	h = (h ^ 0xff) * 1099511628211ULL;
	for (uint32_t i = 0; i < id->len; i++)
		h = (h ^ (uint8_t)id->ptr[i]) * 1099511628211ULL;
	h ^= h >> 29;
	return h == 0 ? 1 : h;
}

/* decode usage or rated; on success fill *h */
bool msg_id(const rd_kafka_message_t *m, bool rated, uint64_t *h,
	    tally_rated_event *re)
{
	tally_codec_error cerr;

	if (rated) {
		if (tally_codec_decode_rated(re, m->payload, m->len, &cerr) != 0)
			return false;
	} else {
		memset(re, 0, sizeof(*re));
		if (tally_codec_decode_usage(&re->ev, m->payload, m->len,
					     &cerr) != 0)
			return false;
	}
	*h = idhash(&re->ev.source, &re->ev.id);
	return true;
}
slot *map_get(idmap *m, uint64_t key, bool insert)
{
	if (insert && (m->n + 1) * 10 > m->cap * 7) {
		idmap nm = {tally_xcalloc(m->cap ? m->cap * 2 : 1 << 16,
					  sizeof(slot)),
			    m->cap ? m->cap * 2 : 1 << 16, 0};
		for (size_t i = 0; i < m->cap; i++)
			if (m->s[i].key != 0) {
				slot *d = map_get(&nm, m->s[i].key, true);
				*d = m->s[i];
			}
		free(m->s);
		*m = nm;
	}
	if (m->cap == 0)
		return NULL;
	for (size_t i = key & (m->cap - 1);; i = (i + 1) & (m->cap - 1)) {
		if (m->s[i].key == key)
			return &m->s[i];
		if (m->s[i].key == 0) {
			if (!insert)
				return NULL;
			m->s[i].key = key;
			m->n++;
			return &m->s[i];
		}
	}
}
