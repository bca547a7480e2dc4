/* Helpers shared by the saga end-to-end tests (test_participant.c, test_saga_*.c): a private
 * database, the example participants as child processes (or, for the engine's own tests, an
 * in-test participant, at the end), commands produced with plain
 * librdkafka (the wire format written out by hand, independent of saga_wire.c) and replies read
 * back with the Kafka oracle. The database of the test's own and the SQL oracle come from
 * test_store_util.h. Static functions in a header because each test file is its own
 * executable. */
#ifndef TEST_SAGA_COMMON_H
#define TEST_SAGA_COMMON_H

#include <jansson.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kafka_oracle.h"
#include "test_store_util.h"

/* ---- child processes ------------------------------------------------------------------ */

/* A child process: store_broker_t's fields serve any of our binaries (and store_metric). */
typedef store_broker_t st_proc_t;

/* Starts one of our binaries with BATON_HTTP_PORT, the stack's Kafka and `dsn`, plus extra
 * ("K=V", NULL-terminated, may be NULL), and waits for /readyz 200 (unless wait_ready is
 * false). The log goes to $BATON_BUILD_DIR/Testing/<tag>.log, appended across restarts. */
static inline void st_proc_start(st_proc_t *pr, const char *bin, const char *tag, const char *dsn,
                                 const char *const *extra, bool wait_ready) {
  static char env[32][2048];
  size_t n = 0;
  if (pr->port == 0)
    pr->port = bt_test_free_port();
  snprintf(env[n++], sizeof env[0], "BATON_HTTP_PORT=%d", pr->port);
  snprintf(env[n++], sizeof env[0], "BATON_PG_DSN=%s", dsn);
  snprintf(env[n++], sizeof env[0], "BATON_KAFKA_BROKERS=%s", bt_test_env("BATON_KAFKA_BROKERS"));
  for (size_t i = 0; extra && extra[i] && n < 31; i++)
    snprintf(env[n++], sizeof env[0], "%s", extra[i]);
  const char *envp[33];
  for (size_t i = 0; i < n; i++)
    envp[i] = env[i];
  envp[n] = NULL;
  const char *build = getenv("BATON_BUILD_DIR");
  char dir[400];
  snprintf(dir, sizeof dir, "%s/Testing", build ? build : "/tmp");
  mkdir(dir, 0755);
  snprintf(pr->log, sizeof pr->log, "%s/%s.log", dir, tag);
  const char *argv[] = {bt_test_bin(bin), NULL};
  pr->pid = bt_test_spawn(argv, envp, pr->log);
  snprintf(pr->url, sizeof pr->url, "http://127.0.0.1:%d", pr->port);
  if (!wait_ready)
    return;
  char ready[96];
  snprintf(ready, sizeof ready, "%s/readyz", pr->url);
  if (bt_test_wait_status(ready, 200, 30000) != 0)
    fail_msg("%s did not become ready (log: %s)", bin, pr->log);
}

/* SIGTERM and a clean exit (status 0: drained, and no sanitizer report). */
static inline void st_proc_stop(st_proc_t *pr) {
  if (pr->pid <= 0)
    return;
  int status = bt_test_stop(pr->pid, SIGTERM, 20000);
  pr->pid = 0;
  if (!(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) == 0))
    fail_msg("process did not exit cleanly (status %d, log: %s)", status, pr->log);
}

static inline void st_proc_kill(st_proc_t *pr) {
  if (pr->pid <= 0)
    return;
  (void)bt_test_stop(pr->pid, SIGKILL, 5000);
  pr->pid = 0;
}

/* ---- commands on Kafka ---------------------------------------------------------------- */

/* A producer on the stack's Kafka with `props` ("name", "value" pairs, NULL-terminated). */
static inline rd_kafka_t *st_producer_with(const char *const *props) {
  char err[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (rd_kafka_conf_set(conf, "bootstrap.servers", bt_test_env("BATON_KAFKA_BROKERS"), err,
                        sizeof err) != RD_KAFKA_CONF_OK)
    fail_msg("%s", err);
  for (size_t i = 0; props && props[i] && props[i + 1]; i += 2)
    if (rd_kafka_conf_set(conf, props[i], props[i + 1], err, sizeof err) != RD_KAFKA_CONF_OK)
      fail_msg("%s", err);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!rk)
    fail_msg("rd_kafka_new: %s", err);
  return rk;
}

static inline rd_kafka_t *st_producer(void) {
  const char *const props[] = {"enable.idempotence", "true", NULL};
  return st_producer_with(props);
}

/* One command in CloudEvents binary mode, as issue 8 §2 writes it, with the given id (NULL:
 * <saga>/<step>/<attempt>/<kind>). value: {"input": input, "results": results}. */
static inline void st_send_command(rd_kafka_t *rk, const char *topic, const char *replyto,
                                   const char *saga, const char *step, int attempt,
                                   const char *kind, const char *type, const char *input_json,
                                   const char *results_json, const char *id_or_null) {
  char id[512], att[16], value[4096];
  snprintf(att, sizeof att, "%d", attempt);
  if (id_or_null)
    snprintf(id, sizeof id, "%s", id_or_null);
  else
    snprintf(id, sizeof id, "%s/%s/%d/%s", saga, step, attempt, kind);
  snprintf(value, sizeof value, "{\"input\":%s,\"results\":%s}", input_json ? input_json : "{}",
           results_json ? results_json : "{}");
  rd_kafka_headers_t *h = rd_kafka_headers_new(16);
#define H(n, v) rd_kafka_header_add(h, n, -1, v, -1)
  H("ce_specversion", "1.0");
  H("ce_type", type);
  H("ce_id", id);
  H("ce_source", "/baton/saga/checkout");
  H("ce_subject", saga);
  H("ce_sagaid", saga);
  H("ce_sagatype", "checkout");
  H("ce_sagastep", step);
  H("ce_sagaattempt", att);
  H("ce_sagakind", kind);
  H("ce_replyto", replyto);
  H("ce_deadline", "2099-01-01T00:00:00.000Z");
  H("content-type", "application/json");
  H("traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
#undef H
  rd_kafka_resp_err_t e =
      rd_kafka_producev(rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(saga, strlen(saga)),
                        RD_KAFKA_V_VALUE(value, strlen(value)), RD_KAFKA_V_HEADERS(h),
                        RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY), RD_KAFKA_V_END);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR) {
    rd_kafka_headers_destroy(h);
    fail_msg("produce: %s", rd_kafka_err2str(e));
  }
}

static inline void st_flush(rd_kafka_t *rk) {
  if (rd_kafka_flush(rk, 20000) != RD_KAFKA_RESP_ERR_NO_ERROR)
    fail_msg("flush: %d messages left", rd_kafka_outq_len(rk));
}

/* A record with no CloudEvents headers at all. */
static inline void st_send_raw(rd_kafka_t *rk, const char *topic, const char *key,
                               const char *value) {
  rd_kafka_resp_err_t e = rd_kafka_producev(
      rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
      RD_KAFKA_V_VALUE((void *)value, strlen(value)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_END);
  if (e != RD_KAFKA_RESP_ERR_NO_ERROR)
    fail_msg("produce: %s", rd_kafka_err2str(e));
}

/* ---- replies ---------------------------------------------------------------------------- */

/* Reads `topic` until it holds at least `want` records or timeout_ms passes; returns the
 * count (records in *out, free with bt_test_kmsgs_free). */
static inline long st_wait_records(const char *topic, long want, int timeout_ms,
                                   bt_test_kmsg_t **out) {
  uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
  for (;;) {
    bt_test_kmsg_t *msgs = NULL;
    long n = bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), topic, 10000, &msgs);
    if (n >= want || bt_test_now_ms() > end) {
      *out = msgs;
      return n;
    }
    bt_test_kmsgs_free(msgs, n);
    usleep(200 * 1000);
  }
}

/* The records of msgs whose headers ce_sagaid, ce_sagastep, ce_sagaattempt and ce_sagakind
 * match (attempt 0: any). */
static inline long st_count_replies(const bt_test_kmsg_t *msgs, long n, const char *saga,
                                    const char *step, int attempt, const char *kind) {
  long c = 0;
  char att[16];
  snprintf(att, sizeof att, "%d", attempt);
  for (long i = 0; i < n; i++) {
    const char *s = bt_test_kmsg_header(&msgs[i], "ce_sagaid");
    const char *st = bt_test_kmsg_header(&msgs[i], "ce_sagastep");
    const char *a = bt_test_kmsg_header(&msgs[i], "ce_sagaattempt");
    const char *k = bt_test_kmsg_header(&msgs[i], "ce_sagakind");
    if (s && st && a && k && strcmp(s, saga) == 0 && strcmp(st, step) == 0 &&
        (attempt == 0 || strcmp(a, att) == 0) && strcmp(k, kind) == 0)
      c++;
  }
  return c;
}

/* The first such reply, or NULL. */
static inline const bt_test_kmsg_t *st_find_reply(const bt_test_kmsg_t *msgs, long n,
                                                  const char *saga, const char *step,
                                                  int attempt, const char *kind) {
  for (long i = 0; i < n; i++)
    if (st_count_replies(&msgs[i], 1, saga, step, attempt, kind) == 1)
      return &msgs[i];
  return NULL;
}

/* A topic name unique to this run ("<prefix>-<pid>.<name>"), created with `partitions`. */
static inline void st_topic(char *out, size_t outsz, const char *prefix, const char *name,
                            int partitions) {
  snprintf(out, outsz, "%s-%d.%s", prefix, (int)getpid(), name);
  if (bt_test_kafka_create_topic(out, partitions) != 0)
    fail_msg("cannot create topic %s", out);
}

/* ---- the checkout stack: engine, participants, topics ---------------------------------- */

/* Everything one end-to-end test runs: a database of its own (the engine's `saga` schema and
 * the participants' ledgers side by side, as `./dev up` has them), topics of its own, the
 * checkout definition pointing at them, and the processes. */
typedef struct st_stack {
  store_db_t db;
  PGconn *pg; /* the oracle's connection */
  char prefix[48];
  char t_inv[128], t_pay[128], t_ship[128], t_reply[128];
  char defs_dir[256];
  st_proc_t saga[2], inv, pay, ship;
} st_stack_t;

/* Writes the checkout steps as saga `name` into the definitions directory; `timeout` is each
 * step's per-attempt timeout ("2s"), `attempts` and `comp_attempts` the retry limits of the
 * commands and of the compensations. */
static inline void st_stack_write_def(st_stack_t *st, const char *name, const char *timeout,
                                      int attempts, int comp_attempts) {
  char path[300];
  snprintf(path, sizeof path, "%s/%s.yaml", st->defs_dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  char r[96], cr[96];
  snprintf(r, sizeof r, "{ max_attempts: %d, backoff: fixed, initial: 100ms }", attempts);
  snprintf(cr, sizeof cr, "{ max_attempts: %d, backoff: fixed, initial: 100ms }", comp_attempts);
  fprintf(f,
          "saga: %s\nversion: 1\ndeadline: 300s\nreply_topic: %s\nsteps:\n"
          "  - { name: reserve-inventory, topic: %s, command: ReserveInventory,"
          " compensation: ReleaseInventory, timeout: %s, retry: %s, compensation_retry: %s }\n"
          "  - { name: authorize-payment, topic: %s, command: AuthorizePayment,"
          " compensation: VoidPayment, timeout: %s, retry: %s, compensation_retry: %s }\n"
          "  - { name: create-shipment, topic: %s, command: CreateShipment, timeout: %s,"
          " retry: %s }\n",
          name, st->t_reply, st->t_inv, timeout, r, cr, st->t_pay, timeout, r, cr, st->t_ship,
          timeout, r);
  fclose(f);
}

/* The database, the topics (3 partitions each) and an empty definitions directory. */
static inline void st_stack_init_bare(st_stack_t *st, const char *prefix) {
  snprintf(st->prefix, sizeof st->prefix, "%s", prefix);
  store_db_create(&st->db, prefix);
  st->pg = PQconnectdb(st->db.dsn);
  assert_int_equal(PQstatus(st->pg), CONNECTION_OK);
  st_topic(st->t_inv, sizeof st->t_inv, prefix, "inventory.commands", 3);
  st_topic(st->t_pay, sizeof st->t_pay, prefix, "payment.commands", 3);
  st_topic(st->t_ship, sizeof st->t_ship, prefix, "shipping.commands", 3);
  st_topic(st->t_reply, sizeof st->t_reply, prefix, "replies", 3);
  snprintf(st->defs_dir, sizeof st->defs_dir, "/tmp/%s_%d", prefix, (int)getpid());
  mkdir(st->defs_dir, 0700);
}

/* Writes the definition `file` (a name in the definitions directory) with `text`. */
static inline void st_stack_write_text(st_stack_t *st, const char *file, const char *text) {
  assert_int_equal(bt_test_write_file(st->defs_dir, file, text), 0);
}

/* Creates the database, the topics and the `checkout` definition (see st_stack_write_def). */
static inline void st_stack_init(st_stack_t *st, const char *prefix, const char *timeout,
                                 int attempts) {
  st_stack_init_bare(st, prefix);
  st_stack_write_def(st, "checkout", timeout, attempts, 5);
}

/* Starts engine replica i (0 or 1) with `more` settings (may be NULL) and waits for it to be
 * ready unless wait is false. */
/* Starts an engine process pr of the stack (log tag "<prefix>-saga<i>") with `more`. */
static inline void st_stack_start_engine(st_stack_t *st, st_proc_t *pr, int i, bool wait,
                                         const char *const *more) {
  char defs[300], group[128], tag[96];
  snprintf(defs, sizeof defs, "BATON_SAGA_DEFINITIONS=%s", st->defs_dir);
  snprintf(group, sizeof group, "BATON_SAGA_CONSUMER_GROUP=%s-%d-saga", st->prefix,
           (int)getpid());
  snprintf(tag, sizeof tag, "%s-saga%d", st->prefix, i);
  const char *extra[16] = {defs, group, "BATON_SAGA_REPLY_TOPIC=", "BATON_SAGA_RELAY_POLL=20ms"};
  size_t n = 4;
  for (size_t k = 0; more && more[k] && n < 15; k++)
    extra[n++] = more[k];
  extra[n] = NULL;
  st_proc_start(pr, "baton-saga", tag, st->db.dsn, extra, wait);
}

static inline void st_stack_start_saga_with(st_stack_t *st, int i, bool wait,
                                            const char *const *more) {
  st_stack_start_engine(st, &st->saga[i], i, wait, more);
}

static inline void st_stack_start_saga(st_stack_t *st, int i, bool wait) {
  st_stack_start_saga_with(st, i, wait, NULL);
}

static inline void st_stack_start_participant(st_stack_t *st, st_proc_t *pr, const char *bin,
                                              const char *topic, const char *const *more) {
  char t[256], g[256], tag[96];
  snprintf(t, sizeof t, "BATON_PARTICIPANT_TOPIC=%s", topic);
  snprintf(g, sizeof g, "BATON_PARTICIPANT_GROUP=%s-%d-%s", st->prefix, (int)getpid(), bin);
  snprintf(tag, sizeof tag, "%s-%s", st->prefix, bin);
  const char *extra[8] = {t, g};
  size_t n = 2;
  for (size_t i = 0; more && more[i] && n < 7; i++)
    extra[n++] = more[i];
  extra[n] = NULL;
  st_proc_start(pr, bin, tag, st->db.dsn, extra, true);
}

/* Waits until pr's consumer has partitions: /readyz answers before the group is joined, and a
 * saga started earlier would see its first attempts time out with the replies still unread. */
static inline void st_wait_assigned(const st_proc_t *pr) {
  if (store_wait_metric(pr, "baton_kafka_consumer_assigned_partitions", 1, 30000) < 1)
    fail_msg("no partitions assigned within 30 s (log: %s)", pr->log);
}

/* The three participants, each with `more` settings (may be NULL). */
static inline void st_stack_start_participants(st_stack_t *st, const char *const *more) {
  st_stack_start_participant(st, &st->inv, "baton-inventory", st->t_inv, more);
  st_stack_start_participant(st, &st->pay, "baton-payment", st->t_pay, more);
  st_stack_start_participant(st, &st->ship, "baton-shipping", st->t_ship, more);
  st_wait_assigned(&st->inv);
  st_wait_assigned(&st->pay);
  st_wait_assigned(&st->ship);
}

static inline void st_stack_stop(st_stack_t *st) {
  for (int i = 0; i < 2; i++)
    st_proc_stop(&st->saga[i]);
  st_proc_stop(&st->inv);
  st_proc_stop(&st->pay);
  st_proc_stop(&st->ship);
  if (st->pg)
    PQfinish(st->pg);
  st->pg = NULL;
  store_db_drop(&st->db);
  char cmd[300];
  snprintf(cmd, sizeof cmd, "rm -rf %s", st->defs_dir);
  if (system(cmd) != 0)
    fprintf(stderr, "cannot remove %s\n", st->defs_dir);
}

/* POST /v1/sagas/<type> with `input` (and an Idempotency-Key unless key is NULL) on replica
 * pr; the saga's id into id. Returns the HTTP status (201 expected), 0 when no answer came. */
static inline int st_saga_start_as(const st_proc_t *pr, const char *type, const char *input,
                                   const char *key, char *id, size_t idsz) {
  char url[128], headers[256];
  snprintf(url, sizeof url, "%s/v1/sagas/%s", pr->url, type);
  snprintf(headers, sizeof headers, "Content-Type: application/json\r\n%s%s%s",
           key ? "Idempotency-Key: " : "", key ? key : "", key ? "\r\n" : "");
  bt_test_http_resp_t r;
  id[0] = '\0';
  if (bt_test_http("POST", url, headers, input, strlen(input), &r) != 0) {
    bt_test_http_free(&r); /* a failed request still holds empty strings */
    return 0;
  }
  int status = r.status;
  json_t *j = status == 201 || status == 200 ? json_loads(r.body, 0, NULL) : NULL;
  const char *s = json_string_value(json_object_get(j, "id"));
  snprintf(id, idsz, "%s", s ? s : "");
  json_decref(j);
  bt_test_http_free(&r);
  return status;
}

static inline int st_saga_start(const st_proc_t *pr, const char *input, char *id, size_t idsz) {
  return st_saga_start_as(pr, "checkout", input, NULL, id, idsz);
}

/* The saga's state, read from Postgres (the engine's own table, not its API). */
static inline void st_saga_state(PGconn *pg, const char *id, char *out, size_t outsz) {
  const char *v[] = {id};
  PGresult *r = store_sql(pg, "SELECT state FROM saga.sagas WHERE id = $1", 1, v);
  snprintf(out, outsz, "%s", PQntuples(r) == 1 ? PQgetvalue(r, 0, 0) : "");
  PQclear(r);
}

/* The saga's history from Postgres as "what:step:attempt:kind" words, for failure messages. */
static inline const char *st_saga_history(PGconn *pg, const char *id) {
  static char out[16384];
  const char *v[] = {id};
  PGresult *r = store_sql(pg,
                          "SELECT string_agg(what || ':' || coalesce(step_name, '-') || ':' || "
                          "coalesce(attempt::text, '-') || ':' || coalesce(kind, '-') || "
                          "coalesce('(' || detail || ')', ''), ' ' ORDER BY id) "
                          "FROM saga.history WHERE saga_id = $1",
                          1, v);
  snprintf(out, sizeof out, "%s", PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
  PQclear(r);
  return out;
}

/* Reconnects the oracle's connection if Postgres restarted under it. */
static inline void st_pg_check(PGconn *pg) {
  PGresult *r = PQexec(pg, "SELECT 1");
  bool ok = PQresultStatus(r) == PGRES_TUPLES_OK;
  PQclear(r);
  for (int i = 0; !ok && i < 100; i++) {
    PQreset(pg);
    ok = PQstatus(pg) == CONNECTION_OK;
    if (!ok)
      usleep(100 * 1000);
  }
  if (!ok)
    fail_msg("the oracle cannot reconnect to Postgres: %s", PQerrorMessage(pg));
}

/* Sagas not yet in a final state (COMPLETED, COMPENSATED or FAILED). */
static inline long long st_sagas_running(PGconn *pg) {
  st_pg_check(pg);
  return store_sql_int(
      pg, "SELECT count(*) FROM saga.sagas WHERE state IN ('RUNNING', 'COMPENSATING')", 0, NULL);
}

/* Waits until no saga is running; returns the number still running at the deadline. */
static inline long long st_wait_sagas_end(PGconn *pg, int timeout_ms) {
  uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
  long long n;
  while ((n = st_sagas_running(pg)) > 0 && bt_test_now_ms() < end)
    usleep(100 * 1000);
  return n;
}

/* The participants' ledgers for one saga, in the order the effects happened, as
 * "step:kind:effect" words joined by spaces. Replayed and duplicate rows are left out unless
 * all is true. */
static inline void st_ledger_words(PGconn *pg, const char *id, bool all, char *out,
                                   size_t outsz) {
  const char *v[] = {id};
  PGresult *r = store_sql(
      pg,
      all ? "SELECT string_agg(step || ':' || kind || ':' || effect, ' ' ORDER BY applied_at) "
            "FROM (SELECT * FROM inventory.ledger UNION ALL SELECT * FROM payment.ledger "
            "UNION ALL SELECT * FROM shipping.ledger) l WHERE saga_id = $1"
          : "SELECT string_agg(step || ':' || kind || ':' || effect, ' ' ORDER BY applied_at) "
            "FROM (SELECT * FROM inventory.ledger UNION ALL SELECT * FROM payment.ledger "
            "UNION ALL SELECT * FROM shipping.ledger) l WHERE saga_id = $1 "
            "AND effect IN ('applied', 'refused', 'noop')",
      1, v);
  snprintf(out, outsz, "%s", PQgetisnull(r, 0, 0) ? "" : PQgetvalue(r, 0, 0));
  PQclear(r);
}

/* ---- a workload with an independent oracle --------------------------------------------- */

/* n sagas, each planned here: 75% succeed, 20% are refused at a step, 5% have a first
 * step that never answers (type checkout-silent, whose definition st_workload_init writes). */
typedef struct st_workload {
  st_stack_t *st;
  int n;
  int *plan;      /* -1 succeeds, 0..2 refused at that step, 3 silent first step */
  char (*ids)[64];
  int completed;  /* how many must end COMPLETED */
} st_workload_t;

static const char *const st_steps[3] = {"reserve-inventory", "authorize-payment",
                                        "create-shipment"};

static inline void st_workload_init(st_workload_t *w, st_stack_t *st, int n) {
  /* The silent sagas have a definition of their own with shorter timeouts, so they end within
   * the test; the others keep the stack's long ones, longer than any stall a fault causes, so
   * none of them is compensated for being slow. A stall lasts up to the consumer group's
   * session timeout, 10 s, during which a killed member keeps its reply partitions, and a
   * kill storm chains such stalls: 38 s without any reply consumed were seen), a relay lease
   * or an outage. The silent sagas' compensations, which must succeed, get 5 s per attempt
   * and 20 attempts, far beyond that. */
  st_stack_write_def(st, "checkout-silent", "5s", 2, 20);
  w->st = st;
  w->n = n;
  w->plan = calloc((size_t)n, sizeof *w->plan);
  w->ids = calloc((size_t)n, sizeof *w->ids);
  assert_non_null(w->plan);
  assert_non_null(w->ids);
  /* Exactly n/5 refused (spread over the three steps) and n/20 silent, shuffled with a seed
   * printed for a rerun (BATON_TEST_SEED), so the counts the oracle expects are the issue's
   * proportions and not a sample of them. */
  const char *seed_env = getenv("BATON_TEST_SEED");
  unsigned seed = seed_env ? (unsigned)strtoul(seed_env, NULL, 10) : (unsigned)getpid();
  fprintf(stderr, "workload: %d sagas, seed %u (BATON_TEST_SEED)\n", n, seed);
  srand(seed);
  int refused = n / 5, silent = n / 20;
  for (int i = 0; i < n; i++)
    w->plan[i] = i < refused ? i % 3 : i < refused + silent ? 3 : -1;
  for (int i = n - 1; i > 0; i--) {
    int j = rand() % (i + 1), t = w->plan[i];
    w->plan[i] = w->plan[j];
    w->plan[j] = t;
  }
  w->completed = n - refused - silent;
}

static inline void st_workload_free(st_workload_t *w) {
  free(w->plan);
  free(w->ids);
  w->plan = NULL;
  w->ids = NULL;
}

/* Starts saga i, trying replica `prefer` first, then the other, for up to 30 s: a replica may
 * be dead, starting, or without Postgres, and a start whose answer was lost is retried under
 * the same Idempotency-Key, so it never makes a second saga. */
static inline void st_workload_start(st_workload_t *w, int i, int prefer) {
  char input[256], key[64];
  const char *type = "checkout";
  if (w->plan[i] == 3) {
    type = "checkout-silent";
    snprintf(input, sizeof input, "{\"n\":%d,\"never_answer_at\":\"reserve-inventory\"}", i);
  } else if (w->plan[i] >= 0) {
    snprintf(input, sizeof input, "{\"n\":%d,\"fail_at\":\"%s\"}", i, st_steps[w->plan[i]]);
  } else {
    snprintf(input, sizeof input, "{\"n\":%d}", i);
  }
  snprintf(key, sizeof key, "workload-%d", i);
  uint64_t end = bt_test_now_ms() + 30000;
  for (int r = prefer;; r ^= 1) {
    const st_proc_t *pr = &w->st->saga[r];
    int status = pr->pid > 0 ? st_saga_start_as(pr, type, input, key, w->ids[i], sizeof w->ids[i])
                             : 0;
    if ((status == 201 || status == 200) && w->ids[i][0])
      return;
    if (bt_test_now_ms() > end)
      fail_msg("saga %d could not be started (last status %d)", i, status);
    usleep(20000);
  }
}

/* The effects saga i must leave in the ledgers, in order. */
static inline void st_workload_expected(const st_workload_t *w, int i, char *out, size_t outsz) {
  size_t len = 0;
  out[0] = '\0';
#define W(...) len += (size_t)snprintf(out + len, outsz - len, __VA_ARGS__)
  if (w->plan[i] == 3) {
    W("reserve-inventory:command:applied reserve-inventory:compensation:applied");
    return;
  }
  int upto = w->plan[i] < 0 ? 3 : w->plan[i];
  for (int s = 0; s < upto; s++)
    W("%s%s:command:applied", s ? " " : "", st_steps[s]);
  if (w->plan[i] < 0)
    return;
  W("%s%s:command:refused", upto ? " " : "", st_steps[upto]);
  for (int s = upto - 1; s >= 0; s--)
    W(" %s:compensation:applied", st_steps[s]);
#undef W
}

/* The oracle, once every saga is started (t_started: when the last one was): waits up to
 * deadline_ms for every saga to end, then checks each one's state and effects (the ledgers,
 * in the order applied) against its plan, one saga per key, and no effect of a saga that
 * does not exist. */
static inline void st_workload_check(const st_workload_t *w, int deadline_ms,
                                     uint64_t t_started) {
  PGconn *pg = w->st->pg;
  long long running = st_wait_sagas_end(pg, deadline_ms);
  if (running != 0) {
    PGresult *r = store_sql(pg,
                            "SELECT id::text FROM saga.sagas WHERE state IN ('RUNNING', "
                            "'COMPENSATING') LIMIT 1",
                            0, NULL);
    fail_msg("%lld sagas still running %.1f s after the last start, e.g. %s: %s", running,
             (double)(bt_test_now_ms() - t_started) / 1000, PQgetvalue(r, 0, 0),
             st_saga_history(pg, PQgetvalue(r, 0, 0)));
  }
  PGresult *r = store_sql(
      pg,
      "SELECT (s.input->>'n')::int, s.id::text, s.state, coalesce(l.words, '') "
      "FROM saga.sagas s LEFT JOIN ("
      "  SELECT saga_id, string_agg(step || ':' || kind || ':' || effect, ' ' "
      "                             ORDER BY applied_at) AS words"
      "  FROM (SELECT * FROM inventory.ledger UNION ALL SELECT * FROM payment.ledger"
      "        UNION ALL SELECT * FROM shipping.ledger) x"
      "  WHERE effect IN ('applied', 'refused', 'noop') GROUP BY saga_id) l"
      " ON l.saga_id = s.id::text",
      0, NULL);
  assert_int_equal(PQntuples(r), w->n); /* one saga per key: retried starts made no more */
  for (int k = 0; k < PQntuples(r); k++) {
    int i = atoi(PQgetvalue(r, k, 0));
    assert_true(i >= 0 && i < w->n);
    assert_string_equal(PQgetvalue(r, k, 1), w->ids[i]);
    char want[512];
    st_workload_expected(w, i, want, sizeof want);
    const char *state = w->plan[i] < 0 ? "COMPLETED" : "COMPENSATED";
    if (strcmp(PQgetvalue(r, k, 2), state) != 0 || strcmp(PQgetvalue(r, k, 3), want) != 0)
      fail_msg("saga %d (%s, plan %d): %s with \"%s\", want %s with \"%s\"; history: %s", i,
               w->ids[i], w->plan[i], PQgetvalue(r, k, 2), PQgetvalue(r, k, 3), state, want,
               st_saga_history(pg, w->ids[i]));
  }
  PQclear(r);
  assert_int_equal(
      store_sql_int(pg, "SELECT count(*) FROM saga.sagas WHERE state = 'COMPLETED'", 0, NULL),
      w->completed);
  assert_int_equal(store_sql_int(pg,
                                 "SELECT count(*) FROM saga.sagas WHERE state = 'COMPENSATED'",
                                 0, NULL),
                   w->n - w->completed);
  assert_int_equal(store_sql_int(pg,
                                 "SELECT count(*) FROM (SELECT saga_id FROM inventory.ledger "
                                 "UNION ALL SELECT saga_id FROM payment.ledger UNION ALL "
                                 "SELECT saga_id FROM shipping.ledger) x WHERE saga_id NOT IN "
                                 "(SELECT id::text FROM saga.sagas)",
                                 0, NULL),
                   0);
}

/* ---- one engine and an in-test participant (test_saga_engine.c, test_saga_replicas.c) ---
 * These tests drive baton-saga against a participant written here: it reads the command
 * topics back with the Kafka oracle and answers on the reply topic in CloudEvents binary
 * mode, as the saga input tells it ("refuse", "silent", "undo_fail", "dup"). Their own
 * definitions (no retries unless stated, 30 s timeouts) replace the stack's checkout. */

#define ST_ENGINE_MAX_SEEN 256

typedef struct st_engine {
  st_stack_t st;        /* saga[0] is the engine under test */
  rd_kafka_t *producer; /* the participant's replies */
  bool undo_heal;       /* compensations named by "undo_fail" succeed from now on */
  char *seen[ST_ENGINE_MAX_SEEN]; /* command ids answered already */
  size_t nseen;
} st_engine_t;

/* The test's one engine harness (a function's static: the header defines no variable that a
 * test not using it would leave unused). */
static inline st_engine_t *st_eng(void) {
  static st_engine_t e;
  return &e;
}

static const char st_engine_checkout[] =
    "saga: checkout\nversion: 1\nreply_topic: %s\nsteps:\n"
    "  - { name: reserve-inventory, topic: %s, command: ReserveInventory,"
    " compensation: ReleaseInventory, timeout: 30s,"
    " compensation_retry: { max_attempts: 2, backoff: fixed, initial: 100ms } }\n"
    "  - { name: authorize-payment, topic: %s, command: AuthorizePayment,"
    " compensation: VoidPayment, timeout: 30s }\n"
    "  - { name: create-shipment, topic: %s, command: CreateShipment, timeout: 30s }\n";

/* Payment answers nothing when the input says so: 2 attempts of 1 s, then compensation. */
static const char st_engine_timeouts[] =
    "saga: timeouts\nversion: 1\nreply_topic: %s\nsteps:\n"
    "  - { name: reserve-inventory, topic: %s, command: ReserveInventory,"
    " compensation: ReleaseInventory, timeout: 30s }\n"
    "  - name: authorize-payment\n    topic: %s\n    command: AuthorizePayment\n"
    "    compensation: VoidPayment\n    timeout: 1s\n"
    "    retry: { max_attempts: 2, backoff: fixed, initial: 200ms }\n"
    "  - { name: create-shipment, topic: %s, command: CreateShipment, timeout: 30s }\n";

/* Starts one more engine process on `port` of the harness's stack, not waiting for it, with
 * up to two more settings (NULL ends them); returns its pid. */
static inline pid_t st_engine_spawn(int port, const char *extra1, const char *extra2) {
  st_proc_t pr;
  memset(&pr, 0, sizeof pr);
  pr.port = port;
  const char *more[] = {"BATON_SAGA_STATS_INTERVAL=200ms", extra1, extra2, NULL};
  st_stack_start_engine(&st_eng()->st, &pr, 0, false, more);
  return pr.pid;
}

/* cmocka group setup: the stack named `prefix`, the two definitions, the engine (ready) and
 * the participant's producer. */
static inline int st_engine_setup(const char *prefix) {
  st_engine_t *e = st_eng();
  bt_test_env_load();
  st_stack_init_bare(&e->st, prefix);
  char text[2048];
  st_stack_t *st = &e->st;
  snprintf(text, sizeof text, st_engine_checkout, st->t_reply, st->t_inv, st->t_pay, st->t_ship);
  st_stack_write_text(st, "checkout.yaml", text);
  snprintf(text, sizeof text, st_engine_timeouts, st->t_reply, st->t_inv, st->t_pay, st->t_ship);
  st_stack_write_text(st, "timeouts.yaml", text);
  const char *more[] = {"BATON_SAGA_STATS_INTERVAL=200ms", NULL};
  st_stack_start_saga_with(st, 0, true, more);
  const char *const props[] = {"linger.ms", "0", NULL};
  e->producer = st_producer_with(props);
  return 0;
}

static inline int st_engine_teardown(void **state) {
  st_engine_t *e = st_eng();
  if (e->producer)
    rd_kafka_destroy(e->producer);
  e->producer = NULL;
  if (e->st.saga[0].pid > 0)
    bt_test_stop(e->st.saga[0].pid, SIGTERM, 15000);
  e->st.saga[0].pid = 0;
  st_stack_stop(&e->st);
  for (size_t i = 0; i < e->nseen; i++)
    free(e->seen[i]);
  e->nseen = 0;
  return 0;
}

/* The first value of query q (one text parameter, or none when arg is NULL). */
static inline long long st_sql_int(const char *q, const char *arg) {
  const char *v[] = {arg};
  st_pg_check(st_eng()->st.pg);
  return store_sql_int(st_eng()->st.pg, q, arg ? 1 : 0, v);
}

/* A metric of the process answering at base (an http://host:port URL). */
static inline double st_metric_at(const char *base, const char *name) {
  st_proc_t pr;
  memset(&pr, 0, sizeof pr);
  snprintf(pr.url, sizeof pr.url, "%.63s", base);
  return store_metric(&pr, name);
}

/* The engine under test's URL and one of its metrics. */
static inline const char *st_engine_url(void) { return st_eng()->st.saga[0].url; }

static inline double st_engine_metric(const char *name) {
  return store_metric(&st_eng()->st.saga[0], name);
}

/* ---- the engine's HTTP API ---- */

static inline json_t *st_http_json(const char *method, const char *path, const char *body,
                                   int want) {
  char url[320];
  snprintf(url, sizeof url, "%.63s%.200s", st_eng()->st.saga[0].url, path);
  bt_test_http_resp_t r;
  assert_int_equal(bt_test_http(method, url, body ? "Content-Type: application/json\r\n" : NULL,
                                body, body ? strlen(body) : 0, &r),
                   0);
  if (r.status != want)
    fail_msg("%s %s: %d %s (want %d)", method, path, r.status, r.body, want);
  json_t *j = json_loads(r.body, 0, NULL);
  bt_test_http_free(&r);
  assert_non_null(j);
  return j;
}

/* Starts a saga of `type` (expects 201); its id into id. */
static inline void st_start_saga_of(const char *type, const char *input, char id[40]) {
  char path[96];
  snprintf(path, sizeof path, "/v1/sagas/%s", type);
  json_t *j = st_http_json("POST", path, input, 201);
  snprintf(id, 40, "%s", json_string_value(json_object_get(j, "id")));
  json_decref(j);
}

static inline void st_start_saga(const char *input, char id[40]) {
  st_start_saga_of("checkout", input, id);
}

static inline json_t *st_get_saga(const char *id) {
  char path[96];
  snprintf(path, sizeof path, "/v1/sagas/%.40s", id);
  return st_http_json("GET", path, NULL, 200);
}

static inline bool st_saga_state_is(const char *id, const char *state) {
  json_t *j = st_get_saga(id);
  bool yes = strcmp(json_string_value(json_object_get(j, "state")), state) == 0;
  json_decref(j);
  return yes;
}

/* The saga's history from the API as "what:step" words joined by spaces. */
static inline void st_history_words(const char *id, char *out, size_t n) {
  json_t *j = st_get_saga(id);
  json_t *h = json_object_get(j, "history"), *e;
  size_t i, len = 0;
  out[0] = '\0';
  json_array_foreach(h, i, e) {
    const char *step = json_string_value(json_object_get(e, "step"));
    len += (size_t)snprintf(out + len, n - len, "%s%s:%s", len ? " " : "",
                            json_string_value(json_object_get(e, "what")), step ? step : "-");
    if (len >= n)
      break;
  }
  json_decref(j);
}

/* How many times `word` occurs as a whole word in the space-separated hay. */
static inline int st_count_word(const char *hay, const char *word) {
  int n = 0;
  size_t wl = strlen(word);
  for (const char *p = hay; (p = strstr(p, word)); p += wl)
    if ((p == hay || p[-1] == ' ') && (p[wl] == ' ' || p[wl] == '\0'))
      n++;
  return n;
}

/* ---- the in-test participant ---- */

/* Produces a binary-mode reply for (saga, step, attempt, kind) with outcome and data. */
static inline void st_reply_nf(const char *saga, const char *step, const char *attempt,
                               const char *kind, const char *outcome, const char *data,
                               bool flush) {
  char id[200];
  snprintf(id, sizeof id, "%s/%s/%s/%s/reply", saga, step, attempt, kind);
  rd_kafka_t *rk = st_eng()->producer;
  rd_kafka_resp_err_t err = rd_kafka_producev(
      rk, RD_KAFKA_V_TOPIC(st_eng()->st.t_reply), RD_KAFKA_V_KEY(saga, strlen(saga)),
      RD_KAFKA_V_VALUE((void *)data, strlen(data)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_HEADER("ce_specversion", "1.0", 3), RD_KAFKA_V_HEADER("ce_id", id, -1),
      RD_KAFKA_V_HEADER("ce_source", "/it/participant", -1),
      RD_KAFKA_V_HEADER("ce_type", "SagaReply", -1), RD_KAFKA_V_HEADER("ce_sagaid", saga, -1),
      RD_KAFKA_V_HEADER("ce_sagastep", step, -1), RD_KAFKA_V_HEADER("ce_sagaattempt", attempt, -1),
      RD_KAFKA_V_HEADER("ce_sagakind", kind, -1), RD_KAFKA_V_HEADER("ce_outcome", outcome, -1),
      RD_KAFKA_V_HEADER("content-type", "application/json", -1), RD_KAFKA_V_END);
  assert_int_equal(err, RD_KAFKA_RESP_ERR_NO_ERROR);
  if (flush)
    assert_int_equal(rd_kafka_flush(rk, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static inline void st_reply(const char *saga, const char *step, const char *attempt,
                            const char *kind, const char *outcome, const char *data) {
  st_reply_nf(saga, step, attempt, kind, outcome, data, true);
}

static inline bool st_seen_before(const char *ce_id) {
  st_engine_t *e = st_eng();
  for (size_t i = 0; i < e->nseen; i++)
    if (strcmp(e->seen[i], ce_id) == 0)
      return true;
  assert_true(e->nseen < ST_ENGINE_MAX_SEEN);
  e->seen[e->nseen++] = strdup(ce_id);
  return false;
}

/* Answers every command not answered yet: `failure` for commands of the step named in the
 * saga input's "refuse", success (with a result naming the command) otherwise; a saga whose
 * input has "dup": true gets every reply twice. */
static inline void st_participate_once(void) {
  const st_stack_t *st = &st_eng()->st;
  const char *topics[] = {st->t_inv, st->t_pay, st->t_ship};
  for (int t = 0; t < 3; t++) {
    bt_test_kmsg_t *msgs;
    long n = bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), topics[t], 20000, &msgs);
    assert_true(n >= 0);
    for (long i = 0; i < n; i++) {
      const bt_test_kmsg_t *m = &msgs[i];
      const char *ce_id = bt_test_kmsg_header(m, "ce_id");
      assert_non_null(ce_id);
      if (st_seen_before(ce_id))
        continue;
      const char *saga = bt_test_kmsg_header(m, "ce_sagaid");
      const char *step = bt_test_kmsg_header(m, "ce_sagastep");
      const char *attempt = bt_test_kmsg_header(m, "ce_sagaattempt");
      const char *kind = bt_test_kmsg_header(m, "ce_sagakind");
      json_t *v = json_loads(m->value, 0, NULL);
      assert_non_null(v);
      json_t *input = json_object_get(v, "input");
      const char *refuse = json_string_value(json_object_get(input, "refuse"));
      const char *silent = json_string_value(json_object_get(input, "silent"));
      if (strcmp(kind, "command") == 0 && silent && strcmp(silent, step) == 0) {
        json_decref(v);
        continue;
      }
      bool dup = json_is_true(json_object_get(input, "dup"));
      const char *undo_fail = json_string_value(json_object_get(input, "undo_fail"));
      bool fail = (strcmp(kind, "command") == 0 && refuse && strcmp(refuse, step) == 0) ||
                  (strcmp(kind, "compensation") == 0 && !st_eng()->undo_heal && undo_fail &&
                   strcmp(undo_fail, step) == 0);
      char data[256];
      snprintf(data, sizeof data, "{\"done\":\"%s\",\"kind\":\"%s\"}",
               bt_test_kmsg_header(m, "ce_type"), kind);
      for (int k = 0; k < (dup ? 2 : 1); k++)
        st_reply(saga, step, attempt, kind, fail ? "failure" : "success",
                 fail ? "{\"error\":\"refused\"}" : data);
      json_decref(v);
    }
    bt_test_kmsgs_free(msgs, n);
  }
}

/* Runs the participant until every saga in ids reaches its expected state. */
static inline void st_participate_until(const char *const *ids, const char *const *states,
                                        size_t n) {
  uint64_t deadline = bt_test_now_ms() + 45000;
  for (;;) {
    st_participate_once();
    size_t done = 0;
    for (size_t i = 0; i < n; i++)
      done += st_saga_state_is(ids[i], states[i]);
    if (done == n)
      return;
    if (bt_test_now_ms() > deadline)
      fail_msg("sagas did not reach their states within 45 s");
    usleep(100 * 1000);
  }
}

/* The records of a topic for one saga (its key), as "ce_type" words in Kafka order. */
static inline int st_commands_for(const char *topic, const char *saga, char *out, size_t n) {
  bt_test_kmsg_t *msgs;
  long k = bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), topic, 20000, &msgs);
  assert_true(k >= 0);
  int count = 0;
  size_t len = 0;
  out[0] = '\0';
  for (long i = 0; i < k; i++)
    if (msgs[i].key && strcmp(msgs[i].key, saga) == 0) {
      len += (size_t)snprintf(out + len, n - len, "%s%s", len ? " " : "",
                              bt_test_kmsg_header(&msgs[i], "ce_type"));
      count++;
    }
  bt_test_kmsgs_free(msgs, k);
  return count;
}

/* The engine under test drains and exits 0 on SIGTERM (under ASan: no leak, no error). */
static inline void st_engine_test_clean_exit(void **state) {
  st_proc_stop(&st_eng()->st.saga[0]);
}

#endif
