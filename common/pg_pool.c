/* The pool: a bounded FIFO of jobs handed to whichever connection has room, one timer that
 * fails the jobs that waited too long, and the registry of prepared statements. Jobs are built
 * here, run by pg_conn.c and come back through bt__pg_pool_job_done, the only place that calls
 * a caller's callback. */
#include "pg_pool.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pg_conn.h"
#include "pg_hosts.h"

#define PARAMS_MAX 65535 /* the protocol's 16-bit parameter count */

struct bt_pg_pool {
  uv_loop_t *loop;
  bt_pg_pool_config_t cfg; /* dsn and name are our copies */
  bt_pg_stats_t own_stats;
  bt_pg_stats_t *stats;
  bt_pg_hosts_t hosts;     /* what each connection attempt resolves */
  bt_pg_conn_t *conns;     /* cfg.size of them */
  unsigned char *prepared; /* cfg.size * cfg.prepared_max flags, a slice per connection */
  bt_pg_prepared_t **stmts; /* the registry: nstmts of cfg.prepared_max */
  unsigned nstmts;
  unsigned nup;            /* connections IDLE or BUSY */
  unsigned nclosed;
  bt_pg_job_t *head, *tail;
  unsigned nqueued;
  size_t njobs;            /* queued or in flight: what a drain waits for */
  uv_timer_t timer;        /* fires at the queue head's deadline */
  bool timer_open;
  bt_app_t *app;
  bool draining, holding, closing;
};

void bt_pg_stats_register(bt_pg_stats_t *s, const char *pool) {
  static const char *const base[] = {
      "baton_pg_connections",    "baton_pg_queued",           "baton_pg_queries_total",
      "baton_pg_errors_total",   "baton_pg_rejected_total",   "baton_pg_reconnects_total",
      "baton_pg_deadlines_total", "baton_pg_lookups_total",   "baton_pg_query_seconds"};
  _Static_assert(BT_ARRAY_LEN(base) == BT_ARRAY_LEN(s->names), "one name per metric");
  for (size_t i = 0; i < BT_ARRAY_LEN(base); i++)
    snprintf(s->names[i], sizeof s->names[i], "%s{pool=\"%s\"}", base[i], pool);
  bt_metrics_gauge(&s->connections, s->names[0], "Postgres connections up.");
  bt_metrics_gauge(&s->queued, s->names[1], "Postgres requests waiting for a connection.");
  bt_metrics_counter(&s->queries, s->names[2], "Postgres requests (query or batch) completed.");
  bt_metrics_counter(&s->errors, s->names[3], "Postgres requests that did not commit.");
  bt_metrics_counter(&s->rejected, s->names[4], "Postgres requests refused: wait queue full.");
  bt_metrics_counter(&s->reconnects, s->names[5], "Postgres connection attempts after a failure.");
  bt_metrics_counter(&s->deadlines, s->names[6],
                     "Postgres connections broken because a request got no answer in time.");
  bt_metrics_counter(&s->lookups, s->names[7], "Postgres host names resolved off the loop.");
  bt_metrics_histogram(&s->latency, s->names[8], "Postgres request latency, queueing included.",
                       NULL, 0);
  bt_fsm_register(&bt__pg_conn_fsm, "baton_pg_conn_state", "Postgres connections per state.");
}

/* ---- the wait queue ---- */

static void on_timeout(uv_timer_t *t);

static void arm_timer(bt_pg_pool_t *p) {
  if (p->closing)
    return;
  if (!p->head) {
    uv_timer_stop(&p->timer);
    return;
  }
  uint64_t now = uv_now(p->loop);
  uint64_t due = p->head->deadline_ms;
  uv_timer_start(&p->timer, on_timeout, due > now ? due - now : 0, 0);
}

static void enqueue(bt_pg_pool_t *p, bt_pg_job_t *j) {
  j->next = NULL;
  if (p->tail)
    p->tail->next = j;
  else
    p->head = j;
  p->tail = j;
  p->nqueued++;
  bt_gauge_set(&p->stats->queued, p->nqueued);
}

static bt_pg_job_t *dequeue(bt_pg_pool_t *p) {
  bt_pg_job_t *j = p->head;
  if (j) {
    p->head = j->next;
    if (!p->head)
      p->tail = NULL;
    p->nqueued--;
    bt_gauge_set(&p->stats->queued, p->nqueued);
  }
  return j;
}

/* The connection with room for j and the fewest jobs in flight, or NULL. */
static bt_pg_conn_t *pick(bt_pg_pool_t *p, const bt_pg_job_t *j) {
  bt_pg_conn_t *best = NULL;
  for (unsigned i = 0; i < p->cfg.size; i++) {
    bt_pg_conn_t *c = &p->conns[i];
    if (bt__pg_conn_has_room(c, j) && (!best || c->ninflight < best->ninflight))
      best = c;
  }
  return best;
}

/* Keeps the invariant that no connection has room while jobs wait (FIFO: a COPY at the head
 * waits for a connection of its own, and the jobs behind it wait with it). */
void bt__pg_pool_dispatch(bt_pg_pool_t *p) {
  bt_pg_conn_t *c;
  while (!p->closing && p->head && (c = pick(p, p->head)))
    bt__pg_conn_send(c, dequeue(p));
  arm_timer(p);
}

static const char *last_error(const bt_pg_pool_t *p) {
  for (unsigned i = 0; i < p->cfg.size; i++)
    if (p->conns[i].errstr[0])
      return p->conns[i].errstr;
  return "still connecting";
}

static void on_timeout(uv_timer_t *t) {
  bt_pg_pool_t *p = t->data;
  uint64_t now = uv_now(p->loop);
  /* Deadlines are submission time plus one timeout, so the queue is in deadline order. */
  while (!p->closing && p->head && p->head->deadline_ms <= now) {
    bt_pg_job_t *j = dequeue(p);
    char msg[sizeof p->conns[0].errstr + 64];
    unsigned long long ms = (unsigned long long)p->cfg.queue_timeout_ms;
    if (p->nup == 0)
      snprintf(msg, sizeof msg, "no Postgres connection within %llu ms: %s", ms, last_error(p));
    else
      snprintf(msg, sizeof msg, "no free Postgres connection within %llu ms", ms);
    bt__pg_pool_job_done(p, j, p->nup == 0 ? BT_ENOTCONN : BT_ETIMEDOUT, msg);
  }
  arm_timer(p);
}

/* ---- jobs ---- */

static char *copy_bytes(char **space, const char *s, size_t n) {
  char *d = memcpy(*space, s, n);
  *space += n;
  return d;
}

static bool is_binary(const bt_pg_query_t *q, int k) { return q->formats && q->formats[k] == 1; }

/* Lays out the job, its commands, its result slots, the value pointers, lengths and formats,
 * the PREPARE slots and every string in one allocation, so a request costs one malloc and one
 * free whatever its size. A batch that repeats one SQL pointer (group commit does) stores that
 * text once. For a COPY, `extra` bytes of data follow. */
static bt_pg_job_t *job_new(bt_pg_job_kind_t kind, const bt_pg_query_t *qs, size_t n,
                            const char *extra, size_t extra_len) {
  size_t ncmd = kind == BT_PG_JOB_TX ? n + 2 : n, nvals = 0, nints = 0, nprep = 0;
  size_t nbytes = extra_len;
  for (size_t i = 0; i < n; i++) {
    const bt_pg_query_t *q = &qs[i];
    if (q->sql && (i == 0 || q->sql != qs[i - 1].sql))
      nbytes += strlen(q->sql) + 1;
    nprep += q->prepared != NULL;
    nvals += (size_t)q->nparams;
    if (q->formats)
      nints += 2 * (size_t)q->nparams;
    for (int k = 0; k < q->nparams; k++)
      if (q->values[k])
        nbytes += is_binary(q, k) ? (size_t)q->lengths[k] : strlen(q->values[k]) + 1;
  }
  bt_pg_job_t *j = malloc(sizeof *j + ncmd * (sizeof(bt_pg_query_t) + sizeof(PGresult *)) +
                          nvals * sizeof(char *) + nints * sizeof(int) +
                          nprep * sizeof(unsigned) + nbytes);
  if (!j)
    return NULL;
  memset(j, 0, sizeof *j);
  j->kind = kind;
  j->cmds = (bt_pg_query_t *)(j + 1);
  j->res = (PGresult **)(j->cmds + ncmd);
  const char **vals = (const char **)(j->res + ncmd);
  int *ints = (int *)(vals + nvals);
  j->prep = (unsigned *)(ints + nints);
  char *space = (char *)(j->prep + nprep);
  j->ncmd = ncmd;
  j->failed = ncmd;
  bt_pg_query_t *c = j->cmds;
  if (kind == BT_PG_JOB_TX) {
    /* READ COMMITTED whatever default_transaction_isolation says: the callers' designs (the
     * event store's lock order and positions lock, the relays' leases) assume it, and under a
     * database default of SERIALIZABLE or REPEATABLE READ every overlap of two writers of one
     * row would fail with 40001 instead of waiting for the lock. */
    c[0] = (bt_pg_query_t){.sql = "BEGIN ISOLATION LEVEL READ COMMITTED"};
    c[ncmd - 1] = (bt_pg_query_t){.sql = "COMMIT"};
    c++;
  }
  for (size_t i = 0; i < n; i++, c++) {
    const bt_pg_query_t *q = &qs[i];
    *c = (bt_pg_query_t){.prepared = q->prepared, .nparams = q->nparams, .values = vals};
    if (q->sql)
      c->sql = i > 0 && q->sql == qs[i - 1].sql ? c[-1].sql
                                                : copy_bytes(&space, q->sql, strlen(q->sql) + 1);
    if (q->formats) {
      c->lengths = ints;
      c->formats = ints + q->nparams;
      memcpy(ints, q->lengths, (size_t)q->nparams * sizeof(int));
      memcpy(ints + q->nparams, q->formats, (size_t)q->nparams * sizeof(int));
      ints += 2 * q->nparams;
    }
    for (int k = 0; k < q->nparams; k++) {
      const char *v = q->values[k];
      *vals++ = !v ? NULL
                   : copy_bytes(&space, v, is_binary(q, k) ? (size_t)q->lengths[k] : strlen(v) + 1);
    }
  }
  if (extra_len) {
    j->copy_data = copy_bytes(&space, extra, extra_len);
    j->copy_len = extra_len;
  }
  return j;
}

static void job_free(bt_pg_job_t *j) {
  for (size_t i = 0; i < j->nres; i++)
    PQclear(j->res[i]);
  PQclear(j->error);
  free(j);
}

void bt__pg_pool_job_done(bt_pg_pool_t *p, bt_pg_job_t *j, int err, const char *errmsg) {
  size_t first = j->kind == BT_PG_JOB_TX ? 1 : 0;
  size_t n = j->ncmd - 2 * first;
  bt_pg_result_t r = {.err = err, .errmsg = errmsg ? errmsg : "", .n = n, .failed = n};
  if (err == 0) {
    r.res = (const PGresult *const *)(j->res + first);
  } else if (err == BT_EIO && j->err_res) {
    r.error = j->err_res;
    if (j->err_at >= first && j->err_at < first + n)
      r.failed = j->err_at - first;
  }
  p->njobs--;
  bt_counter_inc(&p->stats->queries);
  if (err)
    bt_counter_inc(&p->stats->errors);
  bt_histogram_observe(&p->stats->latency, (double)(uv_hrtime() - j->start_ns) / 1e9);
  j->cb(&r, j->arg);
  job_free(j);
  if (p->app)
    bt_app_hold_while(p->app, &p->holding, p->draining && p->njobs > 0);
}

static bool query_ok(const bt_pg_pool_t *p, const bt_pg_query_t *q) {
  if (q->nparams < 0 || q->nparams > PARAMS_MAX || (q->nparams > 0 && !q->values) ||
      (q->formats && !q->lengths) || !q->sql == !q->prepared)
    return false;
  if (q->prepared && (q->prepared->idx >= p->nstmts || p->stmts[q->prepared->idx] != q->prepared ||
                      q->prepared->nparams != q->nparams))
    return false; /* another pool's statement, or the wrong number of values */
  for (int k = 0; q->formats && k < q->nparams; k++)
    if (q->formats[k] != 0 && (q->formats[k] != 1 || q->lengths[k] < 0))
      return false;
  return true;
}

static int submit(bt_pg_pool_t *p, bt_pg_job_kind_t kind, const bt_pg_query_t *qs, size_t n,
                  const char *data, size_t len, bt_pg_cb cb, void *arg) {
  if (p->closing)
    return BT_ECANCELED;
  if (!cb || n == 0 || n > p->cfg.batch_max)
    return BT_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (!query_ok(p, &qs[i]))
      return BT_EINVAL;
  /* Jobs only wait while every connection is full, so a full queue means overload. */
  if (p->nqueued >= p->cfg.queue_max) {
    bt_counter_inc(&p->stats->rejected);
    return BT_EAGAIN;
  }
  bt_pg_job_t *j = job_new(kind, qs, n, data, len);
  if (!j)
    return BT_ENOMEM;
  j->cb = cb;
  j->arg = arg;
  j->start_ns = uv_hrtime();
  j->deadline_ms = uv_now(p->loop) + p->cfg.queue_timeout_ms;
  enqueue(p, j);
  p->njobs++;
  if (p->app)
    bt_app_hold_while(p->app, &p->holding, p->draining && p->njobs > 0);
  bt__pg_pool_dispatch(p);
  return 0;
}

/* The plain statements of the older entry points, as queries; a small batch needs no malloc. */
static int submit_stmts(bt_pg_pool_t *p, const bt_pg_stmt_t *stmts, size_t n, bt_pg_cb cb,
                        void *arg) {
  if (!stmts || n == 0 || n > p->cfg.batch_max)
    return p->closing ? BT_ECANCELED : BT_EINVAL;
  bt_pg_query_t small[8] = {{0}};
  bt_pg_query_t *qs = n <= BT_ARRAY_LEN(small) ? small : malloc(n * sizeof *qs);
  if (!qs)
    return BT_ENOMEM;
  for (size_t i = 0; i < n; i++)
    qs[i] = (bt_pg_query_t){.sql = stmts[i].sql, .nparams = stmts[i].nparams,
                            .values = stmts[i].values};
  int rc = submit(p, BT_PG_JOB_TX, qs, n, NULL, 0, cb, arg);
  if (qs != small)
    free(qs);
  return rc;
}

int bt_pg_pool_query(bt_pg_pool_t *p, const char *sql, int nparams, const char *const *values,
                     bt_pg_cb cb, void *arg) {
  bt_pg_stmt_t s = {sql, nparams, values};
  return sql ? submit_stmts(p, &s, 1, cb, arg) : BT_EINVAL;
}

int bt_pg_pool_batch(bt_pg_pool_t *p, const bt_pg_stmt_t *stmts, size_t n, bt_pg_cb cb,
                     void *arg) {
  for (size_t i = 0; stmts && i < n; i++)
    if (!stmts[i].sql)
      return BT_EINVAL;
  return submit_stmts(p, stmts, n, cb, arg);
}

int bt_pg_pool_submit(bt_pg_pool_t *p, const bt_pg_query_t *qs, size_t n, unsigned flags,
                      bt_pg_cb cb, void *arg) {
  if (!qs || (flags & ~BT_PG_AUTOCOMMIT) || ((flags & BT_PG_AUTOCOMMIT) && n != 1))
    return BT_EINVAL;
  bt_pg_job_kind_t kind = flags & BT_PG_AUTOCOMMIT ? BT_PG_JOB_EXEC : BT_PG_JOB_TX;
  return submit(p, kind, qs, n, NULL, 0, cb, arg);
}

int bt_pg_pool_exec(bt_pg_pool_t *p, const bt_pg_query_t *q, bt_pg_cb cb, void *arg) {
  return bt_pg_pool_submit(p, q, 1, BT_PG_AUTOCOMMIT, cb, arg);
}

int bt_pg_pool_copy(bt_pg_pool_t *p, const char *sql, const void *data, size_t len,
                    bt_pg_cb cb, void *arg) {
  if (!sql || (len && !data) || len > p->cfg.copy_max_bytes)
    return p->closing ? BT_ECANCELED : BT_EINVAL;
  bt_pg_query_t q = {.sql = sql};
  return submit(p, BT_PG_JOB_COPY, &q, 1, data, len, cb, arg);
}

int bt_pg_pool_prepare(bt_pg_pool_t *p, const char *sql, int nparams, const Oid *types,
                       bt_pg_prepared_t **out) {
  if (p->closing)
    return BT_ECANCELED;
  if (!sql || !*sql || nparams < 0 || nparams > PARAMS_MAX)
    return BT_EINVAL;
  size_t tlen = types ? (size_t)nparams * sizeof(Oid) : 0;
  for (unsigned i = 0; i < p->nstmts; i++) {
    bt_pg_prepared_t *s = p->stmts[i];
    if (s->nparams == nparams && strcmp(s->sql, sql) == 0 && !s->types == !types &&
        (!types || memcmp(s->types, types, tlen) == 0)) {
      *out = s;
      return 0;
    }
  }
  if (p->nstmts >= p->cfg.prepared_max)
    return BT_ERANGE;
  size_t len = strlen(sql) + 1;
  bt_pg_prepared_t *s = malloc(sizeof *s + len + tlen + sizeof(Oid));
  if (!s)
    return BT_ENOMEM;
  s->idx = p->nstmts;
  s->nparams = nparams;
  snprintf(s->name, sizeof s->name, "bt_p%u", s->idx);
  memcpy(s->sql, sql, len);
  /* The OIDs follow the text, aligned. */
  s->types = types ? (Oid *)((char *)s + ((sizeof *s + len + sizeof(Oid) - 1) / sizeof(Oid)) *
                                             sizeof(Oid))
                   : NULL;
  if (types)
    memcpy(s->types, types, tlen);
  p->stmts[p->nstmts++] = s;
  *out = s;
  return 0;
}

/* ---- connection events ---- */

void bt__pg_pool_conn_state(bt_pg_pool_t *p, bt_pg_conn_t *c, bt_pg_conn_state_t from) {
  bool was_up = from == BT_PG_CONN_IDLE || from == BT_PG_CONN_BUSY;
  bool up = c->state == BT_PG_CONN_IDLE || c->state == BT_PG_CONN_BUSY;
  if (up != was_up) {
    p->nup = up ? p->nup + 1 : p->nup - 1;
    bt_gauge_set(&p->stats->connections, p->nup);
    if (p->nup == (up ? 1u : 0u) && !p->closing)
      bt_log(up ? BT_LOG_INFO : BT_LOG_WARN, up ? "pg pool ready" : "pg pool has no connection",
             "{s:s}", "pool", p->cfg.name);
    if (p->cfg.on_conn && !p->closing)
      p->cfg.on_conn(up, p->cfg.hook_arg);
  }
  if (from == BT_PG_CONN_BACKOFF && c->state != BT_PG_CONN_CLOSING && c->backoff.fails > 0)
    bt_counter_inc(&p->stats->reconnects);
  if (c->state == BT_PG_CONN_IDLE)
    bt__pg_pool_dispatch(p);
}

void bt__pg_pool_notify(bt_pg_pool_t *p, const PGnotify *n) {
  if (p->cfg.on_notify && !p->closing)
    p->cfg.on_notify(n->relname, n->extra ? n->extra : "", n->be_pid, p->cfg.hook_arg);
}

void bt__pg_pool_lookup(bt_pg_pool_t *p) { bt_counter_inc(&p->stats->lookups); }
void bt__pg_pool_deadline(bt_pg_pool_t *p) { bt_counter_inc(&p->stats->deadlines); }

/* The one place a pool's memory goes, whether it never started or closed. */
static void pool_free(bt_pg_pool_t *p) {
  for (unsigned i = 0; p->stmts && i < p->nstmts; i++)
    free(p->stmts[i]);
  free(p->stmts);
  free(p->prepared);
  free(p->conns);
  bt_pg_hosts_free(&p->hosts);
  free((char *)p->cfg.dsn);
  free((char *)p->cfg.name);
  free(p);
}

static void maybe_free(bt_pg_pool_t *p) {
  if (!p->timer_open && p->nclosed == p->cfg.size)
    pool_free(p);
}

void bt__pg_pool_conn_closed(bt_pg_pool_t *p) {
  p->nclosed++;
  maybe_free(p);
}

static void on_timer_closed(uv_handle_t *h) {
  bt_pg_pool_t *p = h->data;
  p->timer_open = false;
  maybe_free(p);
}

/* ---- lifecycle ---- */

int bt_pg_pool_new(bt_pg_pool_t **out, uv_loop_t *loop, const bt_pg_pool_config_t *cfg) {
  if (!cfg->dsn)
    return BT_EINVAL;
  bt_pg_pool_t *p = calloc(1, sizeof *p);
  if (!p)
    return BT_ENOMEM;
  p->loop = loop;
  p->cfg = *cfg;
#define DEFAULT(field, value) p->cfg.field = p->cfg.field ? p->cfg.field : (value)
  DEFAULT(size, 4);
  DEFAULT(queue_max, 1024);
  DEFAULT(batch_max, 10000);
  DEFAULT(queue_timeout_ms, 5000);
  DEFAULT(connect_timeout_ms, 5000);
  DEFAULT(reconnect_min_ms, 100);
  DEFAULT(reconnect_max_ms, 5000);
  DEFAULT(job_timeout_ms, 30000);
  DEFAULT(pipeline_depth, 1);
  DEFAULT(prepared_max, 32);
  DEFAULT(copy_max_bytes, (size_t)64 << 20);
#undef DEFAULT
  if (p->cfg.reconnect_max_ms < p->cfg.reconnect_min_ms)
    p->cfg.reconnect_max_ms = p->cfg.reconnect_min_ms;
  p->cfg.dsn = strdup(cfg->dsn);
  p->cfg.name = strdup(cfg->name ? cfg->name : "pg");
  p->conns = calloc(p->cfg.size, sizeof *p->conns);
  p->prepared = calloc(p->cfg.size, p->cfg.prepared_max);
  p->stmts = calloc(p->cfg.prepared_max, sizeof *p->stmts);
  if (!p->cfg.dsn || !p->cfg.name || !p->conns || !p->prepared || !p->stmts) {
    pool_free(p);
    return BT_ENOMEM;
  }
  char why[256];
  int rc = bt_pg_hosts_parse(&p->hosts, p->cfg.dsn, why, sizeof why);
  if (rc) {
    bt_log_error("pg pool: bad connection settings", "{s:s, s:s}", "pool", p->cfg.name,
                 "detail", why);
    pool_free(p);
    return rc;
  }
  p->stats = cfg->stats ? cfg->stats : &p->own_stats;
  uv_timer_init(loop, &p->timer);
  p->timer.data = p;
  p->timer_open = true;
  for (unsigned i = 0; i < p->cfg.size; i++)
    bt__pg_conn_init(&p->conns[i], p, &p->cfg, &p->hosts, p->prepared + i * p->cfg.prepared_max,
                     loop, i);
  *out = p;
  return 0;
}

bool bt_pg_pool_ready(void *pool) {
  const bt_pg_pool_t *p = pool;
  return !p->closing && p->nup > 0;
}

void bt_pg_pool_close(bt_pg_pool_t *p) {
  if (p->closing)
    return;
  p->closing = true;
  uv_close((uv_handle_t *)&p->timer, on_timer_closed);
  for (unsigned i = 0; i < p->cfg.size; i++)
    bt__pg_conn_close(&p->conns[i]);
  bt_pg_job_t *j;
  while ((j = dequeue(p)))
    bt__pg_pool_job_done(p, j, BT_ECANCELED, "the pool was closed before the request was sent");
}

static void on_app_drain(bt_app_t *app, void *arg) {
  bt_pg_pool_t *p = arg;
  p->draining = true;
  bt_app_hold_while(app, &p->holding, p->njobs > 0);
}

static void on_app_close(bt_app_t *app, void *arg) { BT_UNUSED(app); bt_pg_pool_close(arg); }

void bt_pg_pool_attach(bt_pg_pool_t *p, bt_app_t *app, const char *dep) {
  BT_ASSERT(app->loop == p->loop);
  p->app = app;
  bt_app_add_dependency(app, dep, bt_pg_pool_ready, p);
  bt_app_on_shutdown(app, on_app_drain, on_app_close, p);
}
