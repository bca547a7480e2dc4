/* baton-saga replicas: a second engine process with Kafka joins the first one's consumer
 * group; the reply partitions are shared, both apply replies, and every saga, started on
 * either process, completes with each step applied once (the history is the oracle). Apart
 * from it_saga_engine because a group rebalance on devkafka can take a session timeout or
 * two. */
#include "test_saga_common.h"

static int setup(void **state) { return st_engine_setup("it_saga_replicas"); }

static void test_replicas(void **state) {
  /* Replies are keyed by saga id: with 12 sagas, all of them missed a member holding one of
   * the 3 partitions in (2/3)^12 = 0.8% of runs (seen once in CI); with 30, in 5e-6. */
  enum { N = 30 };
  int port = bt_test_free_port();
  char b_url[64], url[128];
  snprintf(b_url, sizeof b_url, "http://127.0.0.1:%d", port);
  pid_t b = st_engine_spawn(port, NULL, NULL);
  snprintf(url, sizeof url, "%s/readyz", b_url);
  assert_int_equal(bt_test_wait_status(url, 200, 30000), 0);
  /* Both members hold reply partitions (3 in all) before anything is sent. */
  uint64_t deadline = bt_test_now_ms() + 45000;
  double pa = 0, pb = 0;
  while (bt_test_now_ms() < deadline) {
    pa = st_engine_metric("baton_kafka_consumer_assigned_partitions");
    pb = st_metric_at(b_url, "baton_kafka_consumer_assigned_partitions");
    if (pa > 0 && pb > 0 && pa + pb == 3)
      break;
    usleep(200 * 1000);
  }
  if (!(pa > 0 && pb > 0 && pa + pb == 3))
    fail_msg("reply partitions not shared: %g and %g", pa, pb);
  char ids[N][40], h[4096];
  const char *idp[N], *states[N];
  for (int i = 0; i < N; i++) {
    snprintf(url, sizeof url, "%.63s/v1/sagas/checkout", i % 2 ? b_url : st_engine_url());
    bt_test_http_resp_t r;
    assert_int_equal(bt_test_http("POST", url, "Content-Type: application/json\r\n", "{}", 2, &r), 0);
    assert_int_equal(r.status, 201);
    json_t *j = json_loads(r.body, 0, NULL);
    snprintf(ids[i], sizeof ids[i], "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    bt_test_http_free(&r);
    idp[i] = ids[i];
    states[i] = "COMPLETED";
  }
  st_participate_until(idp, states, N);
  for (int i = 0; i < N; i++) {
    st_history_words(ids[i], h, sizeof h);
    assert_int_equal(st_count_word(h, "succeeded:reserve-inventory"), 1);
    assert_int_equal(st_count_word(h, "succeeded:authorize-payment"), 1);
    assert_int_equal(st_count_word(h, "succeeded:create-shipment"), 1);
  }
  /* 3 replies a saga, split between the two members. */
  double ra = st_engine_metric("baton_saga_replies_total");
  double rb = st_metric_at(b_url, "baton_saga_replies_total");
  if (!(ra > 0 && rb > 0 && ra + rb >= 3 * N))
    fail_msg("replies applied: %g here, %g there", ra, rb);
  int st = bt_test_stop(b, 15, 30000);
  assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_replicas),
      cmocka_unit_test(st_engine_test_clean_exit),
  };
  return cmocka_run_group_tests(tests, setup, st_engine_teardown);
}
