/* baton-projector as a service, against the stack: it starts with a directory of definitions,
 * migrates its schema (twice is a no-op), creates each projection's live version and tables
 * with a column per indexed, ordered and aggregated field, answers /healthz, /readyz and
 * /metrics, drains on SIGTERM with exit 0, and refuses to start on a bad definition with the
 * file, line and field. */
#include "test_kafka_common.h"
#include "test_projector_common.h"

static pt_env_t env;

static int setup(void **state) {
  (void)state;
  pt_setup(&env, "it_projector_service");
  char def[1024];
  snprintf(def, sizeof def,
           "projection: svc_%d\n"
           "source: { topics: [pt.svc.%d], format: cloudevents-json }\n"
           "key: invoice_id\n"
           "on:\n"
           "  InvoiceIssued: { upsert: { customer_id: $.customer_id, amount_cents: $.amount_cents,"
           " due_date: $.due_date, status: unpaid } }\n"
           "indexes:\n"
           "  - { name: unpaid_by_due, field: customer_id, where: { status: unpaid }, order: due_date }\n"
           "aggregates:\n"
           "  - { name: balance, group: customer_id, sum: amount_cents, where: { status: unpaid } }\n"
           "sinks: [redis, postgres]\n",
           (int)getpid(), (int)getpid());
  pt_write_def(&env, "svc.yaml", def);
  char topic[64];
  snprintf(topic, sizeof topic, "pt.svc.%d", (int)getpid());
  kt_topic(topic, 2);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  pt_teardown(&env);
  return 0;
}

static void test_serves_probes_and_tables(void **state) {
  (void)state;
  pt_start(&env, NULL);
  char *body = NULL;
  assert_int_equal(pt_get(&env, "/healthz", NULL), 200);
  assert_int_equal(pt_get(&env, "/readyz", &body), 200);
  assert_non_null(strstr(body, "\"redis\":true"));
  assert_non_null(strstr(body, "\"postgres\":true"));
  free(body);
  assert_int_equal(pt_get(&env, "/metrics", &body), 200);
  assert_non_null(strstr(body, "baton_projector_events_total"));
  assert_non_null(strstr(body, "baton_projector_dead_letters_total"));
  free(body);

  PGconn *pg = PQconnectdb(env.dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  char q[512];
  snprintf(q, sizeof q, "SELECT version FROM projector.current WHERE projection = 'svc_%d'",
           (int)getpid());
  assert_int_equal(pt_sql_int(pg, q), 1);
  snprintf(q, sizeof q,
           "SELECT string_agg(column_name || ':' || data_type, ',' ORDER BY ordinal_position) "
           "FROM information_schema.columns WHERE table_schema = 'projector' "
           "AND table_name = 'svc_%d_v1'",
           (int)getpid());
  PGresult *r = pt_sql(pg, q, 0, NULL);
  assert_string_equal(PQgetvalue(r, 0, 0), "key:text,doc:jsonb,customer_id:text,due_date:text,"
                                           "amount_cents:bigint");
  PQclear(r);
  snprintf(q, sizeof q,
           "SELECT count(*) FROM information_schema.tables WHERE table_schema = 'projector' "
           "AND table_name = 'svc_%d_v1_agg'",
           (int)getpid());
  assert_int_equal(pt_sql_int(pg, q), 1);

  /* SIGTERM drains and exits 0; a second start finds everything in place. */
  assert_int_equal(bt_test_stop(env.pid, SIGTERM, 15000), 0);
  env.pid = 0;
  pt_start(&env, NULL);
  assert_int_equal(pt_sql_int(pg, "SELECT count(*) FROM projector.schema_migrations"), 1);
  assert_int_equal(pt_sql_int(pg, "SELECT count(*) FROM projector.versions"), 1);
  assert_int_equal(bt_test_stop(env.pid, SIGTERM, 15000), 0);
  env.pid = 0;
  PQfinish(pg);
}

static void test_bad_definition_refused(void **state) {
  (void)state;
  pt_env_t bad = env;
  snprintf(bad.defs, sizeof bad.defs, "/tmp/it_projector_bad_%d", (int)getpid());
  mkdir(bad.defs, 0700);
  pt_write_def(&bad, "bad.yaml",
               "projection: bad\nsource: { topics: [t], format: nope }\nkey: id\n"
               "on: { X: { delete: true } }\nsinks: [redis]\n");
  const char *extra[] = {"BATON_HTTP_PORT=0", NULL};
  pid_t pid = pt_spawn(&bad, NULL, extra);
  assert_int_equal(pt_exit_code(pid), 1);
  char cmd[700];
  snprintf(cmd, sizeof cmd, "grep -q 'bad.yaml:2:.*format' %s", env.log);
  assert_int_equal(system(cmd), 0);
  snprintf(cmd, sizeof cmd, "rm -rf %s", bad.defs);
  assert_int_equal(system(cmd), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_serves_probes_and_tables),
      cmocka_unit_test(test_bad_definition_refused),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
