/* tally-bench: workloads: synthetic events and the generator (tally_gen) */
#define _POSIX_C_SOURCE 200809L
#include "bench.h"

#include "tally/config.h"
#include "tally/gen.h"
#include "tally/money.h"
#include "tally/producer.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int cmd_synth(int argc, char **argv)
{
	const char *brokers = need(argc, argv, "-b");
	const char *topic = need(argc, argv, "--topic");
	bool rated = strcmp(opt(argc, argv, "--kind", "usage"), "rated") == 0;
	int64_t n = opt_i(argc, argv, "--events", 100000);
	int64_t tenants = opt_i(argc, argv, "--tenants", 1000);
	const char *pkv[] = {"linger.ms", "5", "batch.num.messages", "10000",
			     "queue.buffering.max.messages", "1000000", NULL};
	rd_kafka_t *rp = mk_client(RD_KAFKA_PRODUCER, brokers, pkv);
	msgpack_sbuffer sb;
	uint64_t x = 88172645463325252ULL;
	int64_t base = now_ms() - 3600 * 1000;
	static const char *models[] = {"gpt-4o", "gpt-4o-mini",
				       "claude-3-5-sonnet", "gemini-1.5-pro"};

	msgpack_sbuffer_init(&sb);
	for (int64_t i = 0; i < n; i++) {
		tally_rated_event re;
		char id[48], tid[37];
		int64_t t = i % 20 == 7 && i > 0 ? i - 1 : i; /* 5% dups */
		memset(&re, 0, sizeof(re));
		x ^= x << 13;
		x ^= x >> 7;
		x ^= x << 17;
		/* a UUIDv7 made at the event's time (base + t * 10 below);
		 * a duplicate keeps its id */
		snprintf(id, sizeof(id), "%08llx-%04llx-7000-8000-%012llx",
			 (unsigned long long)(((uint64_t)(base + t * 10) >> 16) &
					      0xffffffffu),
			 (unsigned long long)((uint64_t)(base + t * 10) & 0xffff),
			 (unsigned long long)((uint64_t)t & 0xffffffffffffu));
		re.ev.id.ptr = id;
		re.ev.id.len = (uint32_t)strlen(id);
		re.ev.source.ptr = "bench/synth";
		re.ev.source.len = 11;
		memset(re.ev.tenant_id, 0x11, 16);
		re.ev.tenant_id[15] = (uint8_t)(t % tenants);
		re.ev.tenant_id[14] = (uint8_t)((t % tenants) >> 8);
		re.ev.tenant_id[6] = 0x41;
		re.ev.tenant_id[8] = 0x81;
		re.ev.time_ms = base + t * 10;
		re.ev.meter = TALLY_METER_AI_TOKENS;
		re.ev.provider.ptr = "openai";
		re.ev.provider.len = 6;
		re.ev.model.ptr = models[t % 4];
		re.ev.model.len = (uint32_t)strlen(models[t % 4]);
		re.ev.input_tokens = 1000 + (int64_t)(x % 5000);
		re.ev.output_tokens = 100 + (int64_t)(x % 700);
		re.ev.cache_read_tokens = 200;
		re.cost = re.ev.input_tokens * 2500000 + re.ev.output_tokens * 10000000;
		re.components[TALLY_COMP_INPUT] = re.ev.input_tokens * 2500000;
		re.components[TALLY_COMP_OUTPUT] = re.ev.output_tokens * 10000000;
		re.cost = re.components[0] + re.components[TALLY_COMP_OUTPUT];
		memcpy(re.currency, "USD", 4);
		re.price_id = 1 + t % 4;
		re.rated_at_ms = now_ms();
		msgpack_sbuffer_clear(&sb);
		if (rated)
			tally_codec_encode_rated(&sb, &re);
		else
			tally_codec_encode_usage(&sb, &re.ev);
		tally_uuid_fmt(tid, re.ev.tenant_id);
		rd_kafka_resp_err_t e;
		do {
			e = rd_kafka_producev(rp, RD_KAFKA_V_TOPIC(topic),
					      RD_KAFKA_V_KEY(tid, 36),
					      RD_KAFKA_V_VALUE(sb.data, sb.size),
					      RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
					      RD_KAFKA_V_END);
			if (e == RD_KAFKA_RESP_ERR__QUEUE_FULL)
				rd_kafka_poll(rp, 10);
		} while (e == RD_KAFKA_RESP_ERR__QUEUE_FULL);
		rd_kafka_poll(rp, 0);
	}
	rd_kafka_flush(rp, 60000);
	msgpack_sbuffer_destroy(&sb);
	rd_kafka_destroy(rp);
	printf("{\"messages\":%" PRId64 "}\n", n);
	return 0;
}

/* ---- workload: the generator (tally_gen) through the producer API ----- */

static int64_t frac(int argc, char **argv, const char *name, const char *def)
{
	const char *s = opt(argc, argv, name, def);
	int64_t v;

	if (tally_money_parse(&v, s, strlen(s)) != 0 || v < 0 ||
	    v > INT64_C(1000000000000))
		die("bad fraction for %s: %s", name, s);
	return v;
}

int cmd_gen(int argc, char **argv)
{
	const char *cfgp = need(argc, argv, "--config");
	const char *topic = need(argc, argv, "--topic");
	const char *expected = opt(argc, argv, "--expected", NULL);
	const char *models_path = opt(argc, argv, "--models", NULL);
	const char *label = opt(argc, argv, "--label", NULL);
	tally_gen_opts o;
	tally_gen *g = NULL;
	tally_config *cfg = NULL;
	tally_producer *pr = NULL;
	tally_producer_opts po = {0};
	tally_error err;
	char *models[512], line[512];
	size_t nmodels = 0;
	tally_usage_event ev;
	bool dup;
	uint64_t sent = 0, delivered = 0, failed = 0;
	int64_t t0 = tally_mono_ns(), last = 0, now = now_ms();

	tally_gen_opts_init(&o);
	o.events = (uint64_t)opt_i(argc, argv, "--events", 2000000);
	o.tenants = (uint32_t)opt_i(argc, argv, "--tenants", 1000);
	o.seed = (uint64_t)opt_i(argc, argv, "--seed", 1);
	/* recent event times: inside the aggregate's lateness window */
	o.to_ms = opt_i(argc, argv, "--to-ms", now - 10 * 60 * 1000);
	o.from_ms = opt_i(argc, argv, "--from-ms", o.to_ms - 2 * 86400000LL);
	o.dup_frac = frac(argc, argv, "--dup", "0.05");
	o.ooo_frac = frac(argc, argv, "--ooo", "0.02");
	o.late_frac = frac(argc, argv, "--late", "0.001");
	if (models_path != NULL) {
		FILE *fp = fopen(models_path, "r");
		if (fp == NULL)
			die("cannot read %s", models_path);
		while (nmodels < 512 && fgets(line, sizeof(line), fp) != NULL) {
			size_t l = strcspn(line, "\r\n");
			line[l] = 0;
			if (l == 0 || line[0] == '#')
				continue;
			models[nmodels++] = tally_xstrdup(line);
		}
		fclose(fp);
		o.models = (const char **)models;
		o.nmodels = nmodels;
	}
	if (tally_config_load(&cfg, cfgp, &err) != 0)
		die("%s", err.msg);
	if (tally_gen_new(&g, &o, &err) != 0)
		die("gen: %s", err.msg);
	po.topic = topic;
	if (tally_producer_new(&pr, cfg, &po, &err) != 0)
		die("producer: %s", err.msg);
	while (tally_gen_next(g, &ev, &dup)) {
		if (tally_producer_send_usage(pr, &ev, NULL, &err) != 0)
			die("send: %s", err.msg);
		sent++;
		if ((sent & 4095) == 0) {
			tally_producer_poll(pr, 0);
			if (label != NULL && tally_mono_ns() - last > 1000000000) {
				last = tally_mono_ns();
				fprintf(stderr, "\r  %s: %" PRIu64 "/%" PRIu64 "  ",
					label, sent, o.events);
			}
		}
	}
	if (tally_producer_flush(pr, 120000, &err) != 0)
		die("flush: %s", err.msg);
	tally_producer_counts(pr, &delivered, &failed);
	if (label != NULL)
		fprintf(stderr, "\r  %s: %" PRIu64 "/%" PRIu64 "  \n", label,
			sent, o.events);
	if (expected != NULL) {
		json_t *j = tally_gen_totals_json(g);
		json_object_set_new(j, "from_ms", json_integer(o.from_ms));
		json_object_set_new(j, "to_ms", json_integer(o.to_ms));
		if (json_dump_file(j, expected, JSON_COMPACT) != 0)
			die("cannot write %s", expected);
		json_decref(j);
	}
	printf("{\"sent\":%" PRIu64 ",\"delivered\":%" PRIu64
	       ",\"failed\":%" PRIu64 ",\"seconds\":%.3f}\n",
	       sent, delivered, failed, (double)(tally_mono_ns() - t0) / 1e9);
	tally_producer_free(pr);
	tally_gen_free(g);
	tally_config_free(cfg);
	for (size_t i = 0; i < nmodels; i++)
		free(models[i]);
	return failed == 0 && delivered == sent ? 0 : 1;
}
