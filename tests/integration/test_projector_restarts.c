/* Sink restarts mid-stream. The stack's Redis is stopped while events keep arriving: /readyz
 * turns 503, the projection holds (Postgres gets at most the batch in hand), and after Redis
 * comes back — empty, the dev Redis keeps nothing — the projector sees the Redis offsets went
 * back, ends (exit 75, crash-only), and its successor rebuilds Redis from the topic's
 * beginning on Redis's own offsets while Postgres applies nothing twice. Then the same with
 * Postgres stopped. Both sinks end equal to the oracle: nothing lost, nothing doubled. */
#include "test_kafka_common.h"
#include "test_projector_common.h"

static pt_env_t env;
static char proj[64], topic[64];

enum { CUSTOMERS = 30, STEP = 1500, BATCH = 100 };

static int setup(void **state) {
  (void)state;
  pt_setup_invoices(&env, "it_projector_restarts", "rst", proj, sizeof proj, topic, sizeof topic);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  /* Leave the stack as found even when an assertion stopped the test midway. */
  (void)bt_test_sh("./dev redis-start >/dev/null 2>&1; ./dev pg-start >/dev/null 2>&1");
  pt_teardown(&env);
  return 0;
}

static void produce(rd_kafka_t *rk, pt_model_t *m, int n) {
  for (int i = 0; i < n; i++) {
    pt_event_t e = pt_next(m);
    size_t len;
    void *pb = pt_protobuf(&e, &len);
    pt_produce(rk, topic, e.after.id, pb, len);
    free(pb);
  }
  pt_flush(rk);
}

/* Waits up to timeout_ms for the child to exit on its own; returns its waitpid status. */
static int wait_exit(pid_t pid, int timeout_ms) {
  uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
  int status = 0;
  while (bt_test_now_ms() < end) {
    if (waitpid(pid, &status, WNOHANG) == pid)
      return status;
    usleep(50000);
  }
  fail_msg("the projector did not exit within %d ms", timeout_ms);
  return -1;
}

/* Polls /readyz until it answers want (or fails the test after timeout_ms). */
static void wait_ready(int want, int timeout_ms) {
  uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
  int st = 0;
  while (bt_test_now_ms() < end) {
    if ((st = pt_get(&env, "/readyz", NULL)) == want)
      return;
    usleep(100000);
  }
  fail_msg("/readyz answered %d, not %d, within %d ms", st, want, timeout_ms);
}

static void test_redis_and_postgres_restarts(void **state) {
  (void)state;
  pt_model_t m;
  pt_model_init(&m, CUSTOMERS, 99);
  rd_kafka_t *rk = pt_producer();
  produce(rk, &m, STEP);
  char batch[64];
  snprintf(batch, sizeof batch, "BATON_PROJECTOR_BATCH=%d", BATCH);
  const char *extra[] = {batch, "BATON_PROJECTOR_RETRY_MAX=500ms", NULL};
  pt_start(&env, extra);
  redisContext *rc = pt_redis();
  PGconn *pg = PQconnectdb(env.dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  pt_wait_applied(rc, pg, proj, STEP, 60000);

  /* Redis down: not ready, and Postgres holds within one batch of where it was. */
  redisFree(rc);
  assert_int_equal(bt_test_sh("./dev redis-stop >/dev/null 2>&1"), 0);
  produce(rk, &m, STEP);
  wait_ready(503, 10000);
  usleep(2000000);
  assert_true(pt_pg_applied(pg, proj) <= STEP + BATCH);
  assert_int_equal(bt_test_sh("./dev redis-start >/dev/null 2>&1"), 0);
  /* Redis came back empty: its offsets went back, which a running consumer cannot follow, so
   * the projector ends (exit 75) and a new one replays Redis from the beginning. */
  int status = wait_exit(env.pid, 30000);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 75);
  pt_start(&env, extra);
  rc = pt_redis();
  pt_wait_applied(rc, pg, proj, 2 * STEP, 60000);
  pt_check_redis(rc, &m, proj, true);
  pt_check_pg(pg, &m, proj, true);

  /* Postgres down: the same the other way round; Redis keeps its data this time. */
  PQfinish(pg);
  assert_int_equal(bt_test_sh("./dev pg-stop >/dev/null 2>&1"), 0);
  produce(rk, &m, STEP);
  wait_ready(503, 15000);
  usleep(2000000);
  assert_true(pt_redis_applied(rc, proj) <= 2 * STEP + BATCH);
  assert_int_equal(bt_test_sh("./dev pg-start >/dev/null 2>&1"), 0);
  wait_ready(200, 30000);
  pg = PQconnectdb(env.dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  pt_wait_applied(rc, pg, proj, 3 * STEP, 60000);
  pt_check_redis(rc, &m, proj, true);
  pt_check_pg(pg, &m, proj, true);

  assert_int_equal(bt_test_stop(env.pid, SIGTERM, 15000), 0);
  env.pid = 0;
  free(m.inv);
  redisFree(rc);
  PQfinish(pg);
  rd_kafka_destroy(rk);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_redis_and_postgres_restarts),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
