#ifndef TALLY_DIGEST_H
#define TALLY_DIGEST_H

/*
 * digest.h - message digests shared by the modules that hash per event
 * (dedupe keys, known-keys tags).
 */

#include <openssl/evp.h>

/**
 * MD5 from OpenSSL's default provider, fetched once for the process:
 * EVP_md5() makes every EVP_Digest*() call fetch it again (a lock and a
 * name lookup per event). Never NULL: aborts if MD5 is unavailable.
 */
const EVP_MD *tally_md5(void);

#endif /* TALLY_DIGEST_H */
