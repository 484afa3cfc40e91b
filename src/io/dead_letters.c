/*
 * dead_letters.c - the dead_letters table's one writer: rows collected as
 * array literals, inserted by one statement, idempotent per message.
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/dead_letters.h"
#include "base/strbuf.h"
#include "tally/consumer_loop.h"

#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

enum { C_TOPIC, C_PART, C_OFF, C_REASON, C_DETAIL, C_TENANT, C_PAYLOAD,
       NCOLS };

struct tally_dead_letters {
	tally_strbuf col[NCOLS]; /* array literal bodies, without braces */
	size_t n;
};

static const char INSERT_SQL[] =
	"INSERT INTO dead_letters (tenant_id, consumer_group, topic,"
	" partition, \"offset\", reason, detail, payload)"
	" SELECT nullif(k, ''), $1, t, p, o, r, d, b FROM"
	" unnest($2::text[], $3::int[], $4::bigint[], $5::text[], $6::text[],"
	" $7::text[], $8::bytea[]) x(t, p, o, r, d, k, b)"
	" ON CONFLICT (topic, partition, \"offset\") DO NOTHING";

tally_dead_letters *tally_dead_letters_new(void)
{
	return tally_xcalloc(1, sizeof(tally_dead_letters));
}

void tally_dead_letters_free(tally_dead_letters *d)
{
	int c;

	if (d == NULL)
		return;
	for (c = 0; c < NCOLS; c++)
		tally_strbuf_free(&d->col[c]);
	free(d);
}

size_t tally_dead_letters_count(const tally_dead_letters *d)
{
	return d->n;
}

void tally_dead_letter_tenant(char out[65], const rd_kafka_message_t *rkm)
{
	const char *key;
	size_t len, i;

	out[0] = '\0';
	if (rkm == NULL || rkm->key == NULL)
		return;
	key = rkm->key;
	len = rkm->key_len > 64 ? 64 : rkm->key_len;
	for (i = 0; i < len; i++)
		if ((unsigned char)key[i] < 0x20 ||
		    (unsigned char)key[i] > 0x7e)
			return; /* not text: left out */
	memcpy(out, key, len);
	out[len] = '\0';
}

/* The payload as a bytea array element ("\\x" and hex; none: empty),
 * or NULL when it is not kept. */
static void payload_elem(tally_strbuf *b, const tally_dead_letter *dl)
{
	static const char hex[] = "0123456789abcdef";
	const unsigned char *p;
	size_t i;

	if (!dl->keep_payload || dl->rkm == NULL) {
		tally_strbuf_puts(b, "NULL");
		return;
	}
	p = dl->rkm->payload;
	tally_strbuf_reserve(b, 4 + 2 * dl->rkm->len);
	tally_strbuf_puts(b, "\"\\\\x");
	for (i = 0; p != NULL && i < dl->rkm->len; i++) {
		char h[2] = { hex[p[i] >> 4], hex[p[i] & 15] };

		tally_strbuf_add(b, h, 2);
	}
	tally_strbuf_puts(b, "\"");
}

void tally_dead_letters_add(tally_dead_letters *d, const tally_dead_letter *dl)
{
	const char *detail = dl->detail != NULL ? dl->detail : "";
	char tenant[65];
	int c;

	if (d->n > 0)
		for (c = 0; c < NCOLS; c++)
			tally_strbuf_add(&d->col[c], ",", 1);
	tally_dead_letter_tenant(tenant, dl->rkm);
	tally_strbuf_pg_array_elem(&d->col[C_TOPIC], dl->topic,
				   strlen(dl->topic));
	tally_strbuf_printf(&d->col[C_PART], "%d", (int)dl->partition);
	tally_strbuf_printf(&d->col[C_OFF], "%" PRId64, dl->offset);
	tally_strbuf_pg_array_elem(&d->col[C_REASON], dl->reason,
				   strlen(dl->reason));
	tally_strbuf_pg_array_elem(&d->col[C_DETAIL], detail, strlen(detail));
	tally_strbuf_pg_array_elem(&d->col[C_TENANT], tenant, strlen(tenant));
	payload_elem(&d->col[C_PAYLOAD], dl);
	d->n++;
}

void tally_dead_letters_add_msg(tally_dead_letters *d,
				const struct tally_kafka_msg *m,
				const char *reason, const char *detail,
				bool keep_payload)
{
	tally_dead_letter dl = { 0 };

	dl.topic = m->topic;
	dl.partition = m->partition;
	dl.offset = m->offset;
	dl.reason = reason;
	dl.detail = detail;
	dl.rkm = m->rkm;
	dl.keep_payload = keep_payload;
	tally_dead_letters_add(d, &dl);
}

int tally_dead_letters_write(tally_dead_letters *d, tally_pg *pg,
			     const char *group, tally_error *err)
{
	tally_strbuf arr[NCOLS];
	const char *params[NCOLS + 1];
	int c, rc;

	if (d->n == 0)
		return 0;
	params[0] = group;
	for (c = 0; c < NCOLS; c++) {
		tally_strbuf *b = &arr[c];

		*b = (tally_strbuf)TALLY_STRBUF_INIT;
		tally_strbuf_reserve(b, d->col[c].len + 2);
		tally_strbuf_puts(b, "{");
		tally_strbuf_add(b, tally_strbuf_cstr(&d->col[c]),
				 d->col[c].len);
		tally_strbuf_puts(b, "}");
		params[c + 1] = b->p;
	}
	rc = tally_pg_exec(pg, NULL, INSERT_SQL, NCOLS + 1, params, err);
	for (c = 0; c < NCOLS; c++) {
		tally_strbuf_free(&arr[c]);
		tally_strbuf_reset(&d->col[c]);
	}
	d->n = 0;
	return rc;
}

int tally_dead_letter_write(tally_pg *pg, const char *group,
			    const tally_dead_letter *dl, tally_error *err)
{
	tally_dead_letters *d = tally_dead_letters_new();
	int rc;

	tally_dead_letters_add(d, dl);
	rc = tally_dead_letters_write(d, pg, group, err);
	tally_dead_letters_free(d);
	return rc;
}
