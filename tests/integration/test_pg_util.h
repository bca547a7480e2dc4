/* Helpers shared by the tests of the Postgres runtime (test_pg_*.c): the stack's DSN tagged
 * with this process's application_name, blocking libpq for set-up and oracles, a loop driver
 * that waits for a condition, and one request's outcome copied out of its callback. */
#ifndef TEST_PG_UTIL_H
#define TEST_PG_UTIL_H

#include <libpq-fe.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include <uv.h>

#include "pg_pool.h"
#include "testsupport.h"

/* Not every test uses every helper. */
#define PGU static __attribute__((unused))

static uv_loop_t loop;
static char table[64];   /* a table of this process's own, created per test */
static char appname[64]; /* marks the pools' backends so a test can find exactly them */
static char dsn[1024];   /* the stack's DSN plus application_name */

PGU void ignore_notice(void *arg, const char *msg) {}

PGU PGconn *pg_open(void) {
  PGconn *c = PQconnectdb(bt_test_env("BATON_PG_DSN"));
  if (PQstatus(c) != CONNECTION_OK)
    fail_msg("independent connection failed: %s", PQerrorMessage(c));
  PQsetNoticeProcessor(c, ignore_notice, NULL); /* "table does not exist, skipping" */
  return c;
}

PGU void pg_exec(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
    fail_msg("%s: %s", sql, PQresultErrorMessage(r));
  PQclear(r);
}

PGU long long pg_scalar(PGconn *c, const char *sql) {
  PGresult *r = PQexec(c, sql);
  if (PQresultStatus(r) != PGRES_TUPLES_OK || PQntuples(r) != 1)
    fail_msg("%s: %s", sql, PQresultErrorMessage(r));
  long long v = atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

/* Runs fmt (one %s: the table's name) on a connection of its own. */
PGU void table_sql(const char *fmt) {
  char sql[256];
  snprintf(sql, sizeof sql, fmt, table);
  PGconn *c = pg_open();
  pg_exec(c, sql);
  PQfinish(c);
}

/* Per test: the DSN with application_name=<prefix>_<pid>, and a fresh table (id, v). */
PGU int pg_setup(const char *prefix) {
  bt_test_env_load();
  const char *base = bt_test_env("BATON_PG_DSN");
  snprintf(appname, sizeof appname, "%s_%d", prefix, (int)getpid());
  snprintf(dsn, sizeof dsn, "%s%sapplication_name=%s", base,
           strncmp(base, "postgres", 8) != 0 ? " " : strchr(base, '?') ? "&" : "?", appname);
  snprintf(table, sizeof table, "it_%s_%d", prefix, (int)getpid());
  table_sql("DROP TABLE IF EXISTS %s");
  table_sql("CREATE TABLE %s (id bigint PRIMARY KEY, v text)");
  return uv_loop_init(&loop);
}

PGU int teardown(void **state) {
  table_sql("DROP TABLE IF EXISTS %s");
  return 0;
}

/* Ends a test that closed its pools: every handle must close within a second, and the loop
 * must then close, so nothing was leaked on it. (A failed test skips this: its stack-allocated
 * handles are gone.) */
PGU void loop_finish(void) {
  uint64_t end = bt_test_now_ms() + 1000;
  while (uv_loop_alive(&loop) && bt_test_now_ms() < end)
    if (uv_run(&loop, UV_RUN_NOWAIT))
      usleep(1000);
  assert_false(uv_loop_alive(&loop));
  assert_int_equal(uv_loop_close(&loop), 0);
}

PGU bt_pg_pool_t *pool_new(bt_pg_pool_config_t cfg) {
  bt_pg_pool_t *p = NULL;
  if (!cfg.dsn)
    cfg.dsn = dsn;
  assert_int_equal(bt_pg_pool_new(&p, &loop, &cfg), 0);
  return p;
}

PGU void on_tick(uv_timer_t *t) {}

/* Runs the loop until done(arg) or the timeout; a ticking timer keeps UV_RUN_ONCE returning. */
PGU bool run_until(bool (*done)(void *), void *arg, uint64_t timeout_ms) {
  uv_timer_t tick;
  uv_timer_init(&loop, &tick);
  uv_timer_start(&tick, on_tick, 5, 5);
  uint64_t end = bt_test_now_ms() + timeout_ms;
  bool ok;
  while (!(ok = done(arg)) && bt_test_now_ms() < end)
    uv_run(&loop, UV_RUN_ONCE);
  uv_close((uv_handle_t *)&tick, NULL);
  uv_run(&loop, UV_RUN_NOWAIT);
  return ok;
}

PGU bool flag_set(void *arg) { return *(bool *)arg; }
PGU bool pool_ready(void *arg) { return bt_pg_pool_ready(arg); }

/* One request's outcome, copied out of the callback. */
typedef struct {
  bool done;
  int err;
  size_t n, failed;
  char errmsg[256];
  char sqlstate[8];
  long long first, last; /* first column of the first and last results, when committed */
  bool ordered;          /* res[i] holds first + i for every i */
  char cmdtuples[24];    /* PQcmdTuples of the first result */
  uint64_t at_ms;
} outcome_t;

PGU void on_result(const bt_pg_result_t *r, void *arg) {
  outcome_t *o = arg;
  o->done = true;
  o->err = r->err;
  o->n = r->n;
  o->failed = r->failed;
  o->at_ms = bt_test_now_ms();
  snprintf(o->errmsg, sizeof o->errmsg, "%s", r->errmsg);
  if (r->error)
    snprintf(o->sqlstate, sizeof o->sqlstate, "%s",
             PQresultErrorField(r->error, PG_DIAG_SQLSTATE));
  if (r->err == 0)
    snprintf(o->cmdtuples, sizeof o->cmdtuples, "%s", PQcmdTuples((PGresult *)r->res[0]));
  if (r->err == 0 && PQntuples(r->res[0]) == 1) {
    o->first = atoll(PQgetvalue(r->res[0], 0, 0));
    o->last = atoll(PQgetvalue(r->res[r->n - 1], 0, 0));
    o->ordered = true;
    for (size_t i = 0; i < r->n; i++)
      o->ordered = o->ordered && PQntuples(r->res[i]) == 1 &&
                   atoll(PQgetvalue(r->res[i], 0, 0)) == o->first + (long long)i;
  }
}

/* Runs one request to its end and returns its outcome. */
PGU outcome_t wait_outcome(outcome_t *o, uint64_t timeout_ms) {
  if (!run_until(flag_set, &o->done, timeout_ms))
    fail_msg("no answer within %llu ms", (unsigned long long)timeout_ms);
  return *o;
}

#endif
