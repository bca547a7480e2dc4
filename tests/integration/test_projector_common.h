/* Helpers shared by the projector's integration tests: a private database, a definitions
 * directory with projection names of the test's own (Redis keys and consumer groups are
 * global in the stack), the projector as a child process, blocking Postgres and Redis
 * connections that check what it wrote through an independent path, and a librdkafka
 * producer for the source records. Header-only: each test is one executable. */
#ifndef TEST_PROJECTOR_COMMON_H
#define TEST_PROJECTOR_COMMON_H

#include <hiredis/hiredis.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kafka_oracle.h"
#include "test_redis_common.h"
#include "testsupport.h"

/* The projection version the checks below read (1 unless a test rebuilt). */
static int pt_v = 1;

typedef struct pt_env {
  char name[48];      /* test name: database, logs */
  char dbname[64];
  char dsn[1024];
  char defs[128];
  char log[512];
  int port;           /* the projector's HTTP port */
  pid_t pid;
} pt_env_t;

static inline PGresult *pt_sql(PGconn *pg, const char *q, int n, const char *const *v) {
  PGresult *r = PQexecParams(pg, q, n, NULL, v, NULL, NULL, 0);
  if (PQresultStatus(r) != PGRES_TUPLES_OK && PQresultStatus(r) != PGRES_COMMAND_OK)
    fail_msg("%s: %s", q, PQresultErrorMessage(r));
  return r;
}

static inline long long pt_sql_int(PGconn *pg, const char *q) {
  PGresult *r = pt_sql(pg, q, 0, NULL);
  long long x = PQntuples(r) ? atoll(PQgetvalue(r, 0, 0)) : -1;
  PQclear(r);
  return x;
}

static inline void pt_admin(const char *fmt, const char *db) {
  char q[256];
  snprintf(q, sizeof q, fmt, db);
  PGconn *pg = PQconnectdb(bt_test_env("BATON_PG_DSN"));
  assert_int_equal(PQstatus(pg), CONNECTION_OK);
  PQclear(pt_sql(pg, "SET client_min_messages = warning", 0, NULL));
  PQclear(pt_sql(pg, q, 0, NULL));
  PQfinish(pg);
}

/* Creates the private database and definitions directory. */
static inline void pt_setup(pt_env_t *e, const char *name) {
  bt_test_env_load();
  snprintf(e->name, sizeof e->name, "%s", name);
  snprintf(e->dbname, sizeof e->dbname, "%s_%d", name, (int)getpid());
  pt_admin("DROP DATABASE IF EXISTS %s", e->dbname);
  pt_admin("CREATE DATABASE %s", e->dbname);
  const char *base = bt_test_env("BATON_PG_DSN");
  const char *scheme = strstr(base, "://");
  const char *path = scheme ? strchr(scheme + 3, '/') : NULL;
  if (!scheme)
    snprintf(e->dsn, sizeof e->dsn, "%s dbname=%s", base, e->dbname);
  else if (!path)
    snprintf(e->dsn, sizeof e->dsn, "%s/%s", base, e->dbname);
  else
    snprintf(e->dsn, sizeof e->dsn, "%.*s/%s", (int)(path - base), base, e->dbname);
  snprintf(e->defs, sizeof e->defs, "/tmp/%s_defs_%d", name, (int)getpid());
  mkdir(e->defs, 0700);
  const char *build = getenv("BATON_BUILD_DIR");
  snprintf(e->log, sizeof e->log, "%s/Testing/%s.log", build ? build : "/tmp", name);
  e->pid = 0;
}

static inline void pt_teardown(pt_env_t *e) {
  if (e->pid > 0)
    bt_test_stop(e->pid, SIGKILL, 5000);
  e->pid = 0;
  pt_admin("DROP DATABASE IF EXISTS %s WITH (FORCE)", e->dbname);
  char cmd[200];
  snprintf(cmd, sizeof cmd, "rm -rf %s", e->defs);
  assert_int_equal(system(cmd), 0);
}

static inline void pt_write_def(pt_env_t *e, const char *file, const char *text) {
  assert_int_equal(bt_test_write_file(e->defs, file, text), 0);
}

/* Starts baton-projector with the stack's Redis and Kafka, our database and definitions, and
 * up to 4 extra "K=V" entries (NULL-terminated list may be NULL). Does not wait. */
static inline pid_t pt_spawn(pt_env_t *e, const char *arg, const char *const *extra) {
  static char env_dsn[1100], env_defs[200], env_port[64], env_redis[256], env_kafka[256];
  if (!e->port)
    e->port = bt_test_free_port();
  snprintf(env_dsn, sizeof env_dsn, "BATON_PG_DSN=%s", e->dsn);
  snprintf(env_defs, sizeof env_defs, "BATON_PROJECTIONS=%s", e->defs);
  snprintf(env_port, sizeof env_port, "BATON_HTTP_PORT=%d", e->port);
  snprintf(env_redis, sizeof env_redis, "BATON_REDIS_URL=%s", bt_test_env("BATON_REDIS_URL"));
  snprintf(env_kafka, sizeof env_kafka, "BATON_KAFKA_BROKERS=%s",
           bt_test_env("BATON_KAFKA_BROKERS"));
  const char *env[12] = {env_dsn, env_defs, env_port, env_redis, env_kafka};
  size_t n = 5;
  for (size_t i = 0; extra && extra[i] && n < 11; i++)
    env[n++] = extra[i];
  env[n] = NULL;
  const char *argv[] = {bt_test_bin("baton-projector"), arg, NULL};
  return bt_test_spawn(argv, env, e->log);
}

/* Starts the service and waits for /readyz 200. */
static inline void pt_start(pt_env_t *e, const char *const *extra) {
  e->pid = pt_spawn(e, NULL, extra);
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", e->port);
  if (bt_test_wait_status(url, 200, 30000) != 0)
    fail_msg("baton-projector not ready within 30 s (log: %s)", e->log);
}

static inline int pt_exit_code(pid_t pid) {
  int status = 0;
  waitpid(pid, &status, 0);
  return WIFEXITED(status) ? WEXITSTATUS(status) : -1;
}

/* A GET on the projector; returns the status and the body (malloc'd) in *body if non-NULL. */
static inline int pt_get(pt_env_t *e, const char *path, char **body) {
  char url[512];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", e->port, path);
  bt_test_http_resp_t resp;
  if (bt_test_http("GET", url, NULL, NULL, 0, &resp) != 0)
    return 0;
  int st = resp.status;
  if (body) {
    *body = resp.body;
    resp.body = NULL;
  }
  bt_test_http_free(&resp);
  return st;
}

/* A blocking Redis connection to the stack's Redis (redis://127.0.0.1:port). */
static inline redisContext *pt_redis(void) {
  const char *url = bt_test_env("BATON_REDIS_URL");
  const char *colon = strrchr(url, ':');
  assert_non_null(colon);
  redisContext *c = test_redis_direct(atoi(colon + 1), NULL, NULL);
  if (!c)
    fail_msg("cannot connect to Redis at %s", url);
  return c;
}

#endif

/* ---- the billing workload and its oracle ------------------------------------------------ */

/* The issue's invoices definition over protobuf BillingEvents: printf it with the projection
 * name and the topic. */
static const char pt_invoices_def[] =
    "projection: %s\n"
    "source: { topics: [%s], format: protobuf }\n"
    "key: invoice_id\n"
    "on:\n"
    "  InvoiceIssued:   { upsert: { customer_id: $.customer_id, amount_cents: $.amount_cents,"
    " due_date: $.due_date, status: unpaid } }\n"
    "  PaymentReceived: { merge: { status: paid, paid_at: $.paid_at } }\n"
    "  InvoiceVoided:   { delete: true }\n"
    "indexes:\n"
    "  - { name: by_customer, field: customer_id }\n"
    "  - { name: unpaid_by_due, field: customer_id, where: { status: unpaid }, order: due_date }\n"
    "aggregates:\n"
    "  - { name: balance, group: customer_id, sum: amount_cents, where: { status: unpaid } }\n"
    "  - { name: open_invoices, group: customer_id, count: true, where: { status: unpaid } }\n"
    "sinks: [redis, postgres]\n";


#include "baton/v1/billing.pb-c.h"

/* One invoice as the model holds it after every event so far. */
typedef struct pt_invoice {
  char id[24];
  int customer;
  long long amount;
  char due[16];
  int status; /* 0 absent, 1 unpaid, 2 paid */
} pt_invoice_t;

typedef struct pt_model {
  pt_invoice_t *inv;
  int ninv, cap;
  int ncustomers;
  uint64_t rng;
} pt_model_t;

typedef enum { PT_ISSUE, PT_PAY, PT_VOID } pt_op_t;

/* One generated event: what it does to which invoice (the invoice's state after it). */
typedef struct pt_event {
  pt_op_t op;
  pt_invoice_t after;          /* for PAY/VOID: the invoice as it was, status updated */
} pt_event_t;

static inline uint64_t pt_rand(pt_model_t *m) {
  m->rng ^= m->rng << 13;
  m->rng ^= m->rng >> 7;
  m->rng ^= m->rng << 17;
  return m->rng;
}

static inline void pt_model_init(pt_model_t *m, int ncustomers, uint64_t seed) {
  memset(m, 0, sizeof *m);
  m->ncustomers = ncustomers;
  m->rng = seed ? seed : 88172645463325252ull;
}

/* The next event, applied to the model: a new invoice (half the time, or when none is
 * open), a payment of an unpaid one, or a void of an existing one, so the three formats'
 * mappings agree on every document. */
static inline pt_event_t pt_next(pt_model_t *m) {
  pt_event_t e;
  memset(&e, 0, sizeof e);
  uint64_t r = pt_rand(m) % 100;
  int pick = -1;
  if (m->ninv > 0 && r >= 50) {
    for (int tries = 0; tries < 8 && pick < 0; tries++) {
      int k = (int)(pt_rand(m) % (uint64_t)m->ninv);
      if (m->inv[k].status == 1 || (r >= 85 && m->inv[k].status != 0))
        pick = k;
    }
  }
  if (pick < 0) {
    if (m->ninv == m->cap) {
      m->cap = m->cap ? m->cap * 2 : 1024;
      m->inv = realloc(m->inv, (size_t)m->cap * sizeof *m->inv);
      assert_non_null(m->inv);
    }
    pt_invoice_t *v = &m->inv[m->ninv++];
    snprintf(v->id, sizeof v->id, "INV%06d", m->ninv);
    v->customer = (int)(pt_rand(m) % (uint64_t)m->ncustomers);
    v->amount = 100 + (long long)(pt_rand(m) % 100000);
    snprintf(v->due, sizeof v->due, "2027-%02d-%02d", 1 + (int)(pt_rand(m) % 12),
             1 + (int)(pt_rand(m) % 28));
    v->status = 1;
    e.op = PT_ISSUE;
    e.after = *v;
    return e;
  }
  pt_invoice_t *v = &m->inv[pick];
  if (r >= 85) {
    v->status = 0;
    e.op = PT_VOID;
  } else {
    v->status = 2;
    e.op = PT_PAY;
  }
  e.after = *v;
  return e;
}

/* The event as a protobuf BillingEvent (malloc'd bytes). */
static inline void *pt_protobuf(const pt_event_t *e, size_t *len) {
  Baton__V1__BillingEvent be = BATON__V1__BILLING_EVENT__INIT;
  Baton__V1__InvoiceIssued ii = BATON__V1__INVOICE_ISSUED__INIT;
  Baton__V1__PaymentReceived pr = BATON__V1__PAYMENT_RECEIVED__INIT;
  Baton__V1__InvoiceVoided iv = BATON__V1__INVOICE_VOIDED__INIT;
  char cust[16];
  snprintf(cust, sizeof cust, "C%04d", e->after.customer);
  char *id = (char *)e->after.id;
  if (e->op == PT_ISSUE) {
    ii.invoice_id = id;
    ii.customer_id = cust;
    ii.amount_cents = e->after.amount;
    ii.currency = "EUR";
    ii.due_date = (char *)e->after.due;
    ii.issued_at = "2026-12-01T10:00:00Z";
    be.event_case = BATON__V1__BILLING_EVENT__EVENT_INVOICE_ISSUED;
    be.invoice_issued = &ii;
  } else if (e->op == PT_PAY) {
    pr.invoice_id = id;
    pr.customer_id = cust;
    pr.amount_cents = e->after.amount;
    pr.paid_at = "2026-12-02T10:00:00Z";
    be.event_case = BATON__V1__BILLING_EVENT__EVENT_PAYMENT_RECEIVED;
    be.payment_received = &pr;
  } else {
    iv.invoice_id = id;
    iv.customer_id = cust;
    iv.reason = "duplicate";
    iv.voided_at = "2026-12-02T11:00:00Z";
    be.event_case = BATON__V1__BILLING_EVENT__EVENT_INVOICE_VOIDED;
    be.invoice_voided = &iv;
  }
  *len = baton__v1__billing_event__get_packed_size(&be);
  uint8_t *buf = malloc(*len ? *len : 1);
  assert_non_null(buf);
  baton__v1__billing_event__pack(&be, buf);
  return buf;
}

/* The event as a Debezium change event of table `invoices` (malloc'd text); every other one
 * with the schema/payload wrapper. */
static inline char *pt_debezium(const pt_event_t *e, int wrap) {
  char row[256], *out = malloc(1024);
  assert_non_null(out);
  snprintf(row, sizeof row,
           "{\"invoice_id\":\"%s\",\"customer_id\":\"C%04d\",\"amount_cents\":%lld,"
           "\"due_date\":\"%s\",\"status\":\"%s\"}",
           e->after.id, e->after.customer, e->after.amount, e->after.due,
           e->op == PT_PAY ? "paid" : "unpaid");
  char env[700];
  snprintf(env, sizeof env,
           "{\"op\":\"%s\",\"before\":%s,\"after\":%s,\"source\":{\"table\":\"invoices\"}}",
           e->op == PT_ISSUE ? "c" : e->op == PT_PAY ? "u" : "d",
           e->op == PT_VOID ? row : "null", e->op == PT_VOID ? "null" : row);
  if (wrap)
    snprintf(out, 1024, "{\"schema\":{},\"payload\":%s}", env);
  else
    snprintf(out, 1024, "%s", env);
  return out;
}

/* pt_setup plus the usual single projection: the invoices definition (pt_invoices_def) as
 * projection "{short}_{pid}" over a new topic "pt.{short}.{pid}" of 3 partitions. */
static inline void pt_setup_invoices(pt_env_t *e, const char *name, const char *shortname,
                                     char *proj, size_t projsz, char *topic, size_t topicsz) {
  pt_setup(e, name);
  snprintf(proj, projsz, "%s_%d", shortname, (int)getpid());
  snprintf(topic, topicsz, "pt.%s.%d", shortname, (int)getpid());
  assert_int_equal(bt_test_kafka_create_topic(topic, 3), 0);
  char def[2048], file[80];
  snprintf(def, sizeof def, pt_invoices_def, proj, topic);
  snprintf(file, sizeof file, "%s.yaml", shortname);
  pt_write_def(e, file, def);
}

/* A blocking producer for the source topics. */
static inline rd_kafka_t *pt_producer(void) {
  char err[256];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  if (rd_kafka_conf_set(conf, "bootstrap.servers", bt_test_env("BATON_KAFKA_BROKERS"), err,
                        sizeof err) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(conf, "enable.idempotence", "true", err, sizeof err) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(conf, "linger.ms", "5", err, sizeof err) != RD_KAFKA_CONF_OK)
    fail_msg("producer config: %s", err);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, err, sizeof err);
  if (!rk)
    fail_msg("producer: %s", err);
  return rk;
}

static inline void pt_produce(rd_kafka_t *rk, const char *topic, const char *key, const void *value,
                              size_t len) {
  for (;;) {
    rd_kafka_resp_err_t err = rd_kafka_producev(
        rk, RD_KAFKA_V_TOPIC(topic), RD_KAFKA_V_KEY(key, strlen(key)),
        RD_KAFKA_V_VALUE((void *)value, len), RD_KAFKA_V_MSGFLAGS(RD_KAFKA_MSG_F_COPY),
        RD_KAFKA_V_END);
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL) {
      rd_kafka_poll(rk, 10);
      continue;
    }
    if (err)
      fail_msg("produce to %s: %s", topic, rd_kafka_err2str(err));
    return;
  }
}

static inline void pt_flush(rd_kafka_t *rk) {
  assert_int_equal(rd_kafka_flush(rk, 30000), RD_KAFKA_RESP_ERR_NO_ERROR);
}

/* Sum of a projection version's Redis offsets (the events it has passed). */
static inline long long pt_redis_applied(redisContext *c, const char *projection) {
  redisReply *rep = test_redis_cmd(c, "HVALS bt:proj:{%s}:v%d:off", projection, pt_v);
  long long sum = 0;
  for (size_t i = 0; rep->type == REDIS_REPLY_ARRAY && i < rep->elements; i++)
    sum += atoll(rep->element[i]->str);
  freeReplyObject(rep);
  return sum;
}

static inline long long pt_pg_applied(PGconn *pg, const char *projection) {
  char ver[16];
  snprintf(ver, sizeof ver, "%d", pt_v);
  const char *v[] = {projection, ver};
  PGresult *r = pt_sql(pg, "SELECT coalesce(sum(next_offset), 0) FROM projector.offsets "
                           "WHERE projection = $1 AND version = $2::int", 2, v);
  long long x = atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return x;
}

/* Waits until each listed sink has passed `total` events of the projection. */
static inline void pt_wait_applied(redisContext *rc, PGconn *pg, const char *projection,
                                   long long total, int timeout_ms) {
  uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
  long long a = -1, b = -1;
  while (bt_test_now_ms() < end) {
    a = rc ? pt_redis_applied(rc, projection) : total;
    b = pg ? pt_pg_applied(pg, projection) : total;
    if (a == total && b == total)
      return;
    usleep(50000);
  }
  fail_msg("%s: applied redis %lld, postgres %lld of %lld within %d ms", projection, a, b, total,
           timeout_ms);
}

static inline int pt_cmp_unpaid(const void *a, const void *b) {
  const pt_invoice_t *x = *(pt_invoice_t *const *)a, *y = *(pt_invoice_t *const *)b;
  int c = strcmp(x->due, y->due);
  return c ? c : strcmp(x->id, y->id);
}

/* The oracle of customer c: balance, open count and unpaid invoices by due date. */
static inline void pt_oracle(const pt_model_t *m, int c, long long *balance, int *open,
                             char *unpaid, size_t unpaid_len) {
  pt_invoice_t **list = calloc((size_t)m->ninv + 1, sizeof *list);
  assert_non_null(list);
  int n = 0;
  *balance = 0;
  for (int i = 0; i < m->ninv; i++)
    if (m->inv[i].status == 1 && m->inv[i].customer == c) {
      list[n++] = &m->inv[i];
      *balance += m->inv[i].amount;
    }
  *open = n;
  qsort(list, (size_t)n, sizeof *list, pt_cmp_unpaid);
  size_t at = 0;
  unpaid[0] = '\0';
  for (int i = 0; i < n && at + 16 < unpaid_len; i++)
    at += (size_t)snprintf(unpaid + at, unpaid_len - at, "%s%s", i ? "," : "", list[i]->id);
  free(list);
}

/* Compares Redis (version 1 of projection) with the oracle, customer by customer: the balance
 * and open_invoices totals, and the unpaid_by_due index read in its lexical order. Also the
 * number of documents. */
static inline void pt_check_redis(redisContext *rc, const pt_model_t *m, const char *projection,
                                  bool with_count) {
  static char want[1 << 16], got[1 << 16];
  for (int c = 0; c < m->ncustomers; c++) {
    long long balance;
    int open;
    pt_oracle(m, c, &balance, &open, want, sizeof want);
    redisReply *rep = test_redis_cmd(rc, "HGET bt:proj:{%s}:v%d:agg:balance C%04d", projection, pt_v, c);
    long long b = rep->type == REDIS_REPLY_STRING ? atoll(rep->str) : 0;
    if (balance == 0 && rep->type != REDIS_REPLY_NIL)
      fail_msg("%s C%04d: balance 0 must be an absent field, got %s", projection, c, rep->str);
    freeReplyObject(rep);
    if (b != balance)
      fail_msg("%s C%04d: redis balance %lld, oracle %lld", projection, c, b, balance);
    if (with_count) {
      rep = test_redis_cmd(rc, "HGET bt:proj:{%s}:v%d:agg:open_invoices C%04d", projection, pt_v, c);
      long long o = rep->type == REDIS_REPLY_STRING ? atoll(rep->str) : 0;
      freeReplyObject(rep);
      if (o != open)
        fail_msg("%s C%04d: redis open_invoices %lld, oracle %d", projection, c, o, open);
    }
    rep = test_redis_cmd(rc, "ZRANGEBYLEX bt:proj:{%s}:v%d:idx:unpaid_by_due:C%04d - +", projection,
                         pt_v, c);
    size_t at = 0;
    got[0] = '\0';
    for (size_t i = 0; i < rep->elements; i++) {
      const char *mem = rep->element[i]->str;
      size_t len = rep->element[i]->len, sl = strlen(mem); /* sort part ends at the NUL */
      if (sl + 1 > len)
        fail_msg("%s: member without a NUL separator", projection);
      at += (size_t)snprintf(got + at, sizeof got - at, "%s%.*s", i ? "," : "",
                             (int)(len - sl - 1), mem + sl + 1);
    }
    freeReplyObject(rep);
    if (strcmp(got, want) != 0)
      fail_msg("%s C%04d: redis unpaid %s, oracle %s", projection, c, got, want);
  }
  int docs = 0;
  for (int i = 0; i < m->ninv; i++)
    docs += m->inv[i].status != 0;
  char pattern[200];
  snprintf(pattern, sizeof pattern, "bt:proj:{%s}:v%d:doc:*", projection, pt_v);
  redisReply *rep =
      test_redis_cmd(rc, "EVAL %s 0 %s", "return #redis.call('KEYS',ARGV[1])", pattern);
  if (rep->integer != docs)
    fail_msg("%s: redis holds %lld documents, oracle %d", projection, rep->integer, docs);
  freeReplyObject(rep);
}

static inline void pt_check_pg(PGconn *pg, const pt_model_t *m, const char *projection,
                               bool with_count) {
  static char want[1 << 16];
  char q[600];
  for (int c = 0; c < m->ncustomers; c++) {
    long long balance;
    int open;
    pt_oracle(m, c, &balance, &open, want, sizeof want);
    char cust[16];
    snprintf(cust, sizeof cust, "C%04d", c);
    const char *v[] = {cust};
    snprintf(q, sizeof q,
             "SELECT (SELECT coalesce(sum(total), 0) FROM projector.\"%s_v%d_agg\" WHERE "
             "aggregate = 'balance' AND grp = $1), (SELECT coalesce(sum(total), 0) FROM "
             "projector.\"%s_v%d_agg\" WHERE aggregate = 'open_invoices' AND grp = $1), "
             "(SELECT coalesce(string_agg(key, ',' ORDER BY due_date, key), '') FROM "
             "projector.\"%s_v%d\" WHERE customer_id = $1 AND doc->>'status' = 'unpaid')",
             projection, pt_v, projection, pt_v, projection, pt_v);
    PGresult *r = pt_sql(pg, q, 1, v);
    if (atoll(PQgetvalue(r, 0, 0)) != balance)
      fail_msg("%s %s: postgres balance %s, oracle %lld", projection, cust, PQgetvalue(r, 0, 0),
               balance);
    if (with_count && atoll(PQgetvalue(r, 0, 1)) != open)
      fail_msg("%s %s: postgres open_invoices %s, oracle %d", projection, cust,
               PQgetvalue(r, 0, 1), open);
    if (strcmp(PQgetvalue(r, 0, 2), want) != 0)
      fail_msg("%s %s: postgres unpaid %s, oracle %s", projection, cust, PQgetvalue(r, 0, 2),
               want);
    PQclear(r);
  }
  int docs = 0;
  for (int i = 0; i < m->ninv; i++)
    docs += m->inv[i].status != 0;
  snprintf(q, sizeof q, "SELECT count(*) FROM projector.\"%s_v%d\"", projection, pt_v);
  long long n = pt_sql_int(pg, q);
  if (n != docs)
    fail_msg("%s: postgres holds %lld rows, oracle %d", projection, n, docs);
  snprintf(q, sizeof q, "SELECT count(*) FROM projector.\"%s_v%d_agg\" WHERE total = 0",
           projection, pt_v);
  assert_int_equal(pt_sql_int(pg, q), 0);
}

/* A digest of everything a sink holds for a projection (for "a replay changes nothing"). */
static inline char *pt_pg_digest(PGconn *pg, const char *projection) {
  char q[600];
  snprintf(q, sizeof q,
           "SELECT md5(coalesce((SELECT string_agg(key || doc::text, '|' ORDER BY key) FROM "
           "projector.\"%s_v%d\"), '') || coalesce((SELECT string_agg(aggregate || grp || total, "
           "'|' ORDER BY aggregate, grp) FROM projector.\"%s_v%d_agg\"), ''))",
           projection, pt_v, projection, pt_v);
  PGresult *r = pt_sql(pg, q, 0, NULL);
  char *d = strdup(PQgetvalue(r, 0, 0));
  PQclear(r);
  return d;
}

/* Redis: every key of the version (but meta) with its content, digested by a Lua script.
 * Key names enter without their bt:proj:{P}:v1: prefix, so two projections of one
 * definition can be compared. */
static inline char *pt_redis_digest(redisContext *rc, const char *projection) {
  static const char lua[] =
      "local keys = redis.call('KEYS', ARGV[1]) table.sort(keys) local out = {} "
      "local skip = #ARGV[1] - 1 "
      "for _, k in ipairs(keys) do if not string.find(k, ':meta', 1, true) then "
      "local t = redis.call('TYPE', k).ok local v "
      "if t == 'string' then v = redis.call('GET', k) "
      "elseif t == 'hash' then local h = redis.call('HGETALL', k) local f = {} "
      "for i = 1, #h, 2 do f[#f + 1] = h[i] .. '=' .. h[i + 1] end table.sort(f) "
      "v = table.concat(f, ',') "
      "elseif t == 'zset' then v = table.concat(redis.call('ZRANGE', k, 0, -1), ',') "
      "else v = t end out[#out + 1] = string.sub(k, skip + 1) .. '>' .. v end end "
      "return redis.sha1hex(table.concat(out, '|'))";
  char pattern[200];
  snprintf(pattern, sizeof pattern, "bt:proj:{%s}:v%d:*", projection, pt_v);
  redisReply *rep = test_redis_cmd(rc, "EVAL %s 0 %s", lua, pattern);
  if (rep->type != REDIS_REPLY_STRING)
    fail_msg("digest: %s", rep->str ? rep->str : "not a string");
  char *d = strdup(rep->str);
  freeReplyObject(rep);
  return d;
}
