/* baton-saga end to end against a real Postgres, in a database of its own: migrations applied
 * by concurrent processes exactly once; start-up refused with the definition's message; the
 * HTTP API: /readyz, GET /v1/saga-types with versions and live counts (a version no longer
 * loaded still listed), POST /v1/sagas/{type} writing the saga, its history, its timers and its
 * first command (CloudEvents layout) in the outbox in one transaction, Idempotency-Key
 * semantics (same body, other body, 3 in parallel) and GET /v1/sagas/{id}. */
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

static char dbname[64], dsn[1024], defs_dir[64], log_path[512];

static PGresult *sql(PGconn *pg, const char *q, int n, const char *const *v) {
  PGresult *r = PQexecParams(pg, q, n, NULL, v, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
    fail_msg("%s: %s", q, PQresultErrorMessage(r));
  return r;
}

static long long sql_int(PGconn *pg, const char *q, int n, const char *const *v) {
  PGresult *r = sql(pg, q, n, v);
  long long x = atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return x;
}

static void admin(const char *fmt) {
  char q[256];
  snprintf(q, sizeof q, fmt, dbname);
  PGconn *pg = PQconnectdb(bt_test_env("BATON_PG_DSN"));
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  PQclear(sql(pg, "SET client_min_messages = warning", 0, NULL));
  PQclear(sql(pg, q, 0, NULL));
  PQfinish(pg);
}

/* The stack's DSN with our own database: a URI gets its path replaced; a key=value string
 * gets a dbname appended, which libpq lets override the earlier one. */
static void make_dsn(const char *base) {
  const char *scheme = strstr(base, "://");
  const char *path = scheme ? strchr(scheme + 3, '/') : NULL;
  if (!scheme)
    snprintf(dsn, sizeof dsn, "%s dbname=%s", base, dbname);
  else if (!path)
    snprintf(dsn, sizeof dsn, "%s/%s", base, dbname);
  else
    snprintf(dsn, sizeof dsn, "%.*s/%s%s", (int)(path - base), base, dbname,
             strchr(path, '?') ? strchr(path, '?') : "");
}

static void write_def(const char *name, const char *text) {
  char path[256];
  snprintf(path, sizeof path, "%s/%s", defs_dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static const char checkout_v1[] =
    "saga: checkout\nversion: 1\nsteps:\n"
    "  - { name: reserve-inventory, topic: inventory.commands, command: ReserveInventory,"
    "      compensation: ReleaseInventory }\n"
    "  - { name: create-shipment, topic: shipping.commands, command: CreateShipment }\n";
static const char checkout_v2[] =
    "saga: checkout\nversion: 2\ndeadline: 60s\nsteps:\n"
    "  - { name: reserve-inventory, topic: inventory.commands, command: ReserveInventory,"
    "      compensation: ReleaseInventory, timeout: 5s }\n"
    "  - { name: authorize-payment, topic: payment.commands, command: AuthorizePayment }\n";

static int setup(void **state) {
  bt_test_env_load();
  snprintf(dbname, sizeof dbname, "it_saga_api_%d", (int)getpid());
  admin("DROP DATABASE IF EXISTS %s");
  admin("CREATE DATABASE %s");
  make_dsn(bt_test_env("BATON_PG_DSN"));
  snprintf(defs_dir, sizeof defs_dir, "/tmp/it_saga_defs_%d", (int)getpid());
  mkdir(defs_dir, 0700);
  write_def("checkout-v1.yaml", checkout_v1);
  write_def("checkout-v2.yml", checkout_v2);
  const char *build = getenv("BATON_BUILD_DIR");
  snprintf(log_path, sizeof log_path, "%s/Testing/it_saga_api.log", build ? build : "/tmp");
  return 0;
}

static int teardown(void **state) {
  admin("DROP DATABASE IF EXISTS %s WITH (FORCE)");
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", defs_dir);
  return system(cmd);
}

/* Runs `baton-saga <args>` with our DSN and definitions plus `extra`; returns the pid. */
static pid_t spawn_saga(const char *arg, const char *dir, const char *extra) {
  static char env_dsn[1100], env_defs[256], env_extra[256];
  snprintf(env_dsn, sizeof env_dsn, "BATON_PG_DSN=%s", dsn);
  snprintf(env_defs, sizeof env_defs, "BATON_SAGA_DEFINITIONS=%s", dir);
  snprintf(env_extra, sizeof env_extra, "%s", extra ? extra : "BATON_LOG_LEVEL=info");
  /* No Kafka: these tests read the commands in saga.outbox, which a relay would empty
   * (it_saga_engine covers the way to Kafka). */
  const char *env[] = {env_dsn, env_defs, env_extra, "BATON_KAFKA_BROKERS=", NULL};
  const char *argv[] = {bt_test_bin("baton-saga"), arg, NULL};
  return bt_test_spawn(argv, env, log_path);
}

static int exit_code(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

static void test_concurrent_migrations(void **state) {
  enum { N = 6 };
  for (int round = 0; round < 2; round++) {
    pid_t pids[N];
    for (int i = 0; i < N; i++)
      pids[i] = spawn_saga("migrate", defs_dir, NULL);
    for (int i = 0; i < N; i++)
      assert_int_equal(exit_code(pids[i]), 0);
  }
  PGconn *pg = PQconnectdb(dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  assert_int_equal(sql_int(pg, "SELECT count(*) FROM saga.schema_migrations", 0, NULL), 2);
  assert_int_equal(sql_int(pg, "SELECT count(*) FROM information_schema.tables WHERE "
                               "table_schema = 'saga'",
                           0, NULL),
                   8); /* sagas, history, timers, replies_seen, idempotency_keys, outbox,
                        * outbox_lease, ledger */
  PQfinish(pg);
}

static char *read_log(void) {
  FILE *f = fopen(log_path, "r");
  assert_non_null(f);
  static char buf[1 << 20];
  size_t n = fread(buf, 1, sizeof buf - 1, f);
  buf[n] = '\0';
  fclose(f);
  return buf;
}

static void test_bad_definitions_stop_start_up(void **state) {
  char bad[80];
  snprintf(bad, sizeof bad, "%s-bad", defs_dir);
  mkdir(bad, 0700);
  char path[128];
  snprintf(path, sizeof path, "%s/bad.yaml", bad);
  FILE *f = fopen(path, "w");
  fputs("saga: x\nversion: 1\ndeadline: soon\nsteps:\n  - { name: a, topic: t, command: C }\n", f);
  fclose(f);
  FILE *lf = fopen(log_path, "w"); /* empty the log: the message must come from this run */
  if (lf)
    fclose(lf);
  assert_int_equal(exit_code(spawn_saga(NULL, bad, "BATON_HTTP_PORT=0")), 1);
  char want[256];
  snprintf(want, sizeof want, "%s:3:11: deadline: bad duration \"soon\"", path);
  assert_non_null(strstr(read_log(), want));
  /* `check` says the same without starting, and 0 for a good directory. */
  const char *argv[] = {bt_test_bin("baton-saga"), "check", bad, NULL};
  assert_int_equal(exit_code(bt_test_spawn(argv, NULL, log_path)), 1);
  const char *argv2[] = {bt_test_bin("baton-saga"), "check", defs_dir, NULL};
  assert_int_equal(exit_code(bt_test_spawn(argv2, NULL, log_path)), 0);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", bad);
  assert_int_equal(system(cmd), 0);
}

static char base[64];

static json_t *http_json(const char *method, const char *path, const char *headers,
                         const char *body, int want_status) {
  char url[256];
  snprintf(url, sizeof url, "%s%s", base, path);
  bt_test_http_resp_t r;
  assert_int_equal(bt_test_http(method, url, headers, body, body ? strlen(body) : 0, &r), 0);
  if (r.status != want_status)
    fail_msg("%s %s: status %d, want %d: %s", method, path, r.status, want_status, r.body);
  json_t *j = json_loads(r.body, 0, NULL);
  if (!j)
    fail_msg("%s %s: not JSON: %s", method, path, r.body);
  bt_test_http_free(&r);
  return j;
}

/* The version entry of checkout `version` in a /v1/saga-types answer. */
static json_t *type_version(json_t *types, int version) {
  json_t *list = json_object_get(types, "types"), *t, *v;
  size_t i, k;
  json_array_foreach(list, i, t) {
    if (strcmp(json_string_value(json_object_get(t, "saga")), "checkout") != 0)
      continue;
    json_array_foreach(json_object_get(t, "versions"), k, v) {
      if (json_integer_value(json_object_get(v, "version")) == version)
        return v;
    }
  }
  return NULL;
}

typedef struct par {
  const char *body;
  int status;
  char id[64];
} par_t;

static void *post_parallel(void *arg) {
  par_t *p = arg;
  char url[256];
  snprintf(url, sizeof url, "%s/v1/sagas/checkout", base);
  bt_test_http_resp_t r;
  if (bt_test_http("POST", url, "Idempotency-Key: par-1\r\n", p->body, strlen(p->body), &r) == 0) {
    p->status = r.status;
    json_t *j = json_loads(r.body, 0, NULL);
    if (j && json_string_value(json_object_get(j, "id")))
      snprintf(p->id, sizeof p->id, "%s", json_string_value(json_object_get(j, "id")));
    json_decref(j);
    bt_test_http_free(&r);
  }
  return NULL;
}

/* Starts baton-saga on a free port and waits for /readyz. */
static pid_t start_server(void) {
  int port = bt_test_free_port();
  char env_port[64];
  snprintf(env_port, sizeof env_port, "BATON_HTTP_PORT=%d", port);
  snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
  pid_t pid = spawn_saga(NULL, defs_dir, env_port);
  char url[128];
  snprintf(url, sizeof url, "%s/readyz", base);
  assert_int_equal(bt_test_wait_status(url, 200, 30000), 0);
  return pid;
}

static void test_http_api(void **state) {
  pid_t pid = start_server();
  char url[128];
  PGconn *pg = PQconnectdb(dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);

  /* Both versions loaded, nothing live. */
  json_t *types = http_json("GET", "/v1/saga-types", NULL, NULL, 200);
  json_t *v1 = type_version(types, 1), *v2 = type_version(types, 2);
  assert_non_null(v1);
  assert_non_null(v2);
  assert_true(json_is_true(json_object_get(v2, "loaded")));
  assert_int_equal(json_integer_value(json_object_get(v2, "running")), 0);
  assert_int_equal(json_integer_value(json_object_get(v1, "steps")), 2);
  json_decref(types);

  /* A start runs the latest version and writes everything in one transaction. */
  json_t *st = http_json("POST", "/v1/sagas/checkout",
                         "traceparent: 00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01\r\n",
                         "{\"order\":\"o-1\"}", 201);
  const char *id = json_string_value(json_object_get(st, "id"));
  assert_non_null(id);
  assert_int_equal(json_integer_value(json_object_get(st, "version")), 2);
  assert_string_equal(json_string_value(json_object_get(st, "state")), "RUNNING");
  const char *v[] = {id};
  PGresult *r = sql(pg,
                    "SELECT topic, key, id, type, source, subject, datacontenttype, "
                    "extensions->>'sagastep', extensions->>'sagaattempt', extensions->>'sagakind', "
                    "extensions->>'replyto', extensions->>'traceparent', convert_from(data, 'UTF8') "
                    "FROM saga.outbox WHERE key = $1",
                    1, v);
  assert_int_equal(PQntuples(r), 1);
  char ce_id[128];
  snprintf(ce_id, sizeof ce_id, "%s/reserve-inventory/1/command", id);
  const char *want[] = {"inventory.commands", id, ce_id, "ReserveInventory",
                        "/baton/saga/checkout", id, "application/json", "reserve-inventory", "1",
                        "command", "checkout.replies",
                        "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                        "{\"input\":{\"order\":\"o-1\"},\"results\":{}}"};
  for (int c = 0; c < (int)BT_ARRAY_LEN(want); c++)
    if (strcmp(PQgetvalue(r, 0, c), want[c]) != 0)
      fail_msg("outbox column %d: \"%s\", want \"%s\"", c, PQgetvalue(r, 0, c), want[c]);
  PQclear(r);
  assert_int_equal(sql_int(pg, "SELECT count(*) FROM saga.timers WHERE saga_id = $1::uuid AND "
                               "((timer = 'attempt' AND due_at BETWEEN now() AND now() + "
                               "interval '6 s') OR (timer = 'deadline' AND due_at > now() + "
                               "interval '50 s'))",
                           1, v),
                   2);
  assert_int_equal(sql_int(pg, "SELECT count(*) FROM saga.sagas WHERE id = $1::uuid AND version "
                               "= 2 AND plan->>'saga' = 'checkout' AND trace_id = "
                               "'4bf92f3577b34da6a3ce929d0e0e4736'",
                           1, v),
                   1);

  /* GET gives the state, the input and the history. */
  char path[128];
  snprintf(path, sizeof path, "/v1/sagas/%s", id);
  json_t *g = http_json("GET", path, NULL, NULL, 200);
  assert_string_equal(json_string_value(json_object_get(g, "state")), "RUNNING");
  assert_string_equal(json_string_value(json_object_get(json_object_get(g, "input"), "order")),
                      "o-1");
  json_t *hist = json_object_get(g, "history");
  assert_int_equal(json_array_size(hist), 2);
  assert_string_equal(json_string_value(json_object_get(json_array_get(hist, 0), "what")),
                      "started");
  assert_string_equal(json_string_value(json_object_get(json_array_get(hist, 1), "what")), "sent");
  assert_string_equal(json_string_value(json_object_get(json_array_get(hist, 1), "step")),
                      "reserve-inventory");
  json_decref(g);
  json_decref(http_json("GET", "/v1/sagas/00000000-0000-4000-8000-000000000000", NULL, NULL, 404));
  json_decref(http_json("GET", "/v1/sagas/nope", NULL, NULL, 404));

  /* Errors. */
  json_t *e = http_json("POST", "/v1/sagas/unknown", NULL, "{}", 404);
  assert_string_equal(json_string_value(json_object_get(e, "error")), "unknown_saga_type");
  json_decref(e);
  e = http_json("POST", "/v1/sagas/checkout", NULL, "{nope", 400);
  assert_string_equal(json_string_value(json_object_get(e, "error")), "invalid_json");
  json_decref(e);

  /* Idempotency-Key: the same body gives the same saga, another body 422. */
  json_t *a = http_json("POST", "/v1/sagas/checkout", "Idempotency-Key: k-1\r\n", "{\"n\":1}", 201);
  json_t *b = http_json("POST", "/v1/sagas/checkout", "Idempotency-Key: k-1\r\n", "{\"n\":1}", 201);
  assert_string_equal(json_string_value(json_object_get(a, "id")),
                      json_string_value(json_object_get(b, "id")));
  e = http_json("POST", "/v1/sagas/checkout", "Idempotency-Key: k-1\r\n", "{\"n\":2}", 422);
  assert_string_equal(json_string_value(json_object_get(e, "error")), "idempotency_key_reused");
  json_decref(a);
  json_decref(b);
  json_decref(e);

  /* The same key three times in parallel: one saga, three identical answers. */
  par_t p[3] = {{.body = "{\"p\":1}"}, {.body = "{\"p\":1}"}, {.body = "{\"p\":1}"}};
  pthread_t th[3];
  for (int i = 0; i < 3; i++)
    pthread_create(&th[i], NULL, post_parallel, &p[i]);
  for (int i = 0; i < 3; i++)
    pthread_join(th[i], NULL);
  for (int i = 0; i < 3; i++) {
    assert_int_equal(p[i].status, 201);
    assert_string_equal(p[i].id, p[0].id);
  }
  assert_int_equal(sql_int(pg, "SELECT count(*) FROM saga.sagas WHERE input = '{\"p\":1}'", 0, NULL),
                   1);

  /* The list pages through the three running sagas two at a time. */
  json_t *l1 = http_json("GET", "/v1/sagas?type=checkout&state=RUNNING&limit=2", NULL, NULL, 200);
  assert_int_equal(json_array_size(json_object_get(l1, "sagas")), 2);
  const char *next = json_string_value(json_object_get(l1, "next_cursor"));
  assert_non_null(next);
  char page2[256];
  snprintf(page2, sizeof page2, "/v1/sagas?type=checkout&state=RUNNING&limit=2&cursor=%s", next);
  json_t *l2 = http_json("GET", page2, NULL, NULL, 200);
  assert_int_equal(json_array_size(json_object_get(l2, "sagas")), 1);
  assert_true(json_is_null(json_object_get(l2, "next_cursor")));
  for (size_t i = 0; i < 2; i++) /* no saga twice */
    assert_string_not_equal(
        json_string_value(json_object_get(json_array_get(json_object_get(l1, "sagas"), i), "id")),
        json_string_value(json_object_get(json_array_get(json_object_get(l2, "sagas"), 0), "id")));
  json_decref(l1);
  json_decref(l2);
  json_decref(http_json("GET", "/v1/sagas?state=running", NULL, NULL, 400));
  json_decref(http_json("GET", "/v1/sagas?limit=0", NULL, NULL, 400));
  json_decref(http_json("GET", "/v1/sagas?cursor=x", NULL, NULL, 400));

  /* Live counts, and a version that is no longer loaded but still has a running saga. */
  PQclear(sql(pg, "INSERT INTO saga.sagas (id, type, version, state, plan, cursor, input) VALUES "
                  "('11111111-1111-4111-8111-111111111111', 'checkout', 9, 'FAILED', '{}', '{}', "
                  "'{}')",
              0, NULL));
  types = http_json("GET", "/v1/saga-types", NULL, NULL, 200);
  assert_int_equal(json_integer_value(json_object_get(type_version(types, 2), "running")), 3);
  json_t *v9 = type_version(types, 9);
  assert_non_null(v9);
  assert_true(json_is_false(json_object_get(v9, "loaded")));
  assert_int_equal(json_integer_value(json_object_get(v9, "failed")), 1);
  json_decref(types);

  bt_test_http_resp_t m;
  snprintf(url, sizeof url, "%s/metrics", base);
  assert_int_equal(bt_test_http("GET", url, NULL, NULL, 0, &m), 0);
  assert_non_null(strstr(m.body, "baton_saga_started_total 3"));
  assert_non_null(strstr(m.body, "baton_saga_idempotency_key_reused_total 1"));
  bt_test_http_free(&m);

  json_decref(st);
  PQfinish(pg);
  int status = bt_test_stop(pid, SIGTERM, 15000);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
}

static const char *reply_body(const char *id, const char *step, int attempt, const char *kind,
                              const char *outcome, const char *data) {
  static char b[1024];
  snprintf(b, sizeof b,
           "{\"specversion\":\"1.0\",\"id\":\"r\",\"source\":\"/p\",\"type\":\"Done\","
           "\"sagaid\":\"%s\",\"sagastep\":\"%s\",\"sagaattempt\":%d,\"sagakind\":\"%s\","
           "\"outcome\":\"%s\",\"data\":%s}",
           id, step, attempt, kind, outcome, data);
  return b;
}

/* POSTs to /v1/sagas/{id}/<what> and checks the status; returns the answer. */
static json_t *post_to(const char *id, const char *what, const char *body, int status) {
  char path[128];
  snprintf(path, sizeof path, "/v1/sagas/%s/%s", id, what);
  return http_json("POST", path, NULL, body ? body : "", status);
}

static void expect_field(json_t *j, const char *field, const char *want) {
  const char *got = json_string_value(json_object_get(j, field));
  if (!got || strcmp(got, want) != 0)
    fail_msg("%s: \"%s\", want \"%s\" in %s", field, got ? got : "(none)", want,
             json_dumps(j, JSON_COMPACT));
  json_decref(j);
}

typedef struct par_reply {
  const char *id;
  int applied;
} par_reply_t;

static void *reply_parallel(void *arg) {
  par_reply_t *p = arg;
  char url[256];
  snprintf(url, sizeof url, "%s/v1/sagas/%s/replies", base, p->id);
  const char *b = reply_body(p->id, "reserve-inventory", 1, "compensation", "success", "null");
  char body[1024];
  snprintf(body, sizeof body, "%s", b);
  bt_test_http_resp_t r;
  if (bt_test_http("POST", url, NULL, body, strlen(body), &r) == 0) {
    json_t *j = json_loads(r.body, 0, NULL);
    p->applied = r.status == 200 && json_is_true(json_object_get(j, "applied"));
    json_decref(j);
    bt_test_http_free(&r);
  }
  return NULL;
}

/* Replies over HTTP and operator actions drive a saga through the machine with every write in
 * Postgres: success, pause/resume, a payment refusal compensated with the reservation's data,
 * stale replies ignored and recorded, illegal actions refused with the state, and the same
 * compensation reply three times in parallel applied once. */
static void test_replies_and_operators(void **state) {
  pid_t pid = start_server();
  PGconn *pg = PQconnectdb(dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  json_t *st = http_json("POST", "/v1/sagas/checkout", NULL, "{\"order\":\"o-9\"}", 201);
  char id[64];
  snprintf(id, sizeof id, "%s", json_string_value(json_object_get(st, "id")));
  json_decref(st);
  const char *v[] = {id};

  /* Step 1 succeeds with a reservation id: the next command carries it in results. */
  json_t *a = post_to(id, "replies",
                      reply_body(id, "reserve-inventory", 1, "command", "success",
                                 "{\"reservation\":\"r-7\"}"),
                      200);
  assert_true(json_is_true(json_object_get(a, "applied")));
  expect_field(a, "state", "RUNNING");
  PGresult *r = sql(pg,
                    "SELECT type, convert_from(data, 'UTF8') FROM saga.outbox WHERE key = $1 "
                    "ORDER BY position DESC LIMIT 1",
                    1, v);
  assert_string_equal(PQgetvalue(r, 0, 0), "AuthorizePayment");
  assert_string_equal(PQgetvalue(r, 0, 1),
                      "{\"input\":{\"order\":\"o-9\"},\"results\":{\"reserve-inventory\":"
                      "{\"reservation\":\"r-7\"}}}");
  PQclear(r);

  /* The same reply again: ignored with its reason, recorded, nothing applied twice. */
  a = post_to(id, "replies",
              reply_body(id, "reserve-inventory", 1, "command", "success", "{}"), 200);
  assert_true(json_is_false(json_object_get(a, "applied")));
  expect_field(a, "ignored", "stale_step");
  a = post_to(id, "replies", reply_body(id, "no-such-step", 1, "command", "success", "{}"), 200);
  expect_field(a, "ignored", "unknown_step");
  json_decref(post_to(id, "replies", "{\"sagaid\":1}", 400));

  /* Operators: pause twice is refused with the state; resume; retry only from FAILED. */
  expect_field(post_to(id, "pause", NULL, 200), "state", "RUNNING");
  a = post_to(id, "pause", NULL, 409);
  assert_true(json_is_true(json_object_get(a, "paused")));
  expect_field(a, "detail",
               "pause applies to a RUNNING or COMPENSATING saga that is not paused; the saga is "
               "RUNNING (paused)");
  expect_field(post_to(id, "resume", NULL, 200), "state", "RUNNING");
  expect_field(post_to(id, "retry", NULL, 409), "state", "RUNNING");

  /* The payment is refused: ReleaseInventory goes out carrying the reservation. */
  a = post_to(id, "replies",
              reply_body(id, "authorize-payment", 1, "command", "failure",
                         "{\"error\":\"card declined\"}"),
              200);
  expect_field(a, "state", "COMPENSATING");
  r = sql(pg,
          "SELECT type, extensions->>'sagakind', convert_from(data, 'UTF8') FROM saga.outbox "
          "WHERE key = $1 ORDER BY position DESC LIMIT 1",
          1, v);
  assert_string_equal(PQgetvalue(r, 0, 0), "ReleaseInventory");
  assert_string_equal(PQgetvalue(r, 0, 1), "compensation");
  assert_non_null(strstr(PQgetvalue(r, 0, 2), "\"reservation\":\"r-7\""));
  PQclear(r);
  expect_field(post_to(id, "abort", NULL, 409), "state", "COMPENSATING");

  /* The compensation's reply three times at once: exactly one applies. */
  par_reply_t p[3] = {{id, 0}, {id, 0}, {id, 0}};
  pthread_t th[3];
  for (int i = 0; i < 3; i++)
    pthread_create(&th[i], NULL, reply_parallel, &p[i]);
  for (int i = 0; i < 3; i++)
    pthread_join(th[i], NULL);
  assert_int_equal(p[0].applied + p[1].applied + p[2].applied, 1);

  char path[128];
  snprintf(path, sizeof path, "/v1/sagas/%s", id);
  json_t *g = http_json("GET", path, NULL, NULL, 200);
  assert_string_equal(json_string_value(json_object_get(g, "state")), "COMPENSATED");
  assert_non_null(json_string_value(json_object_get(g, "ended_at")));
  /* The history, in order, as the oracle of what happened. */
  const char *want[] = {"started", "sent", "succeeded", "sent", "reply_ignored", "reply_ignored",
                        "paused", "resumed", "refused", "compensating", "sent", "undone",
                        "compensated"};
  json_t *hist = json_object_get(g, "history");
  size_t n = json_array_size(hist), k = 0;
  for (size_t i = 0; i < n; i++) {
    const char *what = json_string_value(json_object_get(json_array_get(hist, i), "what"));
    if (k < BT_ARRAY_LEN(want) && strcmp(what, want[k]) == 0)
      k++;
    else if (strcmp(what, "reply_ignored") != 0) /* the losers of the race, if recorded */
      fail_msg("history[%zu] = %s, want %s", i, what, k < BT_ARRAY_LEN(want) ? want[k] : "end");
  }
  assert_int_equal(k, BT_ARRAY_LEN(want));
  json_decref(g);
  expect_field(post_to(id, "abort", NULL, 409), "state", "COMPENSATED");
  assert_int_equal(sql_int(pg, "SELECT count(*) FROM saga.replies_seen WHERE saga_id = $1::uuid",
                           1, v),
                   3);
  json_decref(post_to("00000000-0000-4000-8000-000000000000", "pause", NULL, 404));
  PQfinish(pg);
  int status = bt_test_stop(pid, SIGTERM, 15000);
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 0);
}

typedef struct par_op {
  const char *id, *what;
  int status;
} par_op_t;

static void *op_parallel(void *arg) {
  par_op_t *p = arg;
  char url[256];
  snprintf(url, sizeof url, "%s/v1/sagas/%s/%s", base, p->id, p->what);
  bt_test_http_resp_t r;
  if (bt_test_http("POST", url, NULL, "", 0, &r) == 0) {
    p->status = r.status;
    bt_test_http_free(&r);
  }
  return NULL;
}

/* Pause and abort of one saga at once, many times: both are answered 200, so both must show
 * in the row (COMPENSATING and paused). A transition that overwrote the other's row (a lost
 * update) would leave one of them out. */
static void test_concurrent_operators_lose_no_update(void **state) {
  pid_t pid = start_server();
  for (int round = 0; round < 10; round++) {
    json_t *st = http_json("POST", "/v1/sagas/checkout", NULL, "{}", 201);
    char id[64];
    snprintf(id, sizeof id, "%s", json_string_value(json_object_get(st, "id")));
    json_decref(st);
    par_op_t p[2] = {{id, "pause", 0}, {id, "abort", 0}};
    pthread_t th[2];
    for (int i = 0; i < 2; i++)
      pthread_create(&th[i], NULL, op_parallel, &p[i]);
    for (int i = 0; i < 2; i++)
      pthread_join(th[i], NULL);
    assert_int_equal(p[0].status, 200);
    assert_int_equal(p[1].status, 200);
    char path[128];
    snprintf(path, sizeof path, "/v1/sagas/%s", id);
    json_t *g = http_json("GET", path, NULL, NULL, 200);
    if (strcmp(json_string_value(json_object_get(g, "state")), "COMPENSATING") != 0 ||
        !json_is_true(json_object_get(g, "paused")))
      fail_msg("round %d: lost update: %s", round, json_dumps(g, JSON_COMPACT));
    json_decref(g);
  }
  int status = bt_test_stop(pid, SIGTERM, 15000);
  assert_true(WIFEXITED(status));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_concurrent_migrations),
      cmocka_unit_test(test_bad_definitions_stop_start_up),
      cmocka_unit_test(test_http_api),
      cmocka_unit_test(test_replies_and_operators),
      cmocka_unit_test(test_concurrent_operators_lose_no_update),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
