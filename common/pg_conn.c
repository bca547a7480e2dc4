/* One libpq connection driven by a uv_poll handle, in the manner of pgbouncer's pgsocket.c.
 * A job is sent as one pipeline (BEGIN, statements, COMMIT, Sync) and its outcome is decided
 * only when the Sync's result arrives; a connection that breaks before that fails the job with
 * BT_ECONNRESET, because the COMMIT may or may not have run. */
#include "pg_conn.h"

#include <arpa/inet.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define BIT(s) (1u << (s))

static const unsigned legal_next[] = {
    [BT_PG_CONN_BACKOFF] =
        BIT(BT_PG_CONN_RESOLVING) | BIT(BT_PG_CONN_CONNECTING) | BIT(BT_PG_CONN_CLOSING),
    [BT_PG_CONN_RESOLVING] =
        BIT(BT_PG_CONN_CONNECTING) | BIT(BT_PG_CONN_BROKEN) | BIT(BT_PG_CONN_CLOSING),
    [BT_PG_CONN_CONNECTING] =
        BIT(BT_PG_CONN_IDLE) | BIT(BT_PG_CONN_BROKEN) | BIT(BT_PG_CONN_CLOSING),
    [BT_PG_CONN_IDLE] = BIT(BT_PG_CONN_BUSY) | BIT(BT_PG_CONN_BROKEN) | BIT(BT_PG_CONN_CLOSING),
    [BT_PG_CONN_BUSY] = BIT(BT_PG_CONN_IDLE) | BIT(BT_PG_CONN_BROKEN) | BIT(BT_PG_CONN_CLOSING),
    [BT_PG_CONN_BROKEN] = BIT(BT_PG_CONN_BACKOFF) | BIT(BT_PG_CONN_CLOSING),
    [BT_PG_CONN_CLOSING] = BIT(BT_PG_CONN_CLOSED),
    [BT_PG_CONN_CLOSED] = 0,
};

const char *bt__pg_conn_state_name(bt_pg_conn_state_t s) {
  switch (s) {
  case BT_PG_CONN_BACKOFF: return "backoff";
  case BT_PG_CONN_RESOLVING: return "resolving";
  case BT_PG_CONN_CONNECTING: return "connecting";
  case BT_PG_CONN_IDLE: return "idle";
  case BT_PG_CONN_BUSY: return "busy";
  case BT_PG_CONN_BROKEN: return "broken";
  case BT_PG_CONN_CLOSING: return "closing";
  case BT_PG_CONN_CLOSED: return "closed";
  }
  return "?";
}

static void set_state(bt_pg_conn_t *c, bt_pg_conn_state_t next) {
  bt_pg_conn_state_t from = c->state;
  if (!(legal_next[from] & BIT(next)))
    bt_fatal("pg conn %u: illegal transition %s -> %s", c->id, bt__pg_conn_state_name(from),
             bt__pg_conn_state_name(next));
  c->state = next;
  bt__pg_pool_conn_state(c->pool, c, from);
}

static void bug_state(bt_pg_conn_t *c, const char *event) {
  bt_fatal("pg conn %u: %s in state %s", c->id, event, bt__pg_conn_state_name(c->state));
}

/* Keeps the first line of libpq's message: its later lines are hints for humans at a psql
 * prompt, and a log field should stay on one line. */
static void set_err(bt_pg_conn_t *c, const char *what, const char *why) {
  snprintf(c->errstr, sizeof c->errstr, "%s: %.*s", what, (int)strcspn(why, "\n"), why);
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

/* Runs once the socket is no longer watched: the PGconn may go, and the job (if any) comes
 * back to the caller to be failed once the connection's own state is settled. */
static bt_pg_job_t *drop(bt_pg_conn_t *c) {
  bt_pg_job_t *j = c->job;
  c->job = NULL;
  PQfinish(c->pg);
  c->pg = NULL;
  return j;
}

static void fail_job(bt_pg_conn_t *c, bt_pg_job_t *j) {
  if (!j)
    return;
  char msg[sizeof c->errstr + 64];
  snprintf(msg, sizeof msg, "outcome unknown, connection lost in flight: %s", c->errstr);
  bt__pg_pool_job_done(c->pool, j, BT_ECONNRESET, msg);
}

static void backoff(bt_pg_conn_t *c) {
  uint64_t delay = c->cfg->reconnect_min_ms;
  for (unsigned i = 0; i < c->fails && delay < c->cfg->reconnect_max_ms; i++)
    delay *= 2;
  if (delay > c->cfg->reconnect_max_ms)
    delay = c->cfg->reconnect_max_ms;
  c->fails++;
  set_state(c, BT_PG_CONN_BACKOFF);
  uv_timer_start(&c->timer, on_timer, delay, 0);
}

/* The one exit from CONNECTING, IDLE and BUSY on failure. The socket is released only after
 * the poll handle has closed (libuv must stop watching a descriptor before it is closed). */
static void conn_break(bt_pg_conn_t *c, const char *what, const char *why) {
  set_err(c, what, why);
  if (c->state == BT_PG_CONN_CONNECTING)
    /* A database that stays down would log once per attempt; the first failure is enough. */
    bt_log(c->fails == 0 ? BT_LOG_WARN : BT_LOG_DEBUG, "pg connect failed",
           "{s:s, s:i, s:s, s:i}", "pool", c->cfg->name, "conn", (int)c->id, "reason", c->errstr,
           "attempt", (int)c->fails + 1);
  else
    bt_log_warn("pg connection lost", "{s:s, s:i, s:s, s:b}", "pool", c->cfg->name, "conn",
                (int)c->id, "reason", c->errstr, "in_flight", c->job != NULL);
  uv_timer_stop(&c->timer);
  set_state(c, BT_PG_CONN_BROKEN);
  if (c->poll_state == POLL_NONE) {
    /* Only a connection attempt can lack a handle, and it carries no job. */
    BT_ASSERT(!c->job);
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
  bool severe = sev && (strcmp(sev, "WARNING") == 0 || strcmp(sev, "ERROR") == 0 ||
                        strcmp(sev, "FATAL") == 0 || strcmp(sev, "PANIC") == 0);
  bt_log(severe ? BT_LOG_WARN : BT_LOG_DEBUG, "pg notice",
         "{s:s, s:i, s:s, s:s}", "pool", c->cfg->name, "conn", (int)c->id, "severity",
         sev ? sev : "", "detail", msg ? msg : "");
}

/* Starts libpq's connection. With hostaddr (the resolved addresses, comma-separated, and the
 * host name repeated once per address as libpq requires), libpq connects without resolving;
 * the host name still serves TLS verification and .pgpass. */
static void connect_start(bt_pg_conn_t *c, const char *host, const char *hostaddr) {
  if (hostaddr) {
    size_t naddr = 1;
    for (const char *p = hostaddr; *p; p++)
      naddr += *p == ',';
    size_t hlen = strlen(host);
    char *hosts = malloc(naddr * (hlen + 1));
    if (!hosts) {
      set_state(c, BT_PG_CONN_CONNECTING);
      return conn_break(c, "connect", "out of memory");
    }
    for (size_t i = 0; i < naddr; i++) {
      memcpy(hosts + i * (hlen + 1), host, hlen);
      hosts[i * (hlen + 1) + hlen] = i + 1 < naddr ? ',' : '\0';
    }
    /* expand_dbname: the DSN given as dbname expands first, the later keywords override it. */
    const char *const keys[] = {"dbname", "host", "hostaddr", NULL};
    const char *const vals[] = {c->cfg->dsn, hosts, hostaddr, NULL};
    c->pg = PQconnectStartParams(keys, vals, 1);
    free(hosts);
  } else {
    c->pg = PQconnectStart(c->cfg->dsn);
  }
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
  c->fails = 0;
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

static void finish(bt_pg_conn_t *c) {
  bt_pg_job_t *j = c->job;
  if (j->nres != j->ncmd && j->failed == j->ncmd)
    return conn_break(c, "pipeline", "Sync arrived before every command's result");
  char msg[320] = "";
  int err = 0;
  if (j->failed < j->ncmd) {
    const PGresult *r = j->res[j->failed];
    const char *why = PQresultErrorField(r, PG_DIAG_MESSAGE_PRIMARY);
    why = why ? why : PQresStatus(PQresultStatus(r));
    if (j->failed == 0 || j->failed == j->ncmd - 1)
      snprintf(msg, sizeof msg, "%s: %s", j->cmds[j->failed].sql, why);
    else
      snprintf(msg, sizeof msg, "statement %zu: %s", j->failed - 1, why);
    err = BT_EIO;
  } else if (strcmp(PQcmdStatus(j->res[j->ncmd - 1]), "COMMIT") != 0) {
    /* COMMIT of an aborted transaction succeeds with the status ROLLBACK. */
    snprintf(msg, sizeof msg, "COMMIT: the transaction was rolled back");
    err = BT_EIO;
  }
  c->job = NULL;
  arm(c, UV_READABLE);
  bt__pg_pool_job_done(c->pool, j, err, msg);
  if (c->state == BT_PG_CONN_BUSY) /* unless the callback closed the pool */
    set_state(c, BT_PG_CONN_IDLE);
}

/* Takes every result libpq has parsed, without ever calling PQgetResult while PQisBusy (it
 * would block). Returns true while the job is still in flight. */
static bool collect(bt_pg_conn_t *c) {
  bt_pg_job_t *j = c->job;
  bool after_null = false;
  while (PQstatus(c->pg) == CONNECTION_OK && !PQisBusy(c->pg)) {
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
    if (c->skip_results > 0 && st != PGRES_PIPELINE_SYNC) {
      c->skip_results--; /* the ROLLBACK sent ahead of the job */
      PQclear(r);
      continue;
    }
    if (st == PGRES_PIPELINE_SYNC) {
      PQclear(r);
      finish(c);
      return false;
    }
    if (j->nres == j->ncmd) {
      PQclear(r);
      conn_break(c, "pipeline", "more results than commands");
      return false;
    }
    switch (st) {
    case PGRES_COMMAND_OK:
    case PGRES_TUPLES_OK:
    case PGRES_EMPTY_QUERY: break;
    case PGRES_FATAL_ERROR:     /* the server rejected the command ... */
    case PGRES_PIPELINE_ABORTED: /* ... so it skips the rest, COMMIT included, until Sync */
      if (j->failed == j->ncmd)
        j->failed = j->nres;
      break;
    default: /* COPY and the like cannot be driven from here: give the connection up */
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

static void io(bt_pg_conn_t *c, int status, int events) {
  /* libuv reports POLLERR (a reset, say) as UV_EBADF and stops the handle; libpq's read says
   * what actually happened. */
  if (status < 0)
    return conn_break(c, "read",
                      PQconsumeInput(c->pg) ? uv_strerror(status) : PQerrorMessage(c->pg));
  if ((events & UV_READABLE) && !PQconsumeInput(c->pg))
    return conn_break(c, "read", PQerrorMessage(c->pg));
  /* Nothing sent to an idle connection needs an answer (a notice, or the error a server sends
   * before closing, which the next read reports as EOF). Parsing it hands it to on_notice and
   * keeps libpq's input buffer from growing. */
  if (c->state == BT_PG_CONN_IDLE) {
    PQisBusy(c->pg);
    return;
  }
  int rc = PQflush(c->pg);
  if (rc < 0)
    return conn_break(c, "write", PQerrorMessage(c->pg));
  /* Collect even after a pure write event: libpq reads input while flushing a full socket
   * (to avoid deadlock), and epoll will not report data libpq has already read. */
  if (collect(c))
    arm(c, UV_READABLE | (rc ? UV_WRITABLE : 0));
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
  if (!c->timer_open && c->poll_state == POLL_NONE && !c->gai_pending) {
    set_state(c, BT_PG_CONN_CLOSED);
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
    fail_job(c, j);
    return;
  }
  case BT_PG_CONN_CLOSING: {
    bt_pg_job_t *j = drop(c);
    fail_job(c, j);
    maybe_closed(c); /* last: the pool may free c */
    return;
  }
  default: bug_state(c, "poll handle closed");
  }
}

static void maybe_closed(bt_pg_conn_t *c);

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  bt_pg_conn_t *c = req->data;
  c->gai_pending = false;
  if (c->state == BT_PG_CONN_CLOSING) { /* the pool closed meanwhile */
    uv_freeaddrinfo(res);
    return maybe_closed(c);
  }
  BT_ASSERT(c->state == BT_PG_CONN_RESOLVING);
  char addrs[512] = "";
  size_t len = 0;
  for (struct addrinfo *ai = status == 0 ? res : NULL; ai; ai = ai->ai_next) {
    char ip[INET6_ADDRSTRLEN] = "";
    if (ai->ai_family == AF_INET)
      uv_ip4_name((struct sockaddr_in *)ai->ai_addr, ip, sizeof ip);
    else if (ai->ai_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, ip, sizeof ip);
    if (!*ip || strstr(addrs, ip) || len + strlen(ip) + 2 > sizeof addrs)
      continue; /* getaddrinfo repeats an address per socket type */
    len += (size_t)snprintf(addrs + len, sizeof addrs - len, "%s%s", len ? "," : "", ip);
  }
  uv_freeaddrinfo(res);
  if (status < 0 || len == 0) {
    set_state(c, BT_PG_CONN_BROKEN);
    set_err(c, "resolve", status < 0 ? uv_strerror(status) : "no address");
    bt_log(c->fails == 0 ? BT_LOG_WARN : BT_LOG_DEBUG, "pg connect failed",
           "{s:s, s:i, s:s, s:i}", "pool", c->cfg->name, "conn", (int)c->id, "reason", c->errstr,
           "attempt", (int)c->fails + 1);
    return backoff(c);
  }
  connect_start(c, bt__pg_pool_host_to_resolve(c->pool), addrs);
}

/* The next attempt: resolve the host first when libpq would otherwise block doing it. The
 * resolver's own timeouts bound the lookup; the connect timeout starts with the connection. */
static void attempt(bt_pg_conn_t *c) {
  const char *host = bt__pg_pool_host_to_resolve(c->pool);
  if (!host)
    return connect_start(c, NULL, NULL);
  set_state(c, BT_PG_CONN_RESOLVING);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  c->gai.data = c;
  int rc = uv_getaddrinfo(c->loop, &c->gai, on_resolved, host, NULL, &hints);
  if (rc == 0) {
    c->gai_pending = true;
    return;
  }
  set_state(c, BT_PG_CONN_BROKEN);
  set_err(c, "resolve", uv_strerror(rc));
  backoff(c);
}

static void on_timer(uv_timer_t *t) {
  bt_pg_conn_t *c = t->data;
  switch (c->state) {
  case BT_PG_CONN_BACKOFF: return attempt(c);
  case BT_PG_CONN_CONNECTING: return conn_break(c, "connect", "timed out");
  default: bug_state(c, "timer");
  }
}

static void on_timer_closed(uv_handle_t *h) {
  bt_pg_conn_t *c = h->data;
  c->timer_open = false;
  maybe_closed(c);
}

void bt__pg_conn_init(bt_pg_conn_t *c, bt_pg_pool_t *p, const bt_pg_pool_config_t *cfg,
                      uv_loop_t *loop, unsigned id) {
  memset(c, 0, sizeof *c);
  c->pool = p;
  c->cfg = cfg;
  c->loop = loop;
  c->id = id;
  c->state = BT_PG_CONN_BACKOFF;
  uv_timer_init(loop, &c->timer);
  c->timer.data = c;
  c->timer_open = true;
  uv_timer_start(&c->timer, on_timer, 0, 0);
}

void bt__pg_conn_send(bt_pg_conn_t *c, bt_pg_job_t *j) {
  BT_ASSERT(c->state == BT_PG_CONN_IDLE && !c->job);
  c->job = j;
  set_state(c, BT_PG_CONN_BUSY);
  /* A job that failed inside its BEGIN block leaves the session in that aborted block: in
   * pipeline mode the server skips the job's COMMIT, and Sync does not end an explicit block.
   * Roll it back in the same pipeline, ahead of this job, and discard that result. */
  c->skip_results = 0;
  if (PQtransactionStatus(c->pg) == PQTRANS_INERROR || PQtransactionStatus(c->pg) == PQTRANS_INTRANS) {
    if (!PQsendQueryParams(c->pg, "ROLLBACK", 0, NULL, NULL, NULL, NULL, 0))
      return conn_break(c, "send", PQerrorMessage(c->pg));
    c->skip_results = 1;
  }
  for (size_t i = 0; i < j->ncmd; i++) {
    const bt_pg_stmt_t *s = &j->cmds[i];
    if (!PQsendQueryParams(c->pg, s->sql, s->nparams, NULL, s->values, NULL, NULL, 0))
      return conn_break(c, "send", PQerrorMessage(c->pg));
  }
  if (!PQpipelineSync(c->pg))
    return conn_break(c, "send", PQerrorMessage(c->pg));
  int rc = PQflush(c->pg);
  if (rc < 0)
    return conn_break(c, "write", PQerrorMessage(c->pg));
  /* Results are collected only from on_poll, so no callback runs inside this call. Nothing
   * is lost by waiting: the Sync went out last, so its result cannot have been read yet. */
  arm(c, UV_READABLE | (rc ? UV_WRITABLE : 0));
}

void bt__pg_conn_close(bt_pg_conn_t *c) {
  snprintf(c->errstr, sizeof c->errstr, "the pool was closed");
  set_state(c, BT_PG_CONN_CLOSING);
  if (c->gai_pending) /* its callback still runs (cancelled or not) and ends the close */
    uv_cancel((uv_req_t *)&c->gai);
  uv_close((uv_handle_t *)&c->timer, on_timer_closed);
  if (c->poll_state == POLL_NONE) {
    bt_pg_job_t *j = drop(c);
    BT_ASSERT(!j); /* no handle means no socket in use, so no job */
  } else {
    poll_close(c); /* its close callback finishes the PGconn and fails any job */
  }
}
