/* bt_pg_conn_t: one non-blocking libpq connection of a bt_pg_pool_t, internal to libbaton.
 * It resolves its hosts off the loop, connects, reconnects with jittered backoff, runs up to
 * pipeline_depth jobs at a time in pipeline mode (or one COPY outside it), breaks itself when
 * the oldest job's answer is overdue, and reports each state change and finished job to its
 * pool (pgbouncer's sbuf -> proto_cb split). */
#ifndef BT_PG_CONN_H
#define BT_PG_CONN_H

#include <libpq-fe.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "backoff.h"
#include "fsm.h"
#include "pg_hosts.h"
#include "pg_pool.h"
#include "resolver.h"

/* A statement registered on the pool; connections prepare it under `name`. */
struct bt_pg_prepared {
  unsigned idx; /* in the pool's registry and in each connection's `prepared` flags */
  int nparams;
  Oid *types;   /* nparams entries, or NULL */
  char name[16];
  char sql[];
};

typedef enum {
  BT_PG_JOB_TX,   /* BEGIN, the caller's statements, COMMIT, Sync */
  BT_PG_JOB_EXEC, /* one statement, Sync: autocommit */
  BT_PG_JOB_COPY, /* COPY ... FROM STDIN and its data, outside pipeline mode */
} bt_pg_job_kind_t;

/* A request. One allocation holds the job, its commands, its result slots and copies of every
 * string and value (and a COPY's data). */
typedef struct bt_pg_job {
  struct bt_pg_job *next; /* the pool's wait queue, then its connection's in-flight FIFO */
  bt_pg_cb cb;
  void *arg;
  bt_pg_job_kind_t kind;
  uint64_t start_ns;    /* uv_hrtime() at submission, for the latency histogram */
  uint64_t deadline_ms; /* uv_now() by which a connection must take it */
  uint64_t due_ms;      /* once sent: uv_now() by which its answer must be complete */
  size_t ncmd;          /* commands, BEGIN and COMMIT included */
  size_t nres;          /* results received so far */
  size_t failed;        /* first command whose result was not OK; ncmd if none */
  bt_pg_query_t *cmds;
  PGresult **res;
  /* Results that arrive ahead of the job's own and are not the caller's: a ROLLBACK (and its
   * Sync) that ends an aborted block left by the job before, then one PREPARE per statement this
   * connection had not prepared yet (their registry indices in prep). */
  bool rollback_ahead;
  bool rollback_synced; /* the ROLLBACK's own Sync came back */
  bool prep_synced;     /* the PREPAREs' own Sync came back */
  unsigned nprep, nahead_seen;
  unsigned *prep;
  PGresult *error;      /* a failure outside res: a PREPARE ahead, or an autocommit's COMMIT */
  bool error_is_commit;
  const PGresult *err_res; /* set by the connection for BT_EIO: the result at fault ... */
  size_t err_at;           /* ... and the command it belongs to */
  const char *copy_data;
  size_t copy_len, copy_sent;
} bt_pg_job_t;

typedef enum {
  BT_PG_CONN_BACKOFF,    /* no socket; the timer starts the next attempt */
  BT_PG_CONN_RESOLVING,  /* host names are being resolved off the loop; the timer bounds it */
  BT_PG_CONN_CONNECTING, /* PQconnectPoll in progress; the timer is the connect timeout */
  BT_PG_CONN_IDLE,       /* connected, in pipeline mode, no job */
  BT_PG_CONN_BUSY,       /* jobs are in flight; the timer is the oldest one's deadline */
  BT_PG_CONN_BROKEN,     /* the poll handle is closing; then PQfinish and BACKOFF */
  BT_PG_CONN_CLOSING,    /* the pool is closing: handles are closing */
  BT_PG_CONN_CLOSED,     /* every handle is closed */
  BT_PG_CONN_NSTATES
} bt_pg_conn_state_t;

/* The table of legal moves, and the gauge per state (baton_pg_conn_state). */
extern bt_fsm_def_t bt__pg_conn_fsm;

typedef struct bt_pg_lookup {
  struct bt_pg_conn *c;
  size_t i;              /* the host entry */
  bt_resolve_req_t *req; /* NULL once answered */
} bt_pg_lookup_t;

typedef struct bt_pg_conn {
  bt_pg_pool_t *pool;
  const bt_pg_pool_config_t *cfg; /* the pool's copy */
  const bt_pg_hosts_t *hosts;     /* the pool's */
  uv_loop_t *loop;
  unsigned id;
  bt_pg_conn_state_t state;
  PGconn *pg;
  uv_poll_t poll;
  enum { POLL_NONE, POLL_OPEN, POLL_CLOSING } poll_state;
  int events;           /* what the poll handle waits for */
  bool flush_pending;   /* libpq holds output the socket did not take yet */
  uv_timer_t timer;
  bool timer_open;
  bt_pg_job_t *head, *tail; /* in flight, oldest first */
  unsigned ninflight;
  enum { COPY_NONE, COPY_ROLLBACK, COPY_START, COPY_DATA, COPY_END } copy;
  bt_pg_lookup_t *lookups; /* RESOLVING: one per host entry (hosts->n), then the answers */
  bt_addr_list_t *addrs;
  size_t npending;
  unsigned char *prepared; /* per registered statement: prepared on this session */
  bt_backoff_t backoff;
  char errstr[256];        /* the last failure, one line */
} bt_pg_conn_t;

const char *bt__pg_conn_state_name(bt_pg_conn_state_t s);

/* Initialises c in BACKOFF with a zero delay, so it connects on the loop's next iteration.
 * prepared (borrowed) has room for cfg->prepared_max flags. */
void bt__pg_conn_init(bt_pg_conn_t *c, bt_pg_pool_t *p, const bt_pg_pool_config_t *cfg,
                      const bt_pg_hosts_t *hosts, unsigned char *prepared, uv_loop_t *loop,
                      unsigned id);
/* Whether c can take j now: up, and below pipeline_depth; a COPY needs the connection alone. */
bool bt__pg_conn_has_room(const bt_pg_conn_t *c, const bt_pg_job_t *j);
/* Sends j on a connection with room, which takes ownership of it until it is handed back
 * through bt__pg_pool_job_done. A send failure breaks the connection; the job then fails from
 * a later callback, never from inside this call. */
void bt__pg_conn_send(bt_pg_conn_t *c, bt_pg_job_t *j);
/* Starts closing c from any state; bt__pg_pool_conn_closed reports the end. */
void bt__pg_conn_close(bt_pg_conn_t *c);

/* Events a connection reports to its pool (implemented in pg_pool.c). */
void bt__pg_pool_conn_state(bt_pg_pool_t *p, bt_pg_conn_t *c, bt_pg_conn_state_t from);
/* Takes back ownership of j and calls its callback with err and errmsg (borrowed). */
void bt__pg_pool_job_done(bt_pg_pool_t *p, bt_pg_job_t *j, int err, const char *errmsg);
/* A BUSY connection finished a job and has room for another. */
void bt__pg_pool_dispatch(bt_pg_pool_t *p);
/* A notification arrived (borrowed). */
void bt__pg_pool_notify(bt_pg_pool_t *p, const PGnotify *n);
/* Counts one host name resolved for a connection attempt. */
void bt__pg_pool_lookup(bt_pg_pool_t *p);
/* Counts one job failed for want of an answer within job_timeout_ms. */
void bt__pg_pool_deadline(bt_pg_pool_t *p);
/* A connection reached CLOSED; it must not be touched afterwards: the pool may free it. */
void bt__pg_pool_conn_closed(bt_pg_pool_t *p);

#endif
