/* One libpq connection driven by a uv_poll handle, in the manner of pgbouncer's pgsocket.c.
 * Each job is sent as one pipeline segment ending in its own Sync, and its outcome is decided
 * only when that Sync's result arrives; a connection that breaks before that (lost, or its
 * oldest job overdue) fails every job in flight with BT_ECONNRESET, because their COMMITs may
 * or may not have run. */
#include "pg_conn.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

/* Keepalives make a silent peer (a host gone, a cut link) visible on an idle connection, and
 * tcp_user_timeout bounds how long sent data may stay unacknowledged. They come before the
 * DSN in the keyword list, so the DSN's own values override them. */
static const char *const keepalive_keys[] = {"keepalives", "keepalives_idle",
                                             "keepalives_interval", "keepalives_count",
                                             "tcp_user_timeout"};
static const char *const keepalive_vals[] = {"1", "10", "5", "3", "20000"};

#define COPY_CHUNK (64 * 1024) /* PQputCopyData's unit: libpq buffers at most this per call */

static const char *const state_names[] = {"backoff", "resolving", "connecting", "idle",
                                          "busy",    "broken",    "closing",    "closed"};
#define S(x) BT_FSM_BIT(BT_PG_CONN_##x)
static const uint32_t legal_next[] = {
    [BT_PG_CONN_BACKOFF] = S(RESOLVING) | S(CONNECTING) | S(CLOSING),
    [BT_PG_CONN_RESOLVING] = S(CONNECTING) | S(BROKEN) | S(CLOSING),
    [BT_PG_CONN_CONNECTING] = S(IDLE) | S(BROKEN) | S(CLOSING),
    [BT_PG_CONN_IDLE] = S(BUSY) | S(BROKEN) | S(CLOSING),
    [BT_PG_CONN_BUSY] = S(IDLE) | S(BROKEN) | S(CLOSING),
    [BT_PG_CONN_BROKEN] = S(BACKOFF) | S(CLOSING),
    [BT_PG_CONN_CLOSING] = S(CLOSED),
    [BT_PG_CONN_CLOSED] = 0,
};
#undef S
_Static_assert(BT_ARRAY_LEN(state_names) == BT_PG_CONN_NSTATES, "a name per state");

bt_fsm_def_t bt__pg_conn_fsm = {.kind = "pg conn",
                                .nstates = BT_PG_CONN_NSTATES,
                                .names = state_names,
                                .legal = legal_next};

const char *bt__pg_conn_state_name(bt_pg_conn_state_t s) { return bt_fsm_name(&bt__pg_conn_fsm, s); }

static void set_state(bt_pg_conn_t *c, bt_pg_conn_state_t next) {
  bt_pg_conn_state_t from = c->state;
  char who[48];
  snprintf(who, sizeof who, "%s/%u", c->cfg->name, c->id);
  bt_fsm_move(&bt__pg_conn_fsm, from, next, who);
  c->state = next;
  bt__pg_pool_conn_state(c->pool, c, from);
}

static void bug_state(bt_pg_conn_t *c, const char *event) {
  bt_fatal("pg conn %u: %s in state %s", c->id, event, bt__pg_conn_state_name(c->state));
}

static bool up(const bt_pg_conn_t *c) {
  return c->state == BT_PG_CONN_IDLE || c->state == BT_PG_CONN_BUSY;
}

/* Keeps the first line of libpq's message: its later lines are hints for humans at a psql
 * prompt, and a log field should stay on one line. */
static void set_err(bt_pg_conn_t *c, const char *what, const char *why) {
  char tmp[sizeof c->errstr];
  snprintf(tmp, sizeof tmp, "%s: %.*s", what, (int)strcspn(why, "\n"), why);
  memcpy(c->errstr, tmp, sizeof tmp); /* why may point into errstr */
}

static void on_poll(uv_poll_t *h, int status, int events);
static void on_poll_closed(uv_handle_t *h);
static void on_timer(uv_timer_t *t);

static int poll_open(bt_pg_conn_t *c) {
  int fd = PQsocket(c->pg);
  int rc = fd < 0 ? UV_EBADF : uv_poll_init(c->loop, &c->poll, fd);
  if (rc == 0) {
    c->poll.data = c;
    c->poll_state = POLL_OPEN;
    rc = uv_poll_start(&c->poll, c->events, on_poll);
  }
  return rc;
}

static void poll_close(bt_pg_conn_t *c) {
  if (c->poll_state == POLL_OPEN) {
    uv_close((uv_handle_t *)&c->poll, on_poll_closed);
    c->poll_state = POLL_CLOSING;
  }
}

static void arm(bt_pg_conn_t *c, int events) {
  c->events = events;
  int rc = uv_poll_start(&c->poll, events, on_poll);
  BT_ASSERT(rc == 0); /* only fails for a closing handle or bad flags: a bug */
}

/* Reading always; writing while libpq holds output. */
static void arm_io(bt_pg_conn_t *c) { arm(c, UV_READABLE | (c->flush_pending ? UV_WRITABLE : 0)); }

/* In BUSY the timer is the oldest job's deadline: the jobs behind it were sent later, so
 * theirs are later too. */
static void arm_deadline(bt_pg_conn_t *c) {
  if (!c->head) {
    uv_timer_stop(&c->timer);
    return;
  }
  uint64_t now = uv_now(c->loop);
  uv_timer_start(&c->timer, on_timer, c->head->due_ms > now ? c->head->due_ms - now : 0, 0);
}

static void lookups_cancel(bt_pg_conn_t *c) {
  for (size_t i = 0; c->lookups && i < c->hosts->n; i++)
    if (c->lookups[i].req)
      bt_resolve_cancel(c->lookups[i].req); /* its callback will not run */
  free(c->lookups); /* the runtime owns the lookups' own memory */
  c->lookups = NULL;
  c->addrs = NULL;
  c->npending = 0;
}

/* Runs once the socket is no longer watched: the PGconn may go, and the jobs in flight come
 * back to the caller, to be failed once the connection's own state is settled. A new session
 * has no prepared statement. */
static bt_pg_job_t *drop(bt_pg_conn_t *c) {
  bt_pg_job_t *j = c->head;
  c->head = c->tail = NULL;
  c->ninflight = 0;
  c->copy = COPY_NONE;
  c->flush_pending = false;
  memset(c->prepared, 0, c->cfg->prepared_max);
  PQfinish(c->pg);
  c->pg = NULL;
  return j;
}

static void fail_jobs(bt_pg_conn_t *c, bt_pg_job_t *j) {
  char msg[sizeof c->errstr + 64];
  snprintf(msg, sizeof msg, "outcome unknown, connection lost in flight: %s", c->errstr);
  while (j) {
    bt_pg_job_t *next = j->next;
    j->next = NULL;
    bt__pg_pool_job_done(c->pool, j, BT_ECONNRESET, msg);
    j = next;
  }
}

static void backoff(bt_pg_conn_t *c) {
  uint64_t delay = bt_backoff_next(&c->backoff);
  set_state(c, BT_PG_CONN_BACKOFF);
  uv_timer_start(&c->timer, on_timer, delay, 0);
}

/* The one exit from RESOLVING, CONNECTING, IDLE and BUSY on failure. The socket is released
 * only after the poll handle has closed (libuv must stop watching a descriptor before it is
 * closed). */
static void conn_break(bt_pg_conn_t *c, const char *what, const char *why) {
  set_err(c, what, why);
  unsigned attempt = c->backoff.fails + 1;
  if (!up(c))
    /* A database that stays down would log once per attempt; the first failure is enough. */
    bt_log(attempt == 1 ? BT_LOG_WARN : BT_LOG_DEBUG, "pg connect failed",
           "{s:s, s:i, s:s, s:i}", "pool", c->cfg->name, "conn", (int)c->id, "reason", c->errstr,
           "attempt", (int)attempt);
  else
    bt_log_warn("pg connection lost", "{s:s, s:i, s:s, s:i}", "pool", c->cfg->name, "conn",
                (int)c->id, "reason", c->errstr, "in_flight", (int)c->ninflight);
  uv_timer_stop(&c->timer);
  lookups_cancel(c);
  set_state(c, BT_PG_CONN_BROKEN);
  if (c->poll_state == POLL_NONE) {
    /* Only a lookup or a connection attempt can lack a handle, and neither carries a job. */
    BT_ASSERT(!c->head);
    drop(c);
    backoff(c);
  } else {
    poll_close(c); /* if already closing, on_poll_closed sees BROKEN */
  }
}

/* Notices, and errors that arrive outside any command (why a server is about to close). */
static void on_notice(void *arg, const PGresult *res) {
  bt_pg_conn_t *c = arg;
  const char *sev = PQresultErrorField(res, PG_DIAG_SEVERITY_NONLOCALIZED);
  const char *msg = PQresultErrorField(res, PG_DIAG_MESSAGE_PRIMARY);
  const char *code = PQresultErrorField(res, PG_DIAG_SQLSTATE);
  bool severe = sev && (strcmp(sev, "WARNING") == 0 || strcmp(sev, "ERROR") == 0 ||
                        strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
  /* 25P01 "there is no transaction in progress" answers the ROLLBACK sent ahead of a job
   * behind a pipelined transaction (see bt__pg_conn_send): expected, not worth a warning. */
  if (code && strcmp(code, "25P01") == 0)
    severe = false;
  bt_log(severe ? BT_LOG_WARN : BT_LOG_DEBUG, "pg notice", "{s:s, s:i, s:s, s:s}", "pool",
         c->cfg->name, "conn", (int)c->id, "severity", sev ? sev : "", "detail", msg ? msg : "");
}

/* Starts libpq's connection. With lists (the resolved addresses as hostaddr, each with its
 * host name for TLS verification and .pgpass), libpq connects without resolving anything. */
static void connect_start(bt_pg_conn_t *c, const char *host, const char *hostaddr,
                          const char *port) {
  enum { NKA = BT_ARRAY_LEN(keepalive_keys) };
  const char *keys[NKA + 5], *vals[NKA + 5];
  size_t n = 0;
  for (; n < NKA; n++) {
    keys[n] = keepalive_keys[n];
    vals[n] = keepalive_vals[n];
  }
  /* expand_dbname: the DSN given as dbname expands in place; later keywords override it. */
  keys[n] = "dbname", vals[n++] = c->cfg->dsn;
  if (host) {
    keys[n] = "host", vals[n++] = host;
    keys[n] = "hostaddr", vals[n++] = hostaddr;
    keys[n] = "port", vals[n++] = port;
  }
  keys[n] = vals[n] = NULL;
  c->pg = PQconnectStartParams(keys, vals, 1);
  set_state(c, BT_PG_CONN_CONNECTING);
  if (!c->pg)
    return conn_break(c, "connect", "out of memory");
  if (PQstatus(c->pg) == CONNECTION_BAD)
    return conn_break(c, "connect", PQerrorMessage(c->pg));
  /* libpq's default receiver writes to stderr; our logs are JSON lines on stdout. */
  PQsetNoticeReceiver(c->pg, on_notice, c);
  uv_timer_start(&c->timer, on_timer, c->cfg->connect_timeout_ms, 0);
  c->events = UV_WRITABLE; /* libpq's documented first step after PQconnectStart */
  int rc = poll_open(c);
  if (rc)
    conn_break(c, "watch socket", uv_strerror(rc));
}

static void connected(bt_pg_conn_t *c) {
  if (PQsetnonblocking(c->pg, 1) != 0 || PQenterPipelineMode(c->pg) != 1)
    return conn_break(c, "connect", PQerrorMessage(c->pg));
  uv_timer_stop(&c->timer);
  bt_backoff_reset(&c->backoff);
  bt_log_info("pg connected", "{s:s, s:i, s:i}", "pool", c->cfg->name, "conn", (int)c->id,
              "backend_pid", PQbackendPID(c->pg));
  arm(c, UV_READABLE);
  set_state(c, BT_PG_CONN_IDLE);
}

static void connect_step(bt_pg_conn_t *c) {
  switch (PQconnectPoll(c->pg)) {
  case PGRES_POLLING_OK: connected(c); return;
  case PGRES_POLLING_READING: c->events = UV_READABLE; break;
  case PGRES_POLLING_WRITING: c->events = UV_WRITABLE; break;
  default: return conn_break(c, "connect", PQerrorMessage(c->pg));
  }
  /* PQconnectPoll may close the socket and open another (next address, SSL or GSS fallback),
   * often under the same descriptor number, and epoll silently forgets a closed socket. So
   * each step watches PQsocket() with a fresh handle, opened in on_poll_closed. */
  poll_close(c);
}

/* ---- finishing a job ---------------------------------------------------------------------- */

static const char *cmd_sql(const bt_pg_query_t *q) { return q->prepared ? q->prepared->sql : q->sql; }

/* Decides the head job's outcome, hands it back to the pool and moves on to the next. */
static void finish(bt_pg_conn_t *c) {
  bt_pg_job_t *j = c->head;
  char msg[320] = "";
  int err = 0;
  /* A failure outside the job's own results explains the job's aborted commands: a PREPARE
   * ahead of them, or (after them) the implicit COMMIT of an autocommit statement. */
  /* A failed PREPARE (in its own segment) is the cause whatever the job's statements then
   * answered ("prepared statement does not exist"). */
  bool outside = j->error && (!j->error_is_commit || j->failed == j->ncmd ||
                              PQresultStatus(j->res[j->failed]) == PGRES_PIPELINE_ABORTED);
  if (outside) {
    const char *why = PQresultErrorField(j->error, PG_DIAG_MESSAGE_PRIMARY);
    why = why ? why : PQresStatus(PQresultStatus(j->error));
    j->err_res = j->error;
    if (j->error_is_commit) {
      j->err_at = j->ncmd - 1;
      snprintf(msg, sizeof msg, "COMMIT: %s", why);
    } else {
      j->err_at = 0; /* the first statement whose PREPARE did not succeed */
      while (j->err_at < j->ncmd - 1 && !(j->cmds[j->err_at].prepared &&
                                          !c->prepared[j->cmds[j->err_at].prepared->idx]))
        j->err_at++;
      snprintf(msg, sizeof msg, "PREPARE %.80s: %s", cmd_sql(&j->cmds[j->err_at]), why);
    }
    err = BT_EIO;
  } else if (j->failed < j->ncmd) {
    const PGresult *r = j->res[j->failed];
    const char *why = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    why = why ? why : PQresStatus(PQresultStatus(r));
    bool ours = j->kind == BT_PG_JOB_TX && (j->failed == 0 || j->failed == j->ncmd - 1);
    if (j->kind == BT_PG_JOB_TX && !ours)
      snprintf(msg, sizeof msg, "statement %zu: %s", j->failed - 1, why);
    else
      snprintf(msg, sizeof msg, "%.80s: %s", cmd_sql(&j->cmds[j->failed]), why);
    j->err_res = r;
    j->err_at = j->failed;
    err = BT_EIO;
  } else if (j->nres != j->ncmd) {
    /* Postgres answers every command it skipped too, so fewer results mean libpq and the job
     * are out of step: nothing is known about the job. */
    return conn_break(c, "pipeline", "Sync arrived before every command's result");
  } else if (j->kind == BT_PG_JOB_TX && strcmp(PQcmdStatus(j->res[j->ncmd - 1]), "COMMIT") != 0) {
    /* COMMIT of an aborted transaction succeeds with the status ROLLBACK. */
    snprintf(msg, sizeof msg, "COMMIT: the transaction was rolled back");
    err = BT_EIO;
  }
  c->head = j->next;
  if (!c->head)
    c->tail = NULL;
  c->ninflight--;
  j->next = NULL;
  arm_deadline(c);
  bt__pg_pool_job_done(c->pool, j, err, msg);
  if (c->state != BT_PG_CONN_BUSY) /* the callback closed the pool */
    return;
  if (c->ninflight == 0)
    set_state(c, BT_PG_CONN_IDLE);
  else
    bt__pg_pool_dispatch(c->pool);
}

/* A result that precedes the head job's own: the ROLLBACK (in a segment of its own), then its
 * PREPAREs. A PREPARE that
 * did not succeed (failed, or skipped after one that failed) is not prepared on this session,
 * so the next use prepares it again; the first failure is kept to be reported. */
static void take_ahead(bt_pg_conn_t *c, bt_pg_job_t *j, PGresult *r) {
  unsigned k = j->nahead_seen++;
  if (j->rollback_ahead && k == 0) {
    PQclear(r);
    return;
  }
  unsigned idx = j->prep[k - (j->rollback_ahead ? 1u : 0u)];
  if (PQresultStatus(r) != PGRES_COMMAND_OK) {
    c->prepared[idx] = 0;
    if (!j->error && PQresultStatus(r) == PGRES_FATAL_ERROR) {
      j->error = r;
      return;
    }
  }
  PQclear(r);
}

/* Takes every result libpq has parsed, without ever calling PQgetResult while PQisBusy (it
 * would block), for as many jobs as have answered. Returns false once the connection broke or
 * was closed meanwhile. */
static bool collect(bt_pg_conn_t *c) {
  bool after_null = false;
  while (c->head && c->head->kind != BT_PG_JOB_COPY && PQstatus(c->pg) == CONNECTION_OK &&
         !PQisBusy(c->pg)) {
    bt_pg_job_t *j = c->head;
    PGresult *r = PQgetResult(c->pg);
    if (!r) {
      /* libpq ends each command's results with one NULL. Two in a row mean it has no command
       * left although the job's Sync has not come back: the pipeline is out of step. */
      if (after_null) {
        conn_break(c, "pipeline", "libpq has no command pending for the job");
        return false;
      }
      after_null = true;
      continue;
    }
    after_null = false;
    ExecStatusType st = PQresultStatus(r);
    if (st == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      if (j->rollback_ahead && !j->rollback_synced) { /* the end of the ROLLBACK's segment */
        j->rollback_synced = true;
        continue;
      }
      if (j->nprep && !j->prep_synced) { /* the end of the PREPAREs' segment */
        j->prep_synced = true;
        continue;
      }
      finish(c);
      if (!up(c))
        return false;
      continue;
    }
    if (j->nahead_seen < (j->rollback_ahead ? 1u : 0u) + j->nprep) {
      take_ahead(c, j, r);
      continue;
    }
    if (j->nres == j->ncmd) {
      /* An autocommit statement's transaction commits at the Sync; a failure there (a
       * deferred constraint, say) comes as one more error. */
      if (j->kind == BT_PG_JOB_EXEC && st == PGRES_FATAL_ERROR && !j->error) {
        j->error = r;
        j->error_is_commit = true;
        continue;
      }
      PQclear(r);
      conn_break(c, "pipeline", "more results than commands");
      return false;
    }
    switch (st) {
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_EMPTY_QUERY: break;
    case PGRES_FATAL_ERROR:      /* the server rejected the command ... */
    case PGRES_PIPELINE_ABORTED: /* ... so it skips the rest, COMMIT included, until Sync */
      if (j->failed == j->ncmd)
        j->failed = j->nres;
      break;
    default: /* a COPY started by a statement: it cannot be driven from here */
      PQclear(r);
      conn_break(c, "pipeline", PQresStatus(st));
      return false;
    }
    j->res[j->nres++] = r;
  }
  if (PQstatus(c->pg) != CONNECTION_OK) {
    conn_break(c, "read", PQerrorMessage(c->pg));
    return false;
  }
  return true;
}

/* ---- COPY FROM STDIN ---------------------------------------------------------------------- */

static bool send_copy_sql(bt_pg_conn_t *c) {
  c->copy = COPY_START;
  if (!PQsendQueryParams(c->pg, c->head->cmds[0].sql, 0, NULL, NULL, NULL, NULL, 0)) {
    conn_break(c, "send", PQerrorMessage(c->pg));
    return false;
  }
  return true;
}

/* Drives the COPY at the head: (ROLLBACK,) the statement, the data in chunks as the socket
 * takes them, the end, then the final result. libpq allows no COPY in pipeline mode, so the
 * connection left it in bt__pg_conn_send and enters it again here at the end. */
static void copy_io(bt_pg_conn_t *c) {
  bt_pg_job_t *j = c->head;
  for (;;) {
    if (c->copy == COPY_DATA) {
      while (j->copy_sent < j->copy_len) {
        size_t n = j->copy_len - j->copy_sent;
        n = n > COPY_CHUNK ? COPY_CHUNK : n;
        int rc = PQputCopyData(c->pg, j->copy_data + j->copy_sent, (int)n);
        if (rc < 0)
          return conn_break(c, "copy", PQerrorMessage(c->pg));
        if (rc == 0) /* libpq's buffer is full: wait for the socket */
          return arm(c, UV_READABLE | UV_WRITABLE);
        j->copy_sent += n;
      }
      int rc = PQputCopyEnd(c->pg, NULL);
      if (rc < 0)
        return conn_break(c, "copy", PQerrorMessage(c->pg));
      if (rc == 0)
        return arm(c, UV_READABLE | UV_WRITABLE);
      c->copy = COPY_END;
      int f = PQflush(c->pg);
      if (f < 0)
        return conn_break(c, "write", PQerrorMessage(c->pg));
      c->flush_pending = f > 0;
      continue;
    }
    if (PQstatus(c->pg) != CONNECTION_OK)
      return conn_break(c, "read", PQerrorMessage(c->pg));
    if (PQisBusy(c->pg))
      return arm_io(c);
    PGresult *r = PQgetResult(c->pg);
    if (c->copy == COPY_ROLLBACK) {
      if (r)
        PQclear(r);
      else if (!send_copy_sql(c))
        return;
      continue;
    }
    if (c->copy == COPY_START && r && PQresultStatus(r) == PGRES_COPY_IN) {
      PQclear(r);
      c->copy = COPY_DATA;
      continue;
    }
    if (r) {
      /* COPY_START: the statement failed (or was no COPY FROM STDIN); COPY_END: the outcome. */
      if (j->nres == 0) {
        j->res[j->nres++] = r;
        if (PQresultStatus(r) != PGRES_COMMAND_OK)
          j->failed = 0;
      } else {
        PQclear(r);
      }
      c->copy = COPY_END;
      continue;
    }
    if (c->copy != COPY_END || j->nres == 0)
      return conn_break(c, "copy", "no result for the COPY");
    c->copy = COPY_NONE;
    if (PQenterPipelineMode(c->pg) != 1)
      return conn_break(c, "copy", PQerrorMessage(c->pg));
    arm(c, UV_READABLE);
    return finish(c);
  }
}

static void copy_start(bt_pg_conn_t *c) {
  if (PQexitPipelineMode(c->pg) != 1)
    return conn_break(c, "copy", PQerrorMessage(c->pg));
  /* Nothing is in flight, so the status is exact: a block left aborted by a failed
   * transaction must be rolled back before the COPY can run. */
  PGTransactionStatusType ts = PQtransactionStatus(c->pg);
  if (ts == PQTRANS_INERROR || ts == PQTRANS_INTRANS) {
    c->copy = COPY_ROLLBACK;
    if (!PQsendQueryParams(c->pg, "ROLLBACK", 0, NULL, NULL, NULL, NULL, 0))
      return conn_break(c, "send", PQerrorMessage(c->pg));
  } else if (!send_copy_sql(c)) {
    return;
  }
  int f = PQflush(c->pg);
  if (f < 0)
    return conn_break(c, "write", PQerrorMessage(c->pg));
  c->flush_pending = f > 0;
  arm_io(c);
}

/* ---- socket events ------------------------------------------------------------------------ */

/* Hands every notification libpq has parsed to the pool. PQnotifies parses buffered input
 * itself, so this also keeps an idle connection's buffer from growing. */
static void drain_notifies(bt_pg_conn_t *c) {
  PGnotify *n;
  while (up(c) && (n = PQnotifies(c->pg))) {
    bt__pg_pool_notify(c->pool, n);
    PQfreemem(n);
  }
}

static void io(bt_pg_conn_t *c, int status, int events) {
  /* libuv reports POLLERR (a reset, say) as UV_EBADF and stops the handle; libpq's read says
   * what actually happened. */
  if (status < 0)
    return conn_break(c, "read",
                      PQconsumeInput(c->pg) ? uv_strerror(status) : PQerrorMessage(c->pg));
  if ((events & UV_READABLE) && !PQconsumeInput(c->pg))
    return conn_break(c, "read", PQerrorMessage(c->pg));
  if (c->copy == COPY_NONE) {
    drain_notifies(c);
    if (!up(c)) /* a notification's callback closed the pool */
      return;
  }
  /* Nothing sent to an idle connection needs an answer (a notice, or the error a server sends
   * before closing, which the next read reports as EOF). Parsing it hands it to on_notice. */
  if (c->state == BT_PG_CONN_IDLE) {
    PQisBusy(c->pg);
    return;
  }
  int rc = PQflush(c->pg);
  if (rc < 0)
    return conn_break(c, "write", PQerrorMessage(c->pg));
  c->flush_pending = rc > 0;
  if (c->copy != COPY_NONE)
    return copy_io(c);
  /* Collect even after a pure write event: libpq reads input while flushing a full socket
   * (to avoid deadlock), and epoll will not report data libpq has already read. */
  if (collect(c))
    arm_io(c);
}

static void on_poll(uv_poll_t *h, int status, int events) {
  bt_pg_conn_t *c = h->data;
  switch (c->state) {
  case BT_PG_CONN_CONNECTING:
    /* Even on a poll error (libuv's UV_EBADF for POLLERR, as when a connect is refused):
     * PQconnectPoll reads the socket's error itself and may move on to the next address. */
    return connect_step(c);
  case BT_PG_CONN_IDLE:
  case BT_PG_CONN_BUSY: return io(c, status, events);
  default: bug_state(c, "poll event");
  }
}

static void maybe_closed(bt_pg_conn_t *c) {
  if (!c->timer_open && c->poll_state == POLL_NONE) {
    set_state(c, BT_PG_CONN_CLOSED);
    bt_fsm_leave(&bt__pg_conn_fsm, BT_PG_CONN_CLOSED);
    bt__pg_pool_conn_closed(c->pool);
  }
}

static void on_poll_closed(uv_handle_t *h) {
  bt_pg_conn_t *c = h->data;
  c->poll_state = POLL_NONE;
  switch (c->state) {
  case BT_PG_CONN_CONNECTING: {
    int rc = poll_open(c);
    if (rc)
      conn_break(c, "watch socket", uv_strerror(rc));
    return;
  }
  case BT_PG_CONN_BROKEN: {
    bt_pg_job_t *j = drop(c);
    backoff(c);
    fail_jobs(c, j);
    return;
  }
  case BT_PG_CONN_CLOSING: {
    bt_pg_job_t *j = drop(c);
    fail_jobs(c, j);
    maybe_closed(c); /* last: the pool may free c */
    return;
  }
  default: bug_state(c, "poll handle closed");
  }
}

/* ---- resolving ---------------------------------------------------------------------------- */

static void resolved_all(bt_pg_conn_t *c) {
  char *host = NULL, *hostaddr = NULL, *port = NULL;
  int n = bt_pg_hosts_lists(c->hosts, c->addrs, &host, &hostaddr, &port);
  lookups_cancel(c); /* nothing pending: frees the answers */
  if (n <= 0) {
    char why[sizeof c->errstr];
    snprintf(why, sizeof why, "%s", n == 0 ? c->errstr : "out of memory");
    return conn_break(c, "no address", why);
  }
  connect_start(c, host, hostaddr, port);
  free(host);
  free(hostaddr);
  free(port);
}

static void on_resolved(int status, const char *errstr, const bt_addr_list_t *addrs, void *arg) {
  bt_pg_lookup_t *l = arg;
  bt_pg_conn_t *c = l->c;
  l->req = NULL;
  c->npending--;
  if (status == 0) {
    c->addrs[l->i] = *addrs;
  } else {
    char what[128];
    snprintf(what, sizeof what, "resolve %s", c->hosts->v[l->i].host);
    set_err(c, what, errstr);
  }
  if (c->npending == 0)
    resolved_all(c);
}

/* The next attempt: every host name libpq would look up itself (blocking the loop) is
 * resolved first, all at once; the connect timeout bounds the lookups too. */
static void attempt(bt_pg_conn_t *c) {
  const bt_pg_hosts_t *h = c->hosts;
  if (h->nlookup == 0)
    return connect_start(c, NULL, NULL, NULL);
  set_state(c, BT_PG_CONN_RESOLVING);
  c->lookups = calloc(h->n, sizeof *c->lookups + sizeof *c->addrs);
  if (!c->lookups)
    return conn_break(c, "resolve", "out of memory");
  c->addrs = (bt_addr_list_t *)(c->lookups + h->n);
  for (size_t i = 0; i < h->n; i++) {
    if (!h->v[i].lookup)
      continue;
    c->lookups[i] = (bt_pg_lookup_t){c, i, NULL};
    int rc = bt_resolve(c->loop, h->v[i].host, on_resolved, &c->lookups[i], &c->lookups[i].req);
    if (rc == 0) {
      c->npending++;
      bt__pg_pool_lookup(c->pool);
    } else {
      char what[128];
      snprintf(what, sizeof what, "resolve %s", h->v[i].host);
      set_err(c, what, bt_strerror(rc));
    }
  }
  if (c->npending == 0)
    return resolved_all(c);
  uv_timer_start(&c->timer, on_timer, c->cfg->connect_timeout_ms, 0);
}

static void on_timer(uv_timer_t *t) {
  bt_pg_conn_t *c = t->data;
  switch (c->state) {
  case BT_PG_CONN_BACKOFF: return attempt(c);
  case BT_PG_CONN_RESOLVING: return conn_break(c, "resolve", "timed out");
  case BT_PG_CONN_CONNECTING: return conn_break(c, "connect", "timed out");
  case BT_PG_CONN_BUSY: {
    /* The oldest job is overdue: a lock wait, a runaway query, or a peer that stopped
     * answering. Only breaking the connection frees it; whether the job committed is unknown. */
    char why[64];
    snprintf(why, sizeof why, "no answer within %" PRIu64 " ms", c->cfg->job_timeout_ms);
    bt__pg_pool_deadline(c->pool);
    return conn_break(c, "deadline", why);
  }
  default: bug_state(c, "timer");
  }
}

static void on_timer_closed(uv_handle_t *h) {
  bt_pg_conn_t *c = h->data;
  c->timer_open = false;
  maybe_closed(c);
}

/* ---- the pool's calls ---------------------------------------------------------------------- */

void bt__pg_conn_init(bt_pg_conn_t *c, bt_pg_pool_t *p, const bt_pg_pool_config_t *cfg,
                      const bt_pg_hosts_t *hosts, unsigned char *prepared, uv_loop_t *loop,
                      unsigned id) {
  memset(c, 0, sizeof *c);
  c->pool = p;
  c->cfg = cfg;
  c->hosts = hosts;
  c->prepared = prepared;
  c->loop = loop;
  c->id = id;
  c->state = BT_PG_CONN_BACKOFF;
  bt_fsm_enter(&bt__pg_conn_fsm, BT_PG_CONN_BACKOFF);
  bt_backoff_init(&c->backoff, cfg->reconnect_min_ms, cfg->reconnect_max_ms, true);
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  c->timer_open = true;
  uv_timer_start(&c->timer, on_timer, 0, 0);
}

bool bt__pg_conn_has_room(const bt_pg_conn_t *c, const bt_pg_job_t *j) {
  if (!up(c))
    return false;
  if (c->ninflight == 0)
    return true;
  if (j->kind == BT_PG_JOB_COPY || c->head->kind == BT_PG_JOB_COPY)
    return false;
  return c->ninflight < c->cfg->pipeline_depth;
}

void bt__pg_conn_send(bt_pg_conn_t *c, bt_pg_job_t *j) {
  BT_ASSERT(bt__pg_conn_has_room(c, j));
  /* A transaction that failed leaves the session in its aborted BEGIN block: in pipeline mode
   * the server skips the job's COMMIT, and Sync does not end an explicit block. So a job
   * sent right behind a transaction, whose outcome is not known yet, starts with a ROLLBACK
   * in its own segment (harmless when there is no block); with nothing in flight the
   * session's status says whether one is needed. */
  bool after_tx = c->tail && c->tail->kind == BT_PG_JOB_TX;
  PGTransactionStatusType ts = PQtransactionStatus(c->pg);
  j->rollback_ahead = c->tail ? after_tx : ts == PQTRANS_INERROR || ts == PQTRANS_INTRANS;
  j->due_ms = uv_now(c->loop) + c->cfg->job_timeout_ms;
  j->next = NULL;
  if (c->tail)
    c->tail->next = j;
  else
    c->head = j;
  c->tail = j;
  c->ninflight++;
  if (c->ninflight == 1)
    arm_deadline(c);
  if (c->state == BT_PG_CONN_IDLE)
    set_state(c, BT_PG_CONN_BUSY);
  if (j->kind == BT_PG_JOB_COPY)
    return copy_start(c);
  /* The ROLLBACK gets a segment of its own: in the job's, it would make the job's statement
   * part of a multi-statement implicit transaction, which VACUUM and the like refuse. */
  if (j->rollback_ahead && (!PQsendQueryParams(c->pg, "ROLLBACK", 0, NULL, NULL, NULL, NULL, 0) ||
                            !PQpipelineSync(c->pg)))
    return conn_break(c, "send", PQerrorMessage(c->pg));
  /* Statements this session has not prepared yet are prepared ahead of the job, in a segment
   * of their own: in the job's, the PREPARE would open the implicit transaction before the
   * job's BEGIN ISOLATION LEVEL, which then may no longer set the level (a SERIALIZABLE
   * database default would win). Still one round trip; a reconnect (a new session) prepares
   * them again. */
  j->nprep = 0;
  for (size_t i = 0; i < j->ncmd; i++) {
    const bt_pg_prepared_t *ps = j->cmds[i].prepared;
    if (!ps || c->prepared[ps->idx])
      continue;
    if (!PQsendPrepare(c->pg, ps->name, ps->sql, ps->nparams, ps->types))
      return conn_break(c, "send", PQerrorMessage(c->pg));
    c->prepared[ps->idx] = 1;
    j->prep[j->nprep++] = ps->idx;
  }
  j->prep_synced = false;
  if (j->nprep && !PQpipelineSync(c->pg))
    return conn_break(c, "send", PQerrorMessage(c->pg));
  for (size_t i = 0; i < j->ncmd; i++) {
    const bt_pg_query_t *q = &j->cmds[i];
    int ok = q->prepared ? PQsendQueryPrepared(c->pg, q->prepared->name, q->nparams, q->values,
                                               q->lengths, q->formats, 0)
                         : PQsendQueryParams(c->pg, q->sql, q->nparams, NULL, q->values,
                                             q->lengths, q->formats, 0);
    if (!ok)
      return conn_break(c, "send", PQerrorMessage(c->pg));
  }
  if (!PQpipelineSync(c->pg))
    return conn_break(c, "send", PQerrorMessage(c->pg));
  int rc = PQflush(c->pg);
  if (rc < 0)
    return conn_break(c, "write", PQerrorMessage(c->pg));
  /* Results are collected only from on_poll, so no callback runs inside this call. This
   * job's answer cannot have been read yet (its Sync went out last), but PQflush may have
   * read earlier jobs' answers into libpq's buffer, where epoll cannot see them: with jobs
   * ahead, waiting for writable too makes the next loop iteration collect them. */
  c->flush_pending = rc > 0;
  arm(c, UV_READABLE | (rc > 0 || c->ninflight > 1 ? UV_WRITABLE : 0));
}

void bt__pg_conn_close(bt_pg_conn_t *c) {
  snprintf(c->errstr, sizeof c->errstr, "the pool was closed");
  lookups_cancel(c);
  set_state(c, BT_PG_CONN_CLOSING);
  uv_close((uv_handle_t *)&c->timer, on_timer_closed);
  if (c->poll_state == POLL_NONE) {
    bt_pg_job_t *j = drop(c);
    BT_ASSERT(!j); /* no handle means no socket in use, so no job */
  } else {
    poll_close(c); /* its close callback finishes the PGconn and fails any job */
  }
}
