/* Helpers shared by the event-store integration tests (test_store_*.c): a baton-broker child
 * on a free port, JSON requests and answers, and an independent libpq connection used as the
 * oracle. Static functions in a header because each test file is its own executable. */
#ifndef TEST_STORE_UTIL_H
#define TEST_STORE_UTIL_H

#include <jansson.h>
#include <libpq-fe.h>
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "errors.h"
#include "testsupport.h"

typedef struct store_broker {
  pid_t pid;
  int port;
  char url[64];
  char log[512];
} store_broker_t;

/* A prefix unique to this run of this test, for stream names: the database is shared by every
 * test of the run and survives between runs of a developer's stack. */
static inline const char *store_run_id(void) {
  static char id[48];
  if (!id[0])
    snprintf(id, sizeof id, "%d-%llu", (int)getpid(), (unsigned long long)bt_test_now_ms());
  return id;
}

/* Starts baton-broker with the stack's DSNs and the relay off, plus `extra` ("K=V" strings,
 * NULL-terminated, may be NULL), and waits for /readyz 200. */
static inline void store_broker_start(store_broker_t *br, const char *name,
                                      const char *const *extra) {
  static char env[24][2048];
  size_t n = 0;
  br->port = bt_test_free_port();
  snprintf(env[n++], sizeof env[0], "BATON_HTTP_PORT=%d", br->port);
  snprintf(env[n++], sizeof env[0], "BATON_PG_DSN=%s", bt_test_env("BATON_PG_DSN"));
  snprintf(env[n++], sizeof env[0], "BATON_KAFKA_BROKERS=%s", bt_test_env("BATON_KAFKA_BROKERS"));
  snprintf(env[n++], sizeof env[0], "BATON_BROKER_RELAY=false");
  for (size_t i = 0; extra && extra[i] && n < 23; i++)
    snprintf(env[n++], sizeof env[0], "%s", extra[i]);
  const char *envp[25];
  for (size_t i = 0; i < n; i++)
    envp[i] = env[i];
  envp[n] = NULL;
  const char *build = getenv("BATON_BUILD_DIR");
  char dir[400];
  snprintf(dir, sizeof dir, "%s/Testing", build ? build : "/tmp");
  mkdir(dir, 0755); /* ctest makes it; a test run by hand may not have it */
  snprintf(br->log, sizeof br->log, "%s/%s-broker.log", dir, name);
  const char *argv[] = {bt_test_bin("baton-broker"), NULL};
  br->pid = bt_test_spawn(argv, envp, br->log);
  snprintf(br->url, sizeof br->url, "http://127.0.0.1:%d", br->port);
  char ready[96];
  snprintf(ready, sizeof ready, "%s/readyz", br->url);
  if (bt_test_wait_status(ready, 200, 20000) != 0)
    fail_msg("baton-broker did not become ready (log: %s)", br->log);
}

/* Stops the broker with SIGTERM and checks that it drained and exited 0 (with sanitizers, a
 * leak or an error makes that exit status non-zero). */
static inline void store_broker_stop(store_broker_t *br) {
  if (br->pid <= 0)
    return;
  int status = bt_test_stop(br->pid, SIGTERM, 15000);
  br->pid = 0;
  if (!(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0))
    fail_msg("baton-broker did not exit cleanly (status %d, log: %s)", status, br->log);
}

/* One HTTP request; the answer's body parsed as JSON into *doc (NULL when not JSON). */
static inline int store_http(const store_broker_t *br, const char *method, const char *path,
                             const char *body, json_t **doc, bt_test_http_resp_t *out) {
  char url[1024];
  snprintf(url, sizeof url, "%s%s", br->url, path);
  bt_test_http_resp_t r;
  bt_test_http(method, url, body ? "Content-Type: application/json\r\n" : NULL, body,
               body ? strlen(body) : 0, &r);
  int status = r.status;
  if (doc)
    *doc = json_loads(r.body, 0, NULL);
  if (out)
    *out = r;
  else
    bt_test_http_free(&r);
  return status;
}

/* Builds an append body: `n` events with ids "<idprefix>-<i>" (i from first), each with a
 * small JSON data object. expected is JSON text: "\"any\"", "\"no_stream\"", "3". */
static inline char *store_append_body(const char *expected, const char *idprefix, int first,
                                      int n) {
  json_t *events = json_array();
  for (int i = first; i < first + n; i++) {
    char id[256];
    snprintf(id, sizeof id, "%s-%d", idprefix, i);
    json_array_append_new(events, json_pack("{s:s, s:s, s:s, s:s, s:{s:i}}", "specversion", "1.0",
                                            "id", id, "source", "/it/store", "type",
                                            "it.store.appended", "data", "i", i));
  }
  json_t *exp = json_loads(expected, JSON_DECODE_ANY, NULL);
  json_t *body = json_pack("{s:o, s:o}", "expected_version", exp, "events", events);
  char *text = json_dumps(body, JSON_COMPACT);
  json_decref(body);
  return text;
}

static inline json_int_t jint(const json_t *doc, const char *key) {
  json_t *v = json_object_get(doc, key);
  if (!json_is_integer(v))
    fail_msg("answer has no integer '%s'", key);
  return json_integer_value(v);
}

static inline const char *jstr(const json_t *doc, const char *key) {
  const char *s = json_string_value(json_object_get(doc, key));
  return s ? s : "";
}

/* ---- the SQL oracle ---- */

static inline PGconn *store_pg(void) {
  PGconn *c = PQconnectdb(bt_test_env("BATON_PG_DSN"));
  if (PQstatus(c) != CONNECTION_OK)
    fail_msg("oracle connection failed: %s", PQerrorMessage(c));
  return c;
}

/* Runs a parameterised query that must succeed; the caller PQclear()s the result. */
static inline PGresult *store_sql(PGconn *c, const char *sql, int n, const char *const *params) {
  PGresult *r = PQexecParams(c, sql, n, NULL, params, NULL, NULL, 0);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_TUPLES_OK && st != PGRES_COMMAND_OK)
    fail_msg("%s: %s", sql, PQresultErrorMessage(r));
  return r;
}

/* A database of the test's own on the stack's server, for tests that need a fresh schema:
 * its name and its DSN (the stack's, with dbname replaced, as key=value pairs). */
typedef struct store_db {
  char name[64];
  char dsn[1024];
} store_db_t;

/* Runs fmt (one %s: the database name) on the stack's own database. */
static inline void store_db_admin(const store_db_t *db, const char *fmt) {
  char sql[256];
  snprintf(sql, sizeof sql, fmt, db->name);
  PGconn *pg = store_pg();
  PQclear(store_sql(pg, "SET client_min_messages = warning", 0, NULL));
  PQclear(store_sql(pg, sql, 0, NULL));
  PQfinish(pg);
}

/* (Re)creates the database <prefix>_<pid> and fills db->dsn. */
static inline void store_db_create(store_db_t *db, const char *prefix) {
  snprintf(db->name, sizeof db->name, "%s_%d", prefix, (int)getpid());
  store_db_admin(db, "DROP DATABASE IF EXISTS %s");
  store_db_admin(db, "CREATE DATABASE %s");
  char *err = NULL;
  PQconninfoOption *opts = PQconninfoParse(bt_test_env("BATON_PG_DSN"), &err);
  if (!opts)
    fail_msg("cannot parse the stack DSN: %s", err ? err : "?");
  size_t len = 0;
  for (PQconninfoOption *o = opts; o->keyword; o++) {
    const char *v = strcmp(o->keyword, "dbname") == 0 ? db->name : o->val;
    if (v && *v && len < sizeof db->dsn)
      len += (size_t)snprintf(db->dsn + len, sizeof db->dsn - len, "%s='%s' ", o->keyword, v);
  }
  PQconninfoFree(opts);
}

static inline void store_db_drop(const store_db_t *db) {
  store_db_admin(db, "DROP DATABASE IF EXISTS %s WITH (FORCE)");
}

static inline long long store_sql_int(PGconn *c, const char *sql, int n,
                                      const char *const *params) {
  PGresult *r = store_sql(c, sql, n, params);
  if (PQntuples(r) != 1)
    fail_msg("%s: %d rows", sql, PQntuples(r));
  long long v = PQgetisnull(r, 0, 0) ? -1 : atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

static inline long long store_count_stream(PGconn *c, const char *stream) {
  const char *p[] = {stream};
  return store_sql_int(c, "SELECT count(*) FROM baton.events WHERE stream = $1", 1, p);
}

/* A metric's value from /metrics (the first series whose name starts with `name`), or -1. */
static inline double store_metric(const store_broker_t *br, const char *name) {
  bt_test_http_resp_t r;
  store_http(br, "GET", "/metrics", NULL, NULL, &r);
  double v = -1;
  size_t len = strlen(name);
  for (const char *p = r.body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL) {
    if (strncmp(p, name, len) == 0 && (p[len] == ' ' || p[len] == '{')) {
      const char *sp = strchr(p, ' ');
      v = sp ? atof(sp + 1) : -1;
      break;
    }
  }
  bt_test_http_free(&r);
  return v;
}

/* Polls a metric until it is >= want or timeout_ms passes; returns the last value read. */
static inline double store_wait_metric(const store_broker_t *br, const char *name, double want,
                                       int timeout_ms) {
  uint64_t deadline = bt_test_now_ms() + (uint64_t)timeout_ms;
  double v;
  while ((v = store_metric(br, name)) < want && bt_test_now_ms() < deadline)
    usleep(20000);
  return v;
}

/* ---- holding an append inside Postgres ----
 * A test that needs an append transaction to stay open (to queue others behind it, or to kill
 * its backend) locks the row of an existing stream on a connection of its own: an append to
 * that stream then waits for the row lock inside baton.append_batch, before it takes the
 * positions lock, so appends of other tests are not held up. */

/* Starts a transaction on c that holds the row lock of `stream` (which must exist). */
static inline void store_lock_stream(PGconn *c, const char *stream) {
  const char *p[] = {stream};
  PQclear(store_sql(c, "BEGIN", 0, NULL));
  PGresult *r = store_sql(c, "SELECT 1 FROM baton.streams WHERE stream = $1 FOR UPDATE", 1, p);
  if (PQntuples(r) != 1)
    fail_msg("stream %s does not exist", stream);
  PQclear(r);
}

/* Waits until a backend is blocked by the lock holder `holder` (a connection that called
 * store_lock_stream) and returns its pid; fails the test after timeout_ms. */
static inline int store_wait_blocked(PGconn *observer, PGconn *holder, int timeout_ms) {
  char pid[16];
  snprintf(pid, sizeof pid, "%d", PQbackendPID(holder));
  const char *p[] = {pid};
  uint64_t deadline = bt_test_now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    long long blocked = store_sql_int(
        observer,
        "SELECT coalesce(min(pid), 0) FROM pg_stat_activity "
        "WHERE $1::int = ANY (pg_blocking_pids(pid))",
        1, p);
    if (blocked > 0)
      return (int)blocked;
    if (bt_test_now_ms() > deadline)
      fail_msg("no backend got blocked by the lock of pid %s within %d ms", pid, timeout_ms);
    usleep(20000);
  }
}

/* One append on a thread of its own, for requests that are meant to block. */
typedef struct store_async {
  const store_broker_t *br;
  char path[400];
  char *body; /* owned */
  int status;
  char error[64];
  pthread_t th;
} store_async_t;

static inline void *store_async_main(void *arg) {
  store_async_t *a = arg;
  json_t *doc = NULL;
  a->status = store_http(a->br, "POST", a->path, a->body, &doc, NULL);
  snprintf(a->error, sizeof a->error, "%s", jstr(doc, "error"));
  json_decref(doc);
  return NULL;
}

/* Starts POST /v1/streams/<stream>/events with body (taken over) on a thread. */
static inline void store_async_start(store_async_t *a, const store_broker_t *br,
                                     const char *stream, char *body) {
  memset(a, 0, sizeof *a);
  a->br = br;
  snprintf(a->path, sizeof a->path, "/v1/streams/%s/events", stream);
  a->body = body;
  if (pthread_create(&a->th, NULL, store_async_main, a) != 0)
    fail_msg("pthread_create failed");
}

static inline void store_async_join(store_async_t *a) {
  pthread_join(a->th, NULL);
  free(a->body);
  a->body = NULL;
}

#endif
