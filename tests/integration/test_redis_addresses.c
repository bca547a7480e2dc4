/* Every resolved address is tried in turn. The host name resolves (through a resolver that
 * wraps bt_resolve, since this machine's /etc/hosts gives "localhost" one address only) to
 * ::1, 127.0.0.2 and 127.0.0.1, and redis-server listens on 127.0.0.1 alone: the client must
 * get past two refused connects in one round, each left at once rather than at its connect
 * timeout (hiredis's own libuv adapter ignores the poll error that reports it). When no
 * address answers, it is not ready and the reason names the last address tried. A real
 * name ("localhost") goes through the real resolver. */
#include "test_redis_common.h"

#include "log.h"

static struct {
  bt_resolve_cb cb;
  void *arg;
  const char *addrs[3];
  size_t n;
  unsigned lookups;
  bool done;
  int err;
} fake;

static void fake_done(int status, const char *errstr, const bt_addr_list_t *real, void *arg) {
  bt_addr_list_t list = {.n = fake.n};
  for (size_t i = 0; i < fake.n; i++)
    snprintf(list.addr[i], sizeof list.addr[i], "%s", fake.addrs[i]);
  fake.cb(status, errstr, &list, fake.arg);
}

/* Answers any name with fake.addrs; the handle is a real bt_resolve one, so the client's
 * bt_resolve_cancel works on it. */
static int fake_resolve(uv_loop_t *loop, const char *host, bt_resolve_cb cb, void *arg,
                        bt_resolve_req_t **out) {
  fake.cb = cb;
  fake.arg = arg;
  fake.lookups++;
  return bt_resolve(loop, "127.0.0.1", fake_done, NULL, out);
}

static void on_ping(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  fake.err = err ? err : reply->type == REDIS_REPLY_STATUS ? 0 : BT_EIO;
  fake.done = true;
}

static void test_every_address(void **state) {
  test_redis_t srv;
  test_redis_start(&srv, 0, NULL, NULL); /* --bind 127.0.0.1 */
  bt_app_t app;
  test_loop_init(&app, "it_redis_addresses");
  char url[96], url_local[96], errstr[256];
  snprintf(url, sizeof url, "redis://redis.example:%d", srv.port);
  snprintf(url_local, sizeof url_local, "redis://localhost:%d", srv.port);

  fake.addrs[0] = "::1";
  fake.addrs[1] = "127.0.0.2";
  fake.addrs[2] = "127.0.0.1";
  fake.n = 3;
  bt_redis_t *r, *local;
  /* Long connect timeout and backoff: a refused address must be left at once, not after its
   * connect timeout, and all three addresses tried within one round. */
  bt_redis_config_t cfg = {.url = url, .name = "redis_multi", .resolve = fake_resolve,
                           .connect_timeout_ms = 60000, .backoff_min_ms = 60000,
                           .backoff_max_ms = 60000};
  bt_redis_config_t cfg_local = {.url = url_local, .name = "redis_localhost"};
  if (bt_redis_new(&r, &app, &cfg, errstr) != 0 ||
      bt_redis_new(&local, &app, &cfg_local, errstr) != 0)
    fail_msg("%s", errstr);
  uint64_t t0 = bt_test_now_ms();
  assert_true(test_run_until(&app, cond_ready, r, 30000));
  print_message("ready after two refused addresses in %llu ms\n",
                (unsigned long long)(bt_test_now_ms() - t0));
  /* One round reached the third address: no second lookup in between. */
  assert_int_equal(fake.lookups, 1);
  assert_non_null(strstr(bt_redis_errstr(r), "127.0.0.2"));
  assert_int_equal(bt_redis_command(r, on_ping, NULL, "PING"), 0);
  assert_true(test_run_until(&app, cond_flag, &fake.done, 10000));
  assert_int_equal(fake.err, 0);
  assert_true(test_run_until(&app, cond_ready, local, 20000));

  /* No address answers: a new client never becomes ready, and says where it last failed. */
  fake.n = 2;
  bt_redis_t *none;
  bt_redis_config_t cfg_none = {.url = url, .name = "redis_none", .resolve = fake_resolve,
                                .connect_timeout_ms = 300, .backoff_min_ms = 50,
                                .backoff_max_ms = 100};
  if (bt_redis_new(&none, &app, &cfg_none, errstr) != 0)
    fail_msg("%s", errstr);
  unsigned before = fake.lookups;
  test_run_for(&app, 2000);
  assert_false(bt_redis_ready(none));
  assert_non_null(strstr(bt_redis_errstr(none), "127.0.0.2"));
  assert_true(fake.lookups > before + 1); /* each round resolves again */

  test_loop_finish(&app);
  test_redis_stop(&srv);
}

int main(void) {
  bt_log_init("it_redis_addresses", BT_LOG_ERROR);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_every_address)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
