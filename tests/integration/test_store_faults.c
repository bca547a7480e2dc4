/* The event store when things go wrong: a full append queue answers 429 with Retry-After and
 * writes nothing for it; an append that Postgres refuses inside a group commit fails alone
 * while its group neighbours, retried in halves, are all stored, in a bounded number of
 * transactions; an append whose backend is killed while it waits answers 503 outcome_unknown;
 * a database default of SERIALIZABLE does not reach append transactions. Requests are written
 * to many open connections at once so that they arrive in the same loop iteration of the
 * broker, and a group is made deterministic by holding the one before it on a row lock. */
#include <sys/socket.h>

#include "test_store_util.h"

enum { BURST = 40 };

typedef struct burst {
  int fd[BURST];
  int status[BURST];
  char retry_after[BURST][16];
  char stream[BURST][160];
  char error[BURST][64];
} burst_t;

/* Connects every socket first, then writes one append on each. */
static void burst_send(const store_broker_t *br, burst_t *b, int n, const char *const *ids) {
  for (int i = 0; i < n; i++) {
    b->fd[i] = bt_test_connect("127.0.0.1", br->port);
    assert_true(b->fd[i] >= 0);
  }
  for (int i = 0; i < n; i++) {
    char *body = store_append_body("\"no_stream\"", ids ? ids[i] : "burst", i, 1);
    char req[2048];
    int len = snprintf(req, sizeof req,
                       "POST /v1/streams/%s/events HTTP/1.1\r\nHost: x\r\nConnection: close\r\n"
                       "Content-Type: application/json\r\nContent-Length: %zu\r\n\r\n%s",
                       b->stream[i], strlen(body), body);
    free(body);
    assert_int_equal(send(b->fd[i], req, (size_t)len, MSG_NOSIGNAL), len);
  }
}

/* Reads every answer of a burst_send. */
static void burst_read(burst_t *b, int n) {
  for (int i = 0; i < n; i++) {
    char resp[8192];
    size_t got = 0;
    ssize_t r;
    while (got < sizeof resp - 1 && (r = recv(b->fd[i], resp + got, sizeof resp - 1 - got, 0)) > 0)
      got += (size_t)r;
    resp[got] = '\0';
    close(b->fd[i]);
    b->status[i] = 0;
    sscanf(resp, "HTTP/1.1 %d", &b->status[i]);
    const char *ra = strcasestr(resp, "\r\nRetry-After: ");
    b->retry_after[i][0] = '\0';
    if (ra)
      sscanf(ra + 15, "%15[0-9]", b->retry_after[i]);
    const char *body = strstr(resp, "\r\n\r\n");
    json_t *doc = body ? json_loads(body + 4, 0, NULL) : NULL;
    snprintf(b->error[i], sizeof b->error[i], "%s", jstr(doc, "error"));
    json_decref(doc);
  }
}

static void burst_run(const store_broker_t *br, burst_t *b, int n, const char *const *ids) {
  burst_send(br, b, n, ids);
  burst_read(b, n);
}

/* Creates stream `out` (one event) through br, for store_lock_stream. */
static void make_hold_stream(const store_broker_t *br, char *out, size_t outsz, const char *what) {
  snprintf(out, outsz, "it-hold-%s-%s", what, store_run_id());
  char path[256];
  snprintf(path, sizeof path, "/v1/streams/%s/events", out);
  char *body = store_append_body("\"no_stream\"", "hold", 0, 1);
  assert_int_equal(store_http(br, "POST", path, body, NULL, NULL), 201);
  free(body);
}

static int setup(void **state) {
  bt_test_env_load();
  return 0;
}

/* ---- 429 -------------------------------------------------------------------------------- */

static void test_queue_full_answers_429(void **state) {
  store_broker_t br;
  const char *extra[] = {"BATON_BROKER_APPEND_QUEUE=1", "BATON_BROKER_RETRY_AFTER=2", NULL};
  store_broker_start(&br, "it_store_faults_429", extra);
  burst_t *b = calloc(1, sizeof *b);
  for (int i = 0; i < BURST; i++)
    snprintf(b->stream[i], sizeof b->stream[i], "it-q-%s-%d", store_run_id(), i);
  burst_run(&br, b, BURST, NULL);
  int created = 0, refused = 0;
  for (int i = 0; i < BURST; i++) {
    if (b->status[i] == 201) {
      created++;
    } else {
      assert_int_equal(b->status[i], 429);
      assert_string_equal(b->error[i], "append_queue_full");
      assert_string_equal(b->retry_after[i], "2");
      refused++;
    }
  }
  print_message("queue of 1: %d appends answered 201, %d answered 429\n", created, refused);
  assert_true(created >= 1);
  assert_true(refused >= 1);
  /* The oracle: exactly the 201s were written. */
  PGconn *pg = store_pg();
  for (int i = 0; i < BURST; i++)
    assert_int_equal(store_count_stream(pg, b->stream[i]), b->status[i] == 201 ? 1 : 0);
  PQfinish(pg);
  assert_true(store_metric(&br, "baton_broker_append_rejected_total{reason=\"busy\"}") >= refused);
  free(b);
  store_broker_stop(&br);
}

/* ---- one bad append in a group ---------------------------------------------------------- */

static char constraint[64], poison[96];

static void poison_sql(const char *fmt) {
  char sql[512];
  snprintf(sql, sizeof sql, fmt, constraint, poison);
  PGconn *pg = store_pg();
  PQclear(store_sql(pg, sql, 0, NULL));
  PQfinish(pg);
}

static int drop_poison(void **state) {
  if (constraint[0])
    poison_sql("ALTER TABLE baton.events DROP CONSTRAINT IF EXISTS %s -- %s");
  return 0;
}

static void test_bad_append_fails_alone(void **state) {
  /* A constraint that refuses one event id only, so Postgres fails the transaction that
   * carries it: what an unexpected SQL error in one append looks like to its group. NOT VALID
   * skips checking the rows other tests wrote. */
  snprintf(constraint, sizeof constraint, "it_store_poison_%d", (int)getpid());
  snprintf(poison, sizeof poison, "poison-%s", store_run_id());
  poison_sql("ALTER TABLE baton.events ADD CONSTRAINT %s CHECK (id NOT LIKE '%s-%%') NOT VALID");

  store_broker_t br;
  store_broker_start(&br, "it_store_faults_poison", NULL);
  /* Hold one append inside Postgres, so that the whole burst queues behind it and goes out as
   * one group of BURST appends when it is let go. */
  char hold[160];
  make_hold_stream(&br, hold, sizeof hold, "poison");
  PGconn *locker = store_pg(), *observer = store_pg();
  store_lock_stream(locker, hold);
  store_async_t held;
  store_async_start(&held, &br, hold, store_append_body("\"any\"", "held", 1, 1));
  store_wait_blocked(observer, locker, 20000);
  double splits0 = store_metric(&br, "baton_broker_append_group_splits_total");
  double groups0 = store_metric(&br, "baton_broker_append_groups_total");
  burst_t *b = calloc(1, sizeof *b);
  const char *ids[BURST];
  enum { BAD = 17 };
  for (int i = 0; i < BURST; i++) {
    snprintf(b->stream[i], sizeof b->stream[i], "it-poison-%s-%d", store_run_id(), i);
    ids[i] = i == BAD ? poison : "good"; /* event ids are "<prefix>-<i>" */
  }
  burst_send(&br, b, BURST, ids);
  assert_int_equal(store_wait_metric(&br, "baton_broker_append_queued", BURST, 20000), BURST);
  PQclear(store_sql(locker, "COMMIT", 0, NULL));
  burst_read(b, BURST);
  store_async_join(&held);
  assert_int_equal(held.status, 201);
  PQfinish(locker);
  PQfinish(observer);
  PGconn *pg = store_pg();
  for (int i = 0; i < BURST; i++) {
    if (i == BAD) {
      assert_int_equal(b->status[i], 500);
      assert_string_equal(b->error[i], "store_error");
      assert_int_equal(store_count_stream(pg, b->stream[i]), 0);
    } else {
      assert_int_equal(b->status[i], 201);
      assert_int_equal(store_count_stream(pg, b->stream[i]), 1);
    }
  }
  PQfinish(pg);
  /* The bad append shared a transaction with 39 others, which was split in halves down to
   * it: one transaction for the group, then two per halving (2 * ceil(log2 40) = 12). Retrying
   * append by append would take 1 + 40. */
  double splits = store_metric(&br, "baton_broker_append_group_splits_total") - splits0;
  double groups = store_metric(&br, "baton_broker_append_groups_total") - groups0;
  print_message("one bad append among %d: %.0f transactions, %.0f splits\n", BURST, groups, splits);
  assert_true(splits >= 1);
  assert_true(groups >= 2);
  assert_true(groups <= 13);
  free(b);
  store_broker_stop(&br);
}

/* ---- outcome unknown ---------------------------------------------------------------------- */

/* The backend of an append is killed while the append waits for a row lock inside
 * append_batch: the broker cannot know whether it committed, and must say so (503
 * outcome_unknown), not claim a failure or a success. The retry then stores it exactly once. */
static void test_killed_backend_answers_outcome_unknown(void **state) {
  store_broker_t br;
  store_broker_start(&br, "it_store_faults_unknown", NULL);
  char hold[160];
  make_hold_stream(&br, hold, sizeof hold, "unknown");
  double unknown0 =
      store_metric(&br, "baton_broker_append_failures_total{reason=\"outcome_unknown\"}");
  PGconn *locker = store_pg(), *observer = store_pg();
  store_lock_stream(locker, hold);
  store_async_t a;
  store_async_start(&a, &br, hold, store_append_body("\"any\"", "victim", 1, 1));
  int pid = store_wait_blocked(observer, locker, 20000);
  char spid[16];
  snprintf(spid, sizeof spid, "%d", pid);
  const char *p[] = {spid};
  assert_int_equal(store_sql_int(observer, "SELECT pg_terminate_backend($1::int)::int", 1, p), 1);
  store_async_join(&a);
  PQclear(store_sql(locker, "COMMIT", 0, NULL));
  if (a.status != 503 || strcmp(a.error, "outcome_unknown") != 0)
    fail_msg("a killed backend answered %d %s, not 503 outcome_unknown", a.status, a.error);
  assert_true(
      store_metric(&br, "baton_broker_append_failures_total{reason=\"outcome_unknown\"}") >=
      unknown0 + 1);
  /* The retry the answer asks for: the kill happened before the commit, so it is new now. */
  char path[256];
  snprintf(path, sizeof path, "/v1/streams/%s/events", hold);
  char *body = store_append_body("\"any\"", "victim", 1, 1);
  int st = 0;
  for (int i = 0; i < 50 && (st = store_http(&br, "POST", path, body, NULL, NULL)) == 503; i++)
    usleep(100000); /* the pool reconnects */
  assert_int_equal(st, 201);
  assert_int_equal(store_http(&br, "POST", path, body, NULL, NULL), 200);
  free(body);
  assert_int_equal(store_count_stream(observer, hold), 2);
  PQfinish(locker);
  PQfinish(observer);
  store_broker_stop(&br);
}

/* ---- isolation ------------------------------------------------------------------------------ */

static char iso_constraint[64], iso_prefix[96];

static int drop_iso_constraint(void **state) {
  if (iso_constraint[0]) {
    char sql[256];
    snprintf(sql, sizeof sql, "ALTER TABLE baton.events DROP CONSTRAINT IF EXISTS %s",
             iso_constraint);
    PGconn *pg = store_pg();
    PQclear(store_sql(pg, sql, 0, NULL));
    PQfinish(pg);
  }
  return 0;
}

/* The broker's connections default to SERIALIZABLE (as a database default would make them);
 * a constraint that only READ COMMITTED passes shows in which isolation the append ran. */
static void test_appends_run_read_committed(void **state) {
  snprintf(iso_constraint, sizeof iso_constraint, "it_store_iso_%d", (int)getpid());
  snprintf(iso_prefix, sizeof iso_prefix, "iso-%s", store_run_id());
  char sql[512];
  snprintf(sql, sizeof sql,
           "ALTER TABLE baton.events ADD CONSTRAINT %s CHECK (id NOT LIKE '%s-%%' OR "
           "current_setting('transaction_isolation') = 'read committed') NOT VALID",
           iso_constraint, iso_prefix);
  PGconn *pg = store_pg();
  PQclear(store_sql(pg, sql, 0, NULL));
  char dsn[1024];
  snprintf(dsn, sizeof dsn,
           "BATON_PG_DSN=%s%soptions=-c%%20default_transaction_isolation%%3Dserializable",
           bt_test_env("BATON_PG_DSN"), strchr(bt_test_env("BATON_PG_DSN"), '?') ? "&" : "?");
  const char *extra[] = {dsn, NULL};
  store_broker_t br;
  store_broker_start(&br, "it_store_faults_iso", extra);
  char stream[160], path[256];
  snprintf(stream, sizeof stream, "it-iso-%s", store_run_id());
  snprintf(path, sizeof path, "/v1/streams/%s/events", stream);
  char *body = store_append_body("\"no_stream\"", iso_prefix, 1, 3);
  json_t *doc = NULL;
  int st = store_http(&br, "POST", path, body, &doc, NULL);
  if (st != 201)
    fail_msg("append under a SERIALIZABLE default answered %d %s", st, jstr(doc, "error"));
  json_decref(doc);
  free(body);
  assert_int_equal(store_count_stream(pg, stream), 3);
  PQfinish(pg);
  store_broker_stop(&br);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_queue_full_answers_429),
      cmocka_unit_test_teardown(test_bad_append_fails_alone, drop_poison),
      cmocka_unit_test(test_killed_backend_answers_outcome_unknown),
      cmocka_unit_test_teardown(test_appends_run_read_committed, drop_iso_constraint),
  };
  return cmocka_run_group_tests(tests, setup, NULL);
}
