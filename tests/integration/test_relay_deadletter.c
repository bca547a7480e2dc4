/* What cannot be relayed moves to the dead-letter topic, and the relay goes on:
 *  - BATON_BROKER_TOPICS binds the relay too: events of a stream routed to a topic that is
 *    not allowed (the allow-list changed after the append, as when a topic is retired) go to
 *    the dead-letter topic, with the reason and their stream and version, never to the
 *    topic; later events of allowed streams are not held up;
 *  - a record Kafka refuses for good (devkafka injects INVALID_RECORD on Produce) moves to
 *    the dead-letter topic after BATON_BROKER_RELAY_DEAD_LETTER_AFTER refusals, counted in
 *    baton_broker_relay_dead_lettered_total, and everything after it is relayed in order;
 *  - retriable errors (NOT_ENOUGH_REPLICAS) are retried: nothing moves, nothing is lost;
 *  - a service outbox obeys BATON_BROKER_TOPICS too: a row for a topic that is not allowed
 *    goes to the dead-letter topic with its outbox and position, and the rows after it flow. */
#include "test_relay_common.h"

#define RD_KAFKA_INVALID_RECORD 87
#define RD_KAFKA_NOT_ENOUGH_REPLICAS 19

static int setup(void **state) {
  bt_test_env_load();
  return 0;
}

static const char *dl_series = "baton_broker_relay_dead_lettered_total{relay=\"store\"}";

static size_t count_stream(const rt_recs_t *r, const char *stream) {
  size_t n = 0;
  for (size_t i = 0; i < r->n; i++)
    n += strcmp(r->v[i].stream, stream) == 0;
  return n;
}

static void test_topics_allow_list_binds_the_relay(void **state) {
  char ok_cat[64], no_cat[64], ok_topic[96], no_topic[96], dlq[96], routes[400], topics[300],
      dlenv[160];
  snprintf(ok_cat, sizeof ok_cat, "dlok%s", rt_run_id());
  snprintf(no_cat, sizeof no_cat, "dlno%s", rt_run_id());
  snprintf(ok_topic, sizeof ok_topic, "relaytest.%s", ok_cat);
  snprintf(no_topic, sizeof no_topic, "relaytest.%s", no_cat);
  snprintf(dlq, sizeof dlq, "relaytest.dlq%s", rt_run_id());
  rt_topic_create(ok_topic, 1);
  rt_topic_create(no_topic, 1);
  rt_topic_create(dlq, 1);
  snprintf(routes, sizeof routes, "BATON_BROKER_ROUTES=%s=%s,%s=%s", ok_cat, ok_topic, no_cat,
           no_topic);
  snprintf(dlenv, sizeof dlenv, "BATON_BROKER_RELAY_DEAD_LETTER_TOPIC=%s", dlq);
  /* The appends go through a broker without the allow-list and without a relay. */
  const char *writer_env[] = {routes, "BATON_BROKER_RELAY=false", NULL};
  rt_broker_t w, b;
  rt_broker_start(&w, "dl_writer", writer_env, "/readyz");
  char ok_stream[128], no_stream[128];
  snprintf(ok_stream, sizeof ok_stream, "%s-1", ok_cat);
  snprintf(no_stream, sizeof no_stream, "%s-1", no_cat);
  assert_int_equal(rt_append_range(w.url, ok_stream, 1, 5, "relay.dl"), 201);
  assert_int_equal(rt_append_range(w.url, no_stream, 1, 3, "relay.dl"), 201);
  assert_int_equal(rt_append_range(w.url, ok_stream, 6, 10, "relay.dl"), 201);

  snprintf(topics, sizeof topics, "BATON_BROKER_TOPICS=%s,%s", ok_topic, dlq);
  const char *env[] = {routes, topics, dlenv, "BATON_BROKER_RELAY_POLL=20ms",
                       "BATON_BROKER_RELAY_LEASE=2s", NULL};
  rt_broker_start(&b, "dl_relay", env, "/readyz");
  rt_recs_t dead = {0}, denied = {0};
  rt_consume_verified(ok_topic, ok_stream, 10);
  /* The denied stream's events are in the dead-letter topic, in order, with the reason and
   * their coordinates; none reached the denied topic. */
  assert_true(rt_consume(dlq, 3, 30000, &dead) >= 3);
  long long next = 1;
  for (size_t i = 0; i < dead.n; i++) {
    if (strcmp(dead.v[i].stream, no_stream) != 0)
      continue;
    if (!strstr(dead.v[i].dl_error, "BATON_BROKER_TOPICS"))
      fail_msg("dead letter without the reason: '%s'", dead.v[i].dl_error);
    assert_string_equal(dead.v[i].dl_topic, no_topic);
    assert_string_equal(dead.v[i].dl_relay, "store");
    assert_true(atoll(dead.v[i].dl_position) > 0);
    if (dead.v[i].version == next)
      next++;
  }
  assert_int_equal(next, 4);
  rt_consume(no_topic, 0, 3000, &denied);
  assert_int_equal(count_stream(&denied, no_stream), 0);
  assert_true(rt_metric(&b, dl_series) >= 3);
  rt_recs_free(&dead);
  rt_recs_free(&denied);
  rt_broker_stop(&b, SIGTERM);
  rt_broker_stop(&w, SIGTERM);
}

static void test_refused_record_moves_and_retriable_retries(void **state) {
  char cat[64], topic[96], dlq[96], routes[256], dlenv[160], stream[128];
  snprintf(dlq, sizeof dlq, "relaytest.dlqk%s", rt_run_id());
  rt_route_topic("dlk", 1, cat, topic, routes);
  rt_topic_create(dlq, 1);
  snprintf(dlenv, sizeof dlenv, "BATON_BROKER_RELAY_DEAD_LETTER_TOPIC=%s", dlq);
  const char *env[] = {routes, dlenv, "BATON_BROKER_RELAY_DEAD_LETTER_AFTER=2",
                       "BATON_BROKER_RELAY_POLL=20ms", "BATON_BROKER_RELAY_LEASE=5s",
                       "BATON_BROKER_RELAY_MAX_FAILED_ROUNDS=0", NULL};
  rt_broker_t b;
  rt_broker_start(&b, "dl_kafka", env, "/readyz");
  assert_int_equal(rt_wait_metric(&b, "baton_broker_relay_leader{relay=\"store\"}", 1, true, 30000), 0);
  assert_int_equal(rt_wait_metric(&b, "baton_broker_relay_lag_events{relay=\"store\"}", 0, true, 30000), 0);
  snprintf(stream, sizeof stream, "%s-1", cat);

  /* Retriable: three NOT_ENOUGH_REPLICAS answers are retried; nothing moves. */
  double dl0 = rt_metric(&b, dl_series);
  assert_int_equal(rt_kafka_control("/errors", "{\"api_key\":0,\"errors\":[19,19,19]}"), 200);
  assert_int_equal(rt_append_range(b.url, stream, 1, 5, "relay.dlk"), 201);
  rt_recs_t recs = {0};
  assert_int_equal(rt_consume(topic, 5, 60000, &recs), 5);
  assert_true(rt_metric(&b, dl_series) == dl0);
  rt_recs_free(&recs);

  /* Non-retriable: two INVALID_RECORD refusals of the round's first record move it. */
  char body[128];
  snprintf(body, sizeof body, "{\"api_key\":0,\"errors\":[%d,%d]}", RD_KAFKA_INVALID_RECORD,
           RD_KAFKA_INVALID_RECORD);
  assert_int_equal(rt_kafka_control("/errors", body), 200);
  /* Version 6 alone: with more records in the round, librdkafka may split them over several
   * Produce requests (it did on a loaded CI machine), and the second injected refusal then
   * lands on another record's request instead of the first record's retry. */
  assert_int_equal(rt_append_range(b.url, stream, 6, 6, "relay.dlk"), 201);
  assert_int_equal(rt_wait_metric(&b, dl_series, dl0 + 1, false, 60000), 0);
  assert_int_equal(rt_append_range(b.url, stream, 7, 10, "relay.dlk"), 201);
  rt_recs_t dead = {0};
  assert_true(rt_consume(dlq, 1, 30000, &dead) >= 1);
  assert_int_equal(count_stream(&dead, stream), 1);
  assert_int_equal(dead.v[0].version, 6);
  /* librdkafka's text for INVALID_RECORD. */
  if (!strstr(dead.v[0].dl_error, "validate record"))
    fail_msg("dead letter's error: '%s'", dead.v[0].dl_error);
  assert_string_equal(dead.v[0].dl_topic, topic);
  /* Everything after it is relayed: versions 7..10 besides 1..5, and 6 only as a dead
   * letter. (Order within the partition around a refused request is the producer's gapless
   * guarantee, tested with it.) */
  assert_true(rt_consume(topic, 9, 60000, &recs) >= 9);
  bool seen[11] = {false};
  for (size_t i = 0; i < recs.n; i++)
    if (strcmp(recs.v[i].stream, stream) == 0 && recs.v[i].version >= 1 && recs.v[i].version <= 10)
      seen[recs.v[i].version] = true;
  for (int v = 1; v <= 10; v++)
    if (seen[v] != (v != 6))
      fail_msg("version %d %s the topic", v, seen[v] ? "is in" : "is missing from");
  rt_recs_free(&recs);
  rt_recs_free(&dead);
  rt_broker_stop(&b, SIGTERM);
}

static void test_outbox_obeys_allow_list(void **state) {
  char db[64], dsn[1024], ok_topic[96], no_topic[96], dlq[96], list[1200], topics[300],
      dlenv[160], sql[160];
  snprintf(db, sizeof db, "relay_dl_%s", rt_run_id());
  snprintf(ok_topic, sizeof ok_topic, "relaytest.obok%s", rt_run_id());
  snprintf(no_topic, sizeof no_topic, "relaytest.obno%s", rt_run_id());
  snprintf(dlq, sizeof dlq, "relaytest.obdlq%s", rt_run_id());
  rt_topic_create(ok_topic, 1);
  rt_topic_create(no_topic, 1);
  rt_topic_create(dlq, 1);
  PGconn *admin = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  snprintf(sql, sizeof sql, "CREATE DATABASE %s", db);
  rt_pg_exec(admin, sql);
  rt_dsn_for_db(dsn, sizeof dsn, db);
  PGconn *c = rt_pg_open(dsn);
  rt_pg_exec(c, rt_outbox_ddl);
  const char *rows[3][2] = {{ok_topic, "ob-1"}, {no_topic, "ob-2"}, {ok_topic, "ob-3"}};
  for (int i = 0; i < 3; i++)
    PQclear(rt_pg(c,
                  "INSERT INTO outbox (topic, key, id, type, source, data) "
                  "VALUES ($1, 'ob-key', $2, 'outbox.dl', '/svc', '\\x7b7d')",
                  2, rows[i]));
  long long denied_pos =
      rt_pg_scalar(c, "SELECT position FROM outbox WHERE id = 'ob-2'", 0, NULL);
  snprintf(list, sizeof list, "BATON_BROKER_OUTBOX_DSNS=%s", dsn);
  snprintf(topics, sizeof topics, "BATON_BROKER_TOPICS=%s,%s", ok_topic, dlq);
  snprintf(dlenv, sizeof dlenv, "BATON_BROKER_RELAY_DEAD_LETTER_TOPIC=%s", dlq);
  const char *env[] = {list, topics, dlenv, "BATON_BROKER_RELAY_POLL=20ms",
                       "BATON_BROKER_RELAY_LEASE=2s", NULL};
  rt_broker_t b;
  rt_broker_start(&b, "dl_outbox", env, "/readyz");
  uint64_t end = bt_test_now_ms() + 30000;
  while (rt_pg_scalar(c, "SELECT count(*) FROM outbox", 0, NULL) != 0) {
    assert_true(bt_test_now_ms() < end);
    rt_sleep_ms(50);
  }
  rt_recs_t ok = {0}, dead = {0}, denied = {0};
  assert_true(rt_consume(ok_topic, 2, 30000, &ok) >= 2);
  assert_true(rt_consume(dlq, 1, 30000, &dead) >= 1);
  rt_consume(no_topic, 0, 3000, &denied);
  assert_int_equal(denied.n, 0);
  assert_string_equal(dead.v[0].id, "ob-2");
  char label[96], pos[32];
  snprintf(label, sizeof label, "outbox:%s", db);
  snprintf(pos, sizeof pos, "%lld", denied_pos);
  assert_string_equal(dead.v[0].dl_relay, label);
  assert_string_equal(dead.v[0].dl_position, pos);
  assert_string_equal(dead.v[0].dl_topic, no_topic);
  assert_non_null(strstr(dead.v[0].dl_error, "BATON_BROKER_TOPICS"));
  rt_recs_free(&ok);
  rt_recs_free(&dead);
  rt_recs_free(&denied);
  rt_broker_stop(&b, SIGTERM);
  PQfinish(c);
  snprintf(sql, sizeof sql, "DROP DATABASE IF EXISTS %s WITH (FORCE)", db);
  rt_pg_exec(admin, sql);
  PQfinish(admin);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_topics_allow_list_binds_the_relay, rt_teardown),
      cmocka_unit_test_teardown(test_refused_record_moves_and_retriable_retries, rt_teardown),
      cmocka_unit_test_teardown(test_outbox_obeys_allow_list, rt_teardown),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
