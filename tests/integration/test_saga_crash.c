/* Crash-proof replicas (issue 8 §6 "Crash"): two baton-saga replicas share sagas through
 * Postgres and replies through their consumer group while one of them, chosen at random, is
 * killed with SIGKILL every 0.5 s and restarted at once. Sagas are started throughout, each
 * with an Idempotency-Key so a start whose answer was lost in a kill is retried without a
 * second saga: exactly 20% are refused at a step (input "fail_at"), exactly 5% have a first
 * step that never answers (input "never_answer_at", a definition with a short timeout), and
 * the participants send 10% of their replies twice.
 *
 * Scale: the 2,000 sagas. The kills keep their 0.5 s beat whatever the start rate:
 * each round kills, restarts and then starts sagas until its 0.5 s are up, so a slow machine
 * gets more kills, not fewer; there are at least ST_MIN_KILLS. Under ASan the count is 500
 * (2,000 did not end within the 300 s test timeout on this loaded 2-core machine; 500 took
 * 57 s) so that the sanitizer lane stays within the CI budget; the kills and the oracle are
 * the same.
 *
 * Oracle: the participants' ledgers, read by SQL, against what each saga's input says must
 * happen, computed here and not by the engine: every saga ends (the test waits for it with a
 * deadline); each effect is applied exactly once per saga, in the order of the steps; the
 * compensations are exactly those of the refused and timed-out sagas, in reverse order; no
 * ledger row belongs to a saga the test did not start. */
#include "test_saga_common.h"

#if defined(__SANITIZE_ADDRESS__)
#define ST_SAGAS 500
#else
#define ST_SAGAS 2000
#endif
#define ST_MIN_KILLS 24
#define ST_KILL_EVERY_MS 500
#define ST_END_DEADLINE_MS 150000

static st_stack_t st;
static st_workload_t w;
static const char *const relay_settings[] = {"BATON_SAGA_RELAY_LEASE=1s", NULL};

static int setup(void **state) {
  bt_test_env_load();
  /* 3 attempts of 60 s for the sagas that must succeed: a storm of 70-90 kills keeps the
   * reply group rebalancing (each restart joins, each killed member is held for the 10 s
   * session timeout), and with 30 s attempts two runs in four saw an early saga's first step
   * time out three times with its replies unread, then compensate. */
  st_stack_init(&st, "it_saga_crash", "60s", 3);
  st_workload_init(&w, &st, ST_SAGAS);
  const char *more[] = {"BATON_PARTICIPANT_DUPLICATE_RATE=0.1", NULL};
  st_stack_start_participants(&st, more);
  st_stack_start_saga_with(&st, 0, true, relay_settings);
  st_stack_start_saga_with(&st, 1, true, relay_settings);
  st_wait_assigned(&st.saga[0]);
  return 0;
}

static int teardown(void **state) {
  st_stack_stop(&st);
  st_workload_free(&w);
  return 0;
}

static void test_kill_a_replica_every_half_second(void **state) {
  int started = 0, kills = 0;
  uint64_t t0 = bt_test_now_ms(), last_kill = t0, max_gap = 0;
  while (started < ST_SAGAS || kills < ST_MIN_KILLS) {
    uint64_t round_start = bt_test_now_ms(), round_end = round_start + ST_KILL_EVERY_MS;
    if (kills > 0 && round_start - last_kill > max_gap)
      max_gap = round_start - last_kill;
    last_kill = round_start;
    int victim = rand() % 2;
    st_proc_kill(&st.saga[victim]);
    kills++;
    st_stack_start_saga_with(&st, victim, false, relay_settings);
    while (started < ST_SAGAS && bt_test_now_ms() < round_end)
      st_workload_start(&w, started++, victim ^ 1);
    uint64_t now = bt_test_now_ms();
    if (now < round_end)
      usleep((useconds_t)(round_end - now) * 1000);
  }
  assert_int_equal(started, ST_SAGAS);
  assert_true(kills >= 20);
  uint64_t t1 = bt_test_now_ms();

  st_workload_check(&w, ST_END_DEADLINE_MS, t1);
  fprintf(stderr,
          "crash: %d sagas, %d kills in %.1f s (longest gap between kills %.1f s); all ended "
          "%.1f s later\n",
          ST_SAGAS, kills, (double)(t1 - t0) / 1000, (double)max_gap / 1000,
          (double)(bt_test_now_ms() - t1) / 1000);
  /* The duplicates were injected (and ignored by the engine, as the ledger shows). */
  assert_true(store_metric(&st.inv, "baton_participant_replies_total") >
              store_metric(&st.inv, "baton_participant_effects_applied_total"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kill_a_replica_every_half_second),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
