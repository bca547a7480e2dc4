/* bt_pg_pool_t: an asynchronous pool of Postgres connections on the libuv loop. A request (one
 * statement or a batch) runs as one transaction sent in pipeline mode, and its callback says
 * whether that transaction committed; a single statement may also run in autocommit, and a COPY
 * FROM STDIN streams a buffer. Statements may be prepared once per connection. Connections
 * reconnect with jittered backoff on their own, and a request that gets no answer within its
 * deadline breaks its connection. */
#ifndef BT_PG_POOL_H
#define BT_PG_POOL_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "app.h"
#include "errors.h"
#include "metrics.h"

typedef struct bt_pg_pool bt_pg_pool_t;
/* A statement registered on a pool by bt_pg_pool_prepare(); owned by the pool. */
typedef struct bt_pg_prepared bt_pg_prepared_t;

/* One parameterised statement. `values` holds `nparams` text values ($1..$n); a NULL entry is
 * SQL NULL. */
typedef struct bt_pg_stmt {
  const char *sql;
  int nparams;
  const char *const *values;
} bt_pg_stmt_t;

/* What a request's callback receives; everything in it is borrowed and valid only during the
 * callback (the runtime PQclear()s the results afterwards).
 *
 * err is one of:
 *   0             the transaction committed; res[i] is statement i's result.
 *   BT_EIO        Postgres rejected a statement or the COMMIT: nothing was committed.
 *                 `error` is Postgres's error result (read SQLSTATE with PQresultErrorField),
 *                 `failed` the index of the statement at fault (n for BEGIN/COMMIT).
 *   BT_ECONNRESET the connection was lost (or the pool closed, or no answer came within
 *                 job_timeout_ms and the pool broke the connection) after the request was
 *                 sent. The outcome is unknown: the COMMIT may or may not have happened. Callers that
 *                 retry must make the statements idempotent.
 *   BT_ENOTCONN   no connection came up within queue_timeout_ms; nothing was sent.
 *   BT_ETIMEDOUT  connections were up but none came free within queue_timeout_ms; nothing was
 *                 sent.
 *   BT_ECANCELED  the pool was closed before the request was sent.
 * A statement is never reported as done unless its transaction's COMMIT succeeded. */
typedef struct bt_pg_result {
  int err;
  const char *errmsg;         /* one line, naming the cause; "" when err == 0 */
  size_t n;                   /* statements in the request */
  const PGresult *const *res; /* n results when err == 0, else NULL */
  const PGresult *error;      /* BT_EIO only, else NULL */
  size_t failed;              /* BT_EIO only */
} bt_pg_result_t;

typedef void (*bt_pg_cb)(const bt_pg_result_t *r, void *arg);

/* One statement with every option, for bt_pg_pool_submit/exec. Use designated initialisers.
 * Either `sql` or `prepared` is set. values[i] is SQL NULL when NULL; a value whose format is
 * 1 is binary (network byte order, as the type's send function writes it) and lengths[i] says
 * its size. Binary pays for bytea and wide integers or timestamps, where text costs a parse. */
typedef struct bt_pg_query {
  const char *sql;                  /* SQL text, or NULL when `prepared` is set */
  const bt_pg_prepared_t *prepared; /* sent by name: PQsendQueryPrepared */
  int nparams;
  const char *const *values;
  const int *lengths; /* byte length of each binary value; NULL when every value is text */
  const int *formats; /* 0 text, 1 binary, per value; NULL: all text */
} bt_pg_query_t;

/* Called when a connection came up (up = true, before any request is sent on it) or went
 * down. A LISTEN connection uses it to listen again after every reconnect. */
typedef void (*bt_pg_conn_cb)(bool up, void *arg);
/* A NOTIFY received on any connection of the pool; every argument is borrowed. */
typedef void (*bt_pg_notify_cb)(const char *channel, const char *payload, int be_pid, void *arg);

/* Counters a pool updates. The caller owns the struct; it must outlive the metrics registry
 * when registered, which is why it lives apart from the pool. */
typedef struct bt_pg_stats {
  bt_gauge_t connections;      /* connections up */
  bt_gauge_t queued;           /* requests waiting for a connection */
  bt_counter_t queries;        /* requests completed, whatever the outcome */
  bt_counter_t errors;         /* requests completed with err != 0 */
  bt_counter_t rejected;       /* submissions refused with BT_EAGAIN */
  bt_counter_t reconnects;     /* connection attempts after a failure */
  bt_counter_t deadlines;      /* requests failed because no answer came within job_timeout_ms */
  bt_counter_t lookups;        /* host names resolved off the loop, per connection attempt */
  bt_histogram_t latency;      /* seconds from submission to callback */
  char names[9][96];           /* metric names with the pool label */
} bt_pg_stats_t;

/* Registers s as baton_pg_*{pool="<pool>"} metrics, and the per-state connection gauges
 * baton_pg_conn_state{state=..} once per process. `pool` is copied. */
void bt_pg_stats_register(bt_pg_stats_t *s, const char *pool);

/* Zero selects the default given in brackets. */
typedef struct bt_pg_pool_config {
  const char *dsn;             /* libpq URI or key=value string; copied */
  const char *name;            /* label in logs ["pg"]; copied */
  unsigned size;               /* connections [4] */
  unsigned queue_max;          /* requests waiting for a connection; more get BT_EAGAIN [1024] */
  unsigned batch_max;          /* statements in one request [10000] */
  uint64_t queue_timeout_ms;   /* longest wait for a connection [5000] */
  uint64_t connect_timeout_ms; /* one connection attempt [5000] */
  uint64_t reconnect_min_ms;   /* first delay after a failure, doubling per failure [100] */
  uint64_t reconnect_max_ms;   /* cap on that delay (jittered: half fixed, half random) [5000] */
  uint64_t job_timeout_ms;     /* longest wait for a sent request's answer; past it the
                                  connection is broken and the request fails with BT_ECONNRESET
                                  (a COPY too: size it for the largest) [30000] */
  unsigned pipeline_depth;     /* requests in flight on one connection at once [1] */
  unsigned prepared_max;       /* statements bt_pg_pool_prepare may register [32] */
  size_t copy_max_bytes;       /* largest bt_pg_pool_copy buffer [64 MiB] */
  bt_pg_stats_t *stats;        /* borrowed; NULL keeps unregistered counters inside the pool */
  bt_pg_conn_cb on_conn;       /* optional, see bt_pg_conn_cb */
  bt_pg_notify_cb on_notify;   /* optional; without it notifications are dropped */
  void *hook_arg;              /* passed to on_conn and on_notify */
} bt_pg_pool_config_t;

/* Every connection gets TCP keepalives (idle 10 s, interval 5 s, 3 probes) and
 * tcp_user_timeout=20000, so a peer that vanished is noticed even by an idle connection; a
 * keyword in the DSN overrides each. Host names (in the DSN, a host list, or PGHOST) are
 * resolved off the loop before each attempt and handed to libpq as hostaddr. */

/* Creates a pool on `loop`. Connections start on the loop's next iteration. Returns 0 and
 * sets *out, BT_EINVAL for a bad config (missing dsn) or BT_ENOMEM. */
int bt_pg_pool_new(bt_pg_pool_t **out, uv_loop_t *loop, const bt_pg_pool_config_t *cfg)
    BT_MUSTCHECK;

/* Wires the pool into the app: a readiness dependency named `dep` (borrowed), a drain hook
 * that holds the app while requests are queued or in flight, and a close hook that closes
 * the pool. The pool must be on app->loop. */
void bt_pg_pool_attach(bt_pg_pool_t *p, bt_app_t *app, const char *dep);

/* Runs one statement in its own transaction. sql and values are copied; the callback runs
 * later on the loop, never from inside this call. Returns 0 when queued, BT_EAGAIN when the
 * wait queue is full (answer 429/503), BT_EINVAL for a bad argument, BT_ECANCELED once the
 * pool is closing, or BT_ENOMEM. On error the callback is not called. */
int bt_pg_pool_query(bt_pg_pool_t *p, const char *sql, int nparams, const char *const *values,
                     bt_pg_cb cb, void *arg) BT_MUSTCHECK;

/* Runs n statements in one pipeline as one transaction: BEGIN, the statements, COMMIT. The
 * callback runs once: with every statement's result if the COMMIT succeeded, else with the
 * failure for the batch as a whole. Statements must not control the transaction themselves.
 * stmts are copied. Returns as bt_pg_pool_query, and BT_EINVAL when n is 0 or above
 * batch_max. */
int bt_pg_pool_batch(bt_pg_pool_t *p, const bt_pg_stmt_t *stmts, size_t n, bt_pg_cb cb,
                     void *arg) BT_MUSTCHECK;

/* The general form. Runs n queries (1..batch_max) as one transaction (BEGIN, queries, COMMIT)
 * or, with BT_PG_AUTOCOMMIT, one query (n == 1) on its own without BEGIN/COMMIT (SELECT,
 * LISTEN, statements that must not run in a transaction block). Returns as bt_pg_pool_query.
 * Everything is copied. */
#define BT_PG_AUTOCOMMIT 1u
int bt_pg_pool_submit(bt_pg_pool_t *p, const bt_pg_query_t *qs, size_t n, unsigned flags,
                      bt_pg_cb cb, void *arg) BT_MUSTCHECK;
/* One query in autocommit: bt_pg_pool_submit(p, q, 1, BT_PG_AUTOCOMMIT, cb, arg). */
int bt_pg_pool_exec(bt_pg_pool_t *p, const bt_pg_query_t *q, bt_pg_cb cb, void *arg)
    BT_MUSTCHECK;

/* Registers sql (copied) as a prepared statement of nparams parameters (types: NULL, or
 * nparams OIDs, 0 letting the server infer one). Each connection prepares it on first use, in
 * the same pipeline as that use, and again after every reconnect. Registering the same text
 * again returns the same handle, so a caller may call this where it sends. Returns 0 and *out
 * (valid until the pool is freed), BT_EINVAL, BT_ERANGE past prepared_max, or BT_ENOMEM. */
int bt_pg_pool_prepare(bt_pg_pool_t *p, const char *sql, int nparams, const Oid *types,
                       bt_pg_prepared_t **out) BT_MUSTCHECK;

/* COPY ... FROM STDIN with `len` bytes of data (copied; in the COPY's format, e.g. text rows
 * ending in newlines). It runs alone on a connection, outside pipeline mode, in autocommit:
 * the rows are all stored or none. res[0] is the COPY's result (PQcmdTuples: rows). Data is
 * written without blocking, in chunks, as the socket accepts it. Returns as bt_pg_pool_query,
 * and BT_EINVAL when len is above copy_max_bytes. */
int bt_pg_pool_copy(bt_pg_pool_t *p, const char *sql, const void *data, size_t len,
                    bt_pg_cb cb, void *arg) BT_MUSTCHECK;

/* Readiness (a bt_app_ready_cb): true while at least one connection is up. */
bool bt_pg_pool_ready(void *pool);

/* Closes the pool. Queued requests fail with BT_ECANCELED before this returns; requests in
 * flight fail with BT_ECONNRESET once their connection is closed. The memory is freed from
 * the loop after the last handle closes, so `p` must not be used after this call. */
void bt_pg_pool_close(bt_pg_pool_t *p);

#endif
