/*
 * codec_time.c - RFC 3339 timestamps of events and commands to unix ms.
 */
#include "codec_int.h"
#include "base/calendar.h"

static int digits(const char *s, int n)
{
	int x = 0, i;

	for (i = 0; i < n; i++) {
		if (s[i] < '0' || s[i] > '9')
			return -1;
		x = x * 10 + (s[i] - '0');
	}
	return x;
}

int tally_codec__parse_rfc3339(int64_t *out, const char *s, uint32_t len)
{
	int y, mo, d, h, mi, sec, ms = 0, dim, oh, om, sign;
	uint32_t i;
	int64_t t;

	/* YYYY-MM-DDTHH:MM:SS is 19 bytes, plus at least "Z" */
	if (len < 20 || s[4] != '-' || s[7] != '-' || s[13] != ':' ||
	    s[16] != ':' || (s[10] != 'T' && s[10] != 't' && s[10] != ' '))
		return -1;
	y = digits(s, 4);
	mo = digits(s + 5, 2);
	d = digits(s + 8, 2);
	h = digits(s + 11, 2);
	mi = digits(s + 14, 2);
	sec = digits(s + 17, 2);
	if (y < 0 || mo < 1 || mo > 12 || d < 1 || h < 0 || h > 23 ||
	    mi < 0 || mi > 59 || sec < 0 || sec > 59)
		return -1;
	dim = tally_days_in_month(y, mo);
	if (d > dim)
		return -1;
	i = 19;
	if (s[i] == '.') {
		int nd = 0;

		i++;
		while (i < len && s[i] >= '0' && s[i] <= '9') {
			/* fraction truncated (not rounded) to ms */
			if (nd < 3)
				ms = ms * 10 + (s[i] - '0');
			nd++;
			i++;
		}
		if (nd == 0 || nd > 9)
			return -1;
		while (nd < 3) {
			ms *= 10;
			nd++;
		}
	}
	if (i >= len)
		return -1; /* no offset: local time is ambiguous */
	if ((s[i] == 'Z' || s[i] == 'z') && i + 1 == len) {
		oh = om = 0;
		sign = 1;
	} else if ((s[i] == '+' || s[i] == '-') && i + 6 == len &&
		   s[i + 3] == ':') {
		sign = s[i] == '-' ? -1 : 1;
		oh = digits(s + i + 1, 2);
		om = digits(s + i + 4, 2);
		if (oh < 0 || oh > 23 || om < 0 || om > 59)
			return -1;
	} else {
		return -1;
	}
	t = tally_days_from_civil(y, mo, d) * 86400 + h * 3600 + mi * 60 + sec;
	t -= sign * (oh * 3600 + om * 60);
	t = t * 1000 + ms;
	if (t < 0 || t > TALLY_CODEC_TIME_MAX)
		return -1;
	*out = t;
	return 0;
}
