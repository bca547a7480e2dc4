/* bt_pg_conn_t: one non-blocking libpq connection of a bt_pg_pool_t, internal to libbaton.
 * It connects, reconnects with backoff, runs one job at a time in pipeline mode and reports
 * each state change and finished job to its pool (pgbouncer's sbuf -> proto_cb split). */
#ifndef BT_PG_CONN_H
#define BT_PG_CONN_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "pg_pool.h"

/* A request: BEGIN, the caller's statements, COMMIT, then one Sync. One allocation holds the
 * job, its command array, its result slots and copies of every string. */
typedef struct bt_pg_job {
  struct bt_pg_job *next; /* the pool's wait queue */
  bt_pg_cb cb;
  void *arg;
  uint64_t start_ns;      /* uv_hrtime() at submission, for the latency histogram */
  uint64_t deadline_ms;   /* uv_now() by which a connection must take it */
  size_t ncmd;            /* the caller's statements + 2 */
  size_t nres;            /* results received so far */
  size_t failed;          /* first command whose result was not OK; ncmd if none */
  bt_pg_stmt_t *cmds;
  PGresult **res;
} bt_pg_job_t;

typedef enum {
  BT_PG_CONN_BACKOFF,    /* no socket; the timer starts the next attempt */
  BT_PG_CONN_RESOLVING,  /* the DSN's host name is being resolved off the loop (uv_getaddrinfo) */
  BT_PG_CONN_CONNECTING, /* PQconnectPoll in progress; the timer is the connect timeout */
  BT_PG_CONN_IDLE,       /* connected, in pipeline mode, no job */
  BT_PG_CONN_BUSY,       /* a job is in flight (or its callback is running) */
  BT_PG_CONN_BROKEN,     /* the poll handle is closing; then PQfinish and BACKOFF */
  BT_PG_CONN_CLOSING,    /* the pool is closing: handles are closing */
  BT_PG_CONN_CLOSED,     /* every handle is closed */
} bt_pg_conn_state_t;

typedef struct bt_pg_conn {
  bt_pg_pool_t *pool;
  const bt_pg_pool_config_t *cfg; /* the pool's copy */
  uv_loop_t *loop;
  unsigned id;
  bt_pg_conn_state_t state;
  PGconn *pg;
  uv_poll_t poll;
  enum { POLL_NONE, POLL_OPEN, POLL_CLOSING } poll_state;
  int events;           /* what the poll handle waits for */
  uv_timer_t timer;
  bool timer_open;
  bt_pg_job_t *job;
  unsigned skip_results; /* results to discard before the job's own (a ROLLBACK sent ahead) */
  uv_getaddrinfo_t gai; /* the host lookup of a RESOLVING attempt */
  bool gai_pending;     /* gai's callback has not run yet: the memory must stay */
  unsigned fails;       /* consecutive failed attempts; drives the backoff */
  char errstr[256];     /* the last failure, one line */
} bt_pg_conn_t;

const char *bt__pg_conn_state_name(bt_pg_conn_state_t s);

/* Initialises c in BACKOFF with a zero delay, so it connects on the loop's next iteration. */
void bt__pg_conn_init(bt_pg_conn_t *c, bt_pg_pool_t *p, const bt_pg_pool_config_t *cfg,
                      uv_loop_t *loop, unsigned id);
/* Sends j on an IDLE connection, which takes ownership of it until it is handed back through
 * bt__pg_pool_job_done. A send failure breaks the connection; the job then fails from a later
 * callback, never from inside this call. */
void bt__pg_conn_send(bt_pg_conn_t *c, bt_pg_job_t *j);
/* Starts closing c from any state; bt__pg_pool_conn_closed reports the end. */
void bt__pg_conn_close(bt_pg_conn_t *c);

/* Events a connection reports to its pool (implemented in pg_pool.c). */
void bt__pg_pool_conn_state(bt_pg_pool_t *p, bt_pg_conn_t *c, bt_pg_conn_state_t from);
/* Takes back ownership of j and calls its callback with err and errmsg (borrowed). */
void bt__pg_pool_job_done(bt_pg_pool_t *p, bt_pg_job_t *j, int err, const char *errmsg);
/* A connection reached CLOSED; it must not be touched afterwards: the pool may free it. */
void bt__pg_pool_conn_closed(bt_pg_pool_t *p);
/* The DSN's host name when it must be resolved before connecting (one host name, no
 * hostaddr, not an IP literal or a socket directory), else NULL. libpq would resolve it with
 * a blocking getaddrinfo() inside PQconnectStart, on the loop, at every reconnect. */
const char *bt__pg_pool_host_to_resolve(bt_pg_pool_t *p);

#endif
