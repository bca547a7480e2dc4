/* The checkout saga end to end: baton-saga (commands through its outbox relay, replies through
 * its consumer) with the example participants, real Postgres and devkafka. Oracles: the
 * participants' ledgers (SQL, in the order the effects happened) and the commands Kafka holds,
 * both independent of the engine's own bookkeeping.
 * - The happy path applies each step once and completes.
 * - A refusal at each step compensates exactly the earlier steps, in reverse order, and
 *   VoidPayment receives the authorization id AuthorizePayment returned.
 * - A step that never answers is tried max_attempts times, then compensated itself (it did
 *   apply its effect: only the replies were lost) before the earlier steps. */
#include "test_saga_common.h"

static st_stack_t st;

static int setup(void **state) {
  bt_test_env_load();
  st_stack_init(&st, "it_saga_flow", "3s", 2);
  st_stack_start_participants(&st, NULL);
  st_stack_start_saga(&st, 0, true);
  st_wait_assigned(&st.saga[0]);
  return 0;
}

static int teardown(void **state) {
  st_stack_stop(&st);
  return 0;
}

/* Commands and compensations Kafka holds for one saga on one topic. */
static void kafka_counts(const char *topic, const char *id, long *commands, long *comps) {
  bt_test_kmsg_t *msgs;
  long n = bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), topic, 20000, &msgs);
  assert_true(n >= 0);
  *commands = *comps = 0;
  for (long i = 0; i < n; i++) {
    if (!msgs[i].key || strcmp(msgs[i].key, id) != 0)
      continue;
    const char *kind = bt_test_kmsg_header(&msgs[i], "ce_sagakind");
    assert_non_null(kind);
    if (strcmp(kind, "command") == 0)
      (*commands)++;
    else
      (*comps)++;
  }
  bt_test_kmsgs_free(msgs, n);
}

static void expect_kafka(const char *id, long inv_cmd, long inv_comp, long pay_cmd,
                         long pay_comp, long ship_cmd) {
  long c, k;
  kafka_counts(st.t_inv, id, &c, &k);
  assert_int_equal(c, inv_cmd);
  assert_int_equal(k, inv_comp);
  kafka_counts(st.t_pay, id, &c, &k);
  assert_int_equal(c, pay_cmd);
  assert_int_equal(k, pay_comp);
  kafka_counts(st.t_ship, id, &c, &k);
  assert_int_equal(c, ship_cmd);
  assert_int_equal(k, 0);
}

static void test_happy_path_and_refusal_at_each_step(void **state) {
  static const char *const inputs[5] = {
      "{\"sku\":\"sku-1\",\"amount\":10}",
      "{\"sku\":\"sku-1\",\"amount\":10,\"fail_at\":\"reserve-inventory\"}",
      "{\"sku\":\"sku-1\",\"amount\":10,\"fail_at\":\"authorize-payment\"}",
      "{\"sku\":\"sku-1\",\"amount\":10,\"fail_at\":\"create-shipment\"}",
      "{\"sku\":\"sku-1\",\"amount\":10,\"never_answer_at\":\"authorize-payment\"}",
  };
  char ids[5][64];
  for (int i = 0; i < 5; i++)
    assert_int_equal(st_saga_start(&st.saga[0], inputs[i], ids[i], sizeof ids[i]), 201);
  if (st_wait_sagas_end(st.pg, 40000) != 0)
    fail_msg("sagas still running after 40 s (logs: %s, %s)", st.saga[0].log, st.inv.log);

  static const char *const states[5] = {"COMPLETED", "COMPENSATED", "COMPENSATED",
                                        "COMPENSATED", "COMPENSATED"};
  static const char *const ledgers[5] = {
      "reserve-inventory:command:applied authorize-payment:command:applied "
      "create-shipment:command:applied",
      "reserve-inventory:command:refused",
      "reserve-inventory:command:applied authorize-payment:command:refused "
      "reserve-inventory:compensation:applied",
      "reserve-inventory:command:applied authorize-payment:command:applied "
      "create-shipment:command:refused authorize-payment:compensation:applied "
      "reserve-inventory:compensation:applied",
      "reserve-inventory:command:applied authorize-payment:command:applied "
      "authorize-payment:compensation:applied reserve-inventory:compensation:applied",
  };
  for (int i = 0; i < 5; i++) {
    char state_[32], words[1024];
    st_saga_state(st.pg, ids[i], state_, sizeof state_);
    if (strcmp(state_, states[i]) != 0)
      fail_msg("saga %d (%s) is %s, not %s; history: %s", i, inputs[i], state_, states[i],
               st_saga_history(st.pg, ids[i]));
    /* The effects (replays of a retried attempt left out: a loaded machine may time out a
     * step that did answer, and the retry is then answered from the ledger). */
    st_ledger_words(st.pg, ids[i], false, words, sizeof words);
    if (strcmp(words, ledgers[i]) != 0)
      fail_msg("saga %d (%s): ledger \"%s\", want \"%s\"; history: %s", i, inputs[i], words,
               ledgers[i], st_saga_history(st.pg, ids[i]));
  }
  expect_kafka(ids[1], 1, 0, 0, 0, 0);
  expect_kafka(ids[2], 1, 1, 1, 0, 0);
  expect_kafka(ids[3], 1, 1, 1, 1, 1);
  /* The silent step: both attempts sent, neither answered, then its compensation. */
  expect_kafka(ids[4], 1, 1, 2, 1, 0);
  const char *t[] = {ids[4]};
  assert_int_equal(store_sql_int(st.pg,
                                 "SELECT count(*) FROM payment.ledger WHERE saga_id = $1 AND "
                                 "kind = 'command' AND NOT answered AND attempt IN (1, 2)",
                                 1, t),
                   2);

  /* VoidPayment carried what AuthorizePayment returned (the ledger refuses it otherwise; this
   * checks the id itself). */
  const char *v[] = {ids[3]};
  assert_int_equal(store_sql_int(st.pg,
                                 "SELECT count(*) FROM payment.ledger c JOIN payment.ledger a "
                                 "USING (saga_id, step) WHERE saga_id = $1 AND c.kind = "
                                 "'compensation' AND a.kind = 'command' AND "
                                 "c.received->>'authorization_id' = "
                                 "a.result->>'authorization_id'",
                                 1, v),
                   1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_happy_path_and_refusal_at_each_step),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
