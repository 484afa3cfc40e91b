/*
 * dead_letters.c - the batch's dead letters: to the DLQ topic (durable
 * before the positions move) and mirrored into dead_letters.
 */
#define _POSIX_C_SOURCE 200809L
#include "aggregate_int.h"
#include "tally/kafka.h"
#include "tally/log.h"

#include <inttypes.h>
#include <string.h>

int agg_send_dead_letters(tally_agg *agg, tally_error *err)
{
	size_t i, sent = 0;
	int rc;

	for (i = 0; i < agg->n; i++) {
		item *it = &agg->items[i];

		if (it->status != ST_DLQ)
			continue;
		agg->st.dead_lettered++;
		tally_log(TALLY_WARN, "aggregate.dead_letter",
			  TALLY_KV_STR("topic", agg->msgs[i].topic),
			  TALLY_KV_INT("partition", agg->msgs[i].partition),
			  TALLY_KV_INT("offset", agg->msgs[i].offset),
			  TALLY_KV_STR("reason", it->reason));
		if (agg->producer == NULL || agg->msgs[i].rkm == NULL)
			continue;
		rc = tally_dlq_send(agg->producer, agg->dlq_topic,
				    agg->msgs[i].rkm, "tally-aggregate",
				    it->reason, agg_item_detail(agg, it), err);
		if (rc != 0)
			return rc;
		sent++;
	}
	if (sent > 0) {
		/*
		 * The dead letters must be durable before the offsets move:
		 * all of them left the queue (flush) and none failed (the
		 * delivery reports, counted by tally_agg_delivered during the
		 * flush). Otherwise the transaction is not committed and the
		 * batch, dead letters included, is done again.
		 */
		agg->dlq_failed = 0;
		rd_kafka_flush(agg->producer, 30000);
		if (rd_kafka_outq_len(agg->producer) > 0)
			return tally_error_set(err, TALLY_ETRANSIENT,
					       "dead letters not delivered");
		if (agg->dlq_failed > 0)
			return tally_error_set(err, TALLY_ETRANSIENT,
					       "%zu dead letter(s) failed delivery"
					       " to %s", agg->dlq_failed,
					       agg->dlq_topic);
	}
	return 0;
}

int agg_mirror_dead_letters(tally_agg *agg, tally_error *err)
{
	tally_strbuf tp = { 0 }, pa = { 0 }, of = { 0 }, rs = { 0 }, dt = { 0 },
	     ky = { 0 };
	const char *params[7];
	size_t i, n = 0;
	int rc = 0;

	tally_strbuf_puts(&tp, "{");
	tally_strbuf_puts(&pa, "{");
	tally_strbuf_puts(&of, "{");
	tally_strbuf_puts(&rs, "{");
	tally_strbuf_puts(&dt, "{");
	tally_strbuf_puts(&ky, "{");
	for (i = 0; i < agg->n; i++) {
		const tally_agg_msg *m = &agg->msgs[i];
		const char *key = "";
		size_t klen = 0, j;

		if (agg->items[i].status != ST_DLQ)
			continue;
		if (m->rkm != NULL && m->rkm->key != NULL) {
			key = m->rkm->key;
			klen = m->rkm->key_len > 64 ? 64 : m->rkm->key_len;
			for (j = 0; j < klen; j++)
				if ((unsigned char)key[j] < 0x20 ||
				    (unsigned char)key[j] > 0x7e)
					klen = 0; /* not text: leave it out */
		}
		if (n++ > 0) {
			tally_strbuf_puts(&tp, ",");
			tally_strbuf_puts(&pa, ",");
			tally_strbuf_puts(&of, ",");
			tally_strbuf_puts(&rs, ",");
			tally_strbuf_puts(&dt, ",");
			tally_strbuf_puts(&ky, ",");
		}
		tally_strbuf_pg_array_elem(&tp, m->topic, strlen(m->topic));
		tally_strbuf_printf(&pa, "%d", (int)m->partition);
		tally_strbuf_printf(&of, "%" PRId64, m->offset);
		tally_strbuf_pg_array_elem(&rs, agg->items[i].reason,
			     strlen(agg->items[i].reason));
		tally_strbuf_pg_array_elem(&dt, agg_item_detail(agg, &agg->items[i]),
			     strlen(agg_item_detail(agg, &agg->items[i])));
		tally_strbuf_pg_array_elem(&ky, key, klen);
	}
	tally_strbuf_puts(&tp, "}");
	tally_strbuf_puts(&pa, "}");
	tally_strbuf_puts(&of, "}");
	tally_strbuf_puts(&rs, "}");
	tally_strbuf_puts(&dt, "}");
	tally_strbuf_puts(&ky, "}");
	if (n == 0)
		goto cleanup;
	params[0] = agg->group;
	params[1] = tp.p;
	params[2] = pa.p;
	params[3] = of.p;
	params[4] = rs.p;
	params[5] = dt.p;
	params[6] = ky.p;
	rc = tally_pg_exec(agg->pg, NULL,
			   "INSERT INTO dead_letters (tenant_id, consumer_group,"
			   " topic, partition, \"offset\", reason, detail)"
			   " SELECT nullif(k, ''), $1, t, p, o, r, d FROM"
			   " unnest($2::text[], $3::int[], $4::bigint[],"
			   " $5::text[], $6::text[], $7::text[]) x(t, p, o, r, d, k)"
			   " ON CONFLICT (topic, partition, \"offset\") DO NOTHING",
			   7, params, err);
cleanup:
	free(tp.p);
	free(pa.p);
	free(of.p);
	free(rs.p);
	free(dt.p);
	free(ky.p);
	return rc;
}
