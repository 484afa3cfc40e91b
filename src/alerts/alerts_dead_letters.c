/*
 * alerts_dead_letters.c - a message tally-alerts cannot decode: produced
 * to its topic's dead-letter topic (before the batch commits) and mirrored
 * into the dead_letters table inside the batch transaction.
 */
#define _POSIX_C_SOURCE 200809L
#include "alerts/alerts_int.h"
#include "tally/kafka.h"
#include "tally/log.h"

#include <stdio.h>
#include <string.h>

int tally_alerts__mirror_dead(tally_alerts *a, tally_error *err)
{
	size_t i;

	for (i = 0; i < a->nitems; i++)
		if (a->items[i].type == IT_DEAD)
			tally_dead_letters_add_msg(a->dead, a->items[i].msg,
						   a->items[i].reason,
						   a->items[i].detail, true);
	return tally_dead_letters_write(a->dead, a->pg, a->group, err);
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
