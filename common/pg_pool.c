/* The pool: a bounded FIFO of jobs handed to whichever connection is idle, and one timer that
 * fails the jobs that waited too long. Jobs are built here, run by pg_conn.c and come back
 * through bt__pg_pool_job_done, the only place that calls a caller's callback. */
#include "pg_pool.h"

#include <arpa/inet.h>

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pg_conn.h"

#define PARAMS_MAX 65535 /* the protocol's 16-bit parameter count */

struct bt_pg_pool {
  uv_loop_t *loop;
  bt_pg_pool_config_t cfg; /* dsn and name are our copies */
  bt_pg_stats_t own_stats;
  bt_pg_stats_t *stats;
  bt_pg_conn_t *conns;     /* cfg.size of them */
  unsigned nup;            /* connections IDLE or BUSY */
  unsigned nclosed;
  bt_pg_job_t *head, *tail;
  unsigned nqueued;
  size_t njobs;            /* queued or in flight: what a drain waits for */
  uv_timer_t timer;        /* fires at the queue head's deadline */
  bool timer_open;
  bt_app_t *app;
  bool draining, holding, closing;
  char *resolve_host; /* see bt__pg_pool_host_to_resolve */
};

const char *bt__pg_pool_host_to_resolve(bt_pg_pool_t *p) { return p->resolve_host; }

/* A host libpq would have to look up itself: one name (not a list), no hostaddr given, not an
 * IP literal and not a Unix socket directory. */
static char *host_needing_lookup(const PQconninfoOption *opts) {
  const char *host = NULL, *hostaddr = NULL;
  for (const PQconninfoOption *o = opts; o->keyword; o++) {
    if (strcmp(o->keyword, "host") == 0)
      host = o->val;
    else if (strcmp(o->keyword, "hostaddr") == 0)
      hostaddr = o->val;
  }
  if (!host || !*host || (hostaddr && *hostaddr) || host[0] == '/' || host[0] == '@' ||
      strchr(host, ','))
    return NULL;
  unsigned char buf[sizeof(struct in6_addr)];
  if (inet_pton(AF_INET, host, buf) == 1 || inet_pton(AF_INET6, host, buf) == 1)
    return NULL;
  return strdup(host);
}

void bt_pg_stats_register(bt_pg_stats_t *s, const char *pool) {
  static const char *const base[] = {"baton_pg_connections",    "baton_pg_queued",
                                     "baton_pg_queries_total",  "baton_pg_errors_total",
                                     "baton_pg_rejected_total", "baton_pg_reconnects_total",
                                     "baton_pg_query_seconds"};
  _Static_assert(BT_ARRAY_LEN(base) == BT_ARRAY_LEN(s->names), "one name per metric");
  for (size_t i = 0; i < BT_ARRAY_LEN(base); i++)
    snprintf(s->names[i], sizeof s->names[i], "%s{pool=\"%s\"}", base[i], pool);
  bt_metrics_gauge(&s->connections, s->names[0], "Postgres connections up.");
  bt_metrics_gauge(&s->queued, s->names[1], "Postgres requests waiting for a connection.");
  bt_metrics_counter(&s->queries, s->names[2], "Postgres requests (query or batch) completed.");
  bt_metrics_counter(&s->errors, s->names[3], "Postgres requests that did not commit.");
  bt_metrics_counter(&s->rejected, s->names[4], "Postgres requests refused: wait queue full.");
  bt_metrics_counter(&s->reconnects, s->names[5], "Postgres connection attempts after a failure.");
  bt_metrics_histogram(&s->latency, s->names[6], "Postgres request latency, queueing included.",
                       NULL, 0);
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

/* Keeps the invariant that no connection is IDLE while jobs wait. */
static void dispatch(bt_pg_pool_t *p) {
  for (unsigned i = 0; i < p->cfg.size && p->head; i++)
    if (p->conns[i].state == BT_PG_CONN_IDLE)
      bt__pg_conn_send(&p->conns[i], dequeue(p));
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

static char *copy_str(char **space, const char *s) {
  size_t n = strlen(s) + 1;
  char *d = memcpy(*space, s, n);
  *space += n;
  return d;
}

/* Lays out the job, its commands, its result slots, the value pointers and every string in
 * one allocation, so a request costs one malloc and one free whatever its size. A batch that
 * repeats one SQL pointer (group commit does) stores that text once. */
static bt_pg_job_t *job_new(const bt_pg_stmt_t *stmts, size_t n) {
  size_t ncmd = n + 2, nvals = 0, nbytes = 0;
  for (size_t i = 0; i < n; i++) {
    if (i == 0 || stmts[i].sql != stmts[i - 1].sql)
      nbytes += strlen(stmts[i].sql) + 1;
    nvals += (size_t)stmts[i].nparams;
    for (int k = 0; k < stmts[i].nparams; k++)
      if (stmts[i].values[k])
        nbytes += strlen(stmts[i].values[k]) + 1;
  }
  bt_pg_job_t *j = malloc(sizeof *j + ncmd * (sizeof(bt_pg_stmt_t) + sizeof(PGresult *)) +
                          nvals * sizeof(char *) + nbytes);
  if (!j)
    return NULL;
  j->cmds = (bt_pg_stmt_t *)(j + 1);
  j->res = (PGresult **)(j->cmds + ncmd);
  const char **vals = (const char **)(j->res + ncmd);
  char *space = (char *)(vals + nvals);
  j->ncmd = ncmd;
  j->nres = 0;
  j->failed = ncmd;
  j->cmds[0] = (bt_pg_stmt_t){"BEGIN", 0, NULL};
  j->cmds[ncmd - 1] = (bt_pg_stmt_t){"COMMIT", 0, NULL};
  for (size_t i = 0; i < n; i++) {
    bt_pg_stmt_t *c = &j->cmds[i + 1];
    c->sql = i > 0 && stmts[i].sql == stmts[i - 1].sql ? c[-1].sql : copy_str(&space, stmts[i].sql);
    c->nparams = stmts[i].nparams;
    c->values = vals;
    for (int k = 0; k < stmts[i].nparams; k++)
      *vals++ = stmts[i].values[k] ? copy_str(&space, stmts[i].values[k]) : NULL;
  }
  return j;
}

static void job_free(bt_pg_job_t *j) {
  for (size_t i = 0; i < j->nres; i++)
    PQclear(j->res[i]);
  free(j);
}

static void update_hold(bt_pg_pool_t *p) {
  bool want = p->draining && p->njobs > 0;
  if (want == p->holding)
    return;
  p->holding = want;
  if (want)
    bt_app_hold(p->app);
  else
    bt_app_release(p->app);
}

void bt__pg_pool_job_done(bt_pg_pool_t *p, bt_pg_job_t *j, int err, const char *errmsg) {
  size_t n = j->ncmd - 2;
  bt_pg_result_t r = {.err = err, .errmsg = errmsg ? errmsg : "", .n = n, .failed = n};
  if (err == 0) {
    r.res = (const PGresult *const *)(j->res + 1);
  } else if (err == BT_EIO && j->failed < j->ncmd) {
    r.error = j->res[j->failed];
    if (j->failed >= 1 && j->failed <= n)
      r.failed = j->failed - 1;
  }
  p->njobs--;
  bt_counter_inc(&p->stats->queries);
  if (err)
    bt_counter_inc(&p->stats->errors);
  bt_histogram_observe(&p->stats->latency, (double)(uv_hrtime() - j->start_ns) / 1e9);
  j->cb(&r, j->arg);
  job_free(j);
  update_hold(p);
}

static int submit(bt_pg_pool_t *p, const bt_pg_stmt_t *stmts, size_t n, bt_pg_cb cb, void *arg) {
  if (p->closing)
    return BT_ECANCELED;
  if (!cb || n == 0 || n > p->cfg.batch_max)
    return BT_EINVAL;
  for (size_t i = 0; i < n; i++)
    if (!stmts[i].sql || stmts[i].nparams < 0 || stmts[i].nparams > PARAMS_MAX ||
        (stmts[i].nparams > 0 && !stmts[i].values))
      return BT_EINVAL;
  /* Jobs only wait while every connection is taken, so a full queue means overload. */
  if (p->nqueued >= p->cfg.queue_max) {
    bt_counter_inc(&p->stats->rejected);
    return BT_EAGAIN;
  }
  bt_pg_job_t *j = job_new(stmts, n);
  if (!j)
    return BT_ENOMEM;
  j->cb = cb;
  j->arg = arg;
  j->start_ns = uv_hrtime();
  j->deadline_ms = uv_now(p->loop) + p->cfg.queue_timeout_ms;
  enqueue(p, j);
  p->njobs++;
  update_hold(p);
  dispatch(p);
  return 0;
}

int bt_pg_pool_query(bt_pg_pool_t *p, const char *sql, int nparams, const char *const *values,
                     bt_pg_cb cb, void *arg) {
  bt_pg_stmt_t s = {sql, nparams, values};
  return submit(p, &s, 1, cb, arg);
}

int bt_pg_pool_batch(bt_pg_pool_t *p, const bt_pg_stmt_t *stmts, size_t n, bt_pg_cb cb,
                     void *arg) {
  return stmts ? submit(p, stmts, n, cb, arg) : BT_EINVAL;
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
  }
  if (from == BT_PG_CONN_BACKOFF && c->state == BT_PG_CONN_CONNECTING && c->fails > 0)
    bt_counter_inc(&p->stats->reconnects);
  if (c->state == BT_PG_CONN_IDLE)
    dispatch(p);
}

static void maybe_free(bt_pg_pool_t *p) {
  if (p->timer_open || p->nclosed < p->cfg.size)
    return;
  free(p->conns);
  free((char *)p->cfg.dsn);
  free((char *)p->cfg.name);
  free(p->resolve_host);
  free(p);
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
  char *why = NULL;
  PQconninfoOption *opts = PQconninfoParse(cfg->dsn, &why);
  if (!opts) {
    bt_log_error("pg pool: invalid connection string", "{s:s}", "detail",
                 why ? why : "out of memory");
    PQfreemem(why);
    return BT_EINVAL;
  }
  char *resolve_host = host_needing_lookup(opts);
  PQconninfoFree(opts);

  bt_pg_pool_t *p = calloc(1, sizeof *p);
  if (!p) {
    free(resolve_host);
    return BT_ENOMEM;
  }
  p->resolve_host = resolve_host;
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
#undef DEFAULT
  if (p->cfg.reconnect_max_ms < p->cfg.reconnect_min_ms)
    p->cfg.reconnect_max_ms = p->cfg.reconnect_min_ms;
  p->cfg.dsn = strdup(cfg->dsn);
  p->cfg.name = strdup(cfg->name ? cfg->name : "pg");
  p->conns = calloc(p->cfg.size, sizeof *p->conns);
  if (!p->cfg.dsn || !p->cfg.name || !p->conns) {
    free(p->conns);
    free((char *)p->cfg.dsn);
    free((char *)p->cfg.name);
    free(p->resolve_host);
    free(p);
    return BT_ENOMEM;
  }
  p->stats = cfg->stats ? cfg->stats : &p->own_stats;
  uv_timer_init(loop, &p->timer);
  p->timer.data = p;
  p->timer_open = true;
  for (unsigned i = 0; i < p->cfg.size; i++)
    bt__pg_conn_init(&p->conns[i], p, &p->cfg, loop, i);
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
  update_hold(p);
}

static void on_app_close(bt_app_t *app, void *arg) { bt_pg_pool_close(arg); }

void bt_pg_pool_attach(bt_pg_pool_t *p, bt_app_t *app, const char *dep) {
  BT_ASSERT(app->loop == p->loop);
  p->app = app;
  bt_app_add_dependency(app, dep, bt_pg_pool_ready, p);
  bt_app_on_shutdown(app, on_app_drain, on_app_close, p);
}
