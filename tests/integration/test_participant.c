/* The example participants (baton-inventory, baton-payment) against real Postgres and
 * devkafka, driven by commands written with plain librdkafka as issue 8 §2 specifies them.
 * Oracles: the ledger rows read by SQL, and the replies read back from Kafka. Covers: an
 * applied command and its reply (CloudEvents binary mode, the step's result as data); the same
 * command id again applied once and answered again; another attempt of an applied step
 * replayed, not applied; the deterministic refusal rule; a compensation of a step never
 * applied (no-op, success) and of an applied one; VoidPayment checked against the
 * authorization id AuthorizePayment returned; a never-answered command; a malformed record
 * skipped; offsets committed (a restart answers nothing again). */
#include "test_saga_common.h"

static store_db_t db;
static PGconn *pg;
static st_proc_t inv, pay;
static char inv_topic[128], pay_topic[128], replies[128];
static rd_kafka_t *rk;

static void start_participant(st_proc_t *pr, const char *bin, const char *topic) {
  char t[256], g[256], tag[64];
  snprintf(t, sizeof t, "BATON_PARTICIPANT_TOPIC=%s", topic);
  snprintf(g, sizeof g, "BATON_PARTICIPANT_GROUP=it-participant-%d-%s", (int)getpid(), bin);
  snprintf(tag, sizeof tag, "it_participant-%s", bin);
  const char *extra[] = {t, g, "BATON_LOG_LEVEL=debug", NULL};
  st_proc_start(pr, bin, tag, db.dsn, extra, true);
}

static int setup(void **state) {
  bt_test_env_load();
  store_db_create(&db, "it_participant");
  st_topic(inv_topic, sizeof inv_topic, "it-participant", "inventory.commands", 3);
  st_topic(pay_topic, sizeof pay_topic, "it-participant", "payment.commands", 3);
  st_topic(replies, sizeof replies, "it-participant", "replies", 3);
  start_participant(&inv, "baton-inventory", inv_topic);
  start_participant(&pay, "baton-payment", pay_topic);
  rk = st_producer();
  pg = PQconnectdb(db.dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  return 0;
}

static int teardown(void **state) {
  if (rk)
    rd_kafka_destroy(rk);
  st_proc_stop(&inv);
  st_proc_stop(&pay);
  if (pg)
    PQfinish(pg);
  store_db_drop(&db);
  return 0;
}

/* The ledger row of one command id: "effect outcome answered", or "" when absent. */
static const char *ledger_row(const char *schema, const char *command_id) {
  static char out[256];
  char q[256];
  snprintf(q, sizeof q,
           "SELECT effect || ' ' || outcome || ' ' || answered::text FROM %s.ledger "
           "WHERE command_id = $1",
           schema);
  const char *v[] = {command_id};
  PGresult *r = store_sql(pg, q, 1, v);
  snprintf(out, sizeof out, "%s", PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "");
  PQclear(r);
  return out;
}

static long long applied(const char *schema, const char *saga, const char *step,
                         const char *kind) {
  char q[256];
  snprintf(q, sizeof q,
           "SELECT count(*) FROM %s.ledger WHERE saga_id = $1 AND step = $2 AND kind = $3 "
           "AND effect = 'applied'",
           schema);
  const char *v[] = {saga, step, kind};
  return store_sql_int(pg, q, 3, v);
}

static const char *hdr(const bt_test_kmsg_t *m, const char *name) {
  const char *v = m ? bt_test_kmsg_header(m, name) : NULL;
  return v ? v : "(none)";
}

static void test_command_reply_and_duplicates(void **state) {
  /* A malformed record first, on the partition saga "a" uses: it must be skipped, not block
   * the partition. */
  st_send_raw(rk, inv_topic, "a", "not a command");
  st_send_command(rk, inv_topic, replies, "a", "reserve-inventory", 1, "command",
                  "ReserveInventory", "{\"sku\":\"sku-7\",\"quantity\":2}", NULL, NULL);
  st_flush(rk);
  bt_test_kmsg_t *msgs;
  long n = st_wait_records(replies, 1, 20000, &msgs);
  assert_int_equal(n, 1);
  const bt_test_kmsg_t *r = st_find_reply(msgs, n, "a", "reserve-inventory", 1, "command");
  assert_non_null(r);
  assert_string_equal(hdr(r, "ce_specversion"), "1.0");
  assert_string_equal(hdr(r, "ce_outcome"), "success");
  assert_string_equal(hdr(r, "traceparent"),
                      "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  assert_string_equal(r->key, "a");
  json_t *data = json_loads(r->value, 0, NULL);
  assert_string_equal(json_string_value(json_object_get(data, "reservation_id")), "rsv-a");
  assert_string_equal(json_string_value(json_object_get(data, "sku")), "sku-7");
  json_decref(data);
  bt_test_kmsgs_free(msgs, n);
  assert_string_equal(ledger_row("inventory", "a/reserve-inventory/1/command"),
                      "applied success true");

  /* The same command id twice more: applied once, answered each time. Then attempt 2 of the
   * same step (an engine retry after a lost reply): replayed with the first result. */
  for (int i = 0; i < 2; i++)
    st_send_command(rk, inv_topic, replies, "a", "reserve-inventory", 1, "command",
                    "ReserveInventory", "{\"sku\":\"sku-7\",\"quantity\":2}", NULL, NULL);
  st_send_command(rk, inv_topic, replies, "a", "reserve-inventory", 2, "command",
                  "ReserveInventory", "{\"sku\":\"sku-7\",\"quantity\":2}", NULL, NULL);
  st_flush(rk);
  n = st_wait_records(replies, 4, 20000, &msgs);
  assert_int_equal(n, 4);
  assert_int_equal(st_count_replies(msgs, n, "a", "reserve-inventory", 1, "command"), 3);
  assert_int_equal(st_count_replies(msgs, n, "a", "reserve-inventory", 2, "command"), 1);
  for (long i = 1; i < n; i++) /* every answer carries the one reservation */
    assert_string_equal(msgs[i].value, msgs[0].value);
  bt_test_kmsgs_free(msgs, n);
  assert_int_equal(applied("inventory", "a", "reserve-inventory", "command"), 1);
  assert_string_equal(ledger_row("inventory", "a/reserve-inventory/2/command"),
                      "replayed success true");
  assert_int_equal(
      store_sql_int(pg, "SELECT count(*) FROM inventory.ledger WHERE saga_id = 'a'", 0, NULL), 2);
  assert_true(store_metric(&inv, "baton_participant_duplicate_commands_total") == 2);
  assert_true(store_metric(&inv, "baton_participant_malformed_total") == 1);
}

static void test_refusal_and_compensations(void **state) {
  /* Saga b is refused by the rule in its input; saga c's release comes without a reserve
   * (its command timed out before reaching us): nothing to undo, success; saga a's release
   * undoes its reservation. */
  st_send_command(rk, inv_topic, replies, "b", "reserve-inventory", 1, "command",
                  "ReserveInventory", "{\"fail_at\":\"reserve-inventory\"}", NULL, NULL);
  st_send_command(rk, inv_topic, replies, "c", "reserve-inventory", 1, "compensation",
                  "ReleaseInventory", "{}", NULL, NULL);
  st_send_command(rk, inv_topic, replies, "a", "reserve-inventory", 1, "compensation",
                  "ReleaseInventory", "{\"sku\":\"sku-7\",\"quantity\":2}",
                  "{\"reserve-inventory\":{\"reservation_id\":\"rsv-a\",\"sku\":\"sku-7\","
                  "\"quantity\":2}}",
                  NULL);
  st_flush(rk);
  bt_test_kmsg_t *msgs;
  long n = st_wait_records(replies, 7, 20000, &msgs);
  assert_int_equal(n, 7);
  const bt_test_kmsg_t *r = st_find_reply(msgs, n, "b", "reserve-inventory", 1, "command");
  assert_string_equal(hdr(r, "ce_outcome"), "failure");
  r = st_find_reply(msgs, n, "c", "reserve-inventory", 1, "compensation");
  assert_string_equal(hdr(r, "ce_outcome"), "success");
  r = st_find_reply(msgs, n, "a", "reserve-inventory", 1, "compensation");
  assert_string_equal(hdr(r, "ce_outcome"), "success");
  bt_test_kmsgs_free(msgs, n);
  assert_string_equal(ledger_row("inventory", "b/reserve-inventory/1/command"),
                      "refused failure true");
  assert_int_equal(applied("inventory", "b", "reserve-inventory", "command"), 0);
  assert_string_equal(ledger_row("inventory", "c/reserve-inventory/1/compensation"),
                      "noop success true");
  assert_string_equal(ledger_row("inventory", "a/reserve-inventory/1/compensation"),
                      "applied success true");

  /* A command arriving after its step's compensation (saga c) is refused: an effect that was
   * already undone is never applied. */
  st_send_command(rk, inv_topic, replies, "c", "reserve-inventory", 1, "command",
                  "ReserveInventory", "{}", NULL, NULL);
  st_flush(rk);
  n = st_wait_records(replies, 8, 20000, &msgs);
  assert_int_equal(n, 8);
  r = st_find_reply(msgs, n, "c", "reserve-inventory", 1, "command");
  assert_string_equal(hdr(r, "ce_outcome"), "failure");
  bt_test_kmsgs_free(msgs, n);
  assert_int_equal(applied("inventory", "c", "reserve-inventory", "command"), 0);
}

static void test_payment_void_needs_authorization(void **state) {
  st_send_command(rk, pay_topic, replies, "d", "authorize-payment", 1, "command",
                  "AuthorizePayment", "{\"amount\":42}", NULL, NULL);
  st_send_command(rk, pay_topic, replies, "e", "authorize-payment", 1, "command",
                  "AuthorizePayment", "{\"amount\":7}", NULL, NULL);
  /* Saga f: its authorization is applied but never answered. */
  st_send_command(rk, pay_topic, replies, "f", "authorize-payment", 1, "command",
                  "AuthorizePayment", "{\"never_answer_at\":\"authorize-payment\"}", NULL,
                  NULL);
  st_flush(rk);
  bt_test_kmsg_t *msgs;
  long n = st_wait_records(replies, 10, 20000, &msgs);
  assert_int_equal(n, 10);
  const bt_test_kmsg_t *r = st_find_reply(msgs, n, "d", "authorize-payment", 1, "command");
  assert_non_null(r);
  char results[512];
  snprintf(results, sizeof results, "{\"authorize-payment\":%s}", r->value);
  json_t *data = json_loads(r->value, 0, NULL);
  char auth[64];
  const char *a = json_string_value(json_object_get(data, "authorization_id"));
  assert_non_null(a);
  snprintf(auth, sizeof auth, "%s", a);
  assert_int_equal(strncmp(auth, "auth-", 5), 0);
  json_decref(data);
  bt_test_kmsgs_free(msgs, n);
  /* The authorization id is stored in the ledger: the SQL oracle sees it too. */
  const char *v[] = {auth};
  assert_int_equal(store_sql_int(pg,
                              "SELECT count(*) FROM payment.ledger WHERE saga_id = 'd' AND "
                              "result->>'authorization_id' = $1",
                              1, v),
                   1);
  assert_string_equal(ledger_row("payment", "f/authorize-payment/1/command"),
                      "applied success false");

  /* VoidPayment of d with d's own results: applied. Of e with d's authorization: refused
   * (results_mismatch). Of f without results (the engine never heard back): the applied
   * authorization is voided all the same. */
  st_send_command(rk, pay_topic, replies, "d", "authorize-payment", 1, "compensation",
                  "VoidPayment", "{\"amount\":42}", results, NULL);
  st_send_command(rk, pay_topic, replies, "e", "authorize-payment", 1, "compensation",
                  "VoidPayment", "{\"amount\":7}", results, NULL);
  st_send_command(rk, pay_topic, replies, "f", "authorize-payment", 2, "compensation",
                  "VoidPayment", "{}", NULL, NULL);
  st_flush(rk);
  n = st_wait_records(replies, 13, 20000, &msgs);
  assert_int_equal(n, 13);
  assert_string_equal(hdr(st_find_reply(msgs, n, "d", "authorize-payment", 1, "compensation"),
                          "ce_outcome"),
                      "success");
  r = st_find_reply(msgs, n, "e", "authorize-payment", 1, "compensation");
  assert_string_equal(hdr(r, "ce_outcome"), "failure");
  assert_non_null(strstr(r->value, "results_mismatch"));
  assert_string_equal(hdr(st_find_reply(msgs, n, "f", "authorize-payment", 2, "compensation"),
                          "ce_outcome"),
                      "success");
  assert_int_equal(st_count_replies(msgs, n, "f", "authorize-payment", 0, "command"), 0);
  bt_test_kmsgs_free(msgs, n);
  assert_int_equal(applied("payment", "d", "authorize-payment", "compensation"), 1);
  assert_int_equal(applied("payment", "e", "authorize-payment", "compensation"), 0);
  assert_int_equal(applied("payment", "f", "authorize-payment", "compensation"), 1);
  assert_int_equal(store_sql_int(pg,
                              "SELECT count(*) FROM payment.ledger WHERE saga_id = 'd' AND kind = "
                              "'compensation' AND received->>'authorization_id' = $1",
                              1, v),
                   1);
}

/* Offsets are committed once the work is done: participants restarted on the same group
 * answer nothing again. */
static void test_offsets_committed_across_restart(void **state) {
  /* Commits are coalesced every second; the drain commits what is stored. */
  st_proc_stop(&inv);
  st_proc_stop(&pay);
  start_participant(&inv, "baton-inventory", inv_topic);
  start_participant(&pay, "baton-payment", pay_topic);
  /* A fresh command proves the restarted consumers are assigned and reading. */
  st_send_command(rk, inv_topic, replies, "g", "reserve-inventory", 1, "command",
                  "ReserveInventory", "{}", NULL, NULL);
  st_send_command(rk, pay_topic, replies, "g", "authorize-payment", 1, "command",
                  "AuthorizePayment", "{}", NULL, NULL);
  st_flush(rk);
  bt_test_kmsg_t *msgs;
  long n = st_wait_records(replies, 15, 30000, &msgs);
  bt_test_kmsgs_free(msgs, n);
  assert_int_equal(n, 15);
  sleep(2); /* anything redelivered would be answered by now */
  n = st_wait_records(replies, 15, 0, &msgs);
  bt_test_kmsgs_free(msgs, n);
  assert_int_equal(n, 15);
  assert_true(store_metric(&inv, "baton_participant_commands_total") == 1);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_command_reply_and_duplicates),
      cmocka_unit_test(test_refusal_and_compensations),
      cmocka_unit_test(test_payment_void_needs_authorization),
      cmocka_unit_test(test_offsets_committed_across_restart),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
