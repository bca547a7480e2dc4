/* Handshake: AUTH and SELECT run before a connection counts as ready. Against a redis-server
 * of its own started with a password and an ACL user: the right password (default user and
 * ACL user) becomes ready and its writes land in the database the URL names, checked with a
 * direct connection; a wrong or missing password never becomes ready, says why, and retries
 * with backoff (a bounded number of new connections, more than one); each client reports in
 * /readyz under its own name. Also URL parsing: passwords are accepted, %-decoded, and
 * masked in error messages. */
#include "test_redis_common.h"

#include "buf.h"
#include "log.h"

static struct {
  unsigned done;
  int errs[2];
} st;

static void on_set(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  st.errs[(size_t)arg] = err ? err : reply->type == REDIS_REPLY_STATUS ? 0 : BT_EIO;
  st.done++;
}

static bool two_done(void *arg) { return st.done == 2; }

static bool both_ready(void *arg) {
  bt_redis_t **rs = arg;
  return bt_redis_ready(rs[0]) && bt_redis_ready(rs[1]);
}

static long long connections_received(int port) {
  redisContext *c = test_redis_direct(port, NULL, "s3cret");
  assert_non_null(c);
  redisReply *rep = test_redis_cmd(c, "INFO stats");
  const char *p = rep->str ? strstr(rep->str, "total_connections_received:") : NULL;
  assert_non_null(p);
  long long n = atoll(p + strlen("total_connections_received:"));
  freeReplyObject(rep);
  redisFree(c);
  return n;
}

/* The value of key in db, read through a direct connection as user/pass. */
static void expect_stored(int port, const char *user, const char *pass, int db, const char *key,
                         const char *want) {
  redisContext *c = test_redis_direct(port, user, pass);
  assert_non_null(c);
  freeReplyObject(test_redis_cmd(c, "SELECT %d", db));
  redisReply *rep = test_redis_cmd(c, "GET %s", key);
  if (want) {
    assert_int_equal(rep->type, REDIS_REPLY_STRING);
    assert_string_equal(rep->str, want);
  } else {
    assert_int_equal(rep->type, REDIS_REPLY_NIL);
  }
  freeReplyObject(rep);
  redisFree(c);
}

static void test_auth_and_select(void **state) {
  test_redis_t srv;
  const char *extra[] = {"--requirepass", "s3cret", "--user", "alice", "on", ">al:ce@pw",
                         "~*", "&*", "+@all", NULL};
  test_redis_start(&srv, 0, "s3cret", extra);
  bt_app_t app;
  test_loop_init(&app, "it_redis_handshake");
  char url_def[128], url_acl[128], url_bad[128], url_none[128], errstr[256];
  snprintf(url_def, sizeof url_def, "redis://:s3cret@127.0.0.1:%d/3", srv.port);
  /* ':' and '@' in the password must be %-encoded in the URL. */
  snprintf(url_acl, sizeof url_acl, "redis://alice:al%%3Ace%%40pw@127.0.0.1:%d/5", srv.port);
  snprintf(url_bad, sizeof url_bad, "redis://:wrong@127.0.0.1:%d", srv.port);
  snprintf(url_none, sizeof url_none, "redis://127.0.0.1:%d/2", srv.port);
  bt_redis_t *def, *acl, *bad, *none;
  bt_redis_config_t c_def = {.url = url_def, .name = "rs_default"};
  bt_redis_config_t c_acl = {.url = url_acl, .name = "rs_alice"};
  bt_redis_config_t c_bad = {.url = url_bad, .name = "rs_bad", .backoff_min_ms = 50,
                             .backoff_max_ms = 400};
  bt_redis_config_t c_none = {.url = url_none, .name = "rs_none", .backoff_min_ms = 50,
                              .backoff_max_ms = 400};
  if (bt_redis_new(&def, &app, &c_def, errstr) != 0 ||
      bt_redis_new(&acl, &app, &c_acl, errstr) != 0 ||
      bt_redis_new(&bad, &app, &c_bad, errstr) != 0 ||
      bt_redis_new(&none, &app, &c_none, errstr) != 0)
    fail_msg("%s", errstr);

  bt_redis_t *good[2] = {def, acl};
  assert_true(test_run_until(&app, both_ready, good, 20000));
  assert_int_equal(bt_redis_command(def, on_set, (void *)0, "SET hs:k default-db3"), 0);
  assert_int_equal(bt_redis_command(acl, on_set, (void *)1, "SET hs:k alice-db5"), 0);
  assert_true(test_run_until(&app, two_done, NULL, 10000));
  assert_int_equal(st.errs[0], 0);
  assert_int_equal(st.errs[1], 0);
  /* Each write is in the database its URL names, and only there. */
  expect_stored(srv.port, NULL, "s3cret", 3, "hs:k", "default-db3");
  expect_stored(srv.port, "alice", "al:ce@pw", 5, "hs:k", "alice-db5");
  expect_stored(srv.port, NULL, "s3cret", 0, "hs:k", NULL);

  /* The wrong and missing passwords: never ready, a reason naming the refused step, and
   * retries that back off instead of spinning. */
  long long before = connections_received(srv.port);
  test_run_for(&app, 3000);
  long long retries = connections_received(srv.port) - before - 1; /* minus our own check */
  print_message("wrong/missing password clients: %lld connections in 3 s\n", retries);
  assert_false(bt_redis_ready(bad));
  assert_false(bt_redis_ready(none));
  assert_non_null(strstr(bt_redis_errstr(bad), "AUTH refused: WRONGPASS"));
  assert_non_null(strstr(bt_redis_errstr(none), "refused: NOAUTH"));
  assert_int_equal(bt_redis_command(bad, NULL, NULL, "PING"), BT_ENOTCONN);
  assert_true(retries >= 4);  /* both kept trying */
  assert_true(retries <= 60); /* 3 s at >= 25 ms per attempt, at worst, is 240: backoff grew */
  assert_true(bt_redis_ready(def) && bt_redis_ready(acl));

  /* /readyz names each client as its owner named it. */
  bt_buf_t detail;
  bt_buf_init(&detail, 0);
  (void)bt_app_ready(&app, &detail);
  assert_int_equal(bt_buf_append(&detail, "", 1), 0);
  assert_non_null(strstr(detail.data, "\"rs_default\":true"));
  assert_non_null(strstr(detail.data, "\"rs_alice\":true"));
  assert_non_null(strstr(detail.data, "\"rs_bad\":false"));
  assert_non_null(strstr(detail.data, "\"rs_none\":false"));
  bt_buf_free(&detail);

  test_loop_finish(&app);
  test_redis_stop(&srv);
}

static void test_url_parsing(void **state) {
  bt_app_t app;
  test_loop_init(&app, "it_redis_handshake_urls");
  char errstr[256];
  bt_redis_t *r;
  bt_redis_config_t c = {.url = "redis://:hunter2@nohost", .name = "x"};
  assert_int_equal(bt_redis_new(&r, &app, &c, errstr), BT_EINVAL);
  assert_non_null(strstr(errstr, "redis://:***@nohost"));
  assert_null(strstr(errstr, "hunter2"));
  c.url = "redis://user@host:6379";
  assert_int_equal(bt_redis_new(&r, &app, &c, errstr), BT_EINVAL);
  assert_non_null(strstr(errstr, "password"));
  c.url = "redis://:bad%zzpw@host:6379";
  assert_int_equal(bt_redis_new(&r, &app, &c, errstr), BT_EINVAL);
  assert_null(strstr(errstr, "bad%zzpw"));
  c.url = "redis://127.0.0.1:6379";
  c.name = NULL;
  assert_int_equal(bt_redis_new(&r, &app, &c, errstr), BT_EINVAL);
  assert_non_null(strstr(errstr, "name"));
  /* Accepted: an IPv6 literal with user, password and db. */
  c.url = "redis://u:p@[::1]:6379/2";
  c.name = "v6";
  assert_int_equal(bt_redis_new(&r, &app, &c, errstr), 0);
  test_loop_finish(&app);
}

int main(void) {
  bt_log_init("it_redis_handshake", BT_LOG_WARN);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_url_parsing),
                                     cmocka_unit_test(test_auth_and_select)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
