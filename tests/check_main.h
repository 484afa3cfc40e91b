#ifndef TALLY_TESTS_CHECK_MAIN_H
#define TALLY_TESTS_CHECK_MAIN_H

/*
 * check_main.h - the main() of every test program: run one Check suite,
 * print Check's summary line ("100%: Checks: 12, Failures: 0, Errors: 0")
 * and exit non-zero on failure. Integration tests call
 * tally_test_need_env() first: without the services they exit 77 (skip).
 */

#include <check.h>
#include <stdio.h>
#include <stdlib.h>

#define TALLY_CHECK_MAIN(suite_fn)                                     \
	int main(void)                                                 \
	{                                                              \
		SRunner *sr = srunner_create(suite_fn());              \
		int failed;                                            \
		srunner_run_all(sr, CK_NORMAL);                        \
		putchar('\n');                                     \
		failed = srunner_ntests_failed(sr);                    \
		srunner_free(sr);                                      \
		return failed == 0 ? EXIT_SUCCESS : EXIT_FAILURE;      \
	}

/* Returns the variable's value, or exits 77 (CTest "skipped") if unset. */
static inline const char *tally_test_need_env(const char *name)
{
	const char *v = getenv(name);

	if (v == NULL || *v == '\0') {
		fprintf(stderr, "skipped: %s not set (run ops/services up and "
				"source .tally-local/env)\n", name);
		exit(77);
	}
	return v;
}

#endif /* TALLY_TESTS_CHECK_MAIN_H */
