/*
 * positions.c - consumer positions in consumer_offsets with a
 * compare-and-set fence (see tally/positions.h). The fence is one
 * statement per batch whatever the number of partitions: the batch's
 * (topic, partition, expected, next) go in as four arrays.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/positions.h"
#include "tally/consumer_loop.h"
#include "tally/log.h"

#include <inttypes.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef struct held {
	char *topic;
	int32_t partition;
	int64_t expected; /* -1: no row in consumer_offsets */
} held;

struct tally_positions {
	pthread_mutex_t mu;
	char *group;
	held *h;
	size_t n, cap;
};

tally_positions *tally_positions_new(const char *group)
{
	tally_positions *ps = tally_xcalloc(1, sizeof(*ps));

	pthread_mutex_init(&ps->mu, NULL);
	ps->group = tally_xstrdup(group);
	return ps;
}

void tally_positions_free(tally_positions *ps)
{
	size_t i;

	if (ps == NULL)
		return;
	for (i = 0; i < ps->n; i++)
		free(ps->h[i].topic);
	free(ps->h);
	free(ps->group);
	pthread_mutex_destroy(&ps->mu);
	free(ps);
}

/* caller holds mu */
static held *find(tally_positions *ps, const char *topic, int32_t part)
{
	size_t i;

	for (i = 0; i < ps->n; i++)
		if (ps->h[i].partition == part &&
		    strcmp(ps->h[i].topic, topic) == 0)
			return &ps->h[i];
	return NULL;
}

/* caller holds mu; only_held: update existing entries only */
static void set(tally_positions *ps, const char *topic, int32_t part,
		int64_t expected, bool only_held)
{
	held *p = find(ps, topic, part);

	if (p == NULL) {
		if (only_held)
			return;
		if (ps->n == ps->cap) {
			ps->cap = ps->cap ? ps->cap * 2 : 16;
			ps->h = tally_xrealloc(ps->h, ps->cap * sizeof(*ps->h));
		}
		p = &ps->h[ps->n++];
		p->topic = tally_xstrdup(topic);
		p->partition = part;
	}
	p->expected = expected;
}

static int read_one(tally_positions *ps, tally_pg *pg, const char *topic,
		    int32_t part, int64_t *out, tally_error *err)
{
	PGresult *res = NULL;
	char pb[16];
	const char *params[3] = { ps->group, topic, pb };
	int rc;

	snprintf(pb, sizeof(pb), "%d", (int)part);
	*out = -1;
	rc = tally_pg_exec(pg, &res,
			   "SELECT next_offset FROM consumer_offsets WHERE"
			   " consumer_group = $1 AND topic = $2 AND"
			   " partition = $3::int", 3, params, err);
	if (rc == 0 && PQntuples(res) == 1 &&
	    tally_parse_i64(out, PQgetvalue(res, 0, 0)) != 0)
		rc = tally_error_set(err, TALLY_ERROR,
				     "bad consumer_offsets row for %s[%d]",
				     topic, (int)part);
	PQclear(res);
	return rc;
}

int tally_positions_assign(tally_positions *ps, tally_pg *pg,
			   rd_kafka_topic_partition_list_t *parts,
			   tally_error *err)
{
	int i, rc = 0;

	for (i = 0; i < parts->cnt && rc == 0; i++) {
		rd_kafka_topic_partition_t *tp = &parts->elems[i];
		int64_t off = -1;

		rc = read_one(ps, pg, tp->topic, tp->partition, &off, err);
		if (rc != 0)
			break;
		pthread_mutex_lock(&ps->mu);
		set(ps, tp->topic, tp->partition, off, false);
		pthread_mutex_unlock(&ps->mu);
		tp->offset = off >= 0 ? off : RD_KAFKA_OFFSET_BEGINNING;
	}
	return rc;
}

void tally_positions_revoke(tally_positions *ps,
			    const rd_kafka_topic_partition_list_t *parts)
{
	int i;

	pthread_mutex_lock(&ps->mu);
	for (i = 0; i < parts->cnt; i++) {
		held *p = find(ps, parts->elems[i].topic,
			       parts->elems[i].partition);
		if (p != NULL) {
			free(p->topic);
			*p = ps->h[--ps->n];
		}
	}
	pthread_mutex_unlock(&ps->mu);
}

bool tally_positions_held(tally_positions *ps, const char *topic,
			  int32_t partition)
{
	bool r;

	pthread_mutex_lock(&ps->mu);
	r = find(ps, topic, partition) != NULL;
	pthread_mutex_unlock(&ps->mu);
	return r;
}

bool tally_positions_get(tally_positions *ps, const char *topic,
			 int32_t partition, int64_t *expected)
{
	held *p;
	bool r;

	pthread_mutex_lock(&ps->mu);
	p = find(ps, topic, partition);
	r = p != NULL;
	if (r)
		*expected = p->expected;
	pthread_mutex_unlock(&ps->mu);
	return r;
}

/* Append s to a PostgreSQL text[] literal, quoted. */
static void array_str(char **buf, size_t *len, size_t *cap, const char *s)
{
	size_t need = *len + 2 * strlen(s) + 4;

	if (need > *cap) {
		*cap = need * 2;
		*buf = tally_xrealloc(*buf, *cap);
	}
	(*buf)[(*len)++] = '"';
	for (; *s; s++) {
		if (*s == '"' || *s == '\\')
			(*buf)[(*len)++] = '\\';
		(*buf)[(*len)++] = *s;
	}
	(*buf)[(*len)++] = '"';
}

static void array_raw(char **buf, size_t *len, size_t *cap, const char *s)
{
	size_t n = strlen(s);

	if (*len + n + 2 > *cap) {
		*cap = (*len + n + 2) * 2;
		*buf = tally_xrealloc(*buf, *cap);
	}
	memcpy(*buf + *len, s, n);
	*len += n;
}

int tally_positions_fence(tally_positions *ps, tally_pg *pg,
			  const tally_position *batch, size_t n,
			  tally_error *err)
{
	char *a[4] = { NULL, NULL, NULL, NULL };
	size_t len[4] = { 0 }, cap[4] = { 0 }, i;
	const char *params[5];
	PGresult *res = NULL;
	char num[24];
	int k, rc = 0;

	if (n == 0)
		return 0;
	for (k = 0; k < 4; k++)
		array_raw(&a[k], &len[k], &cap[k], "{");
	pthread_mutex_lock(&ps->mu);
	for (i = 0; i < n; i++) {
		held *p = find(ps, batch[i].topic, batch[i].partition);

		if (p == NULL) {
			pthread_mutex_unlock(&ps->mu);
			rc = tally_error_set(err, TALLY_EFENCED,
					     "%s[%d] is not assigned here",
					     batch[i].topic,
					     (int)batch[i].partition);
			goto cleanup;
		}
		if (i > 0)
			for (k = 0; k < 4; k++)
				array_raw(&a[k], &len[k], &cap[k], ",");
		array_str(&a[0], &len[0], &cap[0], batch[i].topic);
		snprintf(num, sizeof(num), "%d", (int)batch[i].partition);
		array_raw(&a[1], &len[1], &cap[1], num);
		snprintf(num, sizeof(num), "%" PRId64, p->expected);
		array_raw(&a[2], &len[2], &cap[2], num);
		snprintf(num, sizeof(num), "%" PRId64, batch[i].next);
		array_raw(&a[3], &len[3], &cap[3], num);
	}
	pthread_mutex_unlock(&ps->mu);
	for (k = 0; k < 4; k++) {
		array_raw(&a[k], &len[k], &cap[k], "}");
		a[k][len[k]] = '\0';
	}
	params[0] = ps->group;
	params[1] = a[0];
	params[2] = a[1];
	params[3] = a[2];
	params[4] = a[3];
	rc = tally_pg_exec(pg, &res,
			   "WITH b(t, p, e, n) AS (SELECT * FROM unnest($2::text[],"
			   " $3::int[], $4::bigint[], $5::bigint[]))"
			   " INSERT INTO consumer_offsets AS co (consumer_group,"
			   " topic, partition, next_offset)"
			   " SELECT $1, t, p, n FROM b"
			   " ON CONFLICT (consumer_group, topic, partition)"
			   " DO UPDATE SET next_offset = EXCLUDED.next_offset,"
			   " updated_at = now()"
			   " WHERE co.next_offset = (SELECT b.e FROM b"
			   " WHERE b.t = co.topic AND b.p = co.partition)"
			   " RETURNING partition", 5, params, err);
	if (rc == 0 && (size_t)PQntuples(res) != n)
		rc = tally_error_set(err, TALLY_EFENCED,
				     "consumer_offsets moved: another instance "
				     "owns %zu of %zu partitions",
				     n - (size_t)PQntuples(res), n);
cleanup:
	PQclear(res);
	for (k = 0; k < 4; k++)
		free(a[k]);
	return rc;
}

void tally_positions_committed(tally_positions *ps,
			       const tally_position *batch, size_t n)
{
	size_t i;

	pthread_mutex_lock(&ps->mu);
	for (i = 0; i < n; i++)
		set(ps, batch[i].topic, batch[i].partition, batch[i].next,
		    true);
	pthread_mutex_unlock(&ps->mu);
}

int tally_positions_reseek(tally_positions *ps, tally_pg *pg, rd_kafka_t *rk,
			   const struct tally_kafka_msg *msgs, size_t n,
			   tally_error *err)
{
	rd_kafka_topic_partition_list_t *l =
		rd_kafka_topic_partition_list_new((int)n + 1);
	size_t i;
	int k, rc = 0;

	for (i = 0; i < n; i++)
		if (rd_kafka_topic_partition_list_find(l, msgs[i].topic,
						       msgs[i].partition) == NULL)
			rd_kafka_topic_partition_list_add(l, msgs[i].topic,
							  msgs[i].partition);
	for (k = 0; k < l->cnt && rc == 0; k++) {
		rd_kafka_topic_partition_t *tp = &l->elems[k];
		int64_t off = -1;

		rc = read_one(ps, pg, tp->topic, tp->partition, &off, err);
		if (rc != 0)
			break;
		tp->offset = off >= 0 ? off : RD_KAFKA_OFFSET_BEGINNING;
		pthread_mutex_lock(&ps->mu);
		set(ps, tp->topic, tp->partition, off, true);
		pthread_mutex_unlock(&ps->mu);
		tally_log(TALLY_WARN, "positions.reseek",
			  TALLY_KV_STR("group", ps->group),
			  TALLY_KV_STR("topic", tp->topic),
			  TALLY_KV_INT("partition", tp->partition),
			  TALLY_KV_INT("offset", off));
	}
	if (rc == 0 && rk != NULL) {
		/* a partition left where it was would skip what the caller
		 * drops: every seek must succeed, or the caller gives up */
		rd_kafka_error_t *e = rd_kafka_seek_partitions(rk, l, 10000);
		if (e != NULL) {
			rc = tally_error_set(err, TALLY_ETRANSIENT, "seek: %s",
					     rd_kafka_error_string(e));
			rd_kafka_error_destroy(e);
		}
		for (k = 0; k < l->cnt && rc == 0; k++)
			if (l->elems[k].err != RD_KAFKA_RESP_ERR_NO_ERROR)
				rc = tally_error_set(
					err, TALLY_ETRANSIENT, "seek %s [%d]: %s",
					l->elems[k].topic, l->elems[k].partition,
					rd_kafka_err2str(l->elems[k].err));
	}
	rd_kafka_topic_partition_list_destroy(l);
	return rc;
}
