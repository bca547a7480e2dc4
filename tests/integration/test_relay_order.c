/* Per-stream order in Kafka through a single-record failure (issue 7, section 2).
 *
 * A backlog of NSTREAMS interleaved streams, all routed to one partition, with events large
 * enough that one relay round spans several Produce requests in flight at once. devkafka
 * fails the second Produce request with INVALID_RECORD (non-retriable, refused once): the
 * requests after it, in the same partition, are already on the wire. Without the gap-less
 * guarantee the idempotent producer writes them past the refused one, and the relay's retry
 * from its progress then puts v5 after v6. The oracle is the store itself (rt_verify): each
 * stream's versions must first appear in order, duplicates allowed, none missing. The relay
 * must also go on with the same process (it renews its producer; it does not exit). */
#include "test_relay_common.h"

#define RD_KAFKA_INVALID_RECORD 87
#define NSTREAMS 8
#define NVER 150 /* per stream */
#define PER_REQ 25
#define PAD 3000 /* bytes of padding per event: a round of 1,000 is ~3 MB, 4+ requests */

static int setup(void **state) {
  bt_test_env_load();
  return 0;
}

static int clear_errors(void **state) {
  char url[256];
  snprintf(url, sizeof url, "%s/errors/0", bt_test_env("BATON_DEVKAFKA_CONTROL"));
  bt_test_http_resp_t r;
  if (bt_test_http("DELETE", url, NULL, NULL, 0, &r) == 0)
    bt_test_http_free(&r);
  return rt_teardown(state);
}

static void test_order_kept_through_one_refused_request(void **state) {
  char cat[64], topic[96], routes[256], stream[128];
  rt_route_topic("ord", 1, cat, topic, routes);
  /* The backlog is written without a relay, streams interleaved in position order. */
  const char *writer_env[] = {routes, "BATON_BROKER_RELAY=false", NULL};
  rt_broker_t w, b;
  rt_broker_start(&w, "order_writer", writer_env, "/readyz");
  for (int v = 1; v <= NVER; v += PER_REQ)
    for (int s = 0; s < NSTREAMS; s++) {
      snprintf(stream, sizeof stream, "%s-%d", cat, s);
      assert_int_equal(rt_append_padded(w.url, stream, v, v + PER_REQ - 1, "relay.order", PAD), 201);
    }
  rt_broker_stop(&w, SIGTERM);

  /* The relay's first request goes through; its second is refused once. No dead letter:
   * one refusal is below BATON_BROKER_RELAY_DEAD_LETTER_AFTER, so the record is retried. */
  char body[128];
  snprintf(body, sizeof body, "{\"api_key\":0,\"errors\":[0,%d]}", RD_KAFKA_INVALID_RECORD);
  assert_int_equal(rt_kafka_control("/errors", body), 200);
  const char *env[] = {routes, "BATON_BROKER_RELAY_POLL=20ms", "BATON_BROKER_RELAY_LEASE=5s",
                       "BATON_BROKER_RELAY_MAX_FAILED_ROUNDS=0",
                       "BATON_BROKER_RELAY_DEAD_LETTER_AFTER=3", NULL};
  rt_broker_start(&b, "order_relay", env, "/readyz");
  long long dups = rt_consume_verified(topic, cat, (size_t)NSTREAMS * NVER);
  /* The refusal happened and was survived by this process. */
  double kerr = rt_metric(&b, "baton_broker_relay_errors_total{relay=\"store\",class=\"kafka\"}");
  double dead = rt_metric(&b, "baton_broker_relay_dead_lettered_total{relay=\"store\"}");
  print_message("kafka errors %.0f, duplicates %lld, dead letters %.0f\n", kerr, dups, dead);
  assert_true(kerr >= 1);
  assert_true(rt_metric(&b, "baton_broker_relay_producer_renewed_total{relay=\"store\"}") >= 1);
  assert_true(dead == 0);
  /* One partition: the gap-less producer wrote nothing behind the refused record, so the
   * re-sent records were not in Kafka yet. */
  assert_int_equal(dups, 0);
  assert_int_equal(rt_wait_metric(&b, "baton_broker_relay_lag_events{relay=\"store\"}", 0, true,
                                  30000), 0);
  rt_broker_stop(&b, SIGTERM);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_order_kept_through_one_refused_request, clear_errors),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
