/* Poison events and the dead-letter topic. CloudEvents (binary mode) of each poison kind —
 * undecodable data, an event type the definition does not map, an event lacking a field its
 * mapping reads — go to the DLQ topic with their class, error text and original topic,
 * partition and offset (and the original value and headers), and the projection goes on: the
 * good events around them are in both sinks. While the DLQ cannot be written (Produce errors
 * injected through devkafka) the projection holds at the poison event: no sink's offset
 * passes it, the event after it is not applied, /readyz says not ready; once the DLQ works
 * again everything is applied and the dead letter is there. */
#include "kafka_oracle.h"
#include "test_kafka_common.h"
#include "test_projector_common.h"

static pt_env_t env;
static char proj[64], topic[64], dlq[64];

static int setup(void **state) {
  (void)state;
  pt_setup(&env, "it_projector_poison");
  int pid = (int)getpid();
  snprintf(proj, sizeof proj, "poi_%d", pid);
  snprintf(topic, sizeof topic, "pt.poi.%d", pid);
  snprintf(dlq, sizeof dlq, "pt.dlq.%d", pid);
  kt_topic(topic, 1);
  kt_topic(dlq, 1);
  char def[1024];
  snprintf(def, sizeof def,
           "projection: %s\n"
           "source: { topics: [%s], format: cloudevents-json }\n"
           "key: invoice_id\n"
           "on:\n"
           "  InvoiceIssued: { upsert: { customer_id: $.customer_id, amount_cents: $.amount_cents,"
           " status: unpaid } }\n"
           "  InvoiceVoided: { delete: true }\n"
           "aggregates:\n"
           "  - { name: balance, group: customer_id, sum: amount_cents, where: { status: unpaid } }\n"
           "sinks: [redis, postgres]\n",
           proj, topic);
  pt_write_def(&env, "poi.yaml", def);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  kt_clear_errors(KT_API_PRODUCE);
  pt_teardown(&env);
  return 0;
}

/* One binary-mode CloudEvent. */
static void produce_ce(rd_kafka_t *rk, const char *type, const char *key, const char *data) {
  rd_kafka_resp_err_t err = rd_kafka_producev(
      rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
      RD_KAFKA_V_VALUE((void *)data, strlen(data)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_HEADER("ce_type", type, -1), RD_KAFKA_V_HEADER("ce_id", key, -1),
      RD_KAFKA_V_HEADER("ce_specversion", "1.0", -1),
      RD_KAFKA_V_HEADER("content-type", "application/json", -1), RD_KAFKA_V_END);
  assert_int_equal(err, RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* The next n Produce requests fail with a retriable error (NOT_ENOUGH_REPLICAS). */
static void refuse_produce(int n) {
  char body[4096];
  int len = snprintf(body, sizeof body, "{\"api_key\":%d,\"errors\":[", KT_API_PRODUCE);
  for (int i = 0; i < n && len < (int)sizeof body - 16; i++)
    len += snprintf(body + len, sizeof body - (size_t)len, "%s19", i ? "," : "");
  snprintf(body + len, sizeof body - (size_t)len, "]}");
  kt_control("POST", "/errors", body);
}

static long long balance(redisContext *rc, PGconn *pg, long long *pg_total) {
  redisReply *rep = test_redis_cmd(rc, "HGET bt:proj:{%s}:v1:agg:balance C1", proj);
  long long b = rep->type == REDIS_REPLY_STRING ? atoll(rep->str) : 0;
  freeReplyObject(rep);
  char q[200];
  snprintf(q, sizeof q, "SELECT coalesce(sum(total), 0) FROM projector.\"%s_v1_agg\"", proj);
  *pg_total = pt_sql_int(pg, q);
  return b;
}

/* The dead letters read back from Kafka, checked against the expected (offset, class). */
static void expect_dead_letters(const int64_t *offsets, const char *const *classes, size_t n) {
  bt_test_kmsg_t *msgs = NULL;
  long got = bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), dlq, 10000, &msgs);
  assert_true(got >= (long)n);
  for (size_t i = 0; i < n; i++) {
    bool found = false;
    for (long k = 0; k < got && !found; k++) {
      const char *off = bt_test_kmsg_header(&msgs[k], "baton_dl_offset");
      if (!off || atoll(off) != offsets[i])
        continue;
      found = true;
      assert_string_equal(bt_test_kmsg_header(&msgs[k], "baton_dl_class"), classes[i]);
      assert_string_equal(bt_test_kmsg_header(&msgs[k], "baton_dl_topic"), topic);
      assert_string_equal(bt_test_kmsg_header(&msgs[k], "baton_dl_partition"), "0");
      assert_non_null(bt_test_kmsg_header(&msgs[k], "baton_dl_error"));
      assert_true(strlen(bt_test_kmsg_header(&msgs[k], "baton_dl_error")) > 5);
      assert_non_null(bt_test_kmsg_header(&msgs[k], "ce_type")); /* original headers kept */
    }
    if (!found)
      fail_msg("no dead letter for offset %lld (%s) among %ld", (long long)offsets[i], classes[i],
               got);
  }
  bt_test_kmsgs_free(msgs, got);
}

static void test_poison_goes_to_dlq_and_unavailable_dlq_holds(void **state) {
  (void)state;
  char env_dlq[128];
  snprintf(env_dlq, sizeof env_dlq, "BATON_PROJECTOR_DLQ_TOPIC=%s", dlq);
  const char *extra[] = {env_dlq, "BATON_KAFKA_DELIVERY_TIMEOUT=1s",
                         "BATON_PROJECTOR_RETRY_MAX=300ms", NULL};
  rd_kafka_t *rk = pt_producer();
  produce_ce(rk, "InvoiceIssued", "I1", "{\"invoice_id\":\"I1\",\"customer_id\":\"C1\",\"amount_cents\":100}");
  produce_ce(rk, "InvoiceIssued", "I2", "not json{");                    /* 1: decode */
  produce_ce(rk, "CustomerUpdated", "C1", "{\"customer_id\":\"C1\"}");     /* 2: unmapped */
  produce_ce(rk, "InvoiceIssued", "I3", "{\"invoice_id\":\"I3\",\"customer_id\":\"C1\"}"); /* 3 */
  produce_ce(rk, "InvoiceIssued", "I4", "{\"invoice_id\":\"I4\",\"customer_id\":\"C1\",\"amount_cents\":50}");
  pt_flush(rk);
  pt_start(&env, extra);
  redisContext *rc = pt_redis();
  PGconn *pg = PQconnectdb(env.dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  pt_wait_applied(rc, pg, proj, 5, 30000);
  long long pg_total;
  assert_int_equal(balance(rc, pg, &pg_total), 150);
  assert_int_equal(pg_total, 150);
  const int64_t offs[] = {1, 2, 3};
  const char *const classes[] = {"decode", "unmapped", "mapping"};
  expect_dead_letters(offs, classes, 3);

  /* The DLQ refuses writes: a good event, a poison one (offset 6), a good one. */
  refuse_produce(1000);
  produce_ce(rk, "InvoiceVoided", "I1", "{\"invoice_id\":\"I1\"}");      /* 5 */
  produce_ce(rk, "Unknown", "I9", "{}");                                /* 6: unmapped */
  produce_ce(rk, "InvoiceIssued", "I7", "{\"invoice_id\":\"I7\",\"customer_id\":\"C1\",\"amount_cents\":7}");
  /* The test's own producer shares the injected errors: produce, then inject again. */
  kt_clear_errors(KT_API_PRODUCE);
  pt_flush(rk);
  refuse_produce(1000);
  uint64_t end = bt_test_now_ms() + 4000;
  bool unready = false;
  while (bt_test_now_ms() < end) {
    assert_true(pt_redis_applied(rc, proj) <= 6);
    assert_true(pt_pg_applied(pg, proj) <= 6);
    redisReply *rep = test_redis_cmd(rc, "EXISTS bt:proj:{%s}:v1:doc:I7", proj);
    assert_int_equal(rep->integer, 0);
    freeReplyObject(rep);
    unready = unready || pt_get(&env, "/readyz", NULL) == 503;
    usleep(100000);
  }
  assert_true(unready);
  kt_clear_errors(KT_API_PRODUCE);
  pt_wait_applied(rc, pg, proj, 8, 30000);
  assert_int_equal(balance(rc, pg, &pg_total), 57); /* I1 voided: I4 50 + I7 7 */
  assert_int_equal(pg_total, 57);
  const int64_t offs2[] = {1, 2, 3, 6};
  const char *const classes2[] = {"decode", "unmapped", "mapping", "unmapped"};
  expect_dead_letters(offs2, classes2, 4);
  char *metrics = NULL;
  assert_int_equal(pt_get(&env, "/metrics", &metrics), 200);
  assert_non_null(strstr(metrics, "baton_projector_dead_letters_total 4"));
  free(metrics);
  assert_int_equal(bt_test_stop(env.pid, SIGTERM, 15000), 0);
  env.pid = 0;
  redisFree(rc);
  PQfinish(pg);
  rd_kafka_destroy(rk);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_poison_goes_to_dlq_and_unavailable_dlq_holds),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
