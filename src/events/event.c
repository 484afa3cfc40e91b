/*
 * event.c - meter names and UUID text form for usage events. UUIDs are
 * parsed and printed by libuuid; events keep them as 16 raw bytes.
 */
#include "tally/event.h"

#include <string.h>
#include <uuid/uuid.h>

static const char *const meter_names[] = {
	NULL, "ai.tokens", "workflow.execution", "storage.snapshot", "api.call",
};

const char *tally_meter_name(tally_meter m)
{
	if ((int)m < 1 || (int)m > 4)
		return NULL;
	return meter_names[m];
}

tally_meter tally_meter_parse(const char *s, uint32_t len)
{
	int i;

	for (i = 1; i <= 4; i++)
		if (strlen(meter_names[i]) == len &&
		    memcmp(meter_names[i], s, len) == 0)
			return (tally_meter)i;
	return TALLY_METER_NONE;
}

void tally_uuid_fmt(char out[37], const uint8_t uuid[16])
{
	uuid_unparse_lower(uuid, out);
}

int tally_uuid_parse(uint8_t out[16], const char *s, uint32_t len)
{
	char buf[37];

	if (len != 36)
		return -1;
	memcpy(buf, s, 36);
	buf[36] = '\0';
	return uuid_parse(buf, out) == 0 ? 0 : -1;
}
