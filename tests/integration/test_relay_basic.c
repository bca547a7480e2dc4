/* The store relay end to end: events appended over HTTP reach the topic of their category
 * (a configured route, and the default "<category>.events"), once each, in per-stream order,
 * as CloudEvents binary-mode records with ce_stream/ce_streamversion and the stream id (or
 * partitionkey) as key; a nudge after a commit relays without waiting for the poll; the lag
 * metrics return to 0; and an invalid BATON_BROKER_ROUTES or BATON_BROKER_OUTBOX_DSNS stops
 * start-up with a message naming the variable. */
#include "test_relay_common.h"

#define STREAMS 20
#define PER_STREAM 25

static int setup(void **state) {
  bt_test_env_load();
  return 0;
}

static void test_routes_headers_and_order(void **state) {
  char routed[64], unrouted[64], topic[96], default_topic[96], routes[256];
  snprintf(routed, sizeof routed, "rb%s", rt_run_id());
  snprintf(unrouted, sizeof unrouted, "rd%s", rt_run_id());
  snprintf(topic, sizeof topic, "relaytest.%s", routed);
  snprintf(default_topic, sizeof default_topic, "%s.events", unrouted);
  rt_topic_create(topic, 4);
  rt_topic_create(default_topic, 2);
  snprintf(routes, sizeof routes, "BATON_BROKER_ROUTES=%s=%s", routed, topic);
  const char *env[] = {routes, "BATON_BROKER_RELAY_LEASE=2s", NULL};
  rt_broker_t b;
  rt_broker_start(&b, "basic", env, "/readyz");

  /* Interleaved appends to many streams, so order within a stream is not an accident of
   * one stream being written at a time. */
  char stream[128];
  for (int v = 1; v <= PER_STREAM; v += 5)
    for (int s = 0; s < STREAMS; s++) {
      snprintf(stream, sizeof stream, "%s-%d", s % 4 == 3 ? unrouted : routed, s);
      assert_int_equal(rt_append_range(b.url, stream, v, v + 4, "relay.test"), 201);
    }
  /* A stream with a partitionkey extension on every event: that, not the stream id, is the
   * key. */
  snprintf(stream, sizeof stream, "%s-pk", routed);
  char body[512], url[256];
  snprintf(body, sizeof body,
           "{\"expected_version\":\"no_stream\",\"events\":[{\"specversion\":\"1.0\",\"id\":\"%s:1\","
           "\"source\":\"/relay-test\",\"type\":\"relay.pk\",\"subject\":\"sub-1\","
           "\"partitionkey\":\"customer-7\",\"traceparent\":"
           "\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\",\"data\":\"hello\"}]}",
           stream);
  snprintf(url, sizeof url, "%s/v1/streams/%s/events", b.url, stream);
  bt_test_http_resp_t r;
  assert_int_equal(bt_test_http("POST", url, "Content-Type: application/json\r\n", body,
                                strlen(body), &r), 0);
  assert_int_equal(r.status, 201);
  bt_test_http_free(&r);

  PGconn *c = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  rt_oracle_t routed_o, unrouted_o;
  rt_oracle_load(&routed_o, c, routed);
  rt_oracle_load(&unrouted_o, c, unrouted);
  long long nrouted = rt_oracle_total(&routed_o), nunrouted = rt_oracle_total(&unrouted_o);
  assert_int_equal(nrouted, (STREAMS - STREAMS / 4) * PER_STREAM + 1);
  assert_int_equal(nunrouted, (STREAMS / 4) * PER_STREAM);

  rt_recs_t recs = {0}, drecs = {0};
  assert_int_equal(rt_consume(topic, (size_t)nrouted, 60000, &recs), (size_t)nrouted);
  assert_int_equal(rt_consume(default_topic, (size_t)nunrouted, 60000, &drecs), (size_t)nunrouted);
  /* One relay, no failure: no duplicate at all. */
  assert_int_equal(recs.n, (size_t)nrouted);
  assert_int_equal(drecs.n, (size_t)nunrouted);
  assert_int_equal(rt_verify(&recs, &routed_o), 0);
  assert_int_equal(rt_verify(&drecs, &unrouted_o), 0);
  size_t keyed = 0;
  for (size_t i = 0; i < recs.n; i++) {
    rt_rec_t *x = &recs.v[i];
    if (strcmp(x->stream, stream) == 0) {
      assert_string_equal(x->key, "customer-7");
      assert_string_equal(x->value, "\"hello\""); /* JSON data: its JSON text */
    } else {
      /* The key is the stream id, not the subject. */
      assert_string_equal(x->key, x->stream);
      char want[32];
      snprintf(want, sizeof want, "{\"n\":%lld}", x->version);
      assert_string_equal(x->value, want);
      keyed++;
    }
  }
  assert_int_equal(keyed, (size_t)nrouted - 1);

  /* Every other binding header of the partitionkey event, read with kcat as a second opinion
   * on the wire format. */
  char out[2048];
  snprintf(out, sizeof out, "%s/Testing/it_relay_basic_kcat_%d.txt",
           getenv("BATON_BUILD_DIR") ? getenv("BATON_BUILD_DIR") : "/tmp", (int)getpid());
  assert_int_equal(bt_test_sh("kcat -C -b \"$BATON_KAFKA_BROKERS\" -t %s -o beginning -e -q "
                              "-f '%%k|%%h\\n' 2>/dev/null | grep '^customer-7|' > %s",
                              topic, out), 0);
  FILE *f = fopen(out, "r");
  assert_non_null(f);
  char line[2048] = "";
  assert_non_null(fgets(line, sizeof line, f));
  fclose(f);
  unlink(out);
  const char *want[] = {"ce_specversion=1.0", "ce_type=relay.pk", "ce_source=/relay-test",
                        "ce_subject=sub-1", "ce_partitionkey=customer-7",
                        "traceparent=00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
                        "ce_streamversion=1"};
  for (size_t i = 0; i < sizeof want / sizeof want[0]; i++)
    if (!strstr(line, want[i]))
      fail_msg("header %s missing in %s", want[i], line);
  char want_stream[160];
  snprintf(want_stream, sizeof want_stream, "ce_stream=%s", stream);
  assert_non_null(strstr(line, want_stream));

  /* Caught up: the lag is back to 0 and the counters saw the records. */
  assert_int_equal(rt_wait_metric(&b, "baton_broker_relay_lag_events{relay=\"store\"}", 0, true, 10000), 0);
  assert_int_equal(rt_wait_metric(&b, "baton_broker_relay_lag_seconds{relay=\"store\"}", 0, true, 10000), 0);
  assert_true(rt_metric(&b, "baton_broker_relay_published_total{relay=\"store\"}") >= (double)(nrouted + nunrouted));
  assert_true(rt_metric(&b, "baton_broker_relay_leader{relay=\"store\"}") == 1);

  rt_recs_free(&recs);
  rt_recs_free(&drecs);
  rt_oracle_free(&routed_o);
  rt_oracle_free(&unrouted_o);
  PQfinish(c);
  rt_broker_stop(&b, SIGTERM);
}

/* With a poll interval of 60s, an append is relayed long before the next poll (the wait is
 * bounded by half of it): the store's commit nudges the relay. */
static void test_nudge(void **state) {
  char cat[64], topic[96], routes[256], stream[128];
  snprintf(cat, sizeof cat, "rn%s", rt_run_id());
  snprintf(topic, sizeof topic, "relaytest.%s", cat);
  rt_topic_create(topic, 1);
  snprintf(routes, sizeof routes, "BATON_BROKER_ROUTES=%s=%s", cat, topic);
  const char *env[] = {routes, "BATON_BROKER_RELAY_POLL=60s", "BATON_BROKER_RELAY_LEASE=30s", NULL};
  rt_broker_t b;
  rt_broker_start(&b, "nudge", env, "/readyz");
  assert_int_equal(rt_wait_metric(&b, "baton_broker_relay_leader{relay=\"store\"}", 1, true, 60000), 0);
  /* Let the relay finish its first rounds and settle into its 60 s poll. */
  assert_int_equal(rt_wait_metric(&b, "baton_broker_relay_lag_events{relay=\"store\"}", 0, true, 60000), 0);
  rt_sleep_ms(500);
  PGconn *c = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  for (int i = 0; i < 3; i++) {
    snprintf(stream, sizeof stream, "%s-%d", cat, i);
    uint64_t t0 = bt_test_now_ms();
    assert_int_equal(rt_append_range(b.url, stream, 1, 1, "relay.nudge"), 201);
    rt_oracle_t o;
    rt_oracle_load(&o, c, stream);
    rt_recs_t recs = {0};
    rt_consume(topic, (size_t)i + 1, 30000, &recs);
    uint64_t dt = bt_test_now_ms() - t0;
    print_message("append %d relayed and consumed in %llu ms\n", i, (unsigned long long)dt);
    assert_int_equal(recs.distinct, (size_t)i + 1);
    rt_recs_free(&recs);
    rt_oracle_free(&o);
  }
  PQfinish(c);
  rt_broker_stop(&b, SIGTERM);
}

static void expect_startup_failure(const char *var_setting, const char *var) {
  rt_broker_t b = {0};
  b.port = bt_test_free_port();
  char port[64];
  snprintf(port, sizeof port, "BATON_HTTP_PORT=%d", b.port);
  const char *full[] = {port, var_setting, NULL};
  snprintf(b.log, sizeof b.log, "%s/Testing/it_relay_badconf_%d.log",
           getenv("BATON_BUILD_DIR") ? getenv("BATON_BUILD_DIR") : "/tmp", (int)getpid());
  unlink(b.log);
  const char *argv[] = {bt_test_bin("baton-broker"), NULL};
  pid_t pid = bt_test_spawn(argv, full, b.log);
  int status = bt_test_stop(pid, 0, 20000); /* signal 0: just wait for it to exit */
  assert_true(status != -1);
  assert_true(WIFEXITED(status) && WEXITSTATUS(status) != 0);
  assert_int_equal(bt_test_sh("grep -q '%s' %s", var, b.log), 0);
  unlink(b.log);
}

static void test_invalid_config_stops_startup(void **state) {
  expect_startup_failure("BATON_BROKER_ROUTES=order", "BATON_BROKER_ROUTES");
  expect_startup_failure("BATON_BROKER_ROUTES=order=orders events", "BATON_BROKER_ROUTES");
  expect_startup_failure("BATON_BROKER_ROUTES=a=x,a=y", "BATON_BROKER_ROUTES");
  expect_startup_failure("BATON_BROKER_ROUTES=a-b=x", "BATON_BROKER_ROUTES");
  expect_startup_failure("BATON_BROKER_OUTBOX_DSNS=not a dsn", "BATON_BROKER_OUTBOX_DSNS");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_invalid_config_stops_startup),
      cmocka_unit_test_teardown(test_routes_headers_and_order, rt_teardown),
      cmocka_unit_test_teardown(test_nudge, rt_teardown),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
