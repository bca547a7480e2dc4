/* baton-broker's start-up migration runs off the loop (broker/main.c), concurrently with the
 * Postgres pool and Kafka connecting:
 *  - while it runs (here: held up by a session that holds the migration's advisory lock),
 *    /readyz answers 503 with "schema": false, the store's routes answer 503 "starting" and
 *    the relay does not lead; once it is done, appends are accepted and relayed;
 *  - with BATON_BROKER_MIGRATE=false (the schema applied by `baton-broker migrate`) the relay
 *    starts at once. */
#include "test_relay_common.h"

#define MIGRATION_LOCK "7089075262275584001" /* broker/store_schema.c */

static int setup(void **state) {
  bt_test_env_load();
  return 0;
}

static int get_status(const char *url, char *body, size_t n) {
  bt_test_http_resp_t r;
  int st = 0;
  if (bt_test_http("GET", url, NULL, NULL, 0, &r) == 0) {
    st = r.status;
    snprintf(body, n, "%s", r.body ? r.body : "");
    bt_test_http_free(&r);
  }
  return st;
}

static void test_not_ready_until_migrated(void **state) {
  char cat[64], topic[96], routes[256], stream[128], url[256], body[1024];
  rt_route_topic("su", 1, cat, topic, routes);
  PGconn *lock = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  const char *key[] = {MIGRATION_LOCK};
  PQclear(rt_pg(lock, "SELECT pg_advisory_lock($1::bigint)", 1, key));
  const char *env[] = {routes, "BATON_BROKER_RELAY_POLL=20ms", "BATON_BROKER_RELAY_LEASE=2s", NULL};
  rt_broker_t b;
  rt_broker_start(&b, "startup_locked", env, "/healthz");
  /* The pool and Kafka connect meanwhile; only the schema holds readiness. */
  rt_sleep_ms(1500);
  snprintf(url, sizeof url, "%s/readyz", b.url);
  assert_int_equal(get_status(url, body, sizeof body), 503);
  if (!strstr(body, "\"schema\":false"))
    fail_msg("/readyz while migrating: %s", body);
  snprintf(stream, sizeof stream, "%s-1", cat);
  assert_int_equal(rt_append_range(b.url, stream, 1, 1, "startup"), 503);
  snprintf(url, sizeof url, "%s/v1/streams/%s/events", b.url, stream);
  assert_int_equal(get_status(url, body, sizeof body), 503);
  if (!strstr(body, "starting"))
    fail_msg("read while migrating: %s", body);
  assert_true(rt_metric(&b, "baton_broker_relay_leader{relay=\"store\"}") == 0);

  PQclear(rt_pg(lock, "SELECT pg_advisory_unlock($1::bigint)", 1, key));
  snprintf(url, sizeof url, "%s/readyz", b.url);
  assert_int_equal(bt_test_wait_status(url, 200, 20000), 0);
  assert_int_equal(rt_append_range(b.url, stream, 1, 5, "startup"), 201);
  rt_consume_verified(topic, cat, 5);
  rt_broker_stop(&b, SIGTERM);
  PQfinish(lock);
}

static void test_relays_without_startup_migration(void **state) {
  char cat[64], topic[96], routes[256], stream[128];
  rt_route_topic("sn", 1, cat, topic, routes);
  const char *env[] = {routes, "BATON_BROKER_MIGRATE=false", "BATON_BROKER_RELAY_POLL=20ms",
                       "BATON_BROKER_RELAY_LEASE=2s", NULL};
  rt_broker_t b;
  rt_broker_start(&b, "startup_nomigrate", env, "/readyz");
  snprintf(stream, sizeof stream, "%s-1", cat);
  assert_int_equal(rt_append_range(b.url, stream, 1, 5, "startup"), 201);
  rt_consume_verified(topic, cat, 5);
  rt_broker_stop(&b, SIGTERM);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_not_ready_until_migrated, rt_teardown),
      cmocka_unit_test_teardown(test_relays_without_startup_migration, rt_teardown),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
