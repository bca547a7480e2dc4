/* Redis client: hiredis async on the loop (redis_uv.c). Host names are resolved off the loop by
 * bt_resolve and every address is tried in turn; a connection becomes usable only after its
 * handshake is answered. One timer serves as the connect-plus-handshake timeout and the
 * reconnect backoff; another watches the oldest command awaiting its reply. hiredis frees
 * its context after the connect (on failure) and disconnect callbacks, so those are where
 * we forget it. */
#include "redis_client.h"

#include <hiredis/async.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "buf.h"
#include "fsm.h"
#include "log.h"
#include "redis_uv.h"

typedef enum {
  RS_DISCONNECTED, /* waiting for the backoff timer */
  RS_RESOLVING,
  RS_CONNECTING,   /* TCP connect to addrs.addr[addr_i] in progress */
  RS_HANDSHAKE,    /* connected; AUTH/SELECT/PING sent, their replies awaited */
  RS_CONNECTED,    /* ready for commands */
  RS_CLOSED,       /* shut down; freed once both timers are closed */
  RS_NSTATES
} redis_state_t;

static const char *const state_names[RS_NSTATES] = {
    "disconnected", "resolving", "connecting", "handshake", "connected", "closed"};
#define B BT_FSM_BIT
static const uint32_t legal[RS_NSTATES] = {
    [RS_DISCONNECTED] = B(RS_RESOLVING) | B(RS_CLOSED),
    [RS_RESOLVING] = B(RS_CONNECTING) | B(RS_DISCONNECTED) | B(RS_CLOSED),
    /* CONNECTING and HANDSHAKE move on to the next address after a failure. */
    [RS_CONNECTING] = B(RS_HANDSHAKE) | B(RS_CONNECTING) | B(RS_DISCONNECTED) | B(RS_CLOSED),
    [RS_HANDSHAKE] = B(RS_CONNECTED) | B(RS_CONNECTING) | B(RS_DISCONNECTED) | B(RS_CLOSED),
    [RS_CONNECTED] = B(RS_DISCONNECTED) | B(RS_CLOSED),
    [RS_CLOSED] = 0,
};
#undef B
static bt_fsm_def_t fsm = {
    .kind = "redis client", .nstates = RS_NSTATES, .names = state_names, .legal = legal};

/* One command awaiting its reply, in send order (Redis answers in order). */
typedef struct pending {
  uint64_t sent_ms;
  size_t bytes;
} pending_t;

struct bt_redis {
  bt_app_t *app;
  char name[64];
  char host[256];
  int port, db;
  char user[128], password[256]; /* empty: no AUTH */
  uint32_t connect_timeout_ms, command_timeout_ms;
  unsigned max_pending;
  size_t max_pending_bytes, pending_bytes;
  bt_backoff_t backoff;
  bt_redis_resolve_fn resolve_fn;
  redis_state_t state;
  redisAsyncContext *ac; /* NULL whenever hiredis may have freed it */
  bt_resolve_req_t *resolve; /* lookup in flight */
  bt_addr_list_t addrs;
  size_t addr_i;             /* the address being tried */
  unsigned handshake_left;   /* handshake replies still awaited */
  char fail_reason[300];     /* why we are dropping the connection, for on_disconnect */
  char errstr[512];
  uv_timer_t timer;          /* connect/handshake timeout, or the backoff */
  uv_timer_t deadline;       /* the oldest pending command */
  unsigned handles_open;
  pending_t *ring;           /* pending commands, a ring of cap entries from head */
  size_t ring_cap, ring_head, ring_len;
  bool draining, holding;
};

/* A single command; fallback (flen bytes) follows the struct. */
typedef struct command {
  bt_redis_reply_cb cb;
  void *arg;
  size_t flen; /* 0: none, or already used */
  char fallback[];
} command_t;

struct bt_redis_batch {
  bt_redis_t *r;
  bt_buf_t cmds;       /* the formatted commands, back to back */
  bt_buf_t fallbacks;  /* the fallbacks of script commands, back to back */
  size_t *lens;        /* length of each command in cmds */
  size_t *flens;       /* length of each command's fallback, 0 if none */
  size_t n, cap;
  bool broken;         /* a command failed to format */
  redisReply **replies;
  size_t *fb_off;      /* offset of each fallback in fallbacks */
  size_t *retries;     /* indices whose fallback was sent, in send order */
  size_t sent, received, nretries, retried;
  unsigned outstanding; /* sent, not yet answered */
  int err;
  bt_redis_batch_cb cb;
  void *arg;
};

static void start_connect(bt_redis_t *r);
static void try_address(bt_redis_t *r);

static void set_state(bt_redis_t *r, redis_state_t next) {
  bt_fsm_move(&fsm, r->state, next, r->name);
  r->state = next;
}

static void update_hold(bt_redis_t *r) {
  bt_app_hold_while(r->app, &r->holding,
                    r->draining && r->ring_len > 0 && r->state != RS_CLOSED);
}

static const char *cur_addr(const bt_redis_t *r) {
  return r->addr_i < r->addrs.n ? r->addrs.addr[r->addr_i] : r->host;
}

/* ---- pending commands: the budgets and the deadline ---- */

static int ring_reserve(bt_redis_t *r, size_t need) {
  if (need <= r->ring_cap)
    return 0;
  size_t cap = r->ring_cap ? r->ring_cap * 2 : 64;
  if (cap < need)
    cap = need;
  pending_t *ring = malloc(cap * sizeof *ring);
  if (!ring)
    return BT_ENOMEM;
  for (size_t i = 0; i < r->ring_len; i++)
    ring[i] = r->ring[(r->ring_head + i) % r->ring_cap];
  free(r->ring);
  r->ring = ring;
  r->ring_cap = cap;
  r->ring_head = 0;
  return 0;
}

static void on_deadline(uv_timer_t *t);

/* Records one command handed to hiredis; ring_reserve() made room. */
static void ring_push(bt_redis_t *r, size_t bytes) {
  BT_ASSERT(r->ring_len < r->ring_cap);
  r->ring[(r->ring_head + r->ring_len++) % r->ring_cap] =
      (pending_t){.sent_ms = uv_now(r->app->loop), .bytes = bytes};
  r->pending_bytes += bytes;
  if (r->ring_len == 1)
    uv_timer_start(&r->deadline, on_deadline, r->command_timeout_ms, 0);
}

/* The oldest command was answered (or failed): hiredis runs reply callbacks in send order. */
static void ring_pop(bt_redis_t *r) {
  BT_ASSERT(r->ring_len > 0);
  r->pending_bytes -= r->ring[r->ring_head].bytes;
  r->ring_head = (r->ring_head + 1) % r->ring_cap;
  if (--r->ring_len == 0)
    uv_timer_stop(&r->deadline);
}

/* Checks that n more commands of `bytes` bytes may be sent now. */
static int admit(bt_redis_t *r, size_t n, size_t bytes) {
  if (r->state == RS_CLOSED)
    return BT_ECANCELED;
  if (r->state != RS_CONNECTED || !r->ac)
    return BT_ENOTCONN;
  if (n > r->max_pending - r->ring_len || bytes > r->max_pending_bytes - r->pending_bytes)
    return BT_EAGAIN;
  return ring_reserve(r, r->ring_len + n);
}

/* ---- connection lifecycle ---- */

static void on_retry(uv_timer_t *t) { start_connect(t->data); }

/* The current attempt or connection is over and its context is gone (r->ac is NULL): tries
 * the next address of this round, or waits for the backoff before resolving again. */
static void conn_failed(bt_redis_t *r, const char *why) {
  uv_timer_stop(&r->timer);
  snprintf(r->errstr, sizeof r->errstr, "%s:%d: %s", cur_addr(r), r->port, why);
  bool next = (r->state == RS_CONNECTING || r->state == RS_HANDSHAKE) &&
              r->addr_i + 1 < r->addrs.n;
  uint64_t delay = next ? 0 : bt_backoff_next(&r->backoff);
  bt_log_warn("redis unavailable", "{s:s, s:s, s:s, s:i, s:s, s:i}", "name", r->name, "host",
              r->host, "addr", cur_addr(r), "port", r->port, "reason", why, "retry_ms",
              (int)delay);
  if (next) {
    r->addr_i++;
    try_address(r);
    return;
  }
  set_state(r, RS_DISCONNECTED);
  uv_timer_start(&r->timer, on_retry, delay, 0);
}

/* Ends the current context for `why`. A context that reached on_connect gets its disconnect
 * callback (now, or after the hiredis callback we are in returns), which reports; an earlier
 * one never does, so this reports itself. */
static void drop(bt_redis_t *r, const char *why) {
  redisAsyncContext *ac = r->ac;
  bool connected = r->state == RS_HANDSHAKE || r->state == RS_CONNECTED;
  r->ac = NULL;
  snprintf(r->fail_reason, sizeof r->fail_reason, "%s", why);
  redisAsyncFree(ac); /* pending callbacks run with NULL replies: BT_ECONNRESET */
  if (!connected)
    conn_failed(r, why);
}

static void on_deadline(uv_timer_t *t) {
  bt_redis_t *r = t->data;
  if (r->ring_len == 0 || !r->ac)
    return;
  uint64_t age = uv_now(r->app->loop) - r->ring[r->ring_head].sent_ms;
  if (age < r->command_timeout_ms) { /* the oldest command changed since the timer was armed */
    uv_timer_start(&r->deadline, on_deadline, r->command_timeout_ms - age, 0);
    return;
  }
  char why[128];
  snprintf(why, sizeof why, "command timeout: no reply in %u ms", r->command_timeout_ms);
  drop(r, why);
}

static void on_handshake(redisAsyncContext *ac, void *reply, void *privdata) {
  bt_redis_t *r = ac->data;
  const redisReply *rep = reply;
  const char *step = privdata;
  if (!rep || r->state != RS_HANDSHAKE || r->ac != ac)
    return; /* the context is going away; its disconnect callback reports */
  if (rep->type == REDIS_REPLY_ERROR) {
    char why[300];
    snprintf(why, sizeof why, "%s refused: %s", step, rep->str);
    drop(r, why);
    return;
  }
  if (--r->handshake_left > 0)
    return;
  uv_timer_stop(&r->timer);
  set_state(r, RS_CONNECTED);
  bt_backoff_reset(&r->backoff);
  bt_log_info("redis connected", "{s:s, s:s, s:s, s:i, s:i}", "name", r->name, "host", r->host,
              "addr", cur_addr(r), "port", r->port, "db", r->db);
}

/* The handshake goes first on the new connection, ahead of any command of ours (commands are
 * refused until it is answered): AUTH if the URL has a password, SELECT if it names a db,
 * and PING, so that a server that accepts connections but does not answer (stopped,
 * overloaded) is never reported ready. */
static char step_auth[] = "AUTH", step_select[] = "SELECT", step_ping[] = "PING";

static int send_handshake(bt_redis_t *r) {
  redisAsyncContext *ac = r->ac;
  int rc = REDIS_OK;
  r->handshake_left = 0;
  if (r->password[0]) {
    /* AUTH password authenticates the default user; AUTH user password an ACL user. */
    const char *argv[3] = {"AUTH", r->user, r->password};
    if (!r->user[0])
      argv[1] = r->password;
    rc = redisAsyncCommandArgv(ac, on_handshake, step_auth, r->user[0] ? 3 : 2, argv, NULL);
    r->handshake_left++;
  }
  if (rc == REDIS_OK && r->db != 0) {
    rc = redisAsyncCommand(ac, on_handshake, step_select, "SELECT %d", r->db);
    r->handshake_left++;
  }
  if (rc == REDIS_OK) {
    rc = redisAsyncCommand(ac, on_handshake, step_ping, "PING");
    r->handshake_left++;
  }
  return rc == REDIS_OK ? 0 : BT_EIO;
}

static void on_connect(const redisAsyncContext *ac, int status) {
  bt_redis_t *r = ac->data;
  if (status != REDIS_OK) {
    r->ac = NULL; /* hiredis frees it when we return */
    conn_failed(r, ac->errstr);
    return;
  }
  set_state(r, RS_HANDSHAKE); /* the connect timer keeps running: it covers the handshake */
  if (send_handshake(r) != 0)
    drop(r, "handshake: hiredis refused the commands");
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  bt_redis_t *r = ac->data;
  if (r->ac == ac)
    r->ac = NULL; /* hiredis frees it when we return */
  if (r->state == RS_CLOSED)
    return;
  const char *why = r->fail_reason[0] ? r->fail_reason
                    : status == REDIS_OK ? "closed" : ac->errstr;
  conn_failed(r, why);
}

static void on_connect_timeout(uv_timer_t *t) {
  bt_redis_t *r = t->data;
  drop(r, r->state == RS_HANDSHAKE ? "handshake timeout" : "connect timeout");
}

/* Starts a connection to the current address; the state becomes CONNECTING. */
static void try_address(bt_redis_t *r) {
  set_state(r, RS_CONNECTING);
  r->fail_reason[0] = '\0';
  uv_timer_start(&r->timer, on_connect_timeout, r->connect_timeout_ms, 0);
  /* A numeric address: hiredis's own getaddrinfo returns without touching DNS, and the
   * connect itself is non-blocking. */
  redisAsyncContext *ac = redisAsyncConnect(cur_addr(r), r->port);
  if (!ac || ac->err) {
    char why[256];
    snprintf(why, sizeof why, "%s", ac ? ac->errstr : "out of memory");
    redisAsyncFree(ac);
    conn_failed(r, why);
    return;
  }
  ac->data = r;
  /* Keepalive probes find a peer that vanished without a FIN on an idle connection, where
   * no command is pending for the command timeout to notice. */
  if (redisEnableKeepAlive(&ac->c) != REDIS_OK || bt_redis_uv_attach(ac, r->app->loop) != 0) {
    redisAsyncFree(ac);
    conn_failed(r, "socket setup failed (keepalive or libuv attach)");
    return;
  }
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  r->ac = ac;
}

static void on_resolved(int status, const char *errstr, const bt_addr_list_t *addrs, void *arg) {
  bt_redis_t *r = arg;
  r->resolve = NULL;
  if (status != 0) {
    char why[300];
    snprintf(why, sizeof why, "resolving %s: %s", r->host, errstr);
    r->addrs.n = 0;
    conn_failed(r, why);
    return;
  }
  r->addrs = *addrs;
  r->addr_i = 0;
  try_address(r);
}

static void start_connect(bt_redis_t *r) {
  set_state(r, RS_RESOLVING);
  r->addrs.n = 0;
  r->addr_i = 0;
  int rc = r->resolve_fn(r->app->loop, r->host, on_resolved, r, &r->resolve);
  if (rc != 0) {
    r->resolve = NULL;
    conn_failed(r, bt_strerror(rc));
  }
}

/* ---- shutdown ---- */

static void on_handle_closed(uv_handle_t *h) {
  bt_redis_t *r = h->data;
  if (--r->handles_open > 0)
    return;
  bt_fsm_leave(&fsm, r->state);
  free(r->ring);
  free(r);
}

static void on_drain(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  bt_redis_t *r = arg;
  r->draining = true;
  update_hold(r);
}

static void on_app_close(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  bt_redis_t *r = arg;
  set_state(r, RS_CLOSED);
  update_hold(r);
  bt_resolve_cancel(r->resolve); /* the resolver owns the lookup's memory from here */
  r->resolve = NULL;
  /* The drain waited for pending replies; any command sent since completes now with
   * BT_ECANCELED. */
  if (r->ac)
    redisAsyncFree(r->ac);
  r->ac = NULL;
  uv_close((uv_handle_t *)&r->timer, on_handle_closed);
  uv_close((uv_handle_t *)&r->deadline, on_handle_closed);
}

static bool ready(void *arg) { return bt_redis_ready(arg); }

/* ---- configuration ---- */

static int hex_digit(char c) {
  return c >= '0' && c <= '9' ? c - '0'
         : c >= 'a' && c <= 'f' ? c - 'a' + 10
         : c >= 'A' && c <= 'F' ? c - 'A' + 10
         : -1;
}

/* Decodes the %XX escapes of [s, s+n) into out (size outsz); false if malformed or too long. */
static bool url_decode(const char *s, size_t n, char *out, size_t outsz) {
  size_t o = 0;
  for (size_t i = 0; i < n; i++) {
    char c = s[i];
    if (c == '%') {
      int hi = i + 2 < n ? hex_digit(s[i + 1]) : -1, lo = hi >= 0 ? hex_digit(s[i + 2]) : -1;
      if (lo < 0)
        return false;
      c = (char)(hi * 16 + lo);
      i += 2;
    }
    if (o + 1 >= outsz)
      return false;
    out[o++] = c;
  }
  out[o] = '\0';
  return true;
}

/* The URL for messages, with any password replaced by "***". */
static void mask_url(const char *url, char *out, size_t outsz) {
  const char *p = strncmp(url, "redis://", 8) == 0 ? url + 8 : url;
  const char *at = strrchr(p, '@');
  const char *colon = at ? memchr(p, ':', (size_t)(at - p)) : NULL;
  if (!colon)
    snprintf(out, outsz, "%s", url);
  else
    snprintf(out, outsz, "%.*s***%s", (int)(colon + 1 - url), url, at);
}

/* Accepts redis://[[user]:password@]host:port[/db]. */
static int parse_url(bt_redis_t *r, const char *url, char *errstr) {
  const char *p = strncmp(url, "redis://", 8) == 0 ? url + 8 : NULL;
  const char *why = "expected redis://[[user]:password@]host:port[/db]";
  const char *at = p ? strrchr(p, '@') : NULL;
  if (at) {
    const char *colon = memchr(p, ':', (size_t)(at - p));
    if (!colon) {
      why = "user info needs a password: redis://user:password@host or redis://:password@host";
      p = NULL;
    } else if (!url_decode(p, (size_t)(colon - p), r->user, sizeof r->user) ||
               !url_decode(colon + 1, (size_t)(at - colon - 1), r->password,
                           sizeof r->password) ||
               !r->password[0]) {
      why = "bad or too long user or password (use %XX escapes for reserved characters)";
      p = NULL;
    } else {
      p = at + 1;
    }
  }
  const char *hend = NULL, *colon = NULL;
  if (p && *p == '[') { /* [IPv6] */
    hend = strchr(p, ']');
    colon = hend && hend[1] == ':' ? hend + 1 : NULL;
    p++;
  } else if (p) {
    colon = strchr(p, ':');
    hend = colon;
  }
  char *end = NULL;
  long port = colon ? strtol(colon + 1, &end, 10) : 0;
  long db = 0;
  if (end && *end == '/')
    db = strtol(end + 1, &end, 10);
  if (!p || !colon || hend == p || (size_t)(hend - p) >= sizeof r->host || port < 1 ||
      port > 65535 || !end || *end != '\0' || db < 0 || db > 1000000) {
    char masked[512];
    mask_url(url, masked, sizeof masked);
    snprintf(errstr, 256, "redis url \"%.120s\": %s", masked, why);
    return BT_EINVAL;
  }
  memcpy(r->host, p, (size_t)(hend - p));
  r->host[hend - p] = '\0';
  r->port = (int)port;
  r->db = (int)db;
  return 0;
}

int bt_redis_new(bt_redis_t **out, bt_app_t *app, const bt_redis_config_t *cfg, char *errstr) {
  if (!cfg->name || !cfg->name[0] || strlen(cfg->name) >= sizeof((bt_redis_t *)0)->name) {
    snprintf(errstr, 256, "redis client: a name (1-63 bytes) is required for /readyz and logs");
    return BT_EINVAL;
  }
  bt_redis_t *r = calloc(1, sizeof *r);
  if (!r)
    return BT_ENOMEM;
  if (parse_url(r, cfg->url ? cfg->url : "", errstr) != 0) {
    free(r);
    return BT_EINVAL;
  }
  snprintf(r->name, sizeof r->name, "%s", cfg->name);
  r->app = app;
  r->max_pending = cfg->max_pending ? cfg->max_pending : 65536;
  r->max_pending_bytes = cfg->max_pending_bytes ? cfg->max_pending_bytes : 64u << 20;
  r->connect_timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : 2000;
  r->command_timeout_ms = cfg->command_timeout_ms ? cfg->command_timeout_ms : 5000;
  bt_backoff_init(&r->backoff, cfg->backoff_min_ms ? cfg->backoff_min_ms : 100,
                  cfg->backoff_max_ms ? cfg->backoff_max_ms : 5000, true);
  r->resolve_fn = cfg->resolve ? cfg->resolve : bt_resolve;
  bt_fsm_register(&fsm, "baton_redis_clients", "Redis client connections by state");
  r->state = RS_DISCONNECTED;
  bt_fsm_enter(&fsm, RS_DISCONNECTED);
  uv_timer_init(app->loop, &r->timer);
  uv_timer_init(app->loop, &r->deadline);
  r->timer.data = r->deadline.data = r;
  r->handles_open = 2;
  bt_app_add_dependency(app, r->name, ready, r);
  bt_app_on_shutdown(app, on_drain, on_app_close, r);
  start_connect(r);
  *out = r;
  return 0;
}

/* ---- single commands ---- */

static int reply_err(bt_redis_t *r) {
  return r->state == RS_CLOSED ? BT_ECANCELED : BT_ECONNRESET;
}

static bool is_noscript(const redisReply *rep) {
  return rep && rep->type == REDIS_REPLY_ERROR && strncmp(rep->str, "NOSCRIPT", 8) == 0;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  command_t *cmd = privdata;
  bt_redis_t *r = ac->data;
  ring_pop(r);
  /* The script was not in the server's cache, so it did not run: send its EVAL form, which
   * runs and caches it, and answer the caller with that reply instead. */
  if (cmd->flen > 0 && is_noscript(reply) && r->ac == ac &&
      redisAsyncFormattedCommand(ac, on_reply, cmd, cmd->fallback, cmd->flen) == REDIS_OK) {
    ring_push(r, cmd->flen); /* replaces the entry just popped, so the ring has room */
    cmd->flen = 0;
    return;
  }
  if (cmd->cb)
    cmd->cb(r, reply ? 0 : reply_err(r), reply, cmd->arg);
  free(cmd);
  update_hold(r);
}

/* Sends one formatted command with an optional fallback; buf stays the caller's. */
static int send_command(bt_redis_t *r, bt_redis_reply_cb cb, void *arg, const char *buf,
                        size_t len, const char *fallback, size_t flen) {
  int rc = admit(r, 1, len + flen);
  command_t *cmd = rc == 0 ? malloc(sizeof *cmd + flen) : NULL;
  if (rc == 0 && !cmd)
    rc = BT_ENOMEM;
  if (rc != 0)
    return rc;
  *cmd = (command_t){.cb = cb, .arg = arg, .flen = flen};
  if (flen)
    memcpy(cmd->fallback, fallback, flen);
  /* hiredis refuses only while its context is being torn down: a disconnect in progress. */
  if (redisAsyncFormattedCommand(r->ac, on_reply, cmd, buf, len) != REDIS_OK) {
    free(cmd);
    return BT_ENOTCONN;
  }
  ring_push(r, len + flen);
  return 0;
}

static int command_formatted(bt_redis_t *r, bt_redis_reply_cb cb, void *arg, char *buf, int len) {
  int rc = len < 0 ? BT_EINVAL : send_command(r, cb, arg, buf, (size_t)len, NULL, 0);
  redisFreeCommand(buf);
  return rc;
}

int bt__redis_command_fallback(bt_redis_t *r, bt_redis_reply_cb cb, void *arg, const char *cmd,
                               size_t len, const char *fallback, size_t flen) {
  return send_command(r, cb, arg, cmd, len, fallback, flen);
}

int bt_redis_command_argv(bt_redis_t *r, bt_redis_reply_cb cb, void *arg, int argc,
                          const char *const *argv, const size_t *argvlen) {
  char *buf = NULL;
  int len = redisFormatCommandArgv(&buf, argc, (const char **)argv, argvlen);
  return command_formatted(r, cb, arg, buf, len);
}

int bt_redis_command(bt_redis_t *r, bt_redis_reply_cb cb, void *arg, const char *fmt, ...) {
  char *buf = NULL;
  va_list ap;
  va_start(ap, fmt);
  int len = redisvFormatCommand(&buf, fmt, ap);
  va_end(ap);
  return command_formatted(r, cb, arg, buf, len);
}

/* ---- batches ---- */

bt_redis_batch_t *bt_redis_batch_new(bt_redis_t *r) {
  bt_redis_batch_t *b = calloc(1, sizeof *b);
  if (!b)
    return NULL;
  b->r = r;
  bt_buf_init(&b->cmds, 0);
  bt_buf_init(&b->fallbacks, 0);
  return b;
}

void bt_redis_batch_free(bt_redis_batch_t *b) {
  if (!b)
    return;
  for (size_t i = 0; b->replies && i < b->n; i++)
    freeReplyObject(b->replies[i]);
  free(b->replies);
  free(b->lens);
  free(b->flens);
  free(b->fb_off);
  free(b->retries);
  bt_buf_free(&b->cmds);
  bt_buf_free(&b->fallbacks);
  free(b);
}

size_t bt_redis_batch_len(const bt_redis_batch_t *b) { return b->n; }

static int batch_grow(bt_redis_batch_t *b) {
  if (b->n < b->cap)
    return 0;
  size_t cap = b->cap ? b->cap * 2 : 16;
  size_t *lens = realloc(b->lens, cap * sizeof *lens);
  if (lens)
    b->lens = lens;
  size_t *flens = lens ? realloc(b->flens, cap * sizeof *flens) : NULL;
  if (flens)
    b->flens = flens;
  size_t *fb_off = flens ? realloc(b->fb_off, cap * sizeof *fb_off) : NULL;
  if (!fb_off)
    return BT_ENOMEM;
  b->fb_off = fb_off;
  b->cap = cap;
  return 0;
}

static int batch_push(bt_redis_batch_t *b, const char *buf, size_t len, const char *fallback,
                      size_t flen) {
  int rc = batch_grow(b);
  size_t fb_off = b->fallbacks.len;
  if (rc == 0)
    rc = bt_buf_append(&b->cmds, buf, len);
  if (rc == 0 && flen)
    rc = bt_buf_append(&b->fallbacks, fallback, flen);
  if (rc != 0) {
    b->broken = true; /* send() refuses the batch rather than run part of it */
    return rc;
  }
  b->lens[b->n] = len;
  b->flens[b->n] = flen;
  b->fb_off[b->n] = fb_off;
  b->n++;
  return 0;
}

static int batch_push_formatted(bt_redis_batch_t *b, char *buf, int len) {
  int rc = len < 0 ? BT_EINVAL : batch_push(b, buf, (size_t)len, NULL, 0);
  if (len < 0)
    b->broken = true;
  redisFreeCommand(buf);
  return rc;
}

int bt__redis_batch_add_fallback(bt_redis_batch_t *b, const char *cmd, size_t len,
                                 const char *fallback, size_t flen) {
  return batch_push(b, cmd, len, fallback, flen);
}

int bt_redis_batch_add_argv(bt_redis_batch_t *b, int argc, const char *const *argv,
                            const size_t *argvlen) {
  char *buf = NULL;
  int len = redisFormatCommandArgv(&buf, argc, (const char **)argv, argvlen);
  return batch_push_formatted(b, buf, len);
}

int bt_redis_batch_addf(bt_redis_batch_t *b, const char *fmt, ...) {
  char *buf = NULL;
  va_list ap;
  va_start(ap, fmt);
  int len = redisvFormatCommand(&buf, fmt, ap);
  va_end(ap);
  return batch_push_formatted(b, buf, len);
}

/* hiredis frees each reply once its callback returns; the batch completes only after the
 * last one, so it keeps deep copies (freeable with freeReplyObject). */
static redisReply *reply_dup(const redisReply *src) {
  redisReply *d = calloc(1, sizeof *d);
  if (!d)
    return NULL;
  d->type = src->type;
  d->integer = src->integer;
  if (src->str) {
    d->str = malloc(src->len + 1);
    if (!d->str)
      goto fail;
    memcpy(d->str, src->str, src->len + 1);
    d->len = src->len;
  }
  if (src->elements > 0) {
    d->element = calloc(src->elements, sizeof *d->element);
    if (!d->element)
      goto fail;
    d->elements = src->elements;
    for (size_t i = 0; i < src->elements; i++)
      if (!(d->element[i] = reply_dup(src->element[i])))
        goto fail;
  }
  return d;
fail:
  freeReplyObject(d);
  return NULL;
}

static void batch_store(bt_redis_batch_t *b, size_t i, const redisReply *reply) {
  redisReply *copy = reply ? reply_dup(reply) : NULL;
  if (!copy && !b->err)
    b->err = reply ? BT_ENOMEM : reply_err(b->r);
  b->replies[i] = copy;
}

static void batch_answered(bt_redis_batch_t *b) {
  bt_redis_t *r = b->r;
  if (--b->outstanding == 0) {
    b->cb(r, b->err, (const redisReply *const *)b->replies, b->n, b->arg);
    bt_redis_batch_free(b);
  }
  update_hold(r);
}

static void on_batch_retry_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  BT_UNUSED(ac);
  bt_redis_batch_t *b = privdata;
  ring_pop(b->r);
  /* Fallbacks were sent in order, so their replies come back in that order. */
  batch_store(b, b->retries[b->retried++], reply);
  batch_answered(b);
}

static void on_batch_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  bt_redis_batch_t *b = privdata;
  bt_redis_t *r = b->r;
  size_t i = b->received++;
  ring_pop(r);
  /* As for single commands: a script missing from the cache did not run, so its EVAL form
   * is sent now. It runs after the rest of the batch, which a cache flushed in the middle of
   * a connection (the only way to get here) makes unavoidable. */
  if (b->flens[i] > 0 && is_noscript(reply) && r->ac == ac && b->retries &&
      redisAsyncFormattedCommand(ac, on_batch_retry_reply, b, b->fallbacks.data + b->fb_off[i],
                                 b->flens[i]) == REDIS_OK) {
    ring_push(r, b->flens[i]);
    b->retries[b->nretries++] = i;
    return; /* still outstanding: the retry answers for it */
  }
  batch_store(b, i, reply);
  batch_answered(b);
}

int bt_redis_batch_send(bt_redis_batch_t *b, bt_redis_batch_cb cb, void *arg) {
  bt_redis_t *r = b->r;
  int rc = b->broken || b->n == 0 ? BT_EINVAL
                                  : admit(r, b->n, b->cmds.len + b->fallbacks.len);
  if (rc == 0 && !(b->replies = calloc(b->n, sizeof *b->replies)))
    rc = BT_ENOMEM;
  if (rc == 0 && b->fallbacks.len > 0 && !(b->retries = calloc(b->n, sizeof *b->retries)))
    rc = BT_ENOMEM;
  if (rc != 0) {
    bt_redis_batch_free(b);
    return rc;
  }
  b->cb = cb;
  b->arg = arg;
  /* Each command joins hiredis's output buffer; the adapter writes them all in one go once
   * the loop polls the socket, which is what makes this a pipeline. */
  for (size_t off = 0; b->sent < b->n; off += b->lens[b->sent++]) {
    if (redisAsyncFormattedCommand(r->ac, on_batch_reply, b, b->cmds.data + off,
                                   b->lens[b->sent]) != REDIS_OK)
      break;
    ring_push(r, b->lens[b->sent] + b->flens[b->sent]);
    b->outstanding++;
  }
  if (b->sent == 0) {
    bt_redis_batch_free(b);
    return BT_ENOTCONN;
  }
  /* A refusal midway cannot happen while connected, but if it did, the batch completes
   * once the commands already sent answer, with the rest NULL. */
  if (b->sent < b->n)
    b->err = BT_ECONNRESET;
  update_hold(r);
  return 0;
}

bool bt_redis_ready(bt_redis_t *r) { return r->state == RS_CONNECTED && r->ac != NULL; }

unsigned bt_redis_pending(const bt_redis_t *r) { return (unsigned)r->ring_len; }

size_t bt_redis_pending_bytes(const bt_redis_t *r) { return r->pending_bytes; }

const char *bt_redis_errstr(const bt_redis_t *r) { return r->errstr; }
