/*
 * alerts_dead_letters.c - a message tally-alerts cannot decode: produced
 * to its topic's dead-letter topic (before the batch commits) and mirrored
 * into the dead_letters table inside the batch transaction.
 */
#define _POSIX_C_SOURCE 200809L
#include "alerts/alerts_int.h"
#include "tally/kafka.h"
#include "tally/log.h"

#include <inttypes.h>
#include <stdio.h>
#include <string.h>

int tally_alerts__mirror_dead(tally_alerts *a, const tally_alerts_item *it,
			      tally_error *err)
{
	const tally_alerts_msg *m = it->msg;
	char pb[16], ob[24], key[64] = "";
	const char *params[8];
	int formats[8] = { 0 }, lengths[8] = { 0 };
	PGresult *res;

	if (m->rkm != NULL && m->rkm->key != NULL && m->rkm->key_len > 0)
		snprintf(key, sizeof(key), "%.*s",
			 (int)(m->rkm->key_len < 63 ? m->rkm->key_len : 63),
			 (const char *)m->rkm->key);
	snprintf(pb, sizeof(pb), "%d", (int)m->partition);
	snprintf(ob, sizeof(ob), "%" PRId64, m->offset);
	params[0] = key[0] ? key : NULL;
	params[1] = a->group;
	params[2] = m->topic;
	params[3] = pb;
	params[4] = ob;
	params[5] = it->reason;
	params[6] = it->detail;
	params[7] = m->payload;
	formats[7] = 1; /* the payload as raw bytes */
	lengths[7] = (int)m->len;
	/* binary parameter: PQexecParams directly (tally_pg_exec is text) */
	res = PQexecParams(tally_pg_conn(a->pg),
		"INSERT INTO dead_letters (tenant_id, consumer_group, topic,"
		" partition, \"offset\", reason, detail, payload) VALUES ($1,"
		" $2, $3, $4::int, $5::bigint, $6, $7, $8::bytea)"
		" ON CONFLICT (topic, partition, \"offset\") DO NOTHING",
		8, NULL, params, lengths, formats, 0);
	if (PQresultStatus(res) != PGRES_COMMAND_OK) {
		int rc = tally_pg__classify(tally_pg_conn(a->pg), res, err);
		PQclear(res);
		return rc;
	}
	PQclear(res);
	return 0;
}

int tally_alerts__dlq_send(tally_alerts *a, const tally_alerts_item *it,
			   tally_error *err)
{
	const char *dlq = strcmp(it->msg->topic, a->totals_topic) == 0 ?
				  a->totals_dlq : a->signals_dlq;
	char labels[160], t[100];

	tally_metrics_escape_label(t, sizeof(t), it->msg->topic);
	snprintf(labels, sizeof(labels), "topic=\"%s\",reason=\"%s\"", t,
		 it->reason);
	tally_alerts__count(a, "tally_alerts_dead_letters_total", labels,
	      "messages dead-lettered, by source topic and reason");
	tally_log(TALLY_WARN, "alerts.dead_letter",
		  TALLY_KV_STR("topic", it->msg->topic),
		  TALLY_KV_INT("partition", it->msg->partition),
		  TALLY_KV_INT("offset", it->msg->offset),
		  TALLY_KV_STR("reason", it->reason));
	if (a->producer == NULL || it->msg->rkm == NULL)
		return 0;
	return tally_dlq_send(a->producer, dlq, it->msg->rkm, a->group,
			      it->reason, it->detail, err);
}
