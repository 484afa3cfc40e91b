#ifndef TALLY_TESTS_KAFKA_MOCK_CLIENT_H
#define TALLY_TESTS_KAFKA_MOCK_CLIENT_H

/*
 * kafka_mock_client.h - a plain librdkafka client for the unit tests on
 * librdkafka's in-process mock cluster: the cluster's own handle (bs
 * NULL), producers filling its topics, consumers committing for a group.
 */

#include <check.h>
#include <librdkafka/rdkafka.h>

static inline rd_kafka_t *mock_client(rd_kafka_type_t type, const char *bs,
				      const char *group)
{
	rd_kafka_conf_t *conf = rd_kafka_conf_new();
	char errstr[256];
	rd_kafka_t *rk;

	if (bs != NULL)
		rd_kafka_conf_set(conf, "bootstrap.servers", bs, errstr,
				  sizeof(errstr));
	if (group != NULL)
		rd_kafka_conf_set(conf, "group.id", group, errstr,
				  sizeof(errstr));
	rk = rd_kafka_new(type, conf, errstr, sizeof(errstr));
	ck_assert_msg(rk != NULL, "%s", errstr);
	return rk;
}

#endif
