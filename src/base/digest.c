/*
 * digest.c - message digests fetched once (tally/digest.h).
 */
#define _POSIX_C_SOURCE 200809L
#include "tally/digest.h"

#include <pthread.h>
#include <stdlib.h>

static pthread_once_t md5_once = PTHREAD_ONCE_INIT;
static EVP_MD *md5;

static void fetch_md5(void)
{
	md5 = EVP_MD_fetch(NULL, "MD5", NULL);
}

const EVP_MD *tally_md5(void)
{
	(void)pthread_once(&md5_once, fetch_md5);
	if (md5 == NULL)
		abort(); /* a provider without MD5 (FIPS): no dedupe keys */
	return md5;
}
