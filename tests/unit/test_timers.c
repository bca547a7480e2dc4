/* bt_timers tests: 100k timers on a simulated clock (every one fires exactly once, in order of
 * due time, at the first advance that reaches it; cancelled ones never; re-armed ones at their
 * new time), a real loop (never early, the loop ends when the wheel is empty), and the edges. */
#include <stdlib.h>
#include <string.h>

#include "errors.h"
#include "testsupport.h"
#include "timers.h"

typedef struct item {
  bt_timer_t timer;
  uint64_t want;  /* the due time it must fire at */
  int fires;      /* how often it fired */
  int want_fires; /* how often it must fire */
  bool rearm_in_cb;
} item_t;

static uint64_t rng_state = 88172645463325252ull;
static uint64_t rnd(void) { /* xorshift64: deterministic, so a failure reproduces */
  rng_state ^= rng_state << 13;
  rng_state ^= rng_state >> 7;
  rng_state ^= rng_state << 17;
  return rng_state;
}

static uint64_t sim_prev, sim_now, last_fired_expire;
static size_t nfired;

static void on_sim_fire(bt_timers_t *w, bt_timer_t *t) {
  item_t *it = BT_CONTAINER_OF(t, item_t, timer);
  if (t->expire != it->want)
    fail_msg("fired with expire %llu, want %llu", (unsigned long long)t->expire,
             (unsigned long long)it->want);
  /* Exactly in the first advance that reaches its due time. */
  if (!(it->want > sim_prev && it->want <= sim_now))
    fail_msg("due %llu fired in the advance (%llu, %llu]", (unsigned long long)it->want,
             (unsigned long long)sim_prev, (unsigned long long)sim_now);
  if (t->expire < last_fired_expire)
    fail_msg("due %llu fired after due %llu", (unsigned long long)t->expire,
             (unsigned long long)last_fired_expire);
  last_fired_expire = t->expire;
  assert_false(bt_timer_active(t));
  it->fires++;
  nfired++;
  if (it->rearm_in_cb && it->fires == 1) {
    it->want = sim_now + 1 + rnd() % 5000;
    bt_timer_start_at(w, t, it->want);
  }
}

static void test_100k_timers_simulated_clock(void **state) {
  enum { N = 100000, SPAN = 10000000 };
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  bt_timers_t *w = malloc(sizeof *w);
  assert_int_equal(bt_timers_init(w, &loop), 0);
  item_t *items = calloc(N, sizeof *items);
  uint64_t base = w->now;
  size_t want_total = 0;
  for (size_t i = 0; i < N; i++) {
    bt_timer_init(&items[i].timer, on_sim_fire);
    /* Mostly near (0..10 s), some far (up to ~2.8 h), a few on the same millisecond. */
    uint64_t d = i % 10 == 0 ? rnd() % SPAN : i % 10 == 1 ? 777 : rnd() % 10000;
    items[i].want = base + 1 + d;
    bt_timer_start_at(w, &items[i].timer, items[i].want);
  }
  assert_int_equal(w->count, N);
  for (size_t i = 0; i < N; i++) {
    if (i % 7 == 0) {
      bt_timer_stop(w, &items[i].timer);
      bt_timer_stop(w, &items[i].timer); /* idempotent */
      continue;
    }
    if (i % 11 == 0) { /* re-armed before it fired: only the new time counts */
      items[i].want = base + 1 + rnd() % SPAN;
      bt_timer_start_at(w, &items[i].timer, items[i].want);
    }
    items[i].rearm_in_cb = i % 13 == 0;
    items[i].want_fires = items[i].rearm_in_cb ? 2 : 1;
    want_total += (size_t)items[i].want_fires;
  }
  sim_prev = sim_now = base;
  last_fired_expire = 0;
  nfired = 0;
  while (w->count > 0) {
    sim_prev = sim_now;
    sim_now += 1 + rnd() % (rnd() % 4 == 0 ? 50000 : 300);
    bt_timers_advance(w, sim_now);
    /* Nothing due at or before the clock may be left: the next event is in the future. */
    assert_true(bt_timers_next(w) > sim_now);
    /* Order is checked within an advance; across advances it follows from the window check. */
    last_fired_expire = 0;
  }
  assert_int_equal(nfired, want_total);
  for (size_t i = 0; i < N; i++)
    if (items[i].fires != items[i].want_fires)
      fail_msg("timer %zu fired %d times, want %d", i, items[i].fires, items[i].want_fires);
  assert_int_equal(bt_timers_next(w), UINT64_MAX);
  bt_timers_close(w, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  free(items);
  free(w);
}

/* --- a real loop --------------------------------------------------------------------------- */
typedef struct real_item {
  bt_timer_t timer;
  uint64_t fired_at;
  bool cancelled;
  struct real_item *victim; /* stopped by this one's callback */
} real_item_t;

static uint64_t real_last_expire;
static int real_fired, real_early, real_out_of_order;

static void on_real_fire(bt_timers_t *w, bt_timer_t *t) {
  real_item_t *it = BT_CONTAINER_OF(t, real_item_t, timer);
  it->fired_at = uv_now(w->loop);
  if (it->fired_at < t->expire)
    real_early++;
  if (t->expire < real_last_expire)
    real_out_of_order++;
  real_last_expire = t->expire;
  real_fired++;
  if (it->victim && bt_timer_active(&it->victim->timer)) {
    bt_timer_stop(w, &it->victim->timer);
    it->victim->cancelled = true;
  }
}

static void test_real_loop_never_early_and_ends(void **state) {
  enum { N = 5000 };
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  static bt_timers_t w;
  assert_int_equal(bt_timers_init(&w, &loop), 0);
  real_item_t *items = calloc(N, sizeof *items);
  for (size_t i = 0; i < N; i++) {
    bt_timer_init(&items[i].timer, on_real_fire);
    bt_timer_start(&w, &items[i].timer, rnd() % 300);
  }
  for (size_t i = 0; i < N; i += 3) { /* a third cancelled before the loop runs */
    bt_timer_stop(&w, &items[i].timer);
    items[i].cancelled = true;
  }
  for (size_t i = 1; i + 1 < N; i += 3) /* and some from a callback */
    items[i].victim = &items[i + 1];
  real_fired = real_early = real_out_of_order = 0;
  real_last_expire = 0;
  /* Returns only once the wheel is empty and its libuv timer stopped. */
  uint64_t t0 = bt_test_now_ms();
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_true(bt_test_now_ms() - t0 < 60000);
  int want = 0;
  for (size_t i = 0; i < N; i++) {
    if (items[i].cancelled)
      assert_int_equal(items[i].fired_at, 0);
    else
      want++, assert_true(items[i].fired_at > 0);
  }
  assert_int_equal(real_fired, want);
  assert_int_equal(real_early, 0);
  assert_int_equal(real_out_of_order, 0);
  bt_timers_close(&w, NULL);
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_int_equal(uv_loop_close(&loop), 0);
  free(items);
}

/* --- edges --------------------------------------------------------------------------------- */
static int edge_fired;
static void on_edge(bt_timers_t *w, bt_timer_t *t) { edge_fired++; }
static bool closed_called;
static void on_closed(bt_timers_t *w) { closed_called = true; }

static void test_edges(void **state) {
  uv_loop_t loop;
  assert_int_equal(uv_loop_init(&loop), 0);
  static bt_timers_t w;
  assert_int_equal(bt_timers_init(&w, &loop), 0);
  bt_timer_t zero, far, moved;
  bt_timer_init(&zero, on_edge);
  bt_timer_init(&far, on_edge);
  bt_timer_init(&moved, on_edge);
  edge_fired = 0;
  uint64_t now = w.now;
  bt_timer_start(&w, &zero, 0);
  assert_int_equal(edge_fired, 0); /* never inside the call */
  assert_int_equal(bt_timers_next(&w), now);
  bt_timers_advance(&w, now);
  assert_int_equal(edge_fired, 1);
  assert_false(bt_timer_active(&zero));
  /* The top level: far in the future, and the largest time there is. */
  bt_timer_start_at(&w, &far, UINT64_MAX - 5);
  bt_timer_start_at(&w, &moved, now + 100);
  bt_timer_start_at(&w, &moved, now + 50); /* moved, not duplicated */
  assert_int_equal(w.count, 2);
  bt_timers_advance(&w, now + 49);
  assert_int_equal(edge_fired, 1);
  bt_timers_advance(&w, now + 50);
  assert_int_equal(edge_fired, 2);
  bt_timers_advance(&w, now + 1000);
  assert_int_equal(edge_fired, 2);
  assert_true(bt_timer_active(&far));
  bt_timers_advance(&w, UINT64_MAX - 6);
  assert_int_equal(edge_fired, 2);
  bt_timers_advance(&w, UINT64_MAX - 5);
  assert_int_equal(edge_fired, 3);
  /* Closing with an active timer: it never fires, and the close callback runs. */
  bt_timer_start_at(&w, &moved, UINT64_MAX - 1);
  closed_called = false;
  bt_timers_close(&w, on_closed);
  assert_false(bt_timer_active(&moved));
  uv_run(&loop, UV_RUN_DEFAULT);
  assert_true(closed_called);
  assert_int_equal(edge_fired, 3);
  assert_int_equal(uv_loop_close(&loop), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_100k_timers_simulated_clock),
      cmocka_unit_test(test_real_loop_never_early_and_ends),
      cmocka_unit_test(test_edges),
  };
  return cmocka_run_group_tests_name("timers", tests, NULL, NULL);
}
