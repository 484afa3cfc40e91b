/*
 * kafka_props.h - the librdkafka property lists of the config
 * (libtally-internal, used by config.c).
 *
 * Lists of ("name", "value") pairs: libconfig names cannot hold the dots of
 * librdkafka's names. kafka.properties applies to every client; a
 * program's own list (rate.kafka.properties ...) is applied after it, so
 * its pairs win.
 */
#ifndef TALLY_BASE_KAFKA_PROPS_H
#define TALLY_BASE_KAFKA_PROPS_H

#include "tally/common.h"

#include <libconfig.h>
#include <stdbool.h>
#include <stddef.h>

#define TALLY_KPROPS_NSECT 6

/* the config paths of the lists; [0] is kafka.properties */
extern const char *const tally_kprops_sections[TALLY_KPROPS_NSECT];

typedef struct tally_kprops {
	size_t n;
	char **kv; /* name, value, name, value ... */
} tally_kprops;

/* index of path in tally_kprops_sections, or -1 */
int tally_kprops_section(const char *path);

/*
 * Replace p with the list setting s (at path, in file): every element a
 * ("name", "value") pair that librdkafka accepts, no secret property, not
 * bootstrap.servers. On error p is empty and err says "file:line: ...".
 */
int tally_kprops_parse(config_setting_t *s, const char *path, tally_kprops *p,
		       const char *file, tally_error *err) TALLY_MUSTCHECK;

void tally_kprops_free(tally_kprops *p);
bool tally_kprops_equal(const tally_kprops *a, const tally_kprops *b);

#endif /* TALLY_BASE_KAFKA_PROPS_H */
