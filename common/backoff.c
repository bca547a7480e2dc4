/* Exponential backoff with jitter, and the small PRNG it draws from. */
#include "backoff.h"

#include <unistd.h>
#include <uv.h>

void bt_backoff_init(bt_backoff_t *b, uint64_t min_ms, uint64_t max_ms, bool jitter) {
  b->min_ms = min_ms ? min_ms : 1;
  b->max_ms = max_ms < b->min_ms ? b->min_ms : max_ms;
  b->jitter = jitter;
  b->fails = 0;
}

void bt_backoff_reset(bt_backoff_t *b) { b->fails = 0; }

uint64_t bt_backoff_next(bt_backoff_t *b) {
  uint64_t d = b->min_ms;
  for (unsigned i = 0; i < b->fails && d < b->max_ms; i++)
    d *= 2;
  if (d > b->max_ms)
    d = b->max_ms;
  if (b->fails < UINT32_MAX)
    b->fails++;
  if (b->jitter && d >= 2)
    d = d / 2 + bt_random_below(d / 2 + 1);
  return d;
}

/* xorshift64*: tiny, fast and good enough to spread retries. Loop-thread use only. */
uint64_t bt_random_below(uint64_t n) {
  static uint64_t s;
  if (s == 0)
    s = (uv_hrtime() ^ ((uint64_t)getpid() << 32)) | 1;
  s ^= s >> 12;
  s ^= s << 25;
  s ^= s >> 27;
  return n ? (s * 2685821657736338717ULL) % n : 0;
}
