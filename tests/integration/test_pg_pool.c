/* bt_pg_pool_t against the stack's real Postgres: a 10,000-statement pipelined batch, batch
 * atomicity, reconnection across `./dev pg-restart`, backpressure and timeouts, the app drain,
 * and the commit oracle: no request reported as committed may be missing from the table. */
#include "app.h"
#include "log.h"
#include "test_pg_util.h"

static int setup(void **state) { return pg_setup("pg_pool"); }

/* Blocking fault injection (a shell verb of ./dev, or SQL on a connection of its own) runs on
 * libuv's thread pool so the pool under test keeps running meanwhile. */
typedef struct bg {
  uv_work_t req;
  void (*fn)(struct bg *);
  const char *cmd;
  int rc;
  bool done;
} bg_t;

static void bg_work(uv_work_t *r) {
  bg_t *b = r->data;
  b->fn(b);
}
static void bg_after(uv_work_t *r, int status) { ((bg_t *)r->data)->done = true; }
static void bg_start(bg_t *b, void (*fn)(bg_t *), const char *cmd) {
  *b = (bg_t){.fn = fn, .cmd = cmd};
  b->req.data = b;
  assert_int_equal(uv_queue_work(&loop, &b->req, bg_work, bg_after), 0);
}
static void bg_sh(bg_t *b) { b->rc = bt_test_sh("%s", b->cmd); }

/* Terminates the pool's backends five times, 150 ms apart. */
static void bg_terminate(bg_t *b) {
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity "
           "WHERE application_name = '%s'",
           appname);
  PGconn *c = PQconnectdb(bt_test_env("BATON_PG_DSN"));
  for (int i = 0; i < 5 && PQstatus(c) == CONNECTION_OK; i++) {
    PGresult *r = PQexec(c, sql);
    if (PQresultStatus(r) == PGRES_TUPLES_OK)
      b->rc += atoi(PQgetvalue(r, 0, 0));
    PQclear(r);
    usleep(150 * 1000);
  }
  PQfinish(c);
}

/* Statements "INSERT ... VALUES ($1, $2) RETURNING id" for ids from..from+n-1. */
typedef struct {
  char sql[128];
  bt_pg_stmt_t *stmts;
  char (*vals)[2][24];
  const char *(*params)[2];
} inserts_t;

static void inserts_make(inserts_t *ins, long long from, size_t n) {
  snprintf(ins->sql, sizeof ins->sql, "INSERT INTO %s (id, v) VALUES ($1, $2) RETURNING id",
           table);
  ins->stmts = calloc(n, sizeof *ins->stmts);
  ins->vals = calloc(n, sizeof *ins->vals);
  ins->params = calloc(n, sizeof *ins->params);
  assert_non_null(ins->stmts && ins->vals && ins->params);
  for (size_t i = 0; i < n; i++) {
    snprintf(ins->vals[i][0], sizeof ins->vals[i][0], "%lld", from + (long long)i);
    snprintf(ins->vals[i][1], sizeof ins->vals[i][1], "row-%lld", from + (long long)i);
    ins->params[i][0] = ins->vals[i][0];
    ins->params[i][1] = ins->vals[i][1];
    ins->stmts[i] = (bt_pg_stmt_t){ins->sql, 2, ins->params[i]};
  }
}

static void inserts_free(inserts_t *ins) {
  free(ins->stmts);
  free(ins->vals);
  free(ins->params);
}

/* ---- 1. a pipelined batch of 10,000 statements ------------------------------------------- */

static void test_batch_10000(void **state) {
  enum { N = 10000 };
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.size = 2, .batch_max = N});
  inserts_t ins;
  inserts_make(&ins, 1, N);
  outcome_t o = {0};
  uint64_t t0 = bt_test_now_ms();
  assert_int_equal(bt_pg_pool_batch(p, ins.stmts, N, on_result, &o), 0);
  inserts_free(&ins); /* the pool copied everything */
  assert_true(run_until(flag_set, &o.done, 60000));
  print_message("10000-statement batch committed in %llu ms\n",
                (unsigned long long)(o.at_ms - t0));
  assert_int_equal(o.err, 0);
  assert_int_equal(o.n, N);
  assert_true(o.ordered); /* every statement's own result, in order */
  assert_int_equal(o.first, 1);
  assert_int_equal(o.last, N);

  PGconn *c = pg_open();
  char sql[256];
  snprintf(sql, sizeof sql,
           "SELECT count(*) * 1000000000 + sum(id) FROM %s WHERE v = 'row-' || id", table);
  assert_int_equal(pg_scalar(c, sql), (long long)N * 1000000000 + (long long)N * (N + 1) / 2);
  PQfinish(c);
  bt_pg_pool_close(p);
  loop_finish();
}

/* ---- 1b. a failing statement fails the whole batch -------------------------------------- */

static void test_batch_atomic(void **state) {
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.size = 1});
  inserts_t ins;
  inserts_make(&ins, 100, 100); /* ids 100..199 */
  outcome_t ok = {0}, bad = {0};
  assert_int_equal(bt_pg_pool_batch(p, ins.stmts, 1, on_result, &ok), 0); /* id 100 alone */
  assert_true(run_until(flag_set, &ok.done, 10000));
  assert_int_equal(ok.err, 0);
  /* ids 101..199 again, but statement 57 re-inserts id 100. */
  snprintf(ins.vals[58][0], sizeof ins.vals[58][0], "100");
  assert_int_equal(bt_pg_pool_batch(p, ins.stmts + 1, 99, on_result, &bad), 0);
  assert_true(run_until(flag_set, &bad.done, 10000));
  inserts_free(&ins);
  assert_int_equal(bad.err, BT_EIO);
  assert_int_equal(bad.failed, 57);
  assert_string_equal(bad.sqlstate, "23505");
  assert_non_null(strstr(bad.errmsg, "statement 57"));

  /* The pool's only connection serves the next request normally: the failed batch's
   * aborted transaction block does not leak into it. */
  outcome_t next = {0};
  const char *v[] = {"7"};
  assert_int_equal(bt_pg_pool_query(p, "SELECT $1::int", 1, v, on_result, &next), 0);
  assert_true(run_until(flag_set, &next.done, 10000));
  assert_int_equal(next.err, 0);
  assert_int_equal(next.first, 7);

  PGconn *c = pg_open();
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT count(*) FROM %s", table);
  assert_int_equal(pg_scalar(c, sql), 1); /* only the first batch's row */
  PQfinish(c);
  bt_pg_pool_close(p);
  loop_finish();
}

/* ---- 2. Postgres restarted mid-run: readiness false, then true, queries flow again ------- */

typedef struct {
  bt_pg_pool_t *p;
  uv_timer_t timer;
  bg_t restart;
  bool saw_down, up_again;
  unsigned inflight, ok_before, ok_after, failed, other_err;
  char last_err[256];
} restart_t;

static void on_restart_query(const bt_pg_result_t *r, void *arg) {
  restart_t *s = arg;
  s->inflight--;
  if (r->err == 0)
    s->up_again ? s->ok_after++ : s->ok_before++;
  else
    s->failed++;
  /* In flight at the restart: BT_ECONNRESET. Queued meanwhile: they wait for the reconnect. */
  if (r->err != 0 && r->err != BT_ECONNRESET) {
    s->other_err++;
    snprintf(s->last_err, sizeof s->last_err, "%s: %s", bt_strerror(r->err), r->errmsg);
  }
}

static void on_restart_tick(uv_timer_t *t) {
  restart_t *s = t->data;
  bool ready = bt_pg_pool_ready(s->p);
  s->saw_down = s->saw_down || !ready;
  s->up_again = s->up_again || (s->saw_down && ready);
  static const char *const v[] = {"7"};
  while (s->inflight < 4 &&
         bt_pg_pool_query(s->p, "SELECT $1::int", 1, v, on_restart_query, s) == 0)
    s->inflight++;
}

static bool restart_done(void *arg) {
  restart_t *s = arg;
  return s->restart.done && s->up_again && s->ok_after >= 50;
}

static bool both_up(void *stats) { return ((bt_pg_stats_t *)stats)->connections.value == 2; }

static void test_restart_reconnects(void **state) {
  restart_t s = {0};
  bt_pg_stats_t stats = {0};
  s.p = pool_new((bt_pg_pool_config_t){.size = 2,
                                       .queue_timeout_ms = 60000,
                                       .reconnect_min_ms = 20,
                                       .reconnect_max_ms = 200,
                                       .stats = &stats});
  assert_true(run_until(pool_ready, s.p, 10000));
  uv_timer_init(&loop, &s.timer);
  s.timer.data = &s;
  uv_timer_start(&s.timer, on_restart_tick, 0, 2);
  bool never = false;
  run_until(flag_set, &never, 100); /* some traffic first */
  bg_start(&s.restart, bg_sh, "./dev pg-restart");
  bool ok = run_until(restart_done, &s, 90000);
  uv_close((uv_handle_t *)&s.timer, NULL);
  assert_true(run_until(flag_set, &s.restart.done, 60000));
  assert_int_equal(s.restart.rc, 0);
  assert_true(s.saw_down); /* readiness went false while Postgres was down */
  assert_true(ok);         /* ... then true again, with queries succeeding */
  assert_true(bt_pg_pool_ready(s.p));
  assert_true(run_until(both_up, &stats, 10000)); /* every connection came back */
  if (s.other_err)
    fail_msg("%u requests failed with something other than BT_ECONNRESET, last: %s",
             s.other_err, s.last_err);
  assert_true(s.ok_before > 0);
  assert_true(stats.reconnects.value > 0);
  print_message("restart: %u ok before, %u ok after, %u reset in flight, %llu reconnect attempts\n",
                s.ok_before, s.ok_after, s.failed, (unsigned long long)stats.reconnects.value);
  bt_pg_pool_close(s.p);
  loop_finish();
}

/* ---- 3. nothing reported as committed that did not commit -------------------------------- */

enum { ORACLE_MAX_IDS = 400000, ORACLE_INFLIGHT = 32, ORACLE_BATCH = 5 };
enum { PENDING = 1 }; /* outcome of an id not yet answered; 0 and BT_E* are the others */

typedef struct {
  bt_pg_pool_t *p;
  int *outcome;      /* per id */
  long long next_id; /* ids from 1 */
  unsigned inflight, requests;
  bool stop;
  char sql[128];
} oracle_t;

typedef struct {
  oracle_t *o;
  long long first;
  size_t n;
} oracle_req_t;

static void on_oracle_result(const bt_pg_result_t *r, void *arg) {
  oracle_req_t *q = arg;
  for (size_t i = 0; i < q->n; i++)
    q->o->outcome[q->first + (long long)i] = r->err;
  q->o->inflight--;
  free(q);
}

/* Alternates single-statement requests and batches of five, each id used once. */
static void oracle_fill(oracle_t *o) {
  while (!o->stop && o->inflight < ORACLE_INFLIGHT && o->next_id + ORACLE_BATCH < ORACLE_MAX_IDS) {
    size_t n = o->requests % 2 ? ORACLE_BATCH : 1;
    char ids[ORACLE_BATCH][24];
    const char *params[ORACLE_BATCH][1];
    bt_pg_stmt_t stmts[ORACLE_BATCH];
    for (size_t i = 0; i < n; i++) {
      snprintf(ids[i], sizeof ids[i], "%lld", o->next_id + (long long)i);
      params[i][0] = ids[i];
      stmts[i] = (bt_pg_stmt_t){o->sql, 1, params[i]};
    }
    oracle_req_t *q = malloc(sizeof *q);
    assert_non_null(q);
    *q = (oracle_req_t){o, o->next_id, n};
    int rc = bt_pg_pool_batch(o->p, stmts, n, on_oracle_result, q);
    if (rc == BT_EAGAIN) {
      free(q);
      return;
    }
    assert_int_equal(rc, 0);
    o->next_id += (long long)n;
    o->inflight++;
    o->requests++;
  }
}

static void on_oracle_tick(uv_timer_t *t) { oracle_fill(t->data); }

static bool oracle_quiet(void *arg) { return ((oracle_t *)arg)->inflight == 0; }

typedef struct {
  bg_t *bg;
  bt_pg_pool_t *p;
  bool seen_down;
} phase_t;

static bool bg_done(void *arg) { return ((bg_t *)arg)->done; }

/* Done once the restart finished and the pool has been ready again for a while. */
static bool restart_over(void *arg) {
  phase_t *ph = arg;
  ph->seen_down = ph->seen_down || !bt_pg_pool_ready(ph->p);
  return ph->bg->done && ph->seen_down && bt_pg_pool_ready(ph->p);
}

static void test_no_false_commits(void **state) {
  oracle_t o = {.next_id = 1};
  o.outcome = malloc(ORACLE_MAX_IDS * sizeof *o.outcome);
  assert_non_null(o.outcome);
  for (size_t i = 0; i < ORACLE_MAX_IDS; i++)
    o.outcome[i] = PENDING;
  snprintf(o.sql, sizeof o.sql, "INSERT INTO %s (id) VALUES ($1)", table);
  /* A short queue timeout, so requests that wait out the restart fail unsent: the oracle then
   * also checks that "never sent" really means absent. */
  o.p = pool_new((bt_pg_pool_config_t){.size = 4,
                                       .queue_max = 64,
                                       .queue_timeout_ms = 300,
                                       .reconnect_min_ms = 20,
                                       .reconnect_max_ms = 200});
  assert_true(run_until(pool_ready, o.p, 10000));
  uv_timer_t tick;
  uv_timer_init(&loop, &tick);
  tick.data = &o;
  uv_timer_start(&tick, on_oracle_tick, 0, 1);

  bool wait = false;
  run_until(flag_set, &wait, 300);
  bg_t kill;
  bg_start(&kill, bg_terminate, NULL);
  assert_true(run_until(bg_done, &kill, 30000));
  assert_true(kill.rc > 0); /* backends were terminated under load */
  bg_t restart;
  bg_start(&restart, bg_sh, "./dev pg-restart");
  phase_t ph = {&restart, o.p, false};
  assert_true(run_until(restart_over, &ph, 90000));
  assert_int_equal(restart.rc, 0);
  run_until(flag_set, &wait, 500); /* traffic after the restart */
  o.stop = true;
  uv_close((uv_handle_t *)&tick, NULL);
  assert_true(run_until(oracle_quiet, &o, 60000));
  bt_pg_pool_close(o.p);
  loop_finish();

  /* The oracle is the table, read on a connection of its own. */
  bool *present = calloc(ORACLE_MAX_IDS, sizeof *present);
  assert_non_null(present);
  PGconn *c = pg_open();
  char sql[128];
  snprintf(sql, sizeof sql, "SELECT id FROM %s", table);
  PGresult *r = PQexec(c, sql);
  assert_int_equal(PQresultStatus(r), PGRES_TUPLES_OK);
  for (int i = 0; i < PQntuples(r); i++) {
    long long id = atoll(PQgetvalue(r, i, 0));
    assert_true(id > 0 && id < o.next_id);
    present[id] = true;
  }
  PQclear(r);
  PQfinish(c);

  unsigned committed = 0, reset = 0, unsent = 0, lost = 0, phantom = 0;
  for (long long id = 1; id < o.next_id; id++) {
    int err = o.outcome[id];
    assert_int_not_equal(err, PENDING);
    if (err == 0) {
      committed++;
      lost += !present[id]; /* reported committed, not in the table */
    } else if (err == BT_ECONNRESET) {
      reset++; /* outcome unknown: either is fine */
    } else {
      unsent++;
      phantom += present[id]; /* reported as not committed, yet in the table */
    }
  }
  print_message("oracle: %lld ids, %u committed, %u reset in flight, %u failed unsent\n",
                o.next_id - 1, committed, reset, unsent);
  free(present);
  free(o.outcome);
  assert_int_equal(lost, 0);
  assert_int_equal(phantom, 0);
  assert_true(committed > 0);
  assert_true(reset > 0); /* the faults did hit requests in flight */
}

/* ---- 4. backpressure and timeouts: BT_EAGAIN, BT_ETIMEDOUT, BT_ENOTCONN, BT_ECANCELED ------ */

static void test_queue_full(void **state) {
  bt_pg_stats_t stats = {0};
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.size = 1, .queue_max = 2, .stats = &stats});
  outcome_t a = {0}, b = {0}, c = {0};
  /* Before the loop runs no connection is up, so requests queue and the third finds it full. */
  assert_int_equal(bt_pg_pool_query(p, "SELECT 1", 0, NULL, on_result, &a), 0);
  assert_int_equal(bt_pg_pool_query(p, "SELECT 2", 0, NULL, on_result, &b), 0);
  assert_int_equal(bt_pg_pool_query(p, "SELECT 3", 0, NULL, on_result, &c), BT_EAGAIN);
  assert_int_equal(stats.rejected.value, 1);
  assert_false(a.done || b.done || c.done); /* never called from inside a submit */
  assert_true(run_until(flag_set, &b.done, 10000));
  assert_int_equal(a.err, 0);
  assert_int_equal(b.err, 0);
  assert_false(c.done);
  assert_int_equal(stats.queries.value, 2);
  bt_pg_pool_close(p);
  loop_finish();
}

static void test_busy_timeout(void **state) {
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.size = 1, .queue_timeout_ms = 200});
  assert_true(run_until(pool_ready, p, 10000));
  outcome_t slow = {0}, waiting = {0};
  uint64_t t0 = bt_test_now_ms();
  assert_int_equal(bt_pg_pool_query(p, "SELECT pg_sleep(1)", 0, NULL, on_result, &slow), 0);
  assert_int_equal(bt_pg_pool_query(p, "SELECT 1", 0, NULL, on_result, &waiting), 0);
  assert_true(run_until(flag_set, &slow.done, 10000));
  assert_int_equal(waiting.err, BT_ETIMEDOUT);
  assert_in_range(waiting.at_ms - t0, 150, 900);
  assert_non_null(strstr(waiting.errmsg, "no free Postgres connection"));
  assert_int_equal(slow.err, 0);
  bt_pg_pool_close(p);
  loop_finish();
}

static void test_no_connection(void **state) {
  char down[128];
  snprintf(down, sizeof down, "postgresql://baton@127.0.0.1:%d/baton", bt_test_free_port());
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){
      .dsn = down, .queue_timeout_ms = 300, .reconnect_min_ms = 20, .reconnect_max_ms = 100});
  outcome_t o = {0}, queued = {0};
  uint64_t t0 = bt_test_now_ms();
  assert_int_equal(bt_pg_pool_query(p, "SELECT 1", 0, NULL, on_result, &o), 0);
  assert_true(run_until(flag_set, &o.done, 5000)); /* an error, not a hang */
  assert_int_equal(o.err, BT_ENOTCONN);
  assert_in_range(o.at_ms - t0, 250, 2000);
  if (!strstr(o.errmsg, "no Postgres connection within 300 ms: connect:"))
    fail_msg("unexpected message: %s", o.errmsg);
  assert_false(bt_pg_pool_ready(p));
  /* Closing fails what still waits, before bt_pg_pool_close returns. */
  assert_int_equal(bt_pg_pool_query(p, "SELECT 1", 0, NULL, on_result, &queued), 0);
  bt_pg_pool_close(p);
  assert_true(queued.done);
  assert_int_equal(queued.err, BT_ECANCELED);
  loop_finish();
}

/* A host name in the DSN is resolved off the loop (uv_getaddrinfo), then handed to libpq as
 * hostaddr. "localhost" resolves to ::1 and 127.0.0.1 while the stack's Postgres listens on
 * 127.0.0.1 only, so libpq must also fall through the resolved list. */
static void test_host_name_resolved(void **state) {
  char named[1100];
  const char *at = strstr(dsn, "@127.0.0.1:");
  assert_non_null(at);
  snprintf(named, sizeof named, "%.*s@localhost:%s", (int)(at - dsn), dsn, at + strlen("@127.0.0.1:"));
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.dsn = named, .size = 2});
  outcome_t o = {0};
  const char *v[] = {"41"};
  assert_int_equal(bt_pg_pool_query(p, "SELECT $1::int + 1", 1, v, on_result, &o), 0);
  assert_true(run_until(flag_set, &o.done, 10000));
  if (o.err != 0)
    fail_msg("query over a resolved host failed: %s", o.errmsg);
  assert_int_equal(o.first, 42);
  bt_pg_pool_close(p);
  loop_finish();
}

/* A name that does not resolve fails like a refused connection: an error naming the lookup
 * within the queue timeout, never a hang. */
static void test_host_name_unresolvable(void **state) {
  bt_pg_pool_t *p = pool_new((bt_pg_pool_config_t){.dsn = "postgresql://baton@no-such-host.invalid:5432/baton",
                                                    .queue_timeout_ms = 500,
                                                    .reconnect_min_ms = 20,
                                                    .reconnect_max_ms = 100});
  outcome_t o = {0};
  assert_int_equal(bt_pg_pool_query(p, "SELECT 1", 0, NULL, on_result, &o), 0);
  assert_true(run_until(flag_set, &o.done, 10000));
  assert_int_equal(o.err, BT_ENOTCONN);
  if (!strstr(o.errmsg, "resolve"))
    fail_msg("the error does not name the lookup: %s", o.errmsg);
  bt_pg_pool_close(p);
  loop_finish();
}

/* ---- 5. the app's drain waits for queries in flight ------------------------------------- */

static void test_app_drain(void **state) {
  bt_app_t app;
  bt_app_init(&app, "test", 10000);
  bt_pg_pool_t *p = NULL;
  assert_int_equal(bt_pg_pool_new(&p, app.loop, &(bt_pg_pool_config_t){.dsn = dsn, .size = 1}), 0);
  bt_pg_pool_attach(p, &app, "postgres");
  outcome_t o = {0};
  assert_int_equal(bt_pg_pool_query(p, "SELECT pg_sleep(0.3)", 0, NULL, on_result, &o), 0);
  bt_app_shutdown(&app); /* the drain starts with the query not even sent */
  assert_int_equal(bt_app_run(&app), 0);
  assert_true(o.done);
  assert_int_equal(o.err, 0);
  assert_int_equal(uv_loop_close(app.loop), 0); /* the close hook closed the pool */
  loop_finish();
}

int main(void) {
  bt_log_init("test_pg_pool", BT_LOG_INFO);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_batch_10000, setup, teardown),
      cmocka_unit_test_setup_teardown(test_batch_atomic, setup, teardown),
      cmocka_unit_test_setup_teardown(test_queue_full, setup, teardown),
      cmocka_unit_test_setup_teardown(test_busy_timeout, setup, teardown),
      cmocka_unit_test_setup_teardown(test_no_connection, setup, teardown),
      cmocka_unit_test_setup_teardown(test_host_name_resolved, setup, teardown),
      cmocka_unit_test_setup_teardown(test_host_name_unresolvable, setup, teardown),
      cmocka_unit_test_setup_teardown(test_app_drain, setup, teardown),
      cmocka_unit_test_setup_teardown(test_restart_reconnects, setup, teardown),
      cmocka_unit_test_setup_teardown(test_no_false_commits, setup, teardown),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
