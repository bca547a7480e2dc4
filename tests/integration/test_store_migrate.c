/* Schema migrations: `baton-broker migrate` run by several replicas at once on an empty
 * database applies every migration exactly once (the advisory lock serialises them), a second
 * run changes nothing, and a broker then starts on that schema and appends. The test creates a
 * database of its own, so it sees the migrations from the very first. */
#include "test_store_util.h"

enum { REPLICAS = 6 };

static store_db_t db;

static int setup(void **state) {
  bt_test_env_load();
  store_db_create(&db, "it_store_migrate");
  return 0;
}

static int teardown(void **state) {
  store_db_drop(&db);
  return 0;
}

/* Starts `baton-broker migrate` processes and returns how many exited 0. */
static int run_migrations(int n) {
  static char env_dsn[1100], env_kafka[512];
  snprintf(env_dsn, sizeof env_dsn, "BATON_PG_DSN=%s", db.dsn);
  snprintf(env_kafka, sizeof env_kafka, "BATON_KAFKA_BROKERS=%s",
           bt_test_env("BATON_KAFKA_BROKERS"));
  const char *env[] = {env_dsn, env_kafka, NULL};
  const char *argv[] = {bt_test_bin("baton-broker"), "migrate", NULL};
  char log[512];
  const char *build = getenv("BATON_BUILD_DIR");
  snprintf(log, sizeof log, "%s/Testing/it_store_migrate.log", build ? build : "/tmp");
  pid_t pids[REPLICAS];
  for (int i = 0; i < n; i++)
    pids[i] = bt_test_spawn(argv, env, log);
  int ok = 0;
  for (int i = 0; i < n; i++) {
    int status = 0;
    waitpid(pids[i], &status, 0);
    ok += WIFEXITED(status) && WEXITSTATUS(status) == 0;
  }
  return ok;
}

static void test_concurrent_migrations(void **state) {
  assert_int_equal(run_migrations(REPLICAS), REPLICAS);
  PGconn *pg = PQconnectdb(db.dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  long long applied = store_sql_int(pg, "SELECT count(*) FROM baton.schema_migrations", 0, NULL);
  long long distinct =
      store_sql_int(pg, "SELECT count(DISTINCT version) FROM baton.schema_migrations", 0, NULL);
  assert_true(applied >= 2);
  assert_int_equal(applied, distinct);
  assert_int_equal(store_sql_int(pg, "SELECT last FROM baton.positions", 0, NULL), 0);
  assert_int_equal(store_sql_int(pg, "SELECT count(*) FROM baton.positions", 0, NULL), 1);
  /* Again: nothing to do, nothing changes. */
  assert_int_equal(run_migrations(2), 2);
  assert_int_equal(store_sql_int(pg, "SELECT count(*) FROM baton.schema_migrations", 0, NULL),
                   applied);

  /* A broker on that schema (migrating again at start) appends; the first position is 1. */
  store_broker_t br;
  char env_dsn[1100];
  snprintf(env_dsn, sizeof env_dsn, "BATON_PG_DSN=%s", db.dsn);
  const char *extra[] = {env_dsn, NULL}; /* later entries override the stack's DSN */
  store_broker_start(&br, "it_store_migrate", extra);
  char *body = store_append_body("\"no_stream\"", "m", 1, 2);
  json_t *doc;
  assert_int_equal(store_http(&br, "POST", "/v1/streams/m-1/events", body, &doc, NULL), 201);
  assert_int_equal(jint(doc, "position"), 2);
  json_decref(doc);
  free(body);
  store_broker_stop(&br);
  PQfinish(pg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_concurrent_migrations),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
