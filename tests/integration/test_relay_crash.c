/* The relay survives crashes without losing an event. (1) Kafka is down while 5,000 events
 * are appended to 100 streams (all answered 201), the broker is killed with SIGKILL, Kafka
 * comes back and a new broker relays everything. (2) Brokers are SIGKILLed at random moments
 * while they append and relay. (3) Postgres restarts under a running relay. In all, the topic read back from the start holds every stored
 * event, each stream in version order, duplicates only as repeats with the same ce_id; the
 * duplicates are counted and printed. The oracle is the store table, read with SQL. */
#include "test_relay_common.h"

#define STREAMS 100
#define PER_STREAM 50
#define PER_REQUEST 10

static int setup(void **state) {
  bt_test_env_load();
  return 0;
}

static int teardown(void **state) {
  /* Whatever happened, devkafka's brokers must be up for the tests that follow. */
  rt_kafka_control("/brokers/all/up", NULL);
  return rt_teardown(state);
}

static void test_kafka_down_then_kill9(void **state) {
  char cat[64], topic[96], routes[256], stream[128];
  snprintf(cat, sizeof cat, "rk%s", rt_run_id());
  snprintf(topic, sizeof topic, "relaytest.%s", cat);
  rt_topic_create(topic, 8);
  snprintf(routes, sizeof routes, "BATON_BROKER_ROUTES=%s=%s", cat, topic);
  const char *env[] = {routes, "BATON_BROKER_RELAY_LEASE=2s", NULL};
  rt_broker_t b;
  rt_broker_start(&b, "crash1", env, "/readyz");
  assert_int_equal(rt_wait_metric(&b, "baton_broker_relay_leader{relay=\"store\"}", 1, true, 30000), 0);

  assert_int_equal(rt_kafka_control("/brokers/all/down", NULL), 200);
  uint64_t t0 = bt_test_now_ms();
  int answered = 0;
  for (int v = 1; v <= PER_STREAM; v += PER_REQUEST)
    for (int s = 0; s < STREAMS; s++) {
      snprintf(stream, sizeof stream, "%s-%d", cat, s);
      int st = rt_append_range(b.url, stream, v, v + PER_REQUEST - 1, "relay.crash");
      assert_int_equal(st, 201);
      answered += PER_REQUEST;
    }
  print_message("%d events appended with Kafka down in %llu ms\n", answered,
                (unsigned long long)(bt_test_now_ms() - t0));
  /* Before the kill, the relay either has read a batch and handed it to a producer that
   * cannot deliver it (lag > 0), or has already seen that it cannot produce and given its
   * lease up (leader 0): which one depends on how soon librdkafka reports the brokers down. */
  uint64_t until = bt_test_now_ms() + 10000;
  double lag = 0, leader = 1;
  do {
    rt_sleep_ms(100);
    lag = rt_metric(&b, "baton_broker_relay_lag_events{relay=\"store\"}");
    leader = rt_metric(&b, "baton_broker_relay_leader{relay=\"store\"}");
  } while (!(lag > 0 || leader == 0) && bt_test_now_ms() < until);
  print_message("killed with the relay %s\n", lag > 0 ? "holding a batch" : "without its lease");
  assert_true(lag > 0 || leader == 0);
  rt_broker_stop(&b, SIGKILL);
  assert_int_equal(rt_kafka_control("/brokers/all/up", NULL), 200);

  rt_broker_start(&b, "crash1b", env, "/healthz");
  PGconn *c = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  rt_oracle_t o;
  rt_oracle_load(&o, c, cat);
  assert_int_equal(o.n, STREAMS);
  assert_int_equal(rt_oracle_total(&o), STREAMS * PER_STREAM);
  rt_recs_t recs = {0};
  size_t got = rt_consume(topic, STREAMS * PER_STREAM, 120000, &recs);
  print_message("Kafka holds %zu distinct of %d events after %llu ms\n", got, STREAMS * PER_STREAM,
                (unsigned long long)(bt_test_now_ms() - t0));
  long long dups = rt_verify(&recs, &o);
  print_message("crash with Kafka down: %zu records, %d events, %lld duplicates\n", recs.n,
                STREAMS * PER_STREAM, dups);
  assert_int_equal(got, STREAMS * PER_STREAM);
  rt_recs_free(&recs);
  rt_oracle_free(&o);
  PQfinish(c);
  rt_broker_stop(&b, SIGTERM);
}

#define CYCLES 6
#define CYCLE_STREAMS 20
#define CYCLE_EVENTS 10

static void test_random_kill9(void **state) {
  char cat[64], topic[96], routes[256], stream[128];
  snprintf(cat, sizeof cat, "rr%s", rt_run_id());
  snprintf(topic, sizeof topic, "relaytest.%s", cat);
  rt_topic_create(topic, 4);
  snprintf(routes, sizeof routes, "BATON_BROKER_ROUTES=%s=%s", cat, topic);
  /* Small rounds, so that a kill often lands between a round's delivery and its save. */
  const char *env[] = {routes, "BATON_BROKER_RELAY_LEASE=1s", "BATON_BROKER_RELAY_BATCH=37", NULL};
  rt_broker_t b;
  int version = 0;
  for (int cycle = 0; cycle < CYCLES; cycle++) {
    rt_broker_start(&b, "crash2", env, "/readyz");
    /* The killed broker's lease runs out first; then this one relays. */
    assert_int_equal(rt_wait_metric(&b, "baton_broker_relay_leader{relay=\"store\"}", 1, true, 30000), 0);
    for (int s = 0; s < CYCLE_STREAMS; s++) {
      snprintf(stream, sizeof stream, "%s-%d", cat, s);
      assert_int_equal(rt_append_range(b.url, stream, version + 1, version + CYCLE_EVENTS, "relay.kill"), 201);
    }
    version += CYCLE_EVENTS;
    rt_sleep_ms((unsigned)(rand() % 60));
    rt_broker_stop(&b, SIGKILL);
  }
  rt_broker_start(&b, "crash2", env, "/readyz");
  PGconn *c = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  rt_oracle_t o;
  rt_oracle_load(&o, c, cat);
  assert_int_equal(rt_oracle_total(&o), CYCLES * CYCLE_STREAMS * CYCLE_EVENTS);
  rt_recs_t recs = {0};
  size_t got = rt_consume(topic, (size_t)rt_oracle_total(&o), 120000, &recs);
  long long dups = rt_verify(&recs, &o);
  print_message("random kill -9 x%d: %zu records, %lld events, %lld duplicates\n", CYCLES, recs.n,
                rt_oracle_total(&o), dups);
  assert_int_equal(got, (size_t)rt_oracle_total(&o));
  rt_recs_free(&recs);
  rt_oracle_free(&o);
  PQfinish(c);
  rt_broker_stop(&b, SIGTERM);
}

/* Appends, retrying while the broker answers 503 (its pool reconnecting): the event ids make
 * a retry idempotent, so whatever the first attempt did, the store holds each event once. */
static void append_retrying(const char *url, const char *stream, int from, int to) {
  uint64_t end = bt_test_now_ms() + 60000;
  while (rt_append_range(url, stream, from, to, "relay.pgrestart") / 100 != 2) {
    assert_true(bt_test_now_ms() < end);
    rt_sleep_ms(200);
  }
}

/* Postgres restarts under the relay: its requests fail, it backs off, reconnects (keeping or
 * re-claiming its lease) and relays everything, before and after. */
static void test_postgres_restart(void **state) {
  char cat[64], topic[96], routes[256], stream[128];
  snprintf(cat, sizeof cat, "rq%s", rt_run_id());
  snprintf(topic, sizeof topic, "relaytest.%s", cat);
  rt_topic_create(topic, 4);
  snprintf(routes, sizeof routes, "BATON_BROKER_ROUTES=%s=%s", cat, topic);
  const char *env[] = {routes, "BATON_BROKER_RELAY_LEASE=2s", NULL};
  rt_broker_t b;
  rt_broker_start(&b, "pgrestart", env, "/readyz");
  assert_int_equal(rt_wait_metric(&b, "baton_broker_relay_leader{relay=\"store\"}", 1, true, 30000), 0);
  for (int s = 0; s < 20; s++) {
    snprintf(stream, sizeof stream, "%s-%d", cat, s);
    append_retrying(b.url, stream, 1, 10);
  }
  double pg_errors = rt_metric(&b, "baton_broker_relay_errors_total{relay=\"store\",class=\"pg\"}");
  assert_int_equal(bt_test_sh("./dev pg-restart >&2"), 0);
  for (int s = 0; s < 20; s++) {
    snprintf(stream, sizeof stream, "%s-%d", cat, s);
    append_retrying(b.url, stream, 11, 20);
  }
  PGconn *c = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  rt_oracle_t o;
  rt_oracle_load(&o, c, cat);
  assert_int_equal(rt_oracle_total(&o), 20 * 20);
  rt_recs_t recs = {0};
  size_t got = rt_consume(topic, 20 * 20, 60000, &recs);
  long long dups = rt_verify(&recs, &o);
  print_message("postgres restart: %zu records, 400 events, %lld duplicates, relay pg errors %g\n",
                recs.n, dups,
                rt_metric(&b, "baton_broker_relay_errors_total{relay=\"store\",class=\"pg\"}") - pg_errors);
  assert_int_equal(got, 20 * 20);
  assert_int_equal(rt_wait_metric(&b, "baton_broker_relay_leader{relay=\"store\"}", 1, true, 10000), 0);
  rt_recs_free(&recs);
  rt_oracle_free(&o);
  PQfinish(c);
  rt_broker_stop(&b, SIGTERM);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_kafka_down_then_kill9, teardown),
      cmocka_unit_test_teardown(test_random_kill9, teardown),
      cmocka_unit_test_teardown(test_postgres_restart, teardown),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
