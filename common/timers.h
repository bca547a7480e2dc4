/* bt_timers_t: many deadlines (saga step timeouts, ?wait= long-polls, backoffs) on one
 * uv_timer. A hierarchical timing wheel at millisecond resolution: 11 levels of 64 slots
 * cover every 64-bit millisecond time, so start and stop are O(1) and an entry moves down at
 * most 10 times before it fires. Entries are embedded in their owner (no allocation). */
#ifndef BT_TIMERS_H
#define BT_TIMERS_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#define BT_TIMERS_LEVELS 11 /* 6 bits each: 66 >= 64 bits of milliseconds */
#define BT_TIMERS_SLOTS 64

typedef struct bt_timers bt_timers_t;
typedef struct bt_timer bt_timer_t;

/* Called on the loop thread when t is due; t is no longer active and may be started again
 * (or freed) here. */
typedef void (*bt_timer_cb)(bt_timers_t *w, bt_timer_t *t);

typedef struct bt_timer_link {
  struct bt_timer_link *prev, *next; /* NULL when the timer is not armed */
} bt_timer_link_t;

/* One deadline, embedded in its owner (find the owner with BT_CONTAINER_OF). */
struct bt_timer {
  bt_timer_link_t link; /* first: a link is the timer */
  uint64_t expire;      /* loop milliseconds (uv_now) at which it is due */
  bt_timer_cb cb;
  uint8_t level, slot; /* where it is linked; level BT_TIMERS_LEVELS: due now */
};

struct bt_timers {
  uv_timer_t handle; /* the one libuv timer, due at the wheel's next event */
  uv_loop_t *loop;
  uint64_t now;      /* the wheel has handled everything due up to here */
  uint64_t armed_at; /* when handle is due; UINT64_MAX when stopped */
  size_t count;      /* active timers */
  bool ticking;      /* inside on_tick: callbacks' starts leave the libuv timer alone */
  uint64_t occupied[BT_TIMERS_LEVELS]; /* bit s: slot s of the level has timers */
  bt_timer_link_t slots[BT_TIMERS_LEVELS][BT_TIMERS_SLOTS];
  bt_timer_link_t due; /* timers already due, fired on the next tick */
  void (*on_closed)(bt_timers_t *w);
};

/* Initialises the wheel on loop. Returns 0 or a libuv error. While a timer is active the
 * wheel keeps the loop alive, as a uv_timer does. */
int bt_timers_init(bt_timers_t *w, uv_loop_t *loop);
/* Stops every timer (none fires) and closes the handle; on_closed (may be NULL) runs from the
 * close callback, after which w may be freed. */
void bt_timers_close(bt_timers_t *w, void (*on_closed)(bt_timers_t *w));

/* Prepares t (once, before first use). */
void bt_timer_init(bt_timer_t *t, bt_timer_cb cb);
/* Arms t to fire timeout_ms from now (uv_now), or at the absolute loop time expire_ms;
 * an active t is moved (re-armed). Never fires inside the call, even for 0. O(1). */
void bt_timer_start(bt_timers_t *w, bt_timer_t *t, uint64_t timeout_ms);
void bt_timer_start_at(bt_timers_t *w, bt_timer_t *t, uint64_t expire_ms);
/* Disarms t if active. O(1). */
void bt_timer_stop(bt_timers_t *w, bt_timer_t *t);
static inline bool bt_timer_active(const bt_timer_t *t) { return t->link.next != NULL; }

/* Fires, in order of their due times, every timer due at or before now_ms, and moves the
 * wheel's time there. The libuv timer calls it with uv_now; tests call it with a simulated
 * clock. Timers started by the callbacks that are already due fire on the next call. */
void bt_timers_advance(bt_timers_t *w, uint64_t now_ms);
/* The time of the wheel's next event (a due timer, or a slot to split into a finer level),
 * or UINT64_MAX when no timer is active. */
uint64_t bt_timers_next(const bt_timers_t *w);

#endif
