/* Two (then three) brokers relay the same store, each committing every append in its own
 * transaction (BATON_BROKER_APPEND_BATCH=1) while four threads append through them at once, so
 * that append transactions really overlap in Postgres. Exactly one holds the lease; in steady state
 * nothing is published twice; when the leader is SIGKILLed the other takes over once the lease
 * runs out and nothing is lost; a leader frozen (SIGSTOP) past its lease is replaced and steps
 * down when it resumes; a leader that stops cleanly hands the lease over at once. */
#include <pthread.h>

#include "test_relay_common.h"

#define LEASE_MS 2000
/* Events per relay round: a leader that dies or stalls can leave at most one round relayed
 * but not recorded, which its successor publishes again. */
#define BATCH 100

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

#define APPENDERS 4

typedef struct {
  const rt_broker_t *const *via;
  size_t nvia;
  const char *cat;
  int first_stream, nstreams, from, to, part;
  int failures;
} append_job_t;

/* One appender thread: the streams s with s % APPENDERS == part, in version order. */
static void *appender(void *arg) {
  append_job_t *j = arg;
  char stream[128];
  for (int v = j->from; v <= j->to; v += 10)
    for (int s = j->first_stream; s < j->first_stream + j->nstreams; s++) {
      if (s % APPENDERS != j->part)
        continue;
      snprintf(stream, sizeof stream, "%s-%d", j->cat, s);
      int last = v + 9 > j->to ? j->to : v + 9;
      j->failures += rt_append_range(j->via[(size_t)s % j->nvia]->url, stream, v, last,
                                     "relay.replica") != 201;
    }
  return NULL;
}

/* Appends versions from..to of streams first_stream.. through the brokers in via, from
 * APPENDERS threads at once (each stream is written by one thread, so versions stay exact). */
static void append_streams(const rt_broker_t *const *via, size_t nvia, const char *cat, int first_stream,
                           int nstreams, int from, int to) {
  pthread_t th[APPENDERS];
  append_job_t jobs[APPENDERS];
  for (int p = 0; p < APPENDERS; p++) {
    jobs[p] = (append_job_t){via, nvia, cat, first_stream, nstreams, from, to, p, 0};
    pthread_create(&th[p], NULL, appender, &jobs[p]);
  }
  int failures = 0;
  for (int p = 0; p < APPENDERS; p++) {
    pthread_join(th[p], NULL);
    failures += jobs[p].failures;
  }
  assert_int_equal(failures, 0);
}

static void test_replicas(void **state) {
  char cat[64], topic[96], routes[256];
  snprintf(cat, sizeof cat, "rp%s", rt_run_id());
  snprintf(topic, sizeof topic, "relaytest.%s", cat);
  rt_topic_create(topic, 4);
  snprintf(routes, sizeof routes, "BATON_BROKER_ROUTES=%s=%s", cat, topic);
  const char *env[] = {routes, "BATON_BROKER_RELAY_LEASE=2s", "BATON_BROKER_RELAY_POLL=20ms",
                       "BATON_BROKER_APPEND_BATCH=1", "BATON_PG_POOL_SIZE=4",
                       "BATON_BROKER_RELAY_BATCH=100", NULL};
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
  /* The lease runs out LEASE_MS after the dead leader's last renewal and the follower's
   * next claim aims at the expiry; the deadline is generous because the machine is shared. */
  long took = wait_leader(&b, 30000);
  long since_kill = (long)(bt_test_now_ms() - killed);
  print_message("after kill -9 of the leader, the other replica led within %ld ms (lease %d ms)\n",
                since_kill, LEASE_MS);
  assert_true(took >= 0);
  rt_oracle_load(&o, pg, cat);
  assert_int_equal(rt_oracle_total(&o), 40 * 50 + 20 * 30);
  assert_int_equal(rt_consume(topic, (size_t)rt_oracle_total(&o), 60000, &recs),
                   (size_t)rt_oracle_total(&o));
  dups = rt_verify(&recs, &o);
  print_message("after failover: %zu records for %lld events, %lld duplicates\n", recs.n,
                rt_oracle_total(&o), dups);
  assert_true(dups <= BATCH);
  rt_recs_free(&recs);
  rt_oracle_free(&o);

  /* A leader that stalls past its lease (SIGSTOP) is replaced; when it resumes it finds the
   * lease gone and steps down instead of relaying beside the new leader. */
  rt_broker_start(&c, "replica_c", env, "/readyz");
  rt_sleep_ms(300);
  assert_true(rt_metric(&c, leader_series) == 0);
  kill(b.pid, SIGSTOP);
  assert_true(wait_leader(&c, 30000) >= 0);
  const rt_broker_t *via_c[] = {&c};
  append_streams(via_c, 1, cat, 40, 20, 31, 40);
  kill(b.pid, SIGCONT);
  assert_int_equal(rt_wait_metric(&b, leader_series, 0, true, 15000), 0);
  rt_sleep_ms(LEASE_MS);
  assert_true(rt_metric(&b, leader_series) == 0);
  assert_true(rt_metric(&c, leader_series) == 1);

  /* A clean stop releases the lease: the standby takes over at its next claim (lease/2). */
  uint64_t stopped = bt_test_now_ms();
  rt_broker_stop(&c, SIGTERM);
  assert_true(wait_leader(&b, 30000) >= 0);
  long handover = (long)(bt_test_now_ms() - stopped);
  print_message("after SIGTERM of the leader, the standby led within %ld ms\n", handover);
  const rt_broker_t *last[] = {&b};
  append_streams(last, 1, cat, 60, 5, 1, 10);
  rt_oracle_load(&o, pg, cat);
  assert_int_equal(rt_consume(topic, (size_t)rt_oracle_total(&o), 60000, &recs),
                   (size_t)rt_oracle_total(&o));
  dups = rt_verify(&recs, &o);
  print_message("in all: %zu records for %lld events, %lld duplicates\n", recs.n,
                rt_oracle_total(&o), dups);
  /* The kill and the stall each resend at most one round. */
  assert_true(dups <= 2 * BATCH);
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
