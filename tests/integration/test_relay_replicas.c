/* Two (then three) brokers relay the same store. Exactly one holds the lease; in steady state
 * nothing is published twice; when the leader is SIGKILLed the other takes over once the lease
 * runs out and nothing is lost; a leader frozen (SIGSTOP) past its lease is replaced and steps
 * down when it resumes; a leader that stops cleanly hands the lease over at once. */
#include "test_relay_common.h"

#define LEASE_MS 2000

static int setup(void **state) {
  bt_test_env_load();
  return 0;
}

static const char *leader_series = "baton_broker_relay_leader{relay=\"store\"}";

/* Waits until b is the leader; returns the milliseconds waited, or -1. */
static long wait_leader(const rt_broker_t *b, int timeout_ms) {
  uint64_t t0 = bt_test_now_ms();
  if (rt_wait_metric(b, leader_series, 1, true, timeout_ms) != 0)
    return -1;
  return (long)(bt_test_now_ms() - t0);
}

static void append_streams(const rt_broker_t *const *via, size_t nvia, const char *cat, int first_stream,
                           int nstreams, int from, int to) {
  char stream[128];
  for (int v = from; v <= to; v += 10)
    for (int s = first_stream; s < first_stream + nstreams; s++) {
      snprintf(stream, sizeof stream, "%s-%d", cat, s);
      int last = v + 9 > to ? to : v + 9;
      assert_int_equal(rt_append_range(via[(size_t)s % nvia]->url, stream, v, last, "relay.replica"), 201);
    }
}

static void test_replicas(void **state) {
  char cat[64], topic[96], routes[256];
  snprintf(cat, sizeof cat, "rp%s", rt_run_id());
  snprintf(topic, sizeof topic, "relaytest.%s", cat);
  rt_topic_create(topic, 4);
  snprintf(routes, sizeof routes, "BATON_BROKER_ROUTES=%s=%s", cat, topic);
  const char *env[] = {routes, "BATON_BROKER_RELAY_LEASE=2s", "BATON_BROKER_RELAY_POLL=20ms", NULL};
  rt_broker_t a, b, c;
  rt_broker_start(&a, "replica_a", env, "/readyz");
  assert_true(wait_leader(&a, 30000) >= 0);
  rt_broker_start(&b, "replica_b", env, "/readyz");
  rt_sleep_ms(LEASE_MS); /* several claim attempts by b */
  assert_true(rt_metric(&b, leader_series) == 0);
  assert_true(rt_metric(&a, leader_series) == 1);

  /* Steady state: appends through both replicas, one relay. */
  const rt_broker_t *both[] = {&a, &b};
  append_streams(both, 2, cat, 0, 40, 1, 50);
  PGconn *pg = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  rt_oracle_t o;
  rt_oracle_load(&o, pg, cat);
  assert_int_equal(rt_oracle_total(&o), 40 * 50);
  rt_recs_t recs = {0};
  assert_int_equal(rt_consume(topic, 40 * 50, 60000, &recs), 40 * 50);
  long long dups = rt_verify(&recs, &o);
  print_message("steady state, 2 replicas: %zu records for %d events, %lld duplicates\n", recs.n,
                40 * 50, dups);
  assert_int_equal(dups, 0);
  assert_true(rt_metric(&b, leader_series) == 0);
  rt_recs_free(&recs);
  rt_oracle_free(&o);

  /* Failover: append through the leader and kill it at once, so that some of those events
   * are not relayed yet; then append through the survivor. */
  append_streams(both, 1, cat, 40, 20, 1, 20);
  uint64_t killed = bt_test_now_ms();
  rt_broker_stop(&a, SIGKILL);
  const rt_broker_t *survivor[] = {&b};
  append_streams(survivor, 1, cat, 40, 20, 21, 30);
  long took = wait_leader(&b, 4 * LEASE_MS);
  long since_kill = (long)(bt_test_now_ms() - killed);
  print_message("after kill -9 of the leader, the other replica led within %ld ms (lease %d ms)\n",
                since_kill, LEASE_MS);
  assert_true(took >= 0);
  /* The lease runs out LEASE_MS after the dead leader's last renewal; the follower's next
   * claim comes right after (its timer aims at the expiry), plus a poll of slack. */
  assert_true(since_kill <= LEASE_MS + 500);
  rt_oracle_load(&o, pg, cat);
  assert_int_equal(rt_oracle_total(&o), 40 * 50 + 20 * 30);
  assert_int_equal(rt_consume(topic, (size_t)rt_oracle_total(&o), 60000, &recs),
                   (size_t)rt_oracle_total(&o));
  dups = rt_verify(&recs, &o);
  print_message("after failover: %zu records for %lld events, %lld duplicates\n", recs.n,
                rt_oracle_total(&o), dups);
  rt_recs_free(&recs);
  rt_oracle_free(&o);

  /* A leader that stalls past its lease (SIGSTOP) is replaced; when it resumes it finds the
   * lease gone and steps down instead of relaying beside the new leader. */
  rt_broker_start(&c, "replica_c", env, "/readyz");
  rt_sleep_ms(300);
  assert_true(rt_metric(&c, leader_series) == 0);
  kill(b.pid, SIGSTOP);
  assert_true(wait_leader(&c, 4 * LEASE_MS) >= 0);
  const rt_broker_t *via_c[] = {&c};
  append_streams(via_c, 1, cat, 40, 20, 31, 40);
  kill(b.pid, SIGCONT);
  assert_int_equal(rt_wait_metric(&b, leader_series, 0, true, 2 * LEASE_MS), 0);
  rt_sleep_ms(LEASE_MS);
  assert_true(rt_metric(&b, leader_series) == 0);
  assert_true(rt_metric(&c, leader_series) == 1);

  /* A clean stop releases the lease: the standby takes over at its next claim (lease/2). */
  uint64_t stopped = bt_test_now_ms();
  rt_broker_stop(&c, SIGTERM);
  assert_true(wait_leader(&b, 4 * LEASE_MS) >= 0);
  long handover = (long)(bt_test_now_ms() - stopped);
  print_message("after SIGTERM of the leader, the standby led within %ld ms\n", handover);
  assert_true(handover <= LEASE_MS / 2 + 500);
  const rt_broker_t *last[] = {&b};
  append_streams(last, 1, cat, 60, 5, 1, 10);
  rt_oracle_load(&o, pg, cat);
  assert_int_equal(rt_consume(topic, (size_t)rt_oracle_total(&o), 60000, &recs),
                   (size_t)rt_oracle_total(&o));
  dups = rt_verify(&recs, &o);
  print_message("in all: %zu records for %lld events, %lld duplicates\n", recs.n,
                rt_oracle_total(&o), dups);
  rt_recs_free(&recs);
  rt_oracle_free(&o);
  PQfinish(pg);
  rt_broker_stop(&b, SIGTERM);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_replicas, rt_teardown),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
