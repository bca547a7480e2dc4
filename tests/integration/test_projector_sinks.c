/* The projector's sinks, end to end: billing events produced with librdkafka (protobuf
 * BillingEvent to one topic, the same history as Debezium change events, with and without
 * the schema/payload wrapper and with tombstones, to another), two projections reading them
 * in one process, each with its own offsets, plus a third reading the protobuf topic again
 * into Redis only. Both sinks of both projections must equal an
 * oracle the test replays on its own: balances, open counts, unpaid lists in due-date order,
 * document counts. Then:
 * - a restart replays nothing into either sink (digests unchanged);
 * - with one projection's Redis data deleted, a restart rebuilds Redis from the beginning of
 *   the topic while Postgres, which holds everything, applies nothing twice. */
#include "test_kafka_common.h"
#include "test_projector_common.h"

static pt_env_t env;
static char inv[64], inv2[64], cdc[64], inv_topic[64], cdc_topic[64];

enum { CUSTOMERS = 40, EVENTS = 4000 };

static int setup(void **state) {
  (void)state;
  pt_setup(&env, "it_projector_sinks");
  int pid = (int)getpid();
  snprintf(inv, sizeof inv, "inv_%d", pid);
  snprintf(cdc, sizeof cdc, "cdc_%d", pid);
  snprintf(inv2, sizeof inv2, "inv2_%d", pid);
  snprintf(inv_topic, sizeof inv_topic, "pt.inv.%d", pid);
  snprintf(cdc_topic, sizeof cdc_topic, "pt.cdc.%d", pid);
  kt_topic(inv_topic, 3);
  kt_topic(cdc_topic, 3);
  char def[2048];
  snprintf(def, sizeof def, pt_invoices_def, inv, inv_topic);
  pt_write_def(&env, "inv.yaml", def);
  snprintf(def, sizeof def,
           "projection: %s\n"
           "source: { topics: [%s], format: debezium-json }\n"
           "key: invoice_id\n"
           "on:\n"
           "  \"invoices:c\": { upsert: { customer_id: $.customer_id, amount_cents: $.amount_cents,"
           " due_date: $.due_date, status: $.status } }\n"
           "  \"invoices:u\": { upsert: { customer_id: $.customer_id, amount_cents: $.amount_cents,"
           " due_date: $.due_date, status: $.status } }\n"
           "  \"invoices:d\": { delete: true }\n"
           "indexes:\n"
           "  - { name: unpaid_by_due, field: customer_id, where: { status: unpaid }, order: due_date }\n"
           "aggregates:\n"
           "  - { name: balance, group: customer_id, sum: amount_cents, where: { status: unpaid } }\n"
           "sinks: [redis, postgres]\n",
           cdc, cdc_topic);
  pt_write_def(&env, "cdc.yaml", def);
  /* A second projection of the same topic, Redis only: its own group and offsets. */
  snprintf(def, sizeof def,
           "projection: %s\n"
           "source: { topics: [%s], format: protobuf }\n"
           "key: invoice_id\n"
           "on:\n"
           "  InvoiceIssued:   { upsert: { customer_id: $.customer_id, amount_cents: $.amount_cents,"
           " due_date: $.due_date, status: unpaid } }\n"
           "  PaymentReceived: { merge: { status: paid } }\n"
           "  InvoiceVoided:   { delete: true }\n"
           "indexes:\n"
           "  - { name: unpaid_by_due, field: customer_id, where: { status: unpaid }, order: due_date }\n"
           "aggregates:\n"
           "  - { name: balance, group: customer_id, sum: amount_cents, where: { status: unpaid } }\n"
           "sinks: [redis]\n",
           inv2, inv_topic);
  pt_write_def(&env, "inv2.yaml", def);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  pt_teardown(&env);
  return 0;
}

/* Produces n events of the model to both topics; returns the records written to the CDC
 * topic (events plus a tombstone after each void, as Debezium writes them). */
static long long produce(rd_kafka_t *rk, pt_model_t *m, int n) {
  long long cdc_records = 0;
  for (int i = 0; i < n; i++) {
    pt_event_t e = pt_next(m);
    size_t len;
    void *pb = pt_protobuf(&e, &len);
    pt_produce(rk, inv_topic, e.after.id, pb, len);
    free(pb);
    char *dz = pt_debezium(&e, i % 2);
    pt_produce(rk, cdc_topic, e.after.id, dz, strlen(dz));
    free(dz);
    cdc_records++;
    if (e.op == PT_VOID) {
      pt_produce(rk, cdc_topic, e.after.id, NULL, 0);
      cdc_records++;
    }
  }
  pt_flush(rk);
  return cdc_records;
}

static void check_all(redisContext *rc, PGconn *pg, const pt_model_t *m) {
  pt_check_redis(rc, m, inv, true);
  pt_check_pg(pg, m, inv, true);
  pt_check_redis(rc, m, cdc, false);
  pt_check_pg(pg, m, cdc, false);
  pt_check_redis(rc, m, inv2, false);
}

static void test_sinks_match_oracle_and_replay_is_idempotent(void **state) {
  (void)state;
  pt_model_t m;
  pt_model_init(&m, CUSTOMERS, 42);
  rd_kafka_t *rk = pt_producer();
  /* Half before the projector starts (catch-up), half while it runs (live). */
  long long cdc_total = produce(rk, &m, EVENTS / 2);
  pt_start(&env, NULL);
  cdc_total += produce(rk, &m, EVENTS - EVENTS / 2);
  redisContext *rc = pt_redis();
  PGconn *pg = PQconnectdb(env.dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  uint64_t t0 = bt_test_now_ms();
  pt_wait_applied(rc, pg, inv, EVENTS, 60000);
  pt_wait_applied(rc, pg, cdc, cdc_total, 60000);
  pt_wait_applied(rc, NULL, inv2, EVENTS, 60000);
  print_message("applied %d + %lld events in %llu ms\n", EVENTS, cdc_total,
                (unsigned long long)(bt_test_now_ms() - t0));
  check_all(rc, pg, &m);
  /* The live version is published. */
  redisReply *rep = test_redis_cmd(rc, "GET bt:proj:{%s}:current", inv);
  assert_int_equal(rep->type, REDIS_REPLY_STRING);
  assert_string_equal(rep->str, "1");
  freeReplyObject(rep);
  rep = test_redis_cmd(rc, "HGET bt:proj:{%s}:v1:meta state", inv);
  assert_string_equal(rep->str, "live");
  freeReplyObject(rep);

  char *rd_inv = pt_redis_digest(rc, inv), *pg_inv = pt_pg_digest(pg, inv);
  char *rd_cdc = pt_redis_digest(rc, cdc), *pg_cdc = pt_pg_digest(pg, cdc);
  char *rd_inv2 = pt_redis_digest(rc, inv2);

  /* A crash and a restart: the sinks hold everything, so nothing is applied again. */
  assert_int_equal(bt_test_stop(env.pid, SIGKILL, 5000) != -1, 1);
  env.pid = 0;
  pt_start(&env, NULL);
  usleep(1500000);
  char *d;
  assert_string_equal((d = pt_redis_digest(rc, inv)), rd_inv);
  free(d);
  assert_string_equal((d = pt_pg_digest(pg, inv)), pg_inv);
  free(d);
  check_all(rc, pg, &m);

  /* Redis loses the inv projection: it catches up from the topic's beginning, alone. */
  assert_int_equal(bt_test_stop(env.pid, SIGKILL, 5000) != -1, 1);
  env.pid = 0;
  char pattern[128];
  snprintf(pattern, sizeof pattern, "bt:proj:{%s}:*", inv);
  rep = test_redis_cmd(rc, "EVAL %s 0 %s",
                       "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end "
                       "return 1",
                       pattern);
  freeReplyObject(rep);
  assert_int_equal(pt_redis_applied(rc, inv), 0);
  pt_start(&env, NULL);
  pt_wait_applied(rc, pg, inv, EVENTS, 60000);
  assert_string_equal((d = pt_redis_digest(rc, inv)), rd_inv);
  free(d);
  assert_string_equal((d = pt_pg_digest(pg, inv)), pg_inv);
  free(d);
  assert_string_equal((d = pt_redis_digest(rc, cdc)), rd_cdc);
  free(d);
  assert_string_equal((d = pt_pg_digest(pg, cdc)), pg_cdc);
  free(d);
  assert_string_equal((d = pt_redis_digest(rc, inv2)), rd_inv2);
  free(d);
  check_all(rc, pg, &m);

  char *metrics = NULL;
  assert_int_equal(pt_get(&env, "/metrics", &metrics), 200);
  assert_non_null(strstr(metrics, "baton_projector_sink_offset{partition=\""));
  assert_non_null(strstr(metrics, "baton_projector_event_age_seconds{projection=\""));
  char series[200];
  snprintf(series, sizeof series, "baton_projector_lag_messages{partition=\"%s:%s:", inv,
           inv_topic);
  assert_non_null(strstr(metrics, series));
  snprintf(series, sizeof series, "baton_projector_sink_offset{partition=\"%s:postgres:%s:", inv,
           inv_topic);
  assert_non_null(strstr(metrics, series));
  free(metrics);

  assert_int_equal(bt_test_stop(env.pid, SIGTERM, 15000), 0);
  env.pid = 0;
  free(rd_inv);
  free(pg_inv);
  free(rd_cdc);
  free(rd_inv2);
  free(pg_cdc);
  free(m.inv);
  redisFree(rc);
  PQfinish(pg);
  rd_kafka_destroy(rk);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_sinks_match_oracle_and_replay_is_idempotent),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
