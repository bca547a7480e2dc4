/* Redis client: hiredis async on its libuv adapter. The host name is resolved with
 * uv_getaddrinfo so that no DNS lookup blocks the loop, and one timer serves as both the
 * connect timeout and the reconnect backoff. hiredis frees its context after the connect
 * (on failure) and disconnect callbacks, so those are where we forget it. */
#include "redis_client.h"

#include <hiredis/adapters/libuv.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"

typedef enum {
  CONN_DISCONNECTED, /* waiting for the backoff timer */
  CONN_RESOLVING,
  CONN_CONNECTING,
  CONN_CONNECTED,
  CONN_CLOSED,       /* shut down; freed once the timer and any lookup are done */
} redis_state_t;

struct bt_redis {
  bt_app_t *app;
  char host[256];
  char port[8];
  int db;
  uint32_t connect_timeout_ms, backoff_min_ms, backoff_max_ms, backoff_ms;
  unsigned max_pending, pending;
  redis_state_t state;
  redisAsyncContext *ac; /* NULL whenever hiredis may have freed it */
  uv_timer_t timer;
  uv_getaddrinfo_t gai;
  bool resolving;        /* gai in flight (it outlives a close if it cannot be cancelled) */
  bool timer_closed;
  bool draining, holding;
};

typedef struct command {
  bt_redis_reply_cb cb;
  void *arg;
} command_t;

struct bt_redis_batch {
  bt_redis_t *r;
  bt_buf_t cmds;   /* the formatted commands, back to back */
  size_t *lens;    /* length of each command in cmds */
  size_t n, cap;
  bool broken;     /* a command failed to format */
  redisReply **replies;
  size_t sent, received;
  int err;
  bt_redis_batch_cb cb;
  void *arg;
};

static void start_connect(bt_redis_t *r);

static const char *state_name(redis_state_t s) {
  switch (s) {
  case CONN_DISCONNECTED: return "disconnected";
  case CONN_RESOLVING: return "resolving";
  case CONN_CONNECTING: return "connecting";
  case CONN_CONNECTED: return "connected";
  case CONN_CLOSED: return "closed";
  }
  return "?";
}

static void set_state(bt_redis_t *r, redis_state_t next) {
  redis_state_t s = r->state;
  bool legal = next == CONN_CLOSED ? s != CONN_CLOSED
             : next == CONN_DISCONNECTED ? (s == CONN_RESOLVING || s == CONN_CONNECTING ||
                                             s == CONN_CONNECTED)
             : next == CONN_RESOLVING ? s == CONN_DISCONNECTED
             : next == CONN_CONNECTING ? s == CONN_RESOLVING
             : s == CONN_CONNECTING; /* CONNECTED */
  if (!legal)
    bt_fatal("redis: illegal transition %s -> %s", state_name(s), state_name(next));
  r->state = next;
}

static void update_hold(bt_redis_t *r) {
  bool want = r->draining && r->pending > 0 && r->state != CONN_CLOSED;
  if (want == r->holding)
    return;
  r->holding = want;
  if (want)
    bt_app_hold(r->app);
  else
    bt_app_release(r->app);
}

static void on_retry(uv_timer_t *t) { start_connect(t->data); }

static void schedule_retry(bt_redis_t *r, const char *why) {
  bt_log_warn("redis unavailable", "{s:s, s:s, s:s, s:i}", "host", r->host, "port", r->port,
              "reason", why, "retry_ms", (int)r->backoff_ms);
  set_state(r, CONN_DISCONNECTED);
  uv_timer_start(&r->timer, on_retry, r->backoff_ms, 0);
  r->backoff_ms = r->backoff_ms * 2 > r->backoff_max_ms ? r->backoff_max_ms : r->backoff_ms * 2;
}

static void on_connect(const redisAsyncContext *ac, int status) {
  bt_redis_t *r = ac->data;
  uv_timer_stop(&r->timer);
  if (status != REDIS_OK) {
    r->ac = NULL; /* hiredis frees it when we return */
    schedule_retry(r, ac->errstr);
    return;
  }
  set_state(r, CONN_CONNECTED);
  r->backoff_ms = r->backoff_min_ms;
  bt_log_info("redis connected", "{s:s, s:s}", "host", r->host, "port", r->port);
}

static void on_disconnect(const redisAsyncContext *ac, int status) {
  bt_redis_t *r = ac->data;
  r->ac = NULL; /* hiredis frees it when we return */
  if (r->state != CONN_CLOSED)
    schedule_retry(r, status == REDIS_OK ? "closed" : ac->errstr);
}

static void on_select(redisAsyncContext *ac, void *reply, void *privdata) {
  const redisReply *rep = reply;
  if (rep && rep->type == REDIS_REPLY_ERROR)
    bt_log_error("redis SELECT failed", "{s:s}", "error", rep->str);
}

static void on_connect_timeout(uv_timer_t *t) {
  bt_redis_t *r = t->data;
  /* Not connected yet, so freeing runs neither callback: forget the context here. */
  redisAsyncFree(r->ac);
  r->ac = NULL;
  schedule_retry(r, "connect timeout");
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  bt_redis_t *r = req->data;
  r->resolving = false;
  if (r->state == CONN_CLOSED) {
    uv_freeaddrinfo(res);
    if (r->timer_closed)
      free(r);
    return;
  }
  if (status != 0) {
    schedule_retry(r, uv_strerror(status));
    return;
  }
  char ip[64];
  uv_ip_name(res->ai_addr, ip, sizeof ip);
  uv_freeaddrinfo(res);
  /* A numeric address: hiredis's own getaddrinfo returns without touching DNS, and the
   * connect itself is non-blocking. */
  redisAsyncContext *ac = redisAsyncConnect(ip, atoi(r->port));
  if (!ac || ac->err) {
    schedule_retry(r, ac ? ac->errstr : "out of memory");
    redisAsyncFree(ac);
    return;
  }
  ac->data = r;
  if (redisLibuvAttach(ac, r->app->loop) != REDIS_OK) {
    redisAsyncFree(ac);
    schedule_retry(r, "libuv attach failed");
    return;
  }
  redisAsyncSetConnectCallback(ac, on_connect);
  redisAsyncSetDisconnectCallback(ac, on_disconnect);
  r->ac = ac;
  set_state(r, CONN_CONNECTING);
  uv_timer_start(&r->timer, on_connect_timeout, r->connect_timeout_ms, 0);
  /* Sent first on the new connection, ahead of any command of ours. */
  if (r->db != 0)
    redisAsyncCommand(ac, on_select, NULL, "SELECT %d", r->db);
}

static void start_connect(bt_redis_t *r) {
  set_state(r, CONN_RESOLVING);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
  r->gai.data = r;
  int rc = uv_getaddrinfo(r->app->loop, &r->gai, on_resolved, r->host, NULL, &hints);
  if (rc != 0) {
    schedule_retry(r, uv_strerror(rc));
    return;
  }
  r->resolving = true;
}

static void on_timer_closed(uv_handle_t *h) {
  bt_redis_t *r = h->data;
  r->timer_closed = true;
  if (!r->resolving)
    free(r);
}

static void on_drain(bt_app_t *app, void *arg) {
  bt_redis_t *r = arg;
  r->draining = true;
  update_hold(r);
}

static void on_app_close(bt_app_t *app, void *arg) {
  bt_redis_t *r = arg;
  set_state(r, CONN_CLOSED);
  uv_timer_stop(&r->timer);
  if (r->resolving)
    uv_cancel((uv_req_t *)&r->gai); /* on_resolved still runs, with UV_ECANCELED */
  /* The drain waited for pending replies; any command sent since completes now with
   * BT_ECANCELED. */
  if (r->ac)
    redisAsyncFree(r->ac);
  r->ac = NULL;
  uv_close((uv_handle_t *)&r->timer, on_timer_closed);
}

static bool ready(void *arg) { return bt_redis_ready(arg); }

/* Accepts redis://host:port[/db]. */
static int parse_url(bt_redis_t *r, const char *url, char *errstr) {
  const char *p = url && strncmp(url, "redis://", 8) == 0 ? url + 8 : NULL;
  const char *colon = p ? strchr(p, ':') : NULL;
  char *end = NULL;
  long port = colon ? strtol(colon + 1, &end, 10) : 0;
  long db = 0;
  if (end && *end == '/')
    db = strtol(end + 1, &end, 10);
  if (!colon || colon == p || (size_t)(colon - p) >= sizeof r->host || port < 1 ||
      port > 65535 || !end || *end != '\0' || db < 0 || db > 1000000) {
    snprintf(errstr, 256, "redis url \"%s\": expected redis://host:port[/db]", url ? url : "");
    return BT_EINVAL;
  }
  memcpy(r->host, p, (size_t)(colon - p));
  r->host[colon - p] = '\0';
  snprintf(r->port, sizeof r->port, "%ld", port);
  r->db = (int)db;
  return 0;
}

int bt_redis_new(bt_redis_t **out, bt_app_t *app, const bt_redis_config_t *cfg, char *errstr) {
  bt_redis_t *r = calloc(1, sizeof *r);
  if (!r)
    return BT_ENOMEM;
  if (parse_url(r, cfg->url, errstr) != 0) {
    free(r);
    return BT_EINVAL;
  }
  r->app = app;
  r->max_pending = cfg->max_pending ? cfg->max_pending : 65536;
  r->connect_timeout_ms = cfg->connect_timeout_ms ? cfg->connect_timeout_ms : 2000;
  r->backoff_min_ms = cfg->backoff_min_ms ? cfg->backoff_min_ms : 100;
  r->backoff_max_ms = cfg->backoff_max_ms ? cfg->backoff_max_ms : 5000;
  r->backoff_ms = r->backoff_min_ms;
  r->state = CONN_DISCONNECTED;
  uv_timer_init(app->loop, &r->timer);
  r->timer.data = r;
  bt_app_add_dependency(app, "redis", ready, r);
  bt_app_on_shutdown(app, on_drain, on_app_close, r);
  start_connect(r);
  *out = r;
  return 0;
}

/* Checks that n more commands may be sent now. */
static int admit(bt_redis_t *r, size_t n) {
  if (r->state == CONN_CLOSED)
    return BT_ECANCELED;
  if (r->state != CONN_CONNECTED)
    return BT_ENOTCONN;
  if (n > r->max_pending - r->pending)
    return BT_EAGAIN;
  return 0;
}

static int reply_err(bt_redis_t *r) {
  return r->state == CONN_CLOSED ? BT_ECANCELED : BT_ECONNRESET;
}

static void on_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  command_t *cmd = privdata;
  bt_redis_t *r = ac->data;
  r->pending--;
  if (cmd->cb)
    cmd->cb(r, reply ? 0 : reply_err(r), reply, cmd->arg);
  free(cmd);
  update_hold(r);
}

/* Sends one formatted command; cmd is freed by on_reply, or here on failure. */
static int send_formatted(bt_redis_t *r, redisCallbackFn *fn, void *privdata, const char *buf,
                          size_t len) {
  /* hiredis refuses only while its context is being torn down: a disconnect in progress. */
  if (redisAsyncFormattedCommand(r->ac, fn, privdata, buf, len) != REDIS_OK)
    return BT_ENOTCONN;
  r->pending++;
  return 0;
}

static int command_formatted(bt_redis_t *r, bt_redis_reply_cb cb, void *arg, char *buf, int len) {
  int rc = len < 0 ? BT_EINVAL : admit(r, 1);
  command_t *cmd = rc == 0 ? malloc(sizeof *cmd) : NULL;
  if (rc == 0 && !cmd)
    rc = BT_ENOMEM;
  if (rc == 0) {
    *cmd = (command_t){.cb = cb, .arg = arg};
    rc = send_formatted(r, on_reply, cmd, buf, (size_t)len);
    if (rc != 0)
      free(cmd);
  }
  redisFreeCommand(buf);
  return rc;
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

bt_redis_batch_t *bt_redis_batch_new(bt_redis_t *r) {
  bt_redis_batch_t *b = calloc(1, sizeof *b);
  if (!b)
    return NULL;
  b->r = r;
  bt_buf_init(&b->cmds, 0);
  return b;
}

void bt_redis_batch_free(bt_redis_batch_t *b) {
  if (!b)
    return;
  for (size_t i = 0; b->replies && i < b->n; i++)
    freeReplyObject(b->replies[i]);
  free(b->replies);
  free(b->lens);
  bt_buf_free(&b->cmds);
  free(b);
}

size_t bt_redis_batch_len(const bt_redis_batch_t *b) { return b->n; }

static int batch_push(bt_redis_batch_t *b, char *buf, int len) {
  int rc = len < 0 ? BT_EINVAL : 0;
  if (rc == 0 && b->n == b->cap) {
    size_t cap = b->cap ? b->cap * 2 : 16;
    size_t *lens = realloc(b->lens, cap * sizeof *lens);
    if (!lens)
      rc = BT_ENOMEM;
    else {
      b->lens = lens;
      b->cap = cap;
    }
  }
  if (rc == 0)
    rc = bt_buf_append(&b->cmds, buf, (size_t)len);
  if (rc == 0)
    b->lens[b->n++] = (size_t)len;
  else
    b->broken = true; /* send() refuses the batch rather than run part of it */
  redisFreeCommand(buf);
  return rc;
}

int bt_redis_batch_add_argv(bt_redis_batch_t *b, int argc, const char *const *argv,
                            const size_t *argvlen) {
  char *buf = NULL;
  int len = redisFormatCommandArgv(&buf, argc, (const char **)argv, argvlen);
  return batch_push(b, buf, len);
}

int bt_redis_batch_addf(bt_redis_batch_t *b, const char *fmt, ...) {
  char *buf = NULL;
  va_list ap;
  va_start(ap, fmt);
  int len = redisvFormatCommand(&buf, fmt, ap);
  va_end(ap);
  return batch_push(b, buf, len);
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

static void on_batch_reply(redisAsyncContext *ac, void *reply, void *privdata) {
  bt_redis_batch_t *b = privdata;
  bt_redis_t *r = b->r;
  r->pending--;
  redisReply *copy = reply ? reply_dup(reply) : NULL;
  if (!copy && !b->err)
    b->err = reply ? BT_ENOMEM : reply_err(r);
  b->replies[b->received++] = copy;
  if (b->received == b->sent) {
    b->cb(r, b->err, (const redisReply *const *)b->replies, b->n, b->arg);
    bt_redis_batch_free(b);
  }
  update_hold(r);
}

int bt_redis_batch_send(bt_redis_batch_t *b, bt_redis_batch_cb cb, void *arg) {
  bt_redis_t *r = b->r;
  int rc = b->broken || b->n == 0 ? BT_EINVAL : admit(r, b->n);
  if (rc == 0 && !(b->replies = calloc(b->n, sizeof *b->replies)))
    rc = BT_ENOMEM;
  if (rc != 0) {
    bt_redis_batch_free(b);
    return rc;
  }
  b->cb = cb;
  b->arg = arg;
  /* Each command joins hiredis's output buffer; the adapter writes them all in one go once
   * the loop polls the socket, which is what makes this a pipeline. */
  for (size_t off = 0; b->sent < b->n; off += b->lens[b->sent++])
    if (send_formatted(r, on_batch_reply, b, b->cmds.data + off, b->lens[b->sent]) != 0)
      break;
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

bool bt_redis_ready(bt_redis_t *r) { return r->state == CONN_CONNECTED; }

unsigned bt_redis_pending(const bt_redis_t *r) { return r->pending; }
