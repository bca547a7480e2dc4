/* bt_sha1(): SHA-1 (FIPS 180-4) of a byte string, written for Redis script names: EVALSHA
 * addresses a script by the SHA-1 of its source. Not for security: SHA-1 is broken for
 * collision resistance, which does not matter for naming our own scripts. */
#ifndef BT_SHA1_H
#define BT_SHA1_H

#include <stddef.h>
#include <stdint.h>

#define BT_SHA1_LEN 20

/* Writes the 20-byte digest of data[0..len) to out. */
void bt_sha1(const void *data, size_t len, uint8_t out[BT_SHA1_LEN]);
/* Writes the digest as 40 lower-case hex digits and a NUL, as Redis prints it. */
void bt_sha1_hex(const void *data, size_t len, char out[2 * BT_SHA1_LEN + 1]);

#endif
