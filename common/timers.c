/* Hierarchical timing wheel. Level L has 64 slots of 64^L ms. A timer due at E, seen from
 * the wheel's time `now`, sits at the lowest level L whose bits above its slot agree for E
 * and now (L = highest differing bit / 6), in slot (E >> 6L) & 63. Invariant: every linked
 * slot lies strictly after now's slot on its level, so the earliest event is found by
 * scanning the occupied bitmaps from now's slot. When the wheel reaches a slot's start, a
 * level-0 slot's timers are due; a higher slot's timers are placed again and fall to finer
 * levels. Advancing visits only occupied slots, however long the loop slept. */
#include "timers.h"

#include "errors.h"

#define DUE_LEVEL BT_TIMERS_LEVELS

static void ring_init(bt_timer_link_t *h) { h->prev = h->next = h; }
static bool ring_empty(const bt_timer_link_t *h) { return h->next == h; }

static void ring_append(bt_timer_link_t *h, bt_timer_link_t *l) {
  l->prev = h->prev;
  l->next = h;
  h->prev->next = l;
  h->prev = l;
}

static void ring_remove(bt_timer_link_t *l) {
  l->prev->next = l->next;
  l->next->prev = l->prev;
  l->prev = l->next = NULL;
}

/* Moves every link of from to the tail of to. */
static void ring_splice(bt_timer_link_t *to, bt_timer_link_t *from) {
  if (ring_empty(from))
    return;
  from->next->prev = to->prev;
  to->prev->next = from->next;
  from->prev->next = to;
  to->prev = from->prev;
  ring_init(from);
}

/* Start of the slot at level L that contains time t, if slot s were current. */
static uint64_t slot_start(uint64_t t, unsigned level, unsigned s) {
  unsigned shift = 6 * level, above = shift + 6;
  uint64_t hi = above >= 64 ? 0 : t & ~((UINT64_C(1) << above) - 1);
  return hi | ((uint64_t)s << shift);
}

/* Links t where it belongs for the wheel's current time. */
static void place(bt_timers_t *w, bt_timer_t *t) {
  if (t->expire <= w->now) {
    t->level = DUE_LEVEL;
    ring_append(&w->due, &t->link);
    return;
  }
  unsigned level = (unsigned)(63 - __builtin_clzll(t->expire ^ w->now)) / 6;
  unsigned s = (unsigned)(t->expire >> (6 * level)) & (BT_TIMERS_SLOTS - 1);
  t->level = (uint8_t)level;
  t->slot = (uint8_t)s;
  ring_append(&w->slots[level][s], &t->link);
  w->occupied[level] |= UINT64_C(1) << s;
}

static void unlink_timer(bt_timers_t *w, bt_timer_t *t) {
  ring_remove(&t->link);
  if (t->level < DUE_LEVEL && ring_empty(&w->slots[t->level][t->slot]))
    w->occupied[t->level] &= ~(UINT64_C(1) << t->slot);
  w->count--;
}

/* The earliest slot start on any level, from the occupied bitmaps. */
static uint64_t next_slot_event(const bt_timers_t *w) {
  uint64_t best = UINT64_MAX;
  for (unsigned level = 0; level < BT_TIMERS_LEVELS; level++) {
    if (!w->occupied[level])
      continue;
    unsigned cur = (unsigned)(w->now >> (6 * level)) & (BT_TIMERS_SLOTS - 1);
    uint64_t later = cur == 63 ? 0 : w->occupied[level] & ~((UINT64_C(2) << cur) - 1);
    BT_ASSERT(later == w->occupied[level]); /* the invariant: nothing at or before now */
    uint64_t start = slot_start(w->now, level, (unsigned)__builtin_ctzll(later));
    if (start < best)
      best = start;
  }
  return best;
}

uint64_t bt_timers_next(const bt_timers_t *w) {
  return ring_empty(&w->due) ? next_slot_event(w) : w->now;
}

void bt_timers_advance(bt_timers_t *w, uint64_t now_ms) {
  bt_timer_link_t ready;
  ring_init(&ready);
  ring_splice(&ready, &w->due);
  for (uint64_t e; (e = next_slot_event(w)) <= now_ms;) {
    w->now = e;
    /* Highest level first: what falls from it may land in a finer slot that starts now. */
    for (unsigned level = BT_TIMERS_LEVELS; level-- > 0;) {
      unsigned s = (unsigned)(e >> (6 * level)) & (BT_TIMERS_SLOTS - 1);
      if (!(w->occupied[level] & (UINT64_C(1) << s)) || slot_start(e, level, s) != e)
        continue;
      bt_timer_link_t moving;
      ring_init(&moving);
      ring_splice(&moving, &w->slots[level][s]);
      w->occupied[level] &= ~(UINT64_C(1) << s);
      while (!ring_empty(&moving)) {
        bt_timer_t *t = (bt_timer_t *)moving.next;
        ring_remove(&t->link);
        if (t->expire <= e) {
          t->level = DUE_LEVEL;
          ring_append(&ready, &t->link);
        } else {
          place(w, t);
        }
      }
    }
  }
  if (now_ms > w->now)
    w->now = now_ms;
  /* Callbacks may stop timers still in `ready` (unlink works on any ring) or start new ones,
   * which go to the wheel, or to w->due for the next call if already due. */
  while (!ring_empty(&ready)) {
    bt_timer_t *t = (bt_timer_t *)ready.next;
    ring_remove(&t->link);
    w->count--;
    t->cb(w, t);
  }
}

/* Points the libuv timer at the wheel's next event, or stops it. */
static void on_tick(uv_timer_t *h);

static void schedule(bt_timers_t *w) {
  uint64_t next = bt_timers_next(w);
  if (next == w->armed_at)
    return;
  w->armed_at = next;
  if (next == UINT64_MAX) {
    uv_timer_stop(&w->handle);
    return;
  }
  uint64_t now = uv_now(w->loop);
  int rc = uv_timer_start(&w->handle, on_tick, next > now ? next - now : 0, 0);
  if (rc != 0) /* only fails for a closing handle: a use after bt_timers_close */
    bt_fatal("timers: uv_timer_start failed: %s", uv_strerror(rc));
}

static void on_tick(uv_timer_t *h) {
  bt_timers_t *w = BT_CONTAINER_OF(h, bt_timers_t, handle);
  w->armed_at = UINT64_MAX;
  w->ticking = true;
  bt_timers_advance(w, uv_now(w->loop));
  w->ticking = false;
  schedule(w);
}

int bt_timers_init(bt_timers_t *w, uv_loop_t *loop) {
  w->loop = loop;
  w->now = uv_now(loop);
  w->armed_at = UINT64_MAX;
  w->count = 0;
  w->ticking = false;
  w->on_closed = NULL;
  for (unsigned l = 0; l < BT_TIMERS_LEVELS; l++) {
    w->occupied[l] = 0;
    for (unsigned s = 0; s < BT_TIMERS_SLOTS; s++)
      ring_init(&w->slots[l][s]);
  }
  ring_init(&w->due);
  return uv_timer_init(loop, &w->handle);
}

static void on_handle_closed(uv_handle_t *h) {
  bt_timers_t *w = BT_CONTAINER_OF(h, bt_timers_t, handle);
  if (w->on_closed)
    w->on_closed(w);
}

void bt_timers_close(bt_timers_t *w, void (*on_closed)(bt_timers_t *w)) {
  for (unsigned l = 0; l <= BT_TIMERS_LEVELS; l++)
    for (unsigned s = 0; s < (l < BT_TIMERS_LEVELS ? BT_TIMERS_SLOTS : 1u); s++) {
      bt_timer_link_t *h = l < BT_TIMERS_LEVELS ? &w->slots[l][s] : &w->due;
      while (!ring_empty(h))
        ring_remove(h->next);
    }
  for (unsigned l = 0; l < BT_TIMERS_LEVELS; l++)
    w->occupied[l] = 0;
  w->count = 0;
  w->on_closed = on_closed;
  uv_close((uv_handle_t *)&w->handle, on_handle_closed);
}

void bt_timer_init(bt_timer_t *t, bt_timer_cb cb) {
  t->link.prev = t->link.next = NULL;
  t->expire = 0;
  t->cb = cb;
  t->level = t->slot = 0;
}

void bt_timer_start_at(bt_timers_t *w, bt_timer_t *t, uint64_t expire_ms) {
  if (bt_timer_active(t))
    unlink_timer(w, t);
  if (w->count == 0 && ring_empty(&w->due)) {
    /* An empty wheel may have slept through a long idle time; starting from the loop's time
     * keeps new timers from having to fall through levels for time already gone. */
    uint64_t now = uv_now(w->loop);
    if (now > w->now)
      w->now = now;
  }
  t->expire = expire_ms;
  place(w, t);
  w->count++;
  if (!w->ticking && (expire_ms < w->armed_at || t->level == DUE_LEVEL))
    schedule(w);
}

void bt_timer_start(bt_timers_t *w, bt_timer_t *t, uint64_t timeout_ms) {
  uint64_t now = uv_now(w->loop);
  bt_timer_start_at(w, t, timeout_ms > UINT64_MAX - now ? UINT64_MAX : now + timeout_ms);
}

void bt_timer_stop(bt_timers_t *w, bt_timer_t *t) {
  if (!bt_timer_active(t))
    return;
  unlink_timer(w, t);
  /* The last timer gone: an armed libuv timer would keep the loop alive for nothing. Short of
   * that, a stop leaves it armed, and the early wake-up finds the next event. */
  if (w->count == 0 && !w->ticking)
    schedule(w);
}
