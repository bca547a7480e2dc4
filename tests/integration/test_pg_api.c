/* The request kinds of bt_pg_pool_t beyond the plain transaction, against the stack's real
 * Postgres: prepared statements (binary parameters, prepared again after a reconnect, a bad
 * one reported as such), autocommit statements, COPY FROM STDIN, several requests pipelined on
 * one connection, and the SQLSTATE classes the services' retry policies follow. */
#include <endian.h>
#include <stdint.h>

#include "log.h"
#include "pg_sqlstate.h"
#include "test_pg_util.h"

static int setup(void **state) { return pg_setup("pg_api"); }

static long long count_rows(void) {
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
  PGconn *c = pg_open();
  long long n = pg_scalar(c, sql);
  PQfinish(c);
  return n;
}

/* Terminates this test's pool backends from a connection of its own. */
static int terminate_backends(void) {
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
           "WHERE application_name = '%s'",
           appname);
  PGconn *c = pg_open();
  int n = (int)pg_scalar(c, sql);
  PQfinish(c);
  return n;
}

static outcome_t run_exec(bt_pg_pool_t *p, const bt_pg_query_t *q) {
  outcome_t o = {0};
  assert_int_equal(bt_pg_pool_exec(p, q, on_result, &o), 0);
  return wait_outcome(&o, 15000);
}

/* ---- prepared statements ----------------------------------------------------------------- */

/* Inserts id (as a binary int8) and v (text) through the prepared statement. */
static int insert_prepared(bt_pg_pool_t *p, bt_pg_prepared_t *ins, long long id, outcome_t *o) {
  static uint64_t be[64];
  static unsigned next;
  uint64_t *slot = &be[next++ % 64];
  *slot = htobe64((uint64_t)id);
  static char v[64][24];
  char *vs = v[(next - 1) % 64];
  snprintf(vs, 24, "p-%lld", id);
  const char *values[] = {(const char *)slot, vs};
  static const int lengths[] = {8, 0}, formats[] = {1, 0};
  bt_pg_query_t q = {
      .prepared = ins, .nparams = 2, .values = values, .lengths = lengths, .formats = formats};
  return bt_pg_pool_submit(p, &q, 1, 0, on_result, o);
}

static void test_prepared(void **state) {
  bt_pg_stats_t stats = {0};
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){
      .size = 1, .reconnect_min_ms = 20, .reconnect_max_ms = 100, .stats = &stats});
  char sql[160];
  snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES ($1, $2) RETURNING id", table);
  const Oid types[] = {20 /* int8 */, 25 /* text */};
  bt_pg_prepared_t *ins = NULL, *again = NULL;
  assert_int_equal(bt_pg_pool_prepare(p, sql, 2, types, &ins), 0);
  assert_int_equal(bt_pg_pool_prepare(p, sql, 2, types, &again), 0);
  assert_ptr_equal(ins, again); /* one registration per text */

  outcome_t o = {0};
  assert_int_equal(insert_prepared(p, ins, 1234567890123LL, &o), 0);
  wait_outcome(&o, 15000);
  if (o.err)
    fail_msg("prepared insert failed: %s", o.errmsg);
  assert_int_equal(o.first, 1234567890123LL); /* the binary int8 arrived intact */

  /* The session holds it under its name. */
  bt_pg_query_t check = {.sql = "SELECT count(*) FROM pg_prepared_statements WHERE name = 'bt_p0'"};
  assert_int_equal(run_exec(p, &check).first, 1);

  /* A new session (the old backend terminated) prepares it again before its first use. */
  outcome_t who = {0};
  assert_int_equal(bt_pg_pool_query(p, "SELECT pg_backend_pid()", 0, NULL, on_result, &who), 0);
  wait_outcome(&who, 10000);
  assert_true(terminate_backends() >= 1);
  long long id = 2;
  outcome_t ok = {0};
  uint64_t end = bt_test_now_ms() + 15000;
  while (bt_test_now_ms() < end) {
    ok = (outcome_t){0};
    assert_int_equal(insert_prepared(p, ins, id++, &ok), 0);
    wait_outcome(&ok, 15000);
    if (ok.err == 0)
      break;
    assert_int_equal(ok.err, BT_ECONNRESET); /* only the terminated session may fail */
  }
  assert_int_equal(ok.err, 0);
  outcome_t who2 = {0};
  assert_int_equal(bt_pg_pool_query(p, "SELECT pg_backend_pid()", 0, NULL, on_result, &who2), 0);
  wait_outcome(&who2, 10000);
  assert_int_not_equal(who.first, who2.first);
  assert_true(stats.reconnects.value >= 1);

  /* A statement that cannot be prepared fails its request with the PREPARE's own error, and
   * again the same way on the next use (it is not taken as prepared). */
  bt_pg_prepared_t *bad = NULL;
  assert_int_equal(bt_pg_pool_prepare(p, "SELECT * FROM no_such_table_here", 0, NULL, &bad), 0);
  for (int i = 0; i < 2; i++) {
    bt_pg_query_t q = {.prepared = bad};
    outcome_t b = run_exec(p, &q);
    assert_int_equal(b.err, BT_EIO);
    assert_string_equal(b.sqlstate, "42P01");
    if (!strstr(b.errmsg, "PREPARE SELECT * FROM no_such_table_here"))
      fail_msg("unexpected message: %s", b.errmsg);
  }
  /* ... and the connection is fine. */
  bt_pg_query_t one = {.sql = "SELECT 1"};
  assert_int_equal(run_exec(p, &one).err, 0);

  /* Misuse is refused up front. */
  bt_pg_query_t wrong = {.prepared = ins, .nparams = 1, .values = (const char *const[]){"1"}};
  outcome_t unused = {0};
  assert_int_equal(bt_pg_pool_exec(p, &wrong, on_result, &unused), BT_EINVAL);
  bt_pg_pool_close(p);
  loop_finish();

  /* Past prepared_max: refused. */
  assert_int_equal(uv_loop_init(&loop), 0);
  bt_pg_pool_t *small = pool_new((bt_pg_pool_config_t){.size = 1, .prepared_max = 1});
  bt_pg_prepared_t *a, *b;
  assert_int_equal(bt_pg_pool_prepare(small, "SELECT 1", 0, NULL, &a), 0);
  assert_int_equal(bt_pg_pool_prepare(small, "SELECT 2", 0, NULL, &b), BT_ERANGE);
  bt_pg_pool_close(small);
  loop_finish();
}

/* ---- autocommit -------------------------------------------------------------------------- */

static void test_autocommit(void **state) {
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.size = 1});
  char sql[200];
  /* VACUUM refuses to run inside a transaction block: proof that exec sends no BEGIN, where
   * the transactional path must fail. */
  snprintf(sql, sizeof sql, "VACUUM %s", table);
  outcome_t tx = {0};
  assert_int_equal(bt_pg_pool_query(p, sql, 0, NULL, on_result, &tx), 0);
  wait_outcome(&tx, 15000);
  assert_int_equal(tx.err, BT_EIO);
  assert_string_equal(tx.sqlstate, "25001");
  bt_pg_query_t q = {.sql = sql};
  outcome_t ac = run_exec(p, &q);
  if (ac.err)
    fail_msg("autocommit failed: %s", ac.errmsg);
  /* A failed autocommit statement reports its error and leaves the session usable. */
  bt_pg_query_t bad = {.sql = "SELECT 1/0"};
  outcome_t e = run_exec(p, &bad);
  assert_int_equal(e.err, BT_EIO);
  assert_string_equal(e.sqlstate, "22012");
  assert_int_equal(e.failed, 0);
  const char *v[] = {"9"};
  bt_pg_query_t sel = {.sql = "SELECT $1::int", .nparams = 1, .values = v};
  assert_int_equal(run_exec(p, &sel).first, 9);
  bt_pg_pool_close(p);
  loop_finish();
}

/* ---- COPY FROM STDIN --------------------------------------------------------------------- */

static char *copy_rows(long long from, long long n, size_t *len) {
  size_t cap = (size_t)n * 64, off = 0;
  char *buf = malloc(cap);
  assert_non_null(buf);
  for (long long i = from; i < from + n; i++)
    off += (size_t)snprintf(buf + off, cap - off, "%lld\tcopied-row-%lld-with-some-padding\n", i, i);
  *len = off;
  return buf;
}

static void test_copy(void **state) {
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.size = 1, .copy_max_bytes = 4 << 20});
  char sql[128];
  snprintf(sql, sizeof sql, "COPY %s (id, v) FROM STDIN", table);
  /* 50,000 rows, ~2.3 MB: many chunks, more than the socket takes at once. */
  size_t len;
  char *rows = copy_rows(1, 50000, &len);
  assert_true(len > 1 << 20);
  outcome_t o = {0};
  assert_int_equal(bt_pg_pool_copy(p, sql, rows, len, on_result, &o), 0);
  free(rows); /* copied */
  wait_outcome(&o, 30000);
  if (o.err)
    fail_msg("copy failed: %s", o.errmsg);
  assert_string_equal(o.cmdtuples, "50000");
  assert_int_equal(count_rows(), 50000);

  /* A bad row fails the whole COPY: nothing of it is stored. */
  rows = copy_rows(49990, 20, &len); /* ids 49990..50009, the first ten taken */
  outcome_t dup = {0};
  assert_int_equal(bt_pg_pool_copy(p, sql, rows, len, on_result, &dup), 0);
  free(rows);
  wait_outcome(&dup, 15000);
  assert_int_equal(dup.err, BT_EIO);
  assert_string_equal(dup.sqlstate, "23505");
  assert_int_equal(count_rows(), 50000);

  /* A failed transaction leaves its session in an aborted block; a COPY after it still runs,
   * and so does a pipelined statement after the COPY (pipeline mode is back). */
  outcome_t failed = {0};
  assert_int_equal(bt_pg_pool_query(p, "SELECT 1/0", 0, NULL, on_result, &failed), 0);
  rows = copy_rows(60000, 3, &len);
  outcome_t after = {0}, sel = {0};
  assert_int_equal(bt_pg_pool_copy(p, sql, rows, len, on_result, &after), 0);
  assert_int_equal(bt_pg_pool_query(p, "SELECT 3", 0, NULL, on_result, &sel), 0);
  free(rows);
  wait_outcome(&sel, 15000);
  assert_int_equal(failed.err, BT_EIO);
  if (after.err)
    fail_msg("copy after a failed transaction: %s", after.errmsg);
  assert_string_equal(after.cmdtuples, "3");
  assert_int_equal(sel.err, 0);
  assert_int_equal(sel.first, 3);
  assert_int_equal(count_rows(), 50003);

  /* Not a COPY at all: an error naming the statement, the connection still fine. */
  outcome_t notcopy = {0};
  assert_int_equal(bt_pg_pool_copy(p, "SELECT 1", "x\n", 2, on_result, &notcopy), 0);
  wait_outcome(&notcopy, 15000);
  assert_int_equal(notcopy.err, BT_EIO);
  assert_non_null(strstr(notcopy.errmsg, "SELECT 1"));
  outcome_t last = {0};
  assert_int_equal(bt_pg_pool_query(p, "SELECT 4", 0, NULL, on_result, &last), 0);
  assert_int_equal(wait_outcome(&last, 15000).first, 4);

  /* Past copy_max_bytes: refused before anything is sent. */
  static char big[(4 << 20) + 1];
  outcome_t unused = {0};
  assert_int_equal(bt_pg_pool_copy(p, sql, big, sizeof big, on_result, &unused), BT_EINVAL);
  bt_pg_pool_close(p);
  loop_finish();
}

/* ---- pipelining -------------------------------------------------------------------------- */

static bool all_done(void *arg) {
  outcome_t *o = arg;
  for (int i = 0; i < 4; i++)
    if (!o[i].done)
      return false;
  return true;
}

/* Four requests on one connection at once. The second fails inside its transaction; the third,
 * already sent behind it, must not inherit its aborted block. */
static void test_pipelined(void **state) {
  bt_pg_stats_t stats = {0};
  bt_pg_pool_t *p =
      pool_new((bt_pg_pool_config_t){.size = 1, .pipeline_depth = 4, .stats = &stats});
  assert_true(run_until(pool_ready, p, 10000));
  char sql[160];
  snprintf(sql, sizeof sql, "INSERT INTO %s (id, v) VALUES ($1, 'x') RETURNING id", table);
  const char *a[] = {"1"}, *b[] = {"1"}, *c[] = {"3"};
  bt_pg_stmt_t sa = {sql, 1, a}, sb[] = {{sql, 1, c}, {sql, 1, b}}, sc = {sql, 1, c};
  outcome_t o[4] = {{0}};
  assert_int_equal(bt_pg_pool_batch(p, &sa, 1, on_result, &o[0]), 0);
  assert_int_equal(bt_pg_pool_batch(p, sb, 2, on_result, &o[1]), 0); /* 3, then 1 again: 23505 */
  assert_int_equal(bt_pg_pool_batch(p, &sc, 1, on_result, &o[2]), 0);
  bt_pg_query_t sel = {.sql = "SELECT 7"};
  assert_int_equal(bt_pg_pool_exec(p, &sel, on_result, &o[3]), 0);
  assert_int_equal(stats.queued.value, 0); /* all four went out on the one connection */
  assert_true(run_until(all_done, o, 15000));
  assert_int_equal(o[0].err, 0);
  assert_int_equal(o[1].err, BT_EIO);
  assert_string_equal(o[1].sqlstate, "23505");
  assert_int_equal(o[1].failed, 1);
  if (o[2].err)
    fail_msg("the request behind a failed transaction failed: %s", o[2].errmsg);
  assert_int_equal(o[2].first, 3);
  assert_int_equal(o[3].first, 7);
  assert_int_equal(count_rows(), 2);
  bt_pg_pool_close(p);
  loop_finish();
}

/* ---- SQLSTATE classes -------------------------------------------------------------------- */

typedef struct {
  outcome_t o;
  bt_pg_class_t cls; /* taken from the live result inside the callback */
} classed_t;

static void on_classed(const bt_pg_result_t *r, void *arg) {
  classed_t *c = arg;
  c->cls = bt_pg_result_class(r);
  on_result(r, &c->o);
}

/* Runs the statements as one transaction and classifies the outcome. */
static bt_pg_class_t class_of(bt_pg_pool_t *p, const char *sql, const char *then) {
  classed_t c = {.cls = BT_PG_OK};
  bt_pg_stmt_t s[] = {{sql, 0, NULL}, {then, 0, NULL}};
  assert_int_equal(bt_pg_pool_batch(p, s, then ? 2 : 1, on_classed, &c), 0);
  wait_outcome(&c.o, 15000);
  return c.cls;
}

static void test_sqlstate(void **state) {
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.size = 1});
  char sql[256];
  snprintf(sql, sizeof sql, "INSERT INTO %s (id) VALUES (1), (1)", table);
  assert_int_equal(class_of(p, sql, NULL), BT_PG_CONFLICT);
  assert_int_equal(
      class_of(p, "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40001'; END $$", NULL),
      BT_PG_RETRY);
  assert_int_equal(
      class_of(p, "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '40P01'; END $$", NULL),
      BT_PG_RETRY);
  /* 57014, raised by the server's own statement timeout. */
  assert_int_equal(class_of(p, "SET LOCAL statement_timeout = 50", "SELECT pg_sleep(3)"),
                   BT_PG_UNKNOWN);
  assert_int_equal(
      class_of(p, "DO $$ BEGIN RAISE EXCEPTION USING ERRCODE = '08006'; END $$", NULL),
      BT_PG_UNKNOWN);
  assert_int_equal(class_of(p, "SELEC 1", NULL), BT_PG_ERROR); /* 42601 */
  assert_int_equal(class_of(p, "SELECT 1", NULL), BT_PG_OK);
  bt_pg_pool_close(p);
  loop_finish();

  bt_pg_result_t lost = {.err = BT_ECONNRESET}, unsent = {.err = BT_ETIMEDOUT},
                 closing = {.err = BT_ECANCELED};
  assert_int_equal(bt_pg_result_class(&lost), BT_PG_UNKNOWN);
  assert_int_equal(bt_pg_result_class(&unsent), BT_PG_RETRY);
  assert_int_equal(bt_pg_result_class(&closing), BT_PG_ERROR);
  assert_int_equal(bt_pg_sqlstate_class("57P01"), BT_PG_UNKNOWN);
  assert_int_equal(bt_pg_sqlstate_class("23503"), BT_PG_ERROR);
  assert_int_equal(bt_pg_sqlstate_class(NULL), BT_PG_ERROR);
  assert_string_equal(bt_pg_class_name(BT_PG_CONFLICT), "conflict");
}

int main(void) {
  bt_log_init("test_pg_api", BT_LOG_INFO);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_prepared, setup, teardown),
      cmocka_unit_test_setup_teardown(test_autocommit, setup, teardown),
      cmocka_unit_test_setup_teardown(test_copy, setup, teardown),
      cmocka_unit_test_setup_teardown(test_pipelined, setup, teardown),
      cmocka_unit_test_setup_teardown(test_sqlstate, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
