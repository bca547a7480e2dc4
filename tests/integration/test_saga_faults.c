/* The checkout saga through faults (issue 8 §6 "Faults"): two baton-saga replicas and the
 * example participants while every devkafka broker is down for 10 s (a participant is
 * kill -9'd and restarted during it), then while Postgres restarts (`./dev pg-restart`).
 * Sagas are started before, during and after each fault, every start retried under its
 * Idempotency-Key until a replica answers. Oracle (test_saga_common.h): nothing lost,
 * everything finishes afterwards, each effect once, compensations exactly for the sagas
 * planned to fail, in reverse order, read from the participants' ledgers. */
#include "test_saga_common.h"

#define SF_SAGAS 150
#define SF_OUTAGE_MS 10000
#define SF_END_DEADLINE_MS 120000

static st_stack_t st;
static st_workload_t w;

static int setup(void **state) {
  bt_test_env_load();
  st_stack_init(&st, "it_saga_faults", "30s", 3);
  st_workload_init(&w, &st, SF_SAGAS);
  const char *more[] = {"BATON_PARTICIPANT_DUPLICATE_RATE=0.1", NULL};
  st_stack_start_participants(&st, more);
  st_stack_start_saga(&st, 0, true);
  st_stack_start_saga(&st, 1, true);
  st_wait_assigned(&st.saga[0]);
  return 0;
}

static int teardown(void **state) {
  bt_test_kafka_brokers(1); /* whatever happened, leave Kafka up for the next test */
  st_stack_stop(&st);
  st_workload_free(&w);
  return 0;
}

static void test_kafka_down_then_postgres_restart(void **state) {
  int next = 0;
  uint64_t t0 = bt_test_now_ms();
  while (next < SF_SAGAS / 3)
    st_workload_start(&w, next, next % 2), next++;

  /* Kafka down: starts still commit (Postgres), commands wait in the outbox, replies wait in
   * the participants' producers. The payment participant dies meanwhile and comes back. */
  assert_int_equal(bt_test_kafka_brokers(0), 0);
  uint64_t down = bt_test_now_ms();
  for (int k = 0; next < 2 * SF_SAGAS / 3; k++) {
    st_workload_start(&w, next, next % 2), next++;
    if (k == 10) {
      st_proc_kill(&st.pay);
      const char *more[] = {"BATON_PARTICIPANT_DUPLICATE_RATE=0.1", NULL};
      char t[256], g[256];
      snprintf(t, sizeof t, "BATON_PARTICIPANT_TOPIC=%s", st.t_pay);
      snprintf(g, sizeof g, "BATON_PARTICIPANT_GROUP=%s-%d-baton-payment", st.prefix,
               (int)getpid());
      const char *extra[] = {t, g, more[0], NULL};
      st_proc_start(&st.pay, "baton-payment", "it_saga_faults-baton-payment", st.db.dsn, extra,
                    false); /* not ready until Kafka is back */
    }
    usleep(100 * 1000);
  }
  uint64_t spent = bt_test_now_ms() - down;
  if (spent < SF_OUTAGE_MS)
    usleep((useconds_t)(SF_OUTAGE_MS - spent) * 1000);
  assert_int_equal(bt_test_kafka_brokers(1), 0);

  /* Postgres restarts under the engines and the participants; starts that meet it are
   * retried by st_workload_start. */
  for (int k = 0; k < 10; k++)
    st_workload_start(&w, next, next % 2), next++;
  assert_int_equal(bt_test_sh("./dev pg-restart >/dev/null 2>&1"), 0);
  while (next < SF_SAGAS)
    st_workload_start(&w, next, next % 2), next++;
  uint64_t t1 = bt_test_now_ms();

  st_workload_check(&w, SF_END_DEADLINE_MS, t1);
  fprintf(stderr, "faults: %d sagas started in %.1f s (Kafka down %d s, a Postgres restart); "
          "all ended %.1f s after the last start\n",
          SF_SAGAS, (double)(t1 - t0) / 1000, SF_OUTAGE_MS / 1000,
          (double)(bt_test_now_ms() - t1) / 1000);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_kafka_down_then_postgres_restart),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
