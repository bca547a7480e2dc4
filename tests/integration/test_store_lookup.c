/* The idempotency lookup of append_batch() is an index probe on (stream, source, id), never a
 * read of the whole stream: with the generic plan PL/pgSQL caches, migration 3's join used only
 * `stream` as the index condition and filtered source and id, so an append cost grew with its
 * stream (migration 4). The oracle is Postgres's own account of the plan it ran, from
 * auto_explain with nested statements, for an append to a stream of many events: the lookup's
 * index scan must name all three columns in its Index Cond, and filter out no row. */
#include "broker.h"
#include "buf.h"
#include "store_schema.h"
#include "test_store_util.h"

enum { LONG_STREAM = 300 };

static store_db_t db;

static int setup(void **state) {
  bt_test_env_load();
  store_db_create(&db, "it_store_lookup");
  char err[256] = "";
  if (broker_store_migrate(db.dsn, err, sizeof err) != 0)
    fail_msg("migrate: %s", err);
  return 0;
}

static int teardown(void **state) {
  store_db_drop(&db);
  return 0;
}

/* auto_explain's plans arrive as LOG messages: collect them. */
static bt_buf_t plans;

static void on_notice(void *arg, const char *msg) {
  (void)arg;
  assert_int_equal(bt_buf_append(&plans, msg, strlen(msg)), 0);
}

/* One call of append_batch() appending `n` events (ids <prefix>-1..n) to `stream` with
 * expected version "any"; returns its status. */
static long long append(PGconn *pg, const char *stream, const char *prefix, int n) {
  char count[16];
  snprintf(count, sizeof count, "%d", n);
  const char *params[] = {stream, prefix, count};
  return store_sql_int(
      pg,
      "SELECT status FROM baton.append_batch(ARRAY[$1], ARRAY[-1::bigint], ARRAY[$3::int],"
      " ARRAY[NULL::text], array_fill(1, ARRAY[$3::int]),"
      " ARRAY(SELECT $2 || '-' || k FROM generate_series(1, $3::int) AS k),"
      " array_fill('t'::text, ARRAY[$3::int]), array_fill('/it'::text, ARRAY[$3::int]),"
      " array_fill('1.0'::text, ARRAY[$3::int]), array_fill(NULL::text, ARRAY[$3::int]),"
      " array_fill(NULL::text, ARRAY[$3::int]), array_fill(NULL::text, ARRAY[$3::int]),"
      " array_fill(NULL::text, ARRAY[$3::int]), array_fill('7b7d'::text, ARRAY[$3::int]),"
      " array_fill(NULL::jsonb, ARRAY[$3::int]))",
      3, params);
}

static void test_lookup_is_a_probe(void **state) {
  PGconn *pg = PQconnectdb(db.dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  assert_int_equal(append(pg, "long", "seed", LONG_STREAM), 0);
  assert_int_equal(store_count_stream(pg, "long"), LONG_STREAM);

  bt_buf_init(&plans, 0);
  PQsetNoticeProcessor(pg, on_notice, NULL);
  PQclear(store_sql(pg, "LOAD 'auto_explain'", 0, NULL));
  PQclear(store_sql(pg,
                    "SELECT set_config('auto_explain.log_min_duration', '0', false),"
                    " set_config('auto_explain.log_nested_statements', 'on', false),"
                    " set_config('auto_explain.log_analyze', 'on', false),"
                    " set_config('client_min_messages', 'log', false)",
                    0, NULL));
  /* Several calls: PL/pgSQL switches to the generic plan after the fifth. */
  for (int i = 0; i < 7; i++) {
    char prefix[16];
    snprintf(prefix, sizeof prefix, "more%d", i);
    bt_buf_reset(&plans);
    assert_int_equal(append(pg, "long", prefix, 1), 0);
  }
  assert_int_equal(bt_buf_append(&plans, "", 1), 0);
  /* Every scan of that index in the last call's plans (the lookup is its only user there). */
  int scans = 0;
  for (const char *scan = strstr(plans.data, "Index Scan using events_stream_source_id_key"); scan;
       scan = strstr(scan + 1, "Index Scan using events_stream_source_id_key")) {
    const char *end = strstr(scan, "Query Text:");
    size_t len = end ? (size_t)(end - scan) : strlen(scan);
    char text[2048];
    snprintf(text, sizeof text, "%.*s", (int)(len < sizeof text - 1 ? len : sizeof text - 1), scan);
    if (!strstr(text, "(source = ") || !strstr(text, "(id = ") || strstr(text, "Rows Removed by"))
      fail_msg("the lookup does not probe (stream, source, id):\n%s", text);
    scans++;
  }
  if (scans == 0)
    fail_msg("no plan of the idempotency lookup among:\n%s", plans.data);
  assert_int_equal(store_count_stream(pg, "long"), LONG_STREAM + 7);
  bt_buf_free(&plans);
  PQfinish(pg);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_lookup_is_a_probe, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
