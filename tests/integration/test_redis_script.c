/* bt_redis_script_t against a redis-server of its own. The SHA-1 we compute is the one
 * SCRIPT LOAD returns. A run against an empty script cache (NOSCRIPT) falls back to EVAL and
 * answers with the script's reply; later runs go by EVALSHA (the server's EVAL count does not
 * move); after SCRIPT FLUSH, inside a batch too, and after a server restart, runs still
 * work. The script increments a counter, so a run that happened twice or not at all shows
 * in its value, read back over a direct connection. */
#include "test_redis_common.h"

#include "log.h"
#include "redis_script.h"

#define SRC "return redis.call('INCRBY', KEYS[1], ARGV[1])"

static struct {
  bool done;
  int err;
  long long value;
  redisReply *batch[8];
  size_t nbatch;
} st;

static void on_run(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  st.err = err;
  st.value = err == 0 && reply->type == REDIS_REPLY_INTEGER ? reply->integer : -1;
  st.done = true;
}

static void on_batch(bt_redis_t *r, int err, const redisReply *const *replies, size_t n,
                     void *arg) {
  st.err = err;
  st.nbatch = n;
  for (size_t i = 0; i < n && i < 8; i++) {
    st.batch[i] = calloc(1, sizeof *st.batch[i]);
    st.batch[i]->type = replies[i] ? replies[i]->type : -1;
    st.batch[i]->integer = replies[i] ? replies[i]->integer : 0;
    st.batch[i]->str = replies[i] && replies[i]->str ? strdup(replies[i]->str) : NULL;
  }
  st.done = true;
}

static long long run(bt_app_t *app, bt_redis_script_t *s, bt_redis_t *r, const char *incr) {
  const char *argv[] = {"sc:n", incr};
  st.done = false;
  assert_int_equal(bt_redis_script_run(s, r, on_run, NULL, 1, 2, argv, NULL), 0);
  assert_int_equal(bt_redis_pending(r), 1);
  assert_true(test_run_until(app, cond_flag, &st.done, 10000));
  assert_int_equal(st.err, 0);
  return st.value;
}

/* How many times the server ran EVAL (not EVALSHA), from INFO commandstats. */
static long long eval_calls(int port) {
  redisContext *c = test_redis_direct(port, NULL, NULL);
  assert_non_null(c);
  redisReply *rep = test_redis_cmd(c, "INFO commandstats");
  const char *p = rep->str ? strstr(rep->str, "cmdstat_eval:calls=") : NULL;
  long long n = p ? atoll(p + strlen("cmdstat_eval:calls=")) : 0;
  freeReplyObject(rep);
  redisFree(c);
  return n;
}

static void direct_flush(int port) {
  redisContext *c = test_redis_direct(port, NULL, NULL);
  assert_non_null(c);
  freeReplyObject(test_redis_cmd(c, "SCRIPT FLUSH"));
  redisFree(c);
}

static bool not_ready(void *r) { return !bt_redis_ready(r); }

static void free_batch(void) {
  for (size_t i = 0; i < st.nbatch && i < 8; i++) {
    free(st.batch[i]->str);
    free(st.batch[i]);
  }
  st.nbatch = 0;
}

static void test_script(void **state) {
  test_redis_t srv;
  test_redis_start(&srv, 0, NULL, NULL);
  bt_redis_script_t *s;
  assert_int_equal(bt_redis_script_new(&s, SRC, strlen(SRC)), 0);

  /* The oracle for our SHA-1: Redis's own. */
  redisContext *c = test_redis_direct(srv.port, NULL, NULL);
  assert_non_null(c);
  redisReply *rep = test_redis_cmd(c, "SCRIPT LOAD %s", SRC);
  assert_int_equal(rep->type, REDIS_REPLY_STRING);
  assert_string_equal(rep->str, bt_redis_script_sha1(s));
  freeReplyObject(rep);
  redisFree(c);
  direct_flush(srv.port);

  bt_app_t app;
  test_loop_init(&app, "it_redis_script");
  bt_redis_config_t cfg = {.name = "redis_scripts", .backoff_min_ms = 20,
                           .backoff_max_ms = 100};
  bt_redis_t *r = test_redis_client(&app, cfg, srv.port);

  /* Not cached: NOSCRIPT, then EVAL, once. */
  assert_int_equal(run(&app, s, r, "5"), 5);
  assert_int_equal(eval_calls(srv.port), 1);
  assert_int_equal(bt_redis_pending(r), 0);
  /* Cached now: EVALSHA only. */
  assert_int_equal(run(&app, s, r, "5"), 10);
  assert_int_equal(eval_calls(srv.port), 1);
  /* Flushed behind the client's back. */
  direct_flush(srv.port);
  assert_int_equal(run(&app, s, r, "5"), 15);
  assert_int_equal(eval_calls(srv.port), 2);

  /* In a batch, flushed by the batch's first command: both runs answer NOSCRIPT and are sent
   * again after the rest, in order; the GET between them sees neither. */
  bt_redis_batch_t *b = bt_redis_batch_new(r);
  const char *argv[] = {"sc:n", "1"};
  assert_int_equal(bt_redis_batch_addf(b, "SCRIPT FLUSH"), 0);
  assert_int_equal(bt_redis_batch_add_script(b, s, 1, 2, argv, NULL), 0);
  assert_int_equal(bt_redis_batch_addf(b, "GET sc:n"), 0);
  assert_int_equal(bt_redis_batch_add_script(b, s, 1, 2, argv, NULL), 0);
  assert_int_equal(bt_redis_batch_addf(b, "PING"), 0);
  st.done = false;
  assert_int_equal(bt_redis_batch_send(b, on_batch, NULL), 0);
  assert_true(test_run_until(&app, cond_flag, &st.done, 10000));
  assert_int_equal(st.err, 0);
  assert_int_equal(st.nbatch, 5);
  assert_int_equal(st.batch[1]->type, REDIS_REPLY_INTEGER);
  assert_int_equal(st.batch[1]->integer, 16);
  assert_string_equal(st.batch[2]->str, "15");
  assert_int_equal(st.batch[3]->type, REDIS_REPLY_INTEGER);
  assert_int_equal(st.batch[3]->integer, 17);
  assert_string_equal(st.batch[4]->str, "PONG");
  free_batch();
  assert_int_equal(eval_calls(srv.port), 4);
  assert_int_equal(bt_redis_pending(r), 0);

  c = test_redis_direct(srv.port, NULL, NULL);
  rep = test_redis_cmd(c, "GET sc:n");
  assert_string_equal(rep->str, "17"); /* every run exactly once */
  freeReplyObject(rep);
  redisFree(c);

  /* A restart empties the cache (and, without persistence, the data). */
  int port = srv.port;
  test_redis_stop(&srv);
  assert_true(test_run_until(&app, not_ready, r, 10000));
  test_redis_start(&srv, port, NULL, NULL);
  assert_true(test_run_until(&app, cond_ready, r, 30000));
  assert_int_equal(run(&app, s, r, "3"), 3);
  assert_int_equal(run(&app, s, r, "3"), 6);
  assert_int_equal(eval_calls(srv.port), 1);

  test_loop_finish(&app);
  bt_redis_script_free(s);
  test_redis_stop(&srv);
}

int main(void) {
  bt_log_init("it_redis_script", BT_LOG_ERROR);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_script)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
