/* The byte budget of pending commands, beside the count budget: with room for 1000 bytes, a
 * 600-byte command is admitted, a second one is refused with BT_EAGAIN while the first is
 * pending (a small one still fits), a batch over the remainder is refused whole, a command
 * larger than the whole budget is always refused, and the room comes back with the replies. */
#include "test_redis_common.h"

#include "log.h"

static unsigned replies;

static void on_reply(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  replies += err == 0 && reply->type == REDIS_REPLY_STATUS;
}

static bool none_pending(void *r) { return bt_redis_pending(r) == 0; }

static void on_batch(bt_redis_t *r, int err, const redisReply *const *rs, size_t n, void *arg) {
  fail_msg("a refused batch completed");
}

static int set_big(bt_redis_t *r, const char *key, size_t vlen) {
  static char value[4096];
  memset(value, 'x', sizeof value);
  const char *argv[] = {"SET", key, value};
  const size_t lens[] = {3, strlen(key), vlen};
  return bt_redis_command_argv(r, on_reply, NULL, 3, argv, lens);
}

static void test_byte_budget(void **state) {
  test_redis_t srv;
  test_redis_start(&srv, 0, NULL, NULL);
  bt_app_t app;
  test_loop_init(&app, "it_redis_budget");
  bt_redis_config_t cfg = {.name = "redis_budget", .max_pending_bytes = 1000};
  bt_redis_t *r = test_redis_client(&app, cfg, srv.port);

  /* Nothing is answered before the loop runs again, so all of this happens with the first
   * command pending. */
  assert_int_equal(set_big(r, "b:1", 600), 0);
  size_t used = bt_redis_pending_bytes(r);
  assert_true(used > 600 && used < 700);
  assert_int_equal(set_big(r, "b:2", 600), BT_EAGAIN);
  assert_int_equal(bt_redis_command(r, on_reply, NULL, "SET b:small 1"), 0);
  bt_redis_batch_t *b = bt_redis_batch_new(r);
  for (int i = 0; i < 10; i++)
    assert_int_equal(bt_redis_batch_addf(b, "SET b:batch:%d %s", i, "0123456789"), 0);
  assert_int_equal(bt_redis_batch_send(b, on_batch, NULL), BT_EAGAIN);
  assert_int_equal(bt_redis_pending(r), 2);

  assert_true(test_run_until(&app, none_pending, r, 10000));
  assert_int_equal(replies, 2);
  assert_int_equal(bt_redis_pending_bytes(r), 0);
  assert_int_equal(set_big(r, "b:2", 600), 0);
  assert_int_equal(set_big(r, "b:huge", 2000), BT_EAGAIN); /* never fits */
  assert_true(test_run_until(&app, none_pending, r, 10000));
  assert_int_equal(replies, 3);

  test_loop_finish(&app);
  test_redis_stop(&srv);
}

int main(void) {
  bt_log_init("it_redis_budget", BT_LOG_WARN);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_byte_budget)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
