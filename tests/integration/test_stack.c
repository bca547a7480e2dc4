/* The stack fixture itself: `./dev stack-up` left a Postgres, a Redis and a baton-devkafka
 * that answer, its env file describes them, and the fault-test verbs (pg-restart,
 * redis-restart) bring each server back. Every other integration test stands on this. */
#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testsupport.h"

static int setup(void **state) {
  (void)state;
  bt_test_env_load();
  return 0;
}

static void assert_pg_select(int expect) {
  const char *dsn = bt_test_env("BATON_PG_DSN");
  PGconn *c = PQconnectdb(dsn);
  if (PQstatus(c) != CONNECTION_OK) fail_msg("connect %s: %s", dsn, PQerrorMessage(c));
  char sql[64];
  snprintf(sql, sizeof sql, "SELECT %d", expect);
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK) fail_msg("%s: %s", sql, PQerrorMessage(c));
  assert_int_equal(atoi(PQgetvalue(r, 0, 0)), expect);
  PQclear(r);
  PQfinish(c);
}

static void test_postgres(void **state) {
  (void)state;
  assert_pg_select(1);
  /* Enough connections for the pool tests running side by side. */
  PGconn *c = PQconnectdb(bt_test_env("BATON_PG_DSN"));
  assert_int_equal(PQstatus(c), CONNECTION_OK);
  PGresult *r = PQexec(c, "SHOW max_connections");
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  assert_true(atoi(PQgetvalue(r, 0, 0)) >= 200);
  PQclear(r);
  PQfinish(c);
}

static redisContext *redis_connect(void) {
  const char *url = bt_test_env("BATON_REDIS_URL");
  char host[128];
  int port;
  if (sscanf(url, "redis://%127[^:]:%d", host, &port) != 2) fail_msg("bad BATON_REDIS_URL %s", url);
  struct timeval tv = {.tv_sec = 5};
  redisContext *rc = redisConnectWithTimeout(host, port, tv);
  if (rc == NULL || rc->err) fail_msg("redis %s: %s", url, rc ? rc->errstr : "no memory");
  return rc;
}

static void assert_redis_ping(void) {
  redisContext *rc = redis_connect();
  redisReply *rep = redisCommand(rc, "PING");
  assert_non_null(rep);
  assert_int_equal(rep->type, REDIS_REPLY_STATUS);
  assert_string_equal(rep->str, "PONG");
  freeReplyObject(rep);
  redisFree(rc);
}

static void test_redis(void **state) {
  (void)state;
  assert_redis_ping();
  /* Nothing is persisted: the test stack must not write RDB or AOF files. */
  redisContext *rc = redis_connect();
  redisReply *rep = redisCommand(rc, "CONFIG GET appendonly");
  assert_non_null(rep);
  assert_int_equal(rep->type, REDIS_REPLY_ARRAY);
  assert_int_equal(rep->elements, 2);
  assert_string_equal(rep->element[1]->str, "no");
  freeReplyObject(rep);
  redisFree(rc);
}

static void test_devkafka(void **state) {
  (void)state;
  char url[512];
  snprintf(url, sizeof url, "%s/status", bt_test_env("BATON_DEVKAFKA_CONTROL"));
  bt_test_http_resp_t resp;
  assert_int_equal(bt_test_http("GET", url, NULL, NULL, 0, &resp), 0);
  assert_int_equal(resp.status, 200);
  bt_test_http_free(&resp);

  /* The bootstrap list speaks the Kafka protocol and carries the configured topic. */
  char err[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (rd_kafka_conf_set(conf, "bootstrap.servers", bt_test_env("BATON_KAFKA_BROKERS"), err,
                        sizeof err) != RD_KAFKA_CONF_OK)
    fail_msg("%s", err);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (rk == NULL) fail_msg("rd_kafka_new: %s", err);
  const struct rd_kafka_metadata *md = NULL;
  rd_kafka_resp_err_t e = rd_kafka_metadata(rk, 1, NULL, &md, 10000);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) fail_msg("metadata: %s", rd_kafka_err2str(e));
  assert_true(md->broker_cnt >= 1);
  int found = 0;
  for (int i = 0; i < md->topic_cnt; i++) {
    if (strcmp(md->topics[i].topic, "events") == 0) found = md->topics[i].partition_cnt;
  }
  assert_true(found >= 1);
  rd_kafka_metadata_destroy(md);
  rd_kafka_destroy(rk);
}

/* The fault-test verbs act on this stack (BATON_DEV_RUN_DIR from the env file) and return
 * only once the server accepts connections again. */
static void test_restart_verbs(void **state) {
  (void)state;
  assert_int_equal(bt_test_sh("./dev pg-restart"), 0);
  assert_pg_select(2);
  assert_int_equal(bt_test_sh("./dev redis-restart"), 0);
  assert_redis_ping();
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_postgres),
      cmocka_unit_test(test_redis),
      cmocka_unit_test(test_devkafka),
      cmocka_unit_test(test_restart_verbs),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
