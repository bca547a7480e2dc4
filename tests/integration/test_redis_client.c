/* Redis adapter against the stack's Redis: pipelined batches of 10,000 SETs then GETs, the
 * pending-command bound, fail-fast while disconnected, and a Redis restart: the command in
 * flight fails with BT_ECONNRESET, readiness drops, the client reconnects by itself and
 * commands work again. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "log.h"
#include "redis_client.h"
#include "testsupport.h"

#define NKEYS 10000
#define SMALL_MAX 100

typedef enum { CONNECTING, SETTING, GETTING, RESTARTING, RECONNECTING, VERIFYING, DONE } step_t;

static struct {
  bt_app_t app;
  uv_timer_t tick;
  bt_redis_t *r, *small;
  step_t step;
  uint64_t deadline;
  bool timed_out;
  char prefix[48];
  int set_err, get_err, blpop_err, final_err;
  unsigned set_ok, get_ok, small_eagain, small_ok, enotconn_while_down;
  bool blpop_done, saw_down, final_done;
  uint64_t t_restarted, t_ready_again;
} st;

static void key(char *out, size_t n, unsigned i) { snprintf(out, n, "%s:%u", st.prefix, i); }

static void on_gets(bt_redis_t *r, int err, const redisReply *const *replies, size_t n, void *arg) {
  st.get_err = err;
  for (size_t i = 0; !err && i < n; i++) {
    char want[32];
    snprintf(want, sizeof want, "v%zu", i);
    st.get_ok += replies[i]->type == REDIS_REPLY_STRING && strcmp(replies[i]->str, want) == 0;
  }
  st.step = RESTARTING;
}

static void on_sets(bt_redis_t *r, int err, const redisReply *const *replies, size_t n, void *arg) {
  st.set_err = err;
  for (size_t i = 0; !err && i < n; i++)
    st.set_ok += replies[i]->type == REDIS_REPLY_STATUS && strcmp(replies[i]->str, "OK") == 0;
  bt_redis_batch_t *b = bt_redis_batch_new(r);
  assert_non_null(b);
  for (unsigned i = 0; i < NKEYS; i++) {
    char k[64];
    key(k, sizeof k, i);
    assert_int_equal(bt_redis_batch_addf(b, "GET %s", k), 0);
  }
  assert_int_equal(bt_redis_batch_send(b, on_gets, NULL), 0);
  st.step = GETTING;
}

static void send_sets(void) {
  bt_redis_batch_t *b = bt_redis_batch_new(st.r);
  assert_non_null(b);
  for (unsigned i = 0; i < NKEYS; i++) {
    char k[64], v[16];
    key(k, sizeof k, i);
    int vlen = snprintf(v, sizeof v, "v%u", i);
    const char *argv[] = {"SET", k, v};
    const size_t lens[] = {3, strlen(k), (size_t)vlen};
    assert_int_equal(bt_redis_batch_add_argv(b, 3, argv, lens), 0);
  }
  assert_int_equal(bt_redis_batch_len(b), NKEYS);
  assert_int_equal(bt_redis_batch_send(b, on_sets, NULL), 0);
  st.step = SETTING;
}

/* The bound counts commands awaiting replies: one more than it allows is refused whole. */
static void on_small_reply(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  st.small_ok += err == 0 && reply->type == REDIS_REPLY_STATUS;
}

static void on_small_batch(bt_redis_t *r, int err, const redisReply *const *replies, size_t n,
                           void *arg) {
  fail_msg("a refused batch completed");
}

static void check_small(void) {
  bt_redis_batch_t *b = bt_redis_batch_new(st.small);
  for (unsigned i = 0; i <= SMALL_MAX; i++)
    assert_int_equal(bt_redis_batch_addf(b, "PING"), 0);
  st.small_eagain += bt_redis_batch_send(b, on_small_batch, NULL) == BT_EAGAIN;
  assert_int_equal(bt_redis_command(st.small, on_small_reply, NULL, "PING"), 0);
}

static void on_blpop(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  st.blpop_err = err;
  st.blpop_done = true;
}

static void on_final_get(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  st.final_err = err ? err : reply->type == REDIS_REPLY_STRING && strcmp(reply->str, "after") == 0
                                 ? 0 : BT_EIO;
  st.final_done = true;
}

static void on_tick(uv_timer_t *t) {
  uint64_t now = bt_test_now_ms();
  if (now > st.deadline) {
    st.timed_out = true;
    bt_app_shutdown(&st.app);
    return;
  }
  switch (st.step) {
  case CONNECTING:
    if (bt_redis_ready(st.r) && bt_redis_ready(st.small)) {
      check_small();
      send_sets();
    }
    return;
  case SETTING:
  case GETTING:
    return;
  case RESTARTING: {
    char k[64];
    key(k, sizeof k, NKEYS);
    /* Blocks server-side for longer than the restart takes: in flight when it happens. */
    assert_int_equal(bt_redis_command(st.r, on_blpop, NULL, "BLPOP %s 30", k), 0);
    assert_int_equal(bt_test_sh("./dev redis-restart"), 0);
    st.t_restarted = bt_test_now_ms();
    st.step = RECONNECTING;
    return;
  }
  case RECONNECTING:
    if (!bt_redis_ready(st.r)) {
      st.saw_down = true;
      st.enotconn_while_down += bt_redis_command(st.r, NULL, NULL, "PING") == BT_ENOTCONN;
      return;
    }
    if (!st.saw_down)
      return; /* the loop has not yet read the closed socket */
    st.t_ready_again = now;
    assert_int_equal(bt_redis_command(st.r, NULL, NULL, "SET %s:after after", st.prefix), 0);
    assert_int_equal(bt_redis_command(st.r, on_final_get, NULL, "GET %s:after", st.prefix), 0);
    st.step = VERIFYING;
    return;
  case VERIFYING:
    if (st.final_done) {
      st.step = DONE;
      bt_app_shutdown(&st.app);
    }
    return;
  case DONE:
    return;
  }
}

static void close_tick(bt_app_t *app, void *arg) { uv_close((uv_handle_t *)&st.tick, NULL); }

static void test_batches_and_restart(void **state) {
  snprintf(st.prefix, sizeof st.prefix, "it-redis-%d", (int)getpid());
  bt_app_init(&st.app, "it_redis_client", 10000);
  bt_redis_config_t cfg = {.url = bt_test_env("BATON_REDIS_URL"), .name = "redis"};
  bt_redis_config_t small = {.url = cfg.url, .name = "redis_small", .max_pending = SMALL_MAX};
  char errstr[256];
  if (bt_redis_new(&st.r, &st.app, &cfg, errstr) != 0 ||
      bt_redis_new(&st.small, &st.app, &small, errstr) != 0)
    fail_msg("redis: %s", errstr);
  /* Still resolving: commands fail at once instead of queueing. */
  assert_int_equal(bt_redis_command(st.r, NULL, NULL, "PING"), BT_ENOTCONN);
  bt_redis_config_t bad = {.url = "redis://nohost", .name = "bad"};
  bt_redis_t *unused;
  assert_int_equal(bt_redis_new(&unused, &st.app, &bad, errstr), BT_EINVAL);
  assert_non_null(strstr(errstr, "redis://nohost"));

  st.deadline = bt_test_now_ms() + 120000;
  uv_timer_init(st.app.loop, &st.tick);
  uv_timer_start(&st.tick, on_tick, 5, 5);
  bt_app_on_shutdown(&st.app, NULL, close_tick, NULL);
  assert_int_equal(bt_app_run(&st.app), 0);

  print_message("ready again %llu ms after the restart returned\n",
                (unsigned long long)(st.t_ready_again - st.t_restarted));
  assert_false(st.timed_out);
  assert_int_equal(st.small_eagain, 1);
  assert_int_equal(st.small_ok, 1);
  assert_int_equal(st.set_err, 0);
  assert_int_equal(st.set_ok, NKEYS);
  assert_int_equal(st.get_err, 0);
  assert_int_equal(st.get_ok, NKEYS);
  assert_true(st.blpop_done);
  assert_int_equal(st.blpop_err, BT_ECONNRESET);
  assert_true(st.saw_down);
  assert_true(st.enotconn_while_down > 0);
  assert_int_equal(st.final_err, 0);
}

int main(void) {
  bt_log_init("it_redis_client", BT_LOG_WARN);
  bt_test_env_load();
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_batches_and_restart)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
