/* Shared by the relay's integration tests (test_relay_*.c): brokers as child processes,
 * appends over HTTP, devkafka control, SQL through libpq, and the Kafka side read with
 * librdkafka directly, so that the oracle (what the store table and the topic contain) is
 * computed independently of the relay under test. Header-only: each test is one executable. */
#ifndef TEST_RELAY_COMMON_H
#define TEST_RELAY_COMMON_H

#include <errno.h>
#include <libpq-fe.h>
#include <librdkafka/rdkafka.h>
#include <signal.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#include "testsupport.h"

#define RT static __attribute__((unused))

RT void rt_sleep_ms(unsigned ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

/* A name unique to this run: the database and devkafka are shared by the whole suite. */
RT const char *rt_run_id(void) {
  static char id[32];
  if (!id[0]) {
    srand((unsigned)getpid() ^ (unsigned)bt_test_now_ms());
    snprintf(id, sizeof id, "r%dx%04x", (int)getpid() % 100000, (unsigned)rand() & 0xffff);
  }
  return id;
}

/* ---- brokers ---------------------------------------------------------------------------- */

typedef struct rt_broker {
  pid_t pid;
  int port;
  char url[64];
  char log[512];
} rt_broker_t;

/* Brokers still running, so that a failed test's teardown stops them: a leftover relay
 * would hold the lease through the next test. */
static pid_t rt_live[16];

RT void rt_live_add(pid_t pid) {
  for (size_t i = 0; i < 16; i++)
    if (!rt_live[i]) {
      rt_live[i] = pid;
      return;
    }
}

RT void rt_live_del(pid_t pid) {
  for (size_t i = 0; i < 16; i++)
    if (rt_live[i] == pid)
      rt_live[i] = 0;
}

/* A cmocka teardown: SIGTERM (so leases are released) every broker a test left running, and
 * bring devkafka's brokers up in case the test took them down. */
RT int rt_teardown(void **state) {
  for (size_t i = 0; i < 16; i++)
    if (rt_live[i]) {
      bt_test_stop(rt_live[i], SIGTERM, 15000);
      rt_live[i] = 0;
    }
  return 0;
}

/* Starts baton-broker on a free port with the stack's DSN and Kafka plus extra "K=V" entries
 * (NULL-terminated, may be NULL). Waits for /healthz when ready_path is NULL, else for
 * ready_path to answer 200. */
RT void rt_broker_start(rt_broker_t *b, const char *tag, const char *const *extra,
                        const char *ready_path) {
  static char port_env[64]; /* outlives the fork: the child reads it before exec */
  static int seq;
  b->port = bt_test_free_port();
  snprintf(b->url, sizeof b->url, "http://127.0.0.1:%d", b->port);
  const char *build = getenv("BATON_BUILD_DIR");
  snprintf(b->log, sizeof b->log, "%s/Testing/it_relay_%s_%d_%d.log", build ? build : "/tmp",
           tag, (int)getpid(), seq++);
  const char *env[40];
  size_t n = 0;
  snprintf(port_env, sizeof port_env, "BATON_HTTP_PORT=%d", b->port);
  env[n++] = port_env;
  env[n++] = "BATON_SHUTDOWN_TIMEOUT=10s";
  for (size_t i = 0; extra && extra[i] && n < 38; i++)
    env[n++] = extra[i];
  env[n] = NULL;
  const char *argv[] = {bt_test_bin("baton-broker"), NULL};
  b->pid = bt_test_spawn(argv, env, b->log);
  rt_live_add(b->pid);
  char url[128];
  snprintf(url, sizeof url, "%s%s", b->url, ready_path ? ready_path : "/healthz");
  if (bt_test_wait_status(url, 200, 30000) != 0) {
    bt_test_sh("tail -n 30 %s >&2", b->log);
    fail_msg("broker %s did not answer 200 on %s within 30s (log %s)", tag, url, b->log);
  }
}

/* Stops a broker: SIGTERM (clean drain, lease released; it must exit 0, which under the
 * sanitizers also means no leak or error report) or SIGKILL. */
RT void rt_broker_stop(rt_broker_t *b, int sig) {
  if (b->pid <= 0)
    return;
  int status = bt_test_stop(b->pid, sig, 15000);
  rt_live_del(b->pid);
  b->pid = 0;
  if (sig == SIGTERM && !(status != -1 && WIFEXITED(status) && WEXITSTATUS(status) == 0)) {
    bt_test_sh("tail -n 40 %s >&2", b->log);
    fail_msg("broker (log %s) did not exit 0 after SIGTERM (status %d)", b->log, status);
  }
}

/* One metric's value from /metrics (the first series whose line starts with `series`), or
 * -1 when absent or the broker does not answer. */
RT double rt_metric(const rt_broker_t *b, const char *series) {
  char url[128];
  snprintf(url, sizeof url, "%s/metrics", b->url);
  bt_test_http_resp_t r;
  double v = -1;
  if (bt_test_http("GET", url, NULL, NULL, 0, &r) == 0 && r.status == 200) {
    size_t sl = strlen(series);
    for (char *line = r.body; line && *line;) {
      char *nl = strchr(line, '\n');
      if (strncmp(line, series, sl) == 0 && line[sl] == ' ') {
        v = strtod(line + sl + 1, NULL);
        break;
      }
      line = nl ? nl + 1 : NULL;
    }
  }
  bt_test_http_free(&r);
  return v;
}

/* Waits until a metric reaches want (== when exact, else >=); returns 0 or -1 on timeout. */
RT int rt_wait_metric(const rt_broker_t *b, const char *series, double want, bool exact,
                      int timeout_ms) {
  uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
  do {
    double v = rt_metric(b, series);
    if (exact ? v == want : v >= want)
      return 0;
    rt_sleep_ms(20);
  } while (bt_test_now_ms() < end);
  return -1;
}

/* ---- appends ------------------------------------------------------------------------------ */

/* Appends events first..last (versions when the stream is only written by one caller) of a
 * stream with "expected_version":"any". Each event's id is "<stream>:<n>" and its data
 * {"n":n}, plus "pad" of `pad` bytes when pad > 0; `type` is the CloudEvents type. Returns
 * the HTTP status. */
RT int rt_append_padded(const char *url, const char *stream, int first, int last,
                        const char *type, size_t pad) {
  size_t cap = 256 + (size_t)(last - first + 1) * (256 + pad + 16);
  char *body = malloc(cap), *padding = malloc(pad + 16);
  if (pad)
    snprintf(padding, pad + 16, ",\"pad\":\"%0*d\"", (int)pad, 0);
  else
    padding[0] = '\0';
  size_t len = (size_t)snprintf(body, cap, "{\"expected_version\":\"any\",\"events\":[");
  for (int v = first; v <= last; v++)
    len += (size_t)snprintf(body + len, cap - len,
                            "%s{\"specversion\":\"1.0\",\"id\":\"%s:%d\",\"source\":\"/relay-test\","
                            "\"type\":\"%s\",\"datacontenttype\":\"application/json\","
                            "\"data\":{\"n\":%d%s}}",
                            v > first ? "," : "", stream, v, type, v, padding);
  free(padding);
  len += (size_t)snprintf(body + len, cap - len, "]}");
  char u[256];
  snprintf(u, sizeof u, "%s/v1/streams/%s/events", url, stream);
  bt_test_http_resp_t r;
  int status = 0;
  if (bt_test_http("POST", u, "Content-Type: application/json\r\n", body, len, &r) == 0)
    status = r.status;
  if (status != 201)
    print_message("append %s %d..%d: %d %s\n", stream, first, last, status, r.body);
  bt_test_http_free(&r);
  free(body);
  return status;
}

RT int rt_append_range(const char *url, const char *stream, int first, int last, const char *type) {
  return rt_append_padded(url, stream, first, last, type, 0);
}

/* ---- devkafka ------------------------------------------------------------------------------ */

RT int rt_kafka_control(const char *path, const char *body) {
  char url[256];
  snprintf(url, sizeof url, "%s%s", bt_test_env("BATON_DEVKAFKA_CONTROL"), path);
  bt_test_http_resp_t r;
  int st = 0;
  if (bt_test_http("POST", url, "Content-Type: application/json\r\n", body ? body : "{}",
                   strlen(body ? body : "{}"), &r) == 0)
    st = r.status;
  bt_test_http_free(&r);
  return st;
}

RT void rt_topic_create(const char *topic, int partitions) {
  char body[256];
  snprintf(body, sizeof body, "{\"name\":\"%s\",\"partitions\":%d}", topic, partitions);
  int st = rt_kafka_control("/topics", body);
  if (st != 200)
    fail_msg("devkafka: cannot create topic %s (%d)", topic, st);
}

/* A category of this run (prefix + run id), its topic "relaytest.<cat>" created with
 * `partitions`, and the BATON_BROKER_ROUTES entry routing one to the other. Buffers: cat 64,
 * topic 96, routes 256 bytes. */
RT void rt_route_topic(const char *prefix, int partitions, char *cat, char *topic, char *routes) {
  snprintf(cat, 64, "%s%s", prefix, rt_run_id());
  snprintf(topic, 96, "relaytest.%s", cat);
  rt_topic_create(topic, partitions);
  snprintf(routes, 256, "BATON_BROKER_ROUTES=%s=%s", cat, topic);
}

/* The service outbox table as the README gives it. */
static const char rt_outbox_ddl[] =
    "CREATE TABLE outbox (position bigserial PRIMARY KEY, "
    "txid xid8 NOT NULL DEFAULT pg_current_xact_id(), topic text NOT NULL, key text, "
    "id text NOT NULL, type text NOT NULL, source text NOT NULL, subject text, time text, "
    "datacontenttype text, data bytea, extensions jsonb, "
    "created_at timestamptz NOT NULL DEFAULT now())";

/* ---- SQL ----------------------------------------------------------------------------------- */

RT void rt_ignore_notice(void *arg, const char *msg) {}

RT PGconn *rt_pg_open(const char *dsn) {
  PGconn *c = PQconnectdb(dsn);
  if (PQstatus(c) != CONNECTION_OK)
    fail_msg("connection failed: %s", PQerrorMessage(c));
  PQsetNoticeProcessor(c, rt_ignore_notice, NULL);
  return c;
}

/* Runs a parameterised statement; fails the test on error. The result is the caller's. */
RT PGresult *rt_pg(PGconn *c, const char *sql, int n, const char *const *values) {
  PGresult *r = PQexecParams(c, sql, n, NULL, values, NULL, NULL, 0);
  ExecStatusType st = PQresultStatus(r);
  if (st != PGRES_COMMAND_OK && st != PGRES_TUPLES_OK)
    fail_msg("%s: %s", sql, PQresultErrorMessage(r));
  return r;
}

RT void rt_pg_exec(PGconn *c, const char *sql) { PQclear(rt_pg(c, sql, 0, NULL)); }

RT long long rt_pg_scalar(PGconn *c, const char *sql, int n, const char *const *values) {
  PGresult *r = rt_pg(c, sql, n, values);
  if (PQntuples(r) != 1)
    fail_msg("%s: %d rows", sql, PQntuples(r));
  long long v = atoll(PQgetvalue(r, 0, 0));
  PQclear(r);
  return v;
}

/* A DSN for another database on the stack's server (libpq: a later dbname wins). */
RT void rt_dsn_for_db(char *out, size_t n, const char *db) {
  const char *base = bt_test_env("BATON_PG_DSN");
  if (strncmp(base, "postgresql://", 13) == 0 || strncmp(base, "postgres://", 11) == 0) {
    const char *slash = strchr(strstr(base, "//") + 2, '/');
    const char *q = strchr(base, '?');
    size_t prefix = slash ? (size_t)(slash - base) : (q ? (size_t)(q - base) : strlen(base));
    snprintf(out, n, "%.*s/%s%s", (int)prefix, base, db, q ? q : "");
  } else {
    snprintf(out, n, "%s dbname=%s", base, db);
  }
}

/* ---- Kafka ------------------------------------------------------------------------------------ */

typedef struct rt_rec {
  char id[96];
  char stream[96];
  long long version;    /* ce_streamversion, -1 if absent */
  char key[96];
  int32_t partition;
  int64_t offset;
  char value[128];
  /* Dead-letter headers (empty unless the record is a dead letter). */
  char dl_error[256];
  char dl_topic[128];
  char dl_relay[96];
  char dl_position[32];
} rt_rec_t;

typedef struct rt_recs {
  rt_rec_t *v;
  size_t n, cap;
  size_t distinct;      /* distinct ce_id values */
  char **ids;           /* open-addressing set of ids (cap ids_cap) */
  size_t ids_cap;
} rt_recs_t;

RT void rt_recs_free(rt_recs_t *r) {
  for (size_t i = 0; i < r->ids_cap; i++)
    free(r->ids[i]);
  free(r->ids);
  free(r->v);
  memset(r, 0, sizeof *r);
}

static size_t rt_hash(const char *s) {
  size_t h = 1469598103934665603ull;
  for (; *s; s++)
    h = (h ^ (unsigned char)*s) * 1099511628211ull;
  return h;
}

/* Adds id to the set; returns true when it was new. */
RT bool rt_ids_add(rt_recs_t *r, const char *id) {
  if ((r->distinct + 1) * 2 > r->ids_cap) {
    size_t ncap = r->ids_cap ? r->ids_cap * 2 : 1024;
    char **n = calloc(ncap, sizeof *n);
    for (size_t i = 0; i < r->ids_cap; i++)
      if (r->ids[i]) {
        size_t j = rt_hash(r->ids[i]) & (ncap - 1);
        while (n[j])
          j = (j + 1) & (ncap - 1);
        n[j] = r->ids[i];
      }
    free(r->ids);
    r->ids = n;
    r->ids_cap = ncap;
  }
  size_t j = rt_hash(id) & (r->ids_cap - 1);
  while (r->ids[j]) {
    if (strcmp(r->ids[j], id) == 0)
      return false;
    j = (j + 1) & (r->ids_cap - 1);
  }
  r->ids[j] = strdup(id);
  r->distinct++;
  return true;
}

static void rt_hdr(rd_kafka_headers_t *h, const char *name, char *out, size_t n) {
  const void *v;
  size_t len;
  out[0] = '\0';
  if (h && rd_kafka_header_get_last(h, name, &v, &len) == RD_KAFKA_RESP_ERR_NO_ERROR && v) {
    if (len >= n)
      len = n - 1;
    memcpy(out, v, len);
    out[len] = '\0';
  }
}

/* Reads topic from the beginning until `want` distinct ce_id values were seen and every
 * partition is at its end, or timeout_ms passes. Records are appended to out in arrival
 * order (per partition: offset order). Returns the number of distinct ids. */
RT size_t rt_consume(const char *topic, size_t want, int timeout_ms, rt_recs_t *out) {
  char err[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  char group[64];
  snprintf(group, sizeof group, "relay-test-%s-%d", rt_run_id(), rand());
  if (rd_kafka_conf_set(conf, "bootstrap.servers", bt_test_env("BATON_KAFKA_BROKERS"), err,
                        sizeof err) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(conf, "group.id", group, err, sizeof err) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof err) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(conf, "fetch.wait.max.ms", "50", err, sizeof err) != RD_KAFKA_CONF_OK ||
      rd_kafka_conf_set(conf, "log_level", "3", err, sizeof err) != RD_KAFKA_CONF_OK)
    fail_msg("kafka conf: %s", err);
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (!rk)
    fail_msg("kafka consumer: %s", err);
  rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
  const rd_kafka_metadata_t *md = NULL;
  int nparts = 0;
  uint64_t end = bt_test_now_ms() + (uint64_t)timeout_ms;
  while (bt_test_now_ms() < end) {
    if (rd_kafka_metadata(rk, 0, rkt, &md, 5000) == RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (md->topic_cnt == 1 && md->topics[0].err == RD_KAFKA_RESP_ERR_NO_ERROR)
        nparts = md->topics[0].partition_cnt;
      rd_kafka_metadata_destroy(md);
      if (nparts > 0)
        break;
    }
    rt_sleep_ms(200);
  }
  if (nparts <= 0)
    fail_msg("topic %s: no metadata", topic);
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(nparts);
  for (int p = 0; p < nparts; p++)
    rd_kafka_topic_partition_list_add(parts, topic, p)->offset = RD_KAFKA_OFFSET_BEGINNING;
  if (rd_kafka_assign(rk, parts) != RD_KAFKA_RESP_ERR_NO_ERROR)
    fail_msg("assign %s failed", topic);
  rd_kafka_topic_partition_list_destroy(parts);
  bool *at_eof = calloc((size_t)nparts, sizeof *at_eof);
  for (;;) {
    int neof = 0;
    for (int p = 0; p < nparts; p++)
      neof += at_eof[p];
    if (out->distinct >= want && neof == nparts)
      break;
    if (bt_test_now_ms() >= end)
      break;
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 100);
    if (!m)
      continue;
    if (m->err == RD_KAFKA_RESP_ERR__PARTITION_EOF) {
      if (m->partition >= 0 && m->partition < nparts)
        at_eof[m->partition] = true;
    } else if (m->err == RD_KAFKA_RESP_ERR_NO_ERROR) {
      if (m->partition >= 0 && m->partition < nparts)
        at_eof[m->partition] = false;
      if (out->n == out->cap) {
        out->cap = out->cap ? out->cap * 2 : 1024;
        out->v = realloc(out->v, out->cap * sizeof *out->v);
      }
      rt_rec_t *r = &out->v[out->n++];
      memset(r, 0, sizeof *r);
      rd_kafka_headers_t *h = NULL;
      rd_kafka_message_headers(m, &h);
      char ver[32];
      rt_hdr(h, "ce_id", r->id, sizeof r->id);
      rt_hdr(h, "ce_stream", r->stream, sizeof r->stream);
      rt_hdr(h, "ce_streamversion", ver, sizeof ver);
      r->version = ver[0] ? atoll(ver) : -1;
      rt_hdr(h, "baton_dl_error", r->dl_error, sizeof r->dl_error);
      rt_hdr(h, "baton_dl_topic", r->dl_topic, sizeof r->dl_topic);
      rt_hdr(h, "baton_dl_relay", r->dl_relay, sizeof r->dl_relay);
      rt_hdr(h, "baton_dl_position", r->dl_position, sizeof r->dl_position);
      size_t kl = m->key_len < sizeof r->key - 1 ? m->key_len : sizeof r->key - 1;
      if (m->key)
        memcpy(r->key, m->key, kl);
      size_t vl = m->len < sizeof r->value - 1 ? m->len : sizeof r->value - 1;
      if (m->payload)
        memcpy(r->value, m->payload, vl);
      r->partition = m->partition;
      r->offset = m->offset;
      rt_ids_add(out, r->id);
    }
    rd_kafka_message_destroy(m);
  }
  free(at_eof);
  rd_kafka_topic_destroy(rkt);
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return out->distinct;
}

/* ---- the per-stream oracle -------------------------------------------------------------------- */

typedef struct rt_stream_ids {
  char stream[96];
  long long n;   /* versions 1..n stored */
  char **ids;    /* ids[v - 1]: the stored event id of version v */
} rt_stream_ids_t;

typedef struct rt_oracle {
  rt_stream_ids_t *s;
  size_t n;
} rt_oracle_t;

/* Loads what the store holds for streams whose id starts with prefix: the oracle. */
RT void rt_oracle_load(rt_oracle_t *o, PGconn *c, const char *prefix) {
  memset(o, 0, sizeof *o);
  char like[160];
  snprintf(like, sizeof like, "%s%%", prefix);
  const char *v[1] = {like};
  PGresult *r = rt_pg(c,
                      "SELECT stream, version, id FROM baton.events WHERE stream LIKE $1 "
                      "ORDER BY stream, version",
                      1, v);
  int rows = PQntuples(r);
  o->s = calloc((size_t)rows + 1, sizeof *o->s);
  for (int i = 0; i < rows; i++) {
    const char *stream = PQgetvalue(r, i, 0);
    long long ver = atoll(PQgetvalue(r, i, 1));
    if (o->n == 0 || strcmp(o->s[o->n - 1].stream, stream) != 0) {
      snprintf(o->s[o->n].stream, sizeof o->s[o->n].stream, "%s", stream);
      o->s[o->n].ids = calloc((size_t)rows, sizeof(char *));
      o->n++;
    }
    rt_stream_ids_t *s = &o->s[o->n - 1];
    if (ver != s->n + 1)
      fail_msg("store: stream %s has version %lld after %lld (versions must be dense)", stream,
               ver, s->n);
    s->ids[s->n++] = strdup(PQgetvalue(r, i, 2));
  }
  PQclear(r);
}

RT void rt_oracle_free(rt_oracle_t *o) {
  for (size_t i = 0; i < o->n; i++) {
    for (long long v = 0; v < o->s[i].n; v++)
      free(o->s[i].ids[v]);
    free(o->s[i].ids);
  }
  free(o->s);
  memset(o, 0, sizeof *o);
}

RT long long rt_oracle_total(const rt_oracle_t *o) {
  long long t = 0;
  for (size_t i = 0; i < o->n; i++)
    t += o->s[i].n;
  return t;
}

static int rt_cmp_rec(const void *a, const void *b) {
  const rt_rec_t *x = a, *y = b;
  int c = strcmp(x->stream, y->stream);
  if (c)
    return c;
  if (x->partition != y->partition)
    return x->partition < y->partition ? -1 : 1;
  return x->offset < y->offset ? -1 : x->offset > y->offset;
}

/* Checks the Kafka records against the store, stream by stream, in log order: every stored
 * version present, first appearances in version order (a consumer that drops what it has
 * seen reads the stream in order), all of a stream in one partition, a duplicate only as a
 * repeat of an earlier version with the same ce_id, and the ce_id of every version the
 * stored one. Records of other streams (other tests, earlier runs) are ignored. Fails the
 * test on a violation; returns the number of duplicates. */
RT long long rt_verify(rt_recs_t *recs, const rt_oracle_t *o) {
  qsort(recs->v, recs->n, sizeof *recs->v, rt_cmp_rec);
  long long dups = 0;
  size_t i = 0;
  for (size_t k = 0; k < o->n; k++) {
    const rt_stream_ids_t *s = &o->s[k];
    while (i < recs->n && strcmp(recs->v[i].stream, s->stream) < 0)
      i++;
    long long next = 1;
    int32_t part = -1;
    for (; i < recs->n && strcmp(recs->v[i].stream, s->stream) == 0; i++) {
      const rt_rec_t *r = &recs->v[i];
      if (part >= 0 && r->partition != part)
        fail_msg("stream %s: records in partitions %d and %d", s->stream, part, r->partition);
      part = r->partition;
      if (r->version < 1 || r->version > s->n)
        fail_msg("stream %s: version %lld in Kafka, the store has 1..%lld", s->stream, r->version,
                 s->n);
      if (strcmp(r->id, s->ids[r->version - 1]) != 0)
        fail_msg("stream %s v%lld: ce_id %s in Kafka, %s in the store", s->stream, r->version,
                 r->id, s->ids[r->version - 1]);
      if (r->version == next) {
        next++;
      } else if (r->version < next) {
        dups++;
      } else {
        fail_msg("stream %s: version %lld appears (offset %lld) before version %lld: gap or reorder",
                 s->stream, r->version, (long long)r->offset, next);
      }
    }
    if (next != s->n + 1)
      fail_msg("stream %s: Kafka has versions 1..%lld of 1..%lld: missing events", s->stream,
               next - 1, s->n);
  }
  return dups;
}

/* Reads `want` distinct records of topic (failing the test after 60 s) and checks those of
 * streams starting with prefix against the store (rt_verify). Returns the duplicates. */
RT long long rt_consume_verified(const char *topic, const char *prefix, size_t want) {
  rt_recs_t recs = {0};
  assert_int_equal(rt_consume(topic, want, 60000, &recs), want);
  PGconn *pg = rt_pg_open(bt_test_env("BATON_PG_DSN"));
  rt_oracle_t o;
  rt_oracle_load(&o, pg, prefix);
  long long dups = rt_verify(&recs, &o);
  rt_oracle_free(&o);
  rt_recs_free(&recs);
  PQfinish(pg);
  return dups;
}

#endif
