/*
 * fuzz_config.c - libFuzzer target for the configuration loader
 * (tally_config_load, src/base/config.c): the input is written to a file
 * and loaded. A file is rejected with a message or loaded; a loaded
 * configuration prints (tally_config show), lists its Kafka properties for
 * every program and reloads from the same file without error.
 * Run: tests/fuzz/run.sh 60 config
 */
#define _POSIX_C_SOURCE 200809L
#include "fuzz.h"
#include "tally/config.h"
#include "tally/log.h"

#include <stdio.h>
#include <unistd.h>

static char path[64];
static FILE *sink;

static void write_file(const uint8_t *data, size_t size)
{
	FILE *fp = fopen(path, "wb");

	if (fp == NULL || fwrite(data, 1, size, fp) != size || fclose(fp) != 0)
		abort();
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size)
{
	static const char *const programs[] = { NULL, "rate", "aggregate",
						"stripe", "alerts", "relay" };
	tally_config *cfg = NULL;
	tally_error err;
	const char *name, *value;
	size_t i, j;

	if (sink == NULL) {
		snprintf(path, sizeof(path), "/tmp/tally-fuzz-config-%ld.cfg",
			 (long)getpid());
		sink = fopen("/dev/null", "w");
		if (sink == NULL)
			abort();
		tally_log_set_level(TALLY_ERR);
	}
	write_file(data, size);
	if (tally_config_load(&cfg, path, &err) != 0) {
		if (err.msg[0] == '\0')
			abort();
		return 0;
	}
	tally_config_show(cfg, sink);
	for (i = 0; i < sizeof(programs) / sizeof(programs[0]); i++) {
		tally_config_set_program(cfg, programs[i]);
		for (j = 0; tally_config_kafka_property(cfg, j, &name, &value);
		     j++)
			if (name == NULL || value == NULL)
				abort();
	}
	if (tally_config_reload(cfg, &err) != 0)
		abort();
	tally_config_free(cfg);
	return 0;
}
