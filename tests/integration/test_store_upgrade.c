/* Upgrading a store that the previous release wrote: a database of its own is brought to
 * schema version 2 with the released migrations and filled through the version-2
 * append_batch (events with a partitionkey, and the empty stream row that version 2 left
 * after a 409). A broker then starts, applies migration 3, and must treat those rows by the
 * new rules: an exact retry of an old event is a duplicate (its hash is computed from the
 * stored columns), other content under its (source, id) is an id_conflict, the stream keeps
 * its partitionkey, and the empty row still reads as "no stream". */
#include "store_schema.c"
#include "test_store_util.h"

static store_db_t db;
static store_broker_t br;

static int setup(void **state) {
  bt_test_env_load();
  store_db_create(&db, "it_store_upgrade");
  return 0;
}

static int teardown(void **state) {
  store_broker_stop(&br);
  store_db_drop(&db);
  return 0;
}

static void exec_ok(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_COMMAND_OK && PQresultStatus(r) != PGRES_TUPLES_OK)
    fail_msg("%.80s: %s", sql, PQresultErrorMessage(r));
  PQclear(r);
}

/* The database as the previous release left it: migrations 1 and 2, and rows written by the
 * version-2 function. */
static void write_v2_store(PGconn *c) {
  exec_ok(c, "SET client_min_messages = warning");
  exec_ok(c, "CREATE SCHEMA baton");
  exec_ok(c, "CREATE TABLE baton.schema_migrations (version int PRIMARY KEY, name text NOT NULL, "
             "applied_at timestamptz NOT NULL DEFAULT now())");
  for (int i = 0; i < 2; i++) {
    assert_int_equal(migrations[i].version, i + 1);
    exec_ok(c, migrations[i].sql);
  }
  exec_ok(c, "INSERT INTO baton.schema_migrations (version, name) VALUES (1, 'm1'), (2, 'm2')");
  /* order-old: two events with data "hi", partitionkey eu. */
  exec_ok(c, "SELECT * FROM baton.append_batch(ARRAY['order-old'], ARRAY[-1]::bigint[], "
             "ARRAY[2], ARRAY[1,1], ARRAY['e1','e2'], ARRAY['t','t'], ARRAY['/s','/s'], "
             "ARRAY['1.0','1.0'], ARRAY[NULL,NULL]::text[], ARRAY[NULL,NULL]::text[], "
             "ARRAY['text/plain','text/plain'], ARRAY[NULL,NULL]::text[], ARRAY['6869','6869'], "
             "ARRAY['{\"partitionkey\":\"eu\"}','{\"partitionkey\":\"eu\"}']::jsonb[])");
  /* order-ghost: a numeric expected_version on a missing stream, which left an empty row. */
  exec_ok(c, "SELECT * FROM baton.append_batch(ARRAY['order-ghost'], ARRAY[3]::bigint[], "
             "ARRAY[1], ARRAY[1], ARRAY['g1'], ARRAY['t'], ARRAY['/s'], ARRAY['1.0'], "
             "ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[NULL]::text[], "
             "ARRAY[NULL]::text[], ARRAY[NULL]::text[], ARRAY[NULL]::jsonb[])");
  PGresult *r = store_sql(c, "SELECT version FROM baton.streams WHERE stream = 'order-ghost'", 0,
                          NULL);
  assert_int_equal(PQntuples(r), 1); /* the row version 2 leaves behind */
  PQclear(r);
}

static int post(const char *stream, const char *event, const char *expected, json_t **doc) {
  char path[128], body[1024];
  snprintf(path, sizeof path, "/v1/streams/%s/events", stream);
  snprintf(body, sizeof body, "{\"expected_version\":%s,\"events\":[%s]}", expected, event);
  return store_http(&br, "POST", path, body, doc, NULL);
}

#define EV(id, data, pk)                                                                      \
  "{\"specversion\":\"1.0\",\"id\":\"" id "\",\"source\":\"/s\",\"type\":\"t\","              \
  "\"datacontenttype\":\"text/plain\",\"data\":\"" data "\"" pk "}"

static void test_upgrade_from_v2(void **state) {
  PGconn *c = PQconnectdb(db.dsn);
  assert_int_equal(PQstatus(c), CONNECTION_OK);
  write_v2_store(c);

  char env_dsn[1100];
  snprintf(env_dsn, sizeof env_dsn, "BATON_PG_DSN=%s", db.dsn);
  const char *extra[] = {env_dsn, NULL};
  store_broker_start(&br, "it_store_upgrade", extra);
  assert_int_equal(store_sql_int(c, "SELECT max(version) FROM baton.schema_migrations", 0, NULL),
                   broker_store_schema_version());
  /* Nothing was rewritten: the old rows have no stored hash. */
  assert_int_equal(
      store_sql_int(c, "SELECT count(*) FROM baton.events WHERE payload_hash IS NULL", 0, NULL), 2);

  json_t *doc;
  /* An exact retry of an old event. */
  assert_int_equal(post("order-old", EV("e1", "hi", ",\"partitionkey\":\"eu\""), "\"any\"", &doc),
                   200);
  assert_int_equal(jint(doc, "first_version"), 1);
  json_decref(doc);
  /* The same (source, id) with other data. */
  assert_int_equal(post("order-old", EV("e1", "ho", ",\"partitionkey\":\"eu\""), "\"any\"", &doc),
                   409);
  assert_string_equal(jstr(doc, "error"), "id_conflict");
  json_decref(doc);
  /* The stream kept its partitionkey from before the upgrade. */
  assert_int_equal(post("order-old", EV("e3", "x", ",\"partitionkey\":\"us\""), "2", &doc), 409);
  assert_string_equal(jstr(doc, "error"), "partitionkey_conflict");
  json_decref(doc);
  assert_int_equal(post("order-old", EV("e3", "x", ",\"partitionkey\":\"eu\""), "2", &doc), 201);
  assert_int_equal(jint(doc, "first_version"), 3);
  json_decref(doc);
  /* The empty row of version 2 is still "no stream", and takes its first events. */
  assert_int_equal(post("order-ghost", EV("g1", "x", ""), "\"no_stream\"", &doc), 201);
  assert_int_equal(jint(doc, "first_version"), 1);
  json_decref(doc);
  assert_int_equal(post("order-ghost", EV("g2", "x", ",\"partitionkey\":\"eu\""), "1", &doc), 409);
  assert_string_equal(jstr(doc, "error"), "partitionkey_conflict");
  json_decref(doc);
  assert_int_equal(store_sql_int(c, "SELECT count(*) FROM baton.events", 0, NULL), 4);
  PQfinish(c);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_upgrade_from_v2),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
