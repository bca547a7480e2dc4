/* SHA-1 as specified in FIPS 180-4, section 6.1: 512-bit blocks, an 80-word schedule and
 * four rounds of 20 steps. Big-endian throughout, independent of the host's byte order. */
#include "sha1.h"

#include <string.h>

static uint32_t rol(uint32_t x, unsigned n) { return (x << n) | (x >> (32 - n)); }

static void block(uint32_t h[5], const uint8_t *p) {
  uint32_t w[80];
  for (unsigned t = 0; t < 16; t++)
    w[t] = (uint32_t)p[4 * t] << 24 | (uint32_t)p[4 * t + 1] << 16 |
           (uint32_t)p[4 * t + 2] << 8 | (uint32_t)p[4 * t + 3];
  for (unsigned t = 16; t < 80; t++)
    w[t] = rol(w[t - 3] ^ w[t - 8] ^ w[t - 14] ^ w[t - 16], 1);
  uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
  for (unsigned t = 0; t < 80; t++) {
    uint32_t f, k;
    if (t < 20) {
      f = (b & c) | (~b & d);
      k = 0x5a827999u;
    } else if (t < 40) {
      f = b ^ c ^ d;
      k = 0x6ed9eba1u;
    } else if (t < 60) {
      f = (b & c) | (b & d) | (c & d);
      k = 0x8f1bbcdcu;
    } else {
      f = b ^ c ^ d;
      k = 0xca62c1d6u;
    }
    uint32_t tmp = rol(a, 5) + f + e + k + w[t];
    e = d;
    d = c;
    c = rol(b, 30);
    b = a;
    a = tmp;
  }
  h[0] += a;
  h[1] += b;
  h[2] += c;
  h[3] += d;
  h[4] += e;
}

void bt_sha1(const void *data, size_t len, uint8_t out[BT_SHA1_LEN]) {
  uint32_t h[5] = {0x67452301u, 0xefcdab89u, 0x98badcfeu, 0x10325476u, 0xc3d2e1f0u};
  const uint8_t *p = data;
  size_t left = len;
  for (; left >= 64; left -= 64, p += 64)
    block(h, p);
  /* The padding: a 1 bit, zeros, and the message length in bits as a 64-bit big-endian
   * number, which spills into a second block when fewer than 9 bytes remain. */
  uint8_t tail[128] = {0};
  memcpy(tail, p, left);
  tail[left] = 0x80;
  size_t tlen = left + 9 <= 64 ? 64 : 128;
  uint64_t bits = (uint64_t)len * 8;
  for (unsigned i = 0; i < 8; i++)
    tail[tlen - 1 - i] = (uint8_t)(bits >> (8 * i));
  block(h, tail);
  if (tlen == 128)
    block(h, tail + 64);
  for (unsigned i = 0; i < 5; i++)
    for (unsigned j = 0; j < 4; j++)
      out[4 * i + j] = (uint8_t)(h[i] >> (24 - 8 * j));
}

void bt_sha1_hex(const void *data, size_t len, char out[2 * BT_SHA1_LEN + 1]) {
  static const char hex[] = "0123456789abcdef";
  uint8_t d[BT_SHA1_LEN];
  bt_sha1(data, len, d);
  for (unsigned i = 0; i < BT_SHA1_LEN; i++) {
    out[2 * i] = hex[d[i] >> 4];
    out[2 * i + 1] = hex[d[i] & 15];
  }
  out[2 * BT_SHA1_LEN] = '\0';
}
