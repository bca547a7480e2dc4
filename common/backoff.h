/* bt_backoff_t: the one retry-delay policy of the runtime: exponential from min to max,
 * with "equal jitter" (half the delay fixed, half random) so that replicas that failed
 * together do not retry together. Reconnects, relay rounds and saga retries all use it. */
#ifndef BT_BACKOFF_H
#define BT_BACKOFF_H

#include <stdbool.h>
#include <stdint.h>

typedef struct bt_backoff {
  uint64_t min_ms;  /* the first delay */
  uint64_t max_ms;  /* the cap */
  bool jitter;      /* randomise the upper half of each delay */
  unsigned fails;   /* failures since the last reset */
} bt_backoff_t;

void bt_backoff_init(bt_backoff_t *b, uint64_t min_ms, uint64_t max_ms, bool jitter);
/* Counts one failure and returns the delay before the next attempt:
 * d = min(max, min * 2^(fails-1)), then with jitter d/2 + random[0, d/2]. */
uint64_t bt_backoff_next(bt_backoff_t *b);
/* A success: the next failure starts again from min. */
void bt_backoff_reset(bt_backoff_t *b);
/* A uniformly distributed value in [0, n) (n > 0) from a per-process generator seeded at
 * first use; not for cryptography. */
uint64_t bt_random_below(uint64_t n);

#endif
