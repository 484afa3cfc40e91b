#ifndef TALLY_TESTS_DEDUPE_KEY_VECTORS_H
#define TALLY_TESTS_DEDUPE_KEY_VECTORS_H

/*
 * dedupe_key_vectors.h - dedupe keys (tally/dedupe_key.h) computed by an
 * independent script from the rule in docs/aggregate.md (Python hashlib,
 * written out here): used by tests/unit/test_dedupe_key.c (C) and
 * tests/integration/test_dedupe_partitions.c (SQL tally_event_digest).
 */

#include "tally/dedupe_key.h"

#include <stdint.h>

typedef struct dedupe_key_vector {
	const char *source, *id;
	int64_t timeled_from_ms; /* TALLY_DEDUPE_TIMELED_ALWAYS: none */
	int64_t time_ms;         /* the time-led key's time, -1: md5 form */
	const char *key;         /* 32 hex digits */
} dedupe_key_vector;

static const dedupe_key_vector dedupe_key_vectors[] = {
	{ "svc", "01890a5d-ac96-774b-bcce-b302099a8057", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(1688096058518), "01890a5dac967cc1d299cd2810fbf561" },
	{ "svc", "01890A5D-AC96-774B-BCCE-B302099A8057", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(1688096058518), "01890a5dac96bb35a1a26f45524a5aef" },
	{ "svc", "01HGW2N7EHJVGZ0JKQ8ZQ6XKXM", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(1701749366225), "018c382a9dd1ee22ced6e9cb40f3c14d" },
	{ "svc", "01hgw2n7ehjvgz0jkq8zq6xkxm", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(1701749366225), "018c382a9dd1cc180b9711490a8d7572" },
	{ "svc", "81HGW2N7EHJVGZ0JKQ8ZQ6XKXM", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(-1), "d04d6da8aa4d2453fd0797d8d85076ce" },
	{ "svc", "01ARZ3NDEKTSV4RRFFQ69G5FAV", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(-1), "ad0fa2e9981568293f05b0765e9aefa3" },
	{ "svc", "9b2c6f1e-3d4a-4b8c-9e1f-2a3b4c5d6e7f", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(-1), "cb46a7befbab56a535c8e1d16e683806" },
	{ "svc", "01890a5d-ac96-774b-bcce-b302099a8057", INT64_C(1688096058519), INT64_C(-1), "fcc1d299cd2810fbf561705b064dfa3a" },
	{ "svc", "01890a5d-ac96-774b-bcce-b302099a8057", INT64_C(1688096058518), INT64_C(1688096058518), "01890a5dac967cc1d299cd2810fbf561" },
	{ "svc", "{01890a5d-ac96-774b-bcce-b302099a8057}", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(-1), "b6c46f16df3387bb8c18ebe57a80fdfd" },
	{ "svc", "urn:uuid:01890a5d-ac96-774b-bcce-b302099a8057", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(-1), "91e9e775bdcfe61e5679e0c7a040dd63" },
	{ "svc", "7fffffff-ffff-7000-8000-000000000000", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(140737488355327), "7fffffffffffd643fd2dcd4a1370e0d2" },
	{ "svc", "80000000-0000-7000-8000-000000000000", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(-1), "fd35598a3515ae98d2fb2ade49061be4" },
	{ "svc", "01890a5d-ac96-774b-ccce-b302099a8057", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(-1), "f58da7c34605db3897d967b70de2911f" },
	{ "svc", "01HGW2N7EIJVGZ0JKQ8ZQ6XKXM", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(-1), "c537874e6d328160f4eeec901abf6a04" },
	{ "workflow-engine/gen-1", "plain-id-42", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(-1), "85fca22fad2ac0a94951f81417d6689b" },
	{ "ünï", "01890a5d-ac96-774b-bcce-b302099a8057", TALLY_DEDUPE_TIMELED_ALWAYS, INT64_C(1688096058518), "01890a5dac96f7ce8ecea3d2f9567faa" },
};

#endif
