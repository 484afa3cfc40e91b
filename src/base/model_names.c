/*
 * model_names.c - the canonical form of provider and model names: trimmed,
 * ASCII lower-case (pure: no I/O, no locale).
 */
#include "base/model_names.h"

static bool is_space(unsigned char c)
{
	return c == ' ' || (c >= '\t' && c <= '\r');
}

static unsigned char lower(unsigned char c)
{
	return c >= 'A' && c <= 'Z' ? (unsigned char)(c + ('a' - 'A')) : c;
}

/* The trimmed view of s: its first byte and its length. */
static const char *trim(const char *s, size_t *len)
{
	size_t n = *len;

	while (n > 0 && is_space((unsigned char)s[0])) {
		s++;
		n--;
	}
	while (n > 0 && is_space((unsigned char)s[n - 1]))
		n--;
	*len = n;
	return s;
}

size_t tally_model_name_norm(char *out, size_t cap, const char *s,
			     size_t len)
{
	size_t i;

	s = trim(s, &len);
	if (len >= cap)
		len = cap - 1;
	for (i = 0; i < len; i++)
		out[i] = (char)lower((unsigned char)s[i]);
	out[len] = '\0';
	return len;
}

bool tally_model_name_is(const char *canon, size_t clen, const char *s,
			 size_t len)
{
	size_t i;

	s = trim(s, &len);
	if (len != clen)
		return false;
	for (i = 0; i < len; i++)
		if (lower((unsigned char)s[i]) != (unsigned char)canon[i])
			return false;
	return true;
}
