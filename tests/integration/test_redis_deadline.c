/* Command deadline: a Redis frozen with SIGSTOP keeps the TCP connection open but answers
 * nothing. Commands pending then fail with BT_ECONNRESET once the oldest is older than the
 * command timeout (not before, not never); while the server stays frozen the client never
 * reports ready (its handshake PING is not answered, so each attempt ends in a handshake
 * timeout); after SIGCONT it reconnects and commands work again. Uses a redis-server of its
 * own, so the stack's Redis is not disturbed. */
#include "test_redis_common.h"

#include "log.h"

#define TIMEOUT_MS 600

static struct {
  int errs[4];
  unsigned ncb;
  int batch_err;
  bool batch_done;
  bool got_value;
} st;

static void on_cmd(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  st.errs[(size_t)arg] = err;
  st.ncb++;
}

static void on_batch(bt_redis_t *r, int err, const redisReply *const *replies, size_t n,
                     void *arg) {
  st.batch_err = err;
  st.batch_done = true;
}

static bool all_failed(void *arg) { return st.ncb == 3 && st.batch_done; }

static void on_get(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  st.got_value = err == 0 && reply->type == REDIS_REPLY_STRING && strcmp(reply->str, "v2") == 0;
  st.ncb++;
}

static bool one_more(void *arg) { return st.ncb == 4; }

static void test_sigstop(void **state) {
  test_redis_t srv;
  test_redis_start(&srv, 0, NULL, NULL);
  bt_app_t app;
  test_loop_init(&app, "it_redis_deadline");
  bt_redis_config_t cfg = {.name = "redis_frozen", .command_timeout_ms = TIMEOUT_MS,
                           .connect_timeout_ms = 300, .backoff_min_ms = 50,
                           .backoff_max_ms = 200};
  bt_redis_t *r = test_redis_client(&app, cfg, srv.port);

  assert_int_equal(kill(srv.pid, SIGSTOP), 0);
  uint64_t t0 = bt_test_now_ms();
  assert_int_equal(bt_redis_command(r, on_cmd, (void *)0, "SET k v1"), 0);
  assert_int_equal(bt_redis_command(r, on_cmd, (void *)1, "PING"), 0);
  assert_int_equal(bt_redis_command(r, on_cmd, (void *)2, "GET k"), 0);
  bt_redis_batch_t *b = bt_redis_batch_new(r);
  assert_int_equal(bt_redis_batch_addf(b, "INCR n"), 0);
  assert_int_equal(bt_redis_batch_addf(b, "INCR n"), 0);
  assert_int_equal(bt_redis_batch_send(b, on_batch, NULL), 0);
  assert_int_equal(bt_redis_pending(r), 5);
  assert_true(bt_redis_pending_bytes(r) > 0);

  /* Generous bound: the point is that they fail at all, and not before the timeout. */
  assert_true(test_run_until(&app, all_failed, NULL, 30000));
  uint64_t took = bt_test_now_ms() - t0;
  print_message("pending commands failed %llu ms after SIGSTOP (timeout %d ms)\n",
                (unsigned long long)took, TIMEOUT_MS);
  for (int i = 0; i < 3; i++)
    assert_int_equal(st.errs[i], BT_ECONNRESET);
  assert_int_equal(st.batch_err, BT_ECONNRESET);
  assert_true(took >= TIMEOUT_MS - 50); /* uv_now is cached per iteration: a little slack */
  assert_int_equal(bt_redis_pending(r), 0);
  assert_int_equal(bt_redis_pending_bytes(r), 0);
  assert_non_null(strstr(bt_redis_errstr(r), "command timeout"));

  /* Frozen: the kernel still accepts connections, but the handshake is never answered. */
  test_run_for(&app, 2000);
  assert_false(bt_redis_ready(r));
  assert_int_equal(bt_redis_command(r, NULL, NULL, "PING"), BT_ENOTCONN);
  print_message("while frozen: %s\n", bt_redis_errstr(r));
  assert_non_null(strstr(bt_redis_errstr(r), "timeout"));

  assert_int_equal(kill(srv.pid, SIGCONT), 0);
  assert_true(test_run_until(&app, cond_ready, r, 30000));
  assert_int_equal(bt_redis_command(r, NULL, NULL, "SET k v2"), 0);
  assert_int_equal(bt_redis_command(r, on_get, NULL, "GET k"), 0);
  assert_true(test_run_until(&app, one_more, NULL, 10000));
  assert_true(st.got_value);

  test_loop_finish(&app);
  test_redis_stop(&srv);
}

int main(void) {
  bt_log_init("it_redis_deadline", BT_LOG_WARN);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_sigstop)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
