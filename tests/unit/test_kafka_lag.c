/*
 * test_kafka_lag.c - librdkafka statistics JSON -> consumer lag and
 * committed offset gauges: owned partitions carry their lag (from the read
 * position when librdkafka does not know the committed offset), partitions
 * not owned or not known at all read 0, the internal partition -1 is
 * skipped, labels are escaped, a bad document changes nothing.
 */
#include "check_main.h"
#include "io/kafka_lag.h"

#include <stdlib.h>
#include <string.h>

/* trimmed from a real statistics document of librdkafka 2.12 */
static const char *stats =
	"{\"name\":\"tally#consumer-1\",\"type\":\"consumer\",\"topics\":{"
	" \"billing.usage\":{\"topic\":\"billing.usage\",\"partitions\":{"
	"  \"0\":{\"partition\":0,\"desired\":true,\"committed_offset\":1200,"
	"        \"hi_offset\":1500,\"consumer_lag\":300},"
	"  \"1\":{\"partition\":1,\"desired\":false,\"committed_offset\":-1001,"
	"        \"hi_offset\":900,\"consumer_lag\":-1},"
	"  \"2\":{\"partition\":2,\"desired\":true,\"committed_offset\":-1001,"
	"        \"hi_offset\":-1,\"consumer_lag\":-1},"
	"  \"3\":{\"partition\":3,\"desired\":true,\"committed_offset\":-1001,"
	"        \"app_offset\":400,\"ls_offset\":1000,\"hi_offset\":1000,"
	"        \"consumer_lag\":-1},"
	"  \"-1\":{\"partition\":-1,\"desired\":false,\"consumer_lag\":-1}}},"
	" \"we\\\"ird\":{\"partitions\":{"
	"  \"0\":{\"desired\":true,\"committed_offset\":7,\"consumer_lag\":0}}}}}";

static char *render(tally_metrics *m)
{
	char *text = NULL;

	tally_metrics_render(&text, NULL, m);
	ck_assert_ptr_nonnull(text);
	return text;
}

START_TEST(test_kafka_lag_per_partition)
{
	tally_metrics *m = tally_metrics_new();
	tally_error err;
	char *t;

	ck_assert_int_eq(tally_kafka_lag_update(m, "tally.rate", stats,
						strlen(stats), &err), 0);
	t = render(m);
	ck_assert_msg(strstr(t, "tally_kafka_consumer_lag{group=\"tally.rate\","
			     "topic=\"billing.usage\",partition=\"0\"} 300\n"),
		      "%s", t);
	ck_assert_ptr_nonnull(strstr(t, "tally_kafka_consumer_lag{group=\""
		"tally.rate\",topic=\"billing.usage\",partition=\"1\"} 0\n"));
	ck_assert_ptr_nonnull(strstr(t, "tally_kafka_consumer_lag{group=\""
		"tally.rate\",topic=\"billing.usage\",partition=\"2\"} 0\n"));
	ck_assert_ptr_null(strstr(t, "partition=\"-1\""));
	/* commits librdkafka does not see (Kafka transactions): the position */
	ck_assert_ptr_nonnull(strstr(t, "tally_kafka_consumer_lag{group=\""
		"tally.rate\",topic=\"billing.usage\",partition=\"3\"} 600\n"));
	ck_assert_ptr_nonnull(strstr(t,
		"tally_kafka_consumer_committed_offset{group=\"tally.rate\","
		"topic=\"billing.usage\",partition=\"3\"} 400\n"));
	ck_assert_ptr_nonnull(strstr(t,
		"tally_kafka_consumer_committed_offset{group=\"tally.rate\","
		"topic=\"billing.usage\",partition=\"0\"} 1200\n"));
	ck_assert_ptr_nonnull(strstr(t, "topic=\"we\\\"ird\",partition=\"0\"} 7"));
	ck_assert_ptr_nonnull(strstr(t, "# TYPE tally_kafka_consumer_lag gauge"));
	free(t);
	tally_metrics_free(m);
}
END_TEST

/* a partition moved to another instance must not keep its old lag */
START_TEST(test_kafka_lag_revoked_partition_reads_zero)
{
	static const char *later =
		"{\"topics\":{\"billing.usage\":{\"partitions\":{"
		"\"0\":{\"desired\":false,\"committed_offset\":1200,"
		"\"consumer_lag\":300}}}}}";
	tally_metrics *m = tally_metrics_new();
	tally_error err;
	char *t;

	ck_assert_int_eq(tally_kafka_lag_update(m, "g", stats, strlen(stats),
						&err), 0);
	ck_assert_int_eq(tally_kafka_lag_update(m, "g", later, strlen(later),
						&err), 0);
	t = render(m);
	ck_assert_msg(strstr(t, "tally_kafka_consumer_lag{group=\"g\",topic=\""
			     "billing.usage\",partition=\"0\"} 0\n"), "%s", t);
	free(t);
	tally_metrics_free(m);
}
END_TEST

START_TEST(test_kafka_lag_bad_json)
{
	tally_metrics *m = tally_metrics_new();
	tally_error err;
	char *t;

	ck_assert_int_eq(tally_kafka_lag_update(m, "g", "{\"topics\":", 10,
						&err), TALLY_EINVALID);
	ck_assert_ptr_nonnull(strstr(err.msg, "kafka statistics"));
	ck_assert_int_eq(tally_kafka_lag_update(m, "g", "[]", 2, &err),
			 TALLY_EINVALID);
	t = render(m);
	ck_assert_ptr_null(strstr(t, "tally_kafka_consumer_lag"));
	free(t);
	tally_metrics_free(m);
}
END_TEST

static Suite *suite(void)
{
	Suite *s = suite_create("kafka_lag");
	TCase *tc = tcase_create("core");

	tcase_add_test(tc, test_kafka_lag_per_partition);
	tcase_add_test(tc, test_kafka_lag_revoked_partition_reads_zero);
	tcase_add_test(tc, test_kafka_lag_bad_json);
	suite_add_tcase(s, tc);
	return s;
}

TALLY_CHECK_MAIN(suite)
