/* Shared by the saga engine's integration tests (test_saga_engine.c, test_saga_replicas.c):
 * a database of their own, topics and definitions named after the test's pid, the engine
 * process under test, HTTP helpers and an in-test participant written against plain
 * librdkafka (it reads the command topics back with the kafka oracle and answers on the reply
 * topic in CloudEvents binary mode). Static functions in a header because each test file is
 * its own executable. */
#ifndef TEST_SAGA_UTIL_H
#define TEST_SAGA_UTIL_H

#include <jansson.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "kafka_oracle.h"
#include "test_store_util.h"

static char defs_dir[64], log_path[512], tag[32];
static char t_inv[64], t_pay[64], t_ship[64], t_reply[64], group[64];
static char base_url[64];
static pid_t saga_pid;
static rd_kafka_t *producer;

/* ---- Postgres: a database of our own (test_store_util.h) -------------------------------- */

static store_db_t db;

static inline long long sql_int(const char *q, const char *arg) {
  PGconn *pg = PQconnectdb(db.dsn);
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  const char *v[] = {arg};
  long long x = store_sql_int(pg, q, arg ? 1 : 0, v);
  PQfinish(pg);
  return x;
}

/* ---- the process under test -------------------------------------------------------------- */

static inline pid_t spawn_saga(int port, const char *extra1, const char *extra2) {
  static char env_dsn[1100], env_defs[256], env_port[64], env_group[96];
  snprintf(env_dsn, sizeof env_dsn, "BATON_PG_DSN=%s", db.dsn);
  snprintf(env_defs, sizeof env_defs, "BATON_SAGA_DEFINITIONS=%s", defs_dir);
  snprintf(env_port, sizeof env_port, "BATON_HTTP_PORT=%d", port);
  snprintf(env_group, sizeof env_group, "BATON_SAGA_CONSUMER_GROUP=%s", group);
  const char *env[] = {env_dsn, env_defs, env_port, env_group, "BATON_SAGA_REPLY_TOPIC=",
                       "BATON_SAGA_RELAY_POLL=20ms", "BATON_SAGA_STATS_INTERVAL=200ms", extra1,
                       extra2, NULL};
  const char *argv[] = {bt_test_bin("baton-saga"), NULL};
  return bt_test_spawn(argv, env, log_path);
}

static inline int setup(void **state) {
  bt_test_env_load();
  snprintf(tag, sizeof tag, "%d", (int)getpid());
  store_db_create(&db, "it_saga_engine");
  snprintf(t_inv, sizeof t_inv, "inv.%s", tag);
  snprintf(t_pay, sizeof t_pay, "pay.%s", tag);
  snprintf(t_ship, sizeof t_ship, "ship.%s", tag);
  snprintf(t_reply, sizeof t_reply, "replies.%s", tag);
  snprintf(group, sizeof group, "it-saga-%s", tag);
  const char *topics[] = {t_inv, t_pay, t_ship, t_reply};
  for (int i = 0; i < 4; i++)
    assert_int_equal(bt_test_kafka_create_topic(topics[i], 3), 0);
  snprintf(defs_dir, sizeof defs_dir, "/tmp/it_saga_engine_%s", tag);
  mkdir(defs_dir, 0700);
  char path[256];
  snprintf(path, sizeof path, "%s/checkout.yaml", defs_dir);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fprintf(f,
          "saga: checkout\nversion: 1\nreply_topic: %s\nsteps:\n"
          "  - { name: reserve-inventory, topic: %s, command: ReserveInventory,"
          " compensation: ReleaseInventory, timeout: 30s,"
          " compensation_retry: { max_attempts: 2, backoff: fixed, initial: 100ms } }\n"
          "  - { name: authorize-payment, topic: %s, command: AuthorizePayment,"
          " compensation: VoidPayment, timeout: 30s }\n"
          "  - { name: create-shipment, topic: %s, command: CreateShipment, timeout: 30s }\n",
          t_reply, t_inv, t_pay, t_ship);
  fclose(f);
  /* Payment answers nothing when the input says so: 2 attempts of 1 s, then compensation. */
  snprintf(path, sizeof path, "%s/timeouts.yaml", defs_dir);
  f = fopen(path, "w");
  assert_non_null(f);
  fprintf(f,
          "saga: timeouts\nversion: 1\nreply_topic: %s\nsteps:\n"
          "  - { name: reserve-inventory, topic: %s, command: ReserveInventory,"
          " compensation: ReleaseInventory, timeout: 30s }\n"
          "  - name: authorize-payment\n    topic: %s\n    command: AuthorizePayment\n"
          "    compensation: VoidPayment\n    timeout: 1s\n"
          "    retry: { max_attempts: 2, backoff: fixed, initial: 200ms }\n"
          "  - { name: create-shipment, topic: %s, command: CreateShipment, timeout: 30s }\n",
          t_reply, t_inv, t_pay, t_ship);
  fclose(f);
  const char *build = getenv("BATON_BUILD_DIR");
  snprintf(log_path, sizeof log_path, "%s/Testing/it_saga_%s.log", build ? build : "/tmp", tag);
  int port = bt_test_free_port();
  snprintf(base_url, sizeof base_url, "http://127.0.0.1:%d", port);
  saga_pid = spawn_saga(port, NULL, NULL);
  char url[128];
  snprintf(url, sizeof url, "%s/readyz", base_url);
  assert_int_equal(bt_test_wait_status(url, 200, 30000), 0);

  char err[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  assert_int_equal(rd_kafka_conf_set(conf, "bootstrap.servers", bt_test_env("BATON_KAFKA_BROKERS"),
                                     err, sizeof err),
                   RD_KAFKA_CONF_OK);
  rd_kafka_conf_set(conf, "linger.ms", "0", err, sizeof err);
  producer = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  assert_non_null(producer);
  return 0;
}

static inline int teardown(void **state) {
  if (producer)
    rd_kafka_destroy(producer);
  if (saga_pid > 0)
    bt_test_stop(saga_pid, 15, 15000);
  store_db_drop(&db);
  char cmd[128];
  snprintf(cmd, sizeof cmd, "rm -rf %s", defs_dir);
  return system(cmd);
}

/* ---- HTTP -------------------------------------------------------------------------------- */

static inline json_t *http_json(const char *method, const char *path, const char *body, int want) {
  char url[256];
  snprintf(url, sizeof url, "%s%s", base_url, path);
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

static inline void start_saga_of(const char *type, const char *input, char id[40]) {
  char path[96];
  snprintf(path, sizeof path, "/v1/sagas/%s", type);
  json_t *j = http_json("POST", path, input, 201);
  snprintf(id, 40, "%s", json_string_value(json_object_get(j, "id")));
  json_decref(j);
}

static inline void start_saga(const char *input, char id[40]) { start_saga_of("checkout", input, id); }

static inline json_t *get_saga(const char *id) {
  char path[96];
  snprintf(path, sizeof path, "/v1/sagas/%.40s", id);
  return http_json("GET", path, NULL, 200);
}

static inline bool saga_state_is(const char *id, const char *state) {
  json_t *j = get_saga(id);
  bool yes = strcmp(json_string_value(json_object_get(j, "state")), state) == 0;
  json_decref(j);
  return yes;
}

/* The saga's history as "what:step:kind" words joined by spaces. */
static inline void history_words(const char *id, char *out, size_t n) {
  json_t *j = get_saga(id);
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

static inline int count_word(const char *hay, const char *word) {
  int n = 0;
  size_t wl = strlen(word);
  for (const char *p = hay; (p = strstr(p, word)); p += wl)
    if ((p == hay || p[-1] == ' ') && (p[wl] == ' ' || p[wl] == '\0'))
      n++;
  return n;
}

/* ---- the participant --------------------------------------------------------------------- */

/* Produces a binary-mode reply for (saga, step, attempt, kind) with outcome and data. */
static inline void reply_nf(const char *saga, const char *step, const char *attempt, const char *kind,
                     const char *outcome, const char *data, bool flush) {
  char id[200];
  snprintf(id, sizeof id, "%s/%s/%s/%s/reply", saga, step, attempt, kind);
  rd_kafka_resp_err_t err = rd_kafka_producev(
      producer, RD_KAFKA_V_TOPIC(t_reply), RD_KAFKA_V_KEY(saga, strlen(saga)),
      RD_KAFKA_V_VALUE((void *)data, strlen(data)), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
      RD_KAFKA_V_HEADER("ce_specversion", "1.0", 3), RD_KAFKA_V_HEADER("ce_id", id, -1),
      RD_KAFKA_V_HEADER("ce_source", "/it/participant", -1),
      RD_KAFKA_V_HEADER("ce_type", "SagaReply", -1), RD_KAFKA_V_HEADER("ce_sagaid", saga, -1),
      RD_KAFKA_V_HEADER("ce_sagastep", step, -1), RD_KAFKA_V_HEADER("ce_sagaattempt", attempt, -1),
      RD_KAFKA_V_HEADER("ce_sagakind", kind, -1), RD_KAFKA_V_HEADER("ce_outcome", outcome, -1),
      RD_KAFKA_V_HEADER("content-type", "application/json", -1), RD_KAFKA_V_END);
  assert_int_equal(err, RD_KAFKA_RESP_ERR_NO_ERROR);
  if (flush)
    assert_int_equal(rd_kafka_flush(producer, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

static inline void reply(const char *saga, const char *step, const char *attempt, const char *kind,
                  const char *outcome, const char *data) {
  reply_nf(saga, step, attempt, kind, outcome, data, true);
}

static bool undo_heal; /* compensations named by "undo_fail" succeed from now on */

#define MAX_SEEN 256
static char *seen[MAX_SEEN];
static size_t nseen;

static inline bool seen_before(const char *ce_id) {
  for (size_t i = 0; i < nseen; i++)
    if (strcmp(seen[i], ce_id) == 0)
      return true;
  assert_true(nseen < MAX_SEEN);
  seen[nseen++] = strdup(ce_id);
  return false;
}

/* Answers every command not answered yet: `failure` for commands of the step named in the
 * saga input's "refuse", success (with a result naming the command) otherwise; a saga whose
 * input has "dup": true gets every reply twice. */
static inline void participate_once(void) {
  const char *topics[] = {t_inv, t_pay, t_ship};
  for (int t = 0; t < 3; t++) {
    bt_test_kmsg_t *msgs;
    long n = bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), topics[t], 20000, &msgs);
    assert_true(n >= 0);
    for (long i = 0; i < n; i++) {
      const bt_test_kmsg_t *m = &msgs[i];
      const char *ce_id = bt_test_kmsg_header(m, "ce_id");
      assert_non_null(ce_id);
      if (seen_before(ce_id))
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
                  (strcmp(kind, "compensation") == 0 && !undo_heal && undo_fail &&
                   strcmp(undo_fail, step) == 0);
      char data[256];
      snprintf(data, sizeof data, "{\"done\":\"%s\",\"kind\":\"%s\"}",
               bt_test_kmsg_header(m, "ce_type"), kind);
      for (int k = 0; k < (dup ? 2 : 1); k++)
        reply(saga, step, attempt, kind, fail ? "failure" : "success",
              fail ? "{\"error\":\"refused\"}" : data);
      json_decref(v);
    }
    bt_test_kmsgs_free(msgs, n);
  }
}

/* Runs the participant until every saga in ids reaches its expected state. */
static inline void participate_until(const char *const *ids, const char *const *states, size_t n) {
  uint64_t deadline = bt_test_now_ms() + 45000;
  for (;;) {
    participate_once();
    size_t done = 0;
    for (size_t i = 0; i < n; i++)
      done += saga_state_is(ids[i], states[i]);
    if (done == n)
      return;
    if (bt_test_now_ms() > deadline)
      fail_msg("sagas did not reach their states within 45 s");
    usleep(100 * 1000);
  }
}

/* The records of a topic for one saga (its key), as "ce_type" words in Kafka order. */
static inline int commands_for(const char *topic, const char *saga, char *out, size_t n) {
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

static inline double metric(const char *url_base, const char *name) {
  char url[128];
  snprintf(url, sizeof url, "%s/metrics", url_base);
  bt_test_http_resp_t r;
  assert_int_equal(bt_test_http("GET", url, NULL, NULL, 0, &r), 0);
  double v = -1;
  size_t len = strlen(name);
  for (const char *p = r.body; p && *p; p = strchr(p, '\n'), p = p ? p + 1 : NULL)
    if (strncmp(p, name, len) == 0 && p[len] == ' ')
      v = strtod(p + len + 1, NULL);
  bt_test_http_free(&r);
  return v;
}

/* The first process drains and exits 0 on SIGTERM (under ASan: no leak, no error). */
static inline void test_clean_exit(void **state) {
  int st = bt_test_stop(saga_pid, 15, 15000);
  saga_pid = 0;
  if (!(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0))
    fail_msg("baton-saga did not exit cleanly (status %d, log %s)", st, log_path);
}


#endif
