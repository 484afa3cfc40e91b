/*
 * producer_example.c - how a workflow engine reports AI usage to tally.
 *
 *   tally_producer_new()         once, at start-up, from the tally config
 *   tally_producer_send_usage()  after every AI request (validated, queued)
 *   tally_producer_poll()        now and then: delivery reports -> callback
 *   tally_producer_free()        at shutdown: flushes, then closes
 *
 * Run: KAFKA_BROKERS=127.0.0.1:19092 ./producer_example [TOPIC]
 */
#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "tally/config.h"
#include "tally/producer.h"

struct engine_stats {
	int acked;
	int failed;
};

/* Runs on the thread that calls poll/flush. A failed delivery means the
 * event is NOT billed yet: keep it and send it again later (same id and
 * source, so tally counts it once). */
static void on_delivery(const tally_delivery *dr, void *payload)
{
	struct engine_stats *st = payload;

	if (dr->code == 0) {
		st->acked++;
	} else {
		st->failed++;
		fprintf(stderr, "usage event %s not delivered: %s\n",
			(const char *)dr->opaque, dr->errstr);
	}
}

static tally_str S(const char *s)
{
	tally_str v = { s, (uint32_t)strlen(s) };
	return v;
}

int main(int argc, char **argv)
{
	static const char *run_ids[] = { "run-1001/step-1", "run-1001/step-2",
					 "run-1002/step-1" };
	tally_config *cfg = NULL;
	tally_producer *p = NULL;
	tally_producer_opts opts = { 0 };
	struct engine_stats st = { 0, 0 };
	tally_error err;
	int i, rc = 1;

	/* NULL path: defaults + environment (KAFKA_BROKERS) */
	if (tally_config_load(&cfg, NULL, &err) != 0) {
		fprintf(stderr, "config: %s\n", err.msg);
		return 1;
	}
	opts.topic = argc > 1 ? argv[1] : NULL; /* NULL: topics.usage */
	opts.on_delivery = on_delivery;
	opts.payload = &st;
	if (tally_producer_new(&p, cfg, &opts, &err) != 0) {
		fprintf(stderr, "producer: %s\n", err.msg);
		goto cleanup;
	}
	for (i = 0; i < 3; i++) {
		tally_usage_event ev;

		/* one event per AI request, filled from the model's response */
		memset(&ev, 0, sizeof(ev));
		ev.id = S(run_ids[i]);              /* unique per source */
		ev.source = S("workflow-engine/eu-1");
		if (tally_uuid_parse(ev.tenant_id,
				     "3f1c2a7e-5b6d-4e8f-9a0b-1c2d3e4f5a6b",
				     36) != 0)
			goto cleanup;
		ev.time_ms = tally_now_ms();         /* when it happened */
		ev.meter = TALLY_METER_AI_TOKENS;
		ev.provider = S("openai");
		ev.model = S("gpt-4o");
		ev.input_tokens = 1200;              /* includes cached tokens */
		ev.cache_read_tokens = 200;
		ev.output_tokens = 350;
		ev.workflow_id = S("wf-invoice-triage");

		/* the opaque comes back in on_delivery */
		rc = tally_producer_send_usage(p, &ev, (void *)run_ids[i], &err);
		if (rc == TALLY_EINVALID) {
			/* a bug in the engine: log it, never retry as is */
			fprintf(stderr, "invalid usage event: %s\n", err.msg);
			continue;
		}
		if (rc != 0) {
			fprintf(stderr, "send: %s\n", err.msg);
			goto cleanup;
		}
		tally_producer_poll(p, 0); /* serve reports, never blocks */
	}
	/* at shutdown: wait for every report, then close */
	rc = tally_producer_flush(p, 10000, &err);
	if (rc != 0)
		fprintf(stderr, "flush: %s\n", err.msg);
	printf("acked %d, failed %d\n", st.acked, st.failed);
	rc = rc == 0 && st.failed == 0 ? 0 : 1;
cleanup:
	tally_producer_free(p);
	tally_config_free(cfg);
	return rc;
}
