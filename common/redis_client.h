/* bt_redis_t: one hiredis async connection on the loop, reconnected with backoff, with
 * single commands and pipelined batches. A connection is usable (CONNECTED, ready) only after
 * its handshake (AUTH, SELECT, PING) was answered. Every wait has a deadline: the connect
 * plus handshake, and the oldest command awaiting its reply. Commands issued while
 * disconnected fail at once with BT_ENOTCONN (no queueing: the caller decides whether to
 * retry or answer 503). Request/reply commands only: SUBSCRIBE and MONITOR are not
 * supported. */
#ifndef BT_REDIS_CLIENT_H
#define BT_REDIS_CLIENT_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "errors.h"
#include "resolver.h"

typedef struct bt_redis bt_redis_t;
typedef struct bt_redis_batch bt_redis_batch_t;

/* The signature of bt_resolve(), which is the default. Another function (service discovery,
 * or a test that needs a name with several addresses) must return a handle that
 * bt_resolve_cancel() accepts, i.e. one made by bt_resolve() itself. */
typedef int (*bt_redis_resolve_fn)(uv_loop_t *loop, const char *host, bt_resolve_cb cb,
                                   void *arg, bt_resolve_req_t **out);

typedef struct bt_redis_config {
  /* redis://[[user]:password@]host:port[/db]; user and password may be %-encoded; host may
   * be a name (every address it resolves to is tried in turn), an IPv4 address or an IPv6
   * address in brackets. Copied. */
  const char *url;
  /* Names the client in /readyz and in logs ("redis_cache"); copied. Required, so that two
   * clients in one app do not both report as "redis". */
  const char *name;
  unsigned max_pending;         /* commands awaiting replies; past it BT_EAGAIN; 0 = 65536 */
  size_t max_pending_bytes;     /* bytes of those commands; past it BT_EAGAIN; 0 = 64 MiB */
  uint32_t connect_timeout_ms;  /* TCP connect plus handshake, per address; 0 = 2000 */
  /* The oldest command awaiting its reply longer than this breaks the connection, and every
   * pending command fails with BT_ECONNRESET. Must exceed the block time of blocking
   * commands (BLPOP ...). 0 = 5000. */
  uint32_t command_timeout_ms;
  uint32_t backoff_min_ms;      /* first reconnect delay, doubled per failure, jittered; 0 = 100 */
  uint32_t backoff_max_ms;      /* 0 = 5000 */
  bt_redis_resolve_fn resolve;  /* NULL = bt_resolve */
} bt_redis_config_t;

/* err is 0 or a BT_E* code: BT_ECONNRESET when the connection was lost or timed out before
 * the reply (the command may or may not have run), BT_ECANCELED at shutdown. reply is
 * borrowed, NULL when err != 0; a Redis error reply is a reply (type REDIS_REPLY_ERROR), not
 * an err. */
typedef void (*bt_redis_reply_cb)(bt_redis_t *r, int err, const redisReply *reply, void *arg);

/* One completion for a whole batch. replies[i] answers the i-th command; replies and the
 * array are borrowed. err != 0 means the connection was lost midway: replies that did not
 * arrive are NULL. */
typedef void (*bt_redis_batch_cb)(bt_redis_t *r, int err, const redisReply *const *replies,
                                  size_t n, void *arg);

/* Creates the client, starts connecting, adds it to app's readiness as cfg->name, and
 * registers its shutdown hooks (the drain waits for pending replies). Returns 0, or
 * BT_EINVAL with errstr (256 bytes) naming the bad setting (a password is never copied into
 * it), or BT_ENOMEM. */
int bt_redis_new(bt_redis_t **out, bt_app_t *app, const bt_redis_config_t *cfg,
                 char *errstr) BT_MUSTCHECK;

/* Sends one command given as argv (copied). Returns 0, after which cb (may be NULL) runs
 * exactly once, later; or BT_ENOTCONN, BT_EAGAIN (past the count or byte budget),
 * BT_ECANCELED (shutting down), BT_EINVAL (fails to format) and cb never runs. */
int bt_redis_command_argv(bt_redis_t *r, bt_redis_reply_cb cb, void *arg, int argc,
                          const char *const *argv, const size_t *argvlen) BT_MUSTCHECK;
/* The same with a hiredis format string ("SET %s %b"). */
int bt_redis_command(bt_redis_t *r, bt_redis_reply_cb cb, void *arg, const char *fmt, ...)
    BT_MUSTCHECK;

/* A batch collects commands and sends them back to back in one write; Redis answers them in
 * order. Build it with add/addf, then send (which takes ownership) or free. */
bt_redis_batch_t *bt_redis_batch_new(bt_redis_t *r);
int bt_redis_batch_add_argv(bt_redis_batch_t *b, int argc, const char *const *argv,
                            const size_t *argvlen) BT_MUSTCHECK;
int bt_redis_batch_addf(bt_redis_batch_t *b, const char *fmt, ...) BT_MUSTCHECK;
size_t bt_redis_batch_len(const bt_redis_batch_t *b);
/* Sends the batch and takes ownership of b in every case. Returns 0, after which cb runs
 * exactly once, later; or BT_ENOTCONN / BT_EAGAIN / BT_ECANCELED / BT_EINVAL (empty or
 * failed to build) and cb never runs. */
int bt_redis_batch_send(bt_redis_batch_t *b, bt_redis_batch_cb cb, void *arg) BT_MUSTCHECK;
void bt_redis_batch_free(bt_redis_batch_t *b);

/* Whether the connection is up and its handshake done. */
bool bt_redis_ready(bt_redis_t *r);
/* Commands awaiting replies, and their bytes (what the budgets count). */
unsigned bt_redis_pending(const bt_redis_t *r);
size_t bt_redis_pending_bytes(const bt_redis_t *r);
/* Why the last connection attempt failed or the last connection ended ("" if none yet);
 * names the address and the fault ("127.0.0.1:6379: AUTH refused: WRONGPASS ..."). */
const char *bt_redis_errstr(const bt_redis_t *r);

/* Internal, for redis_script.c: cmd (len bytes, RESP-formatted, copied) is sent; when its
 * reply is a NOSCRIPT error and the connection is still up, fallback (copied) is sent in its
 * place and its reply is the one delivered. */
int bt__redis_command_fallback(bt_redis_t *r, bt_redis_reply_cb cb, void *arg, const char *cmd,
                               size_t len, const char *fallback, size_t flen) BT_MUSTCHECK;
int bt__redis_batch_add_fallback(bt_redis_batch_t *b, const char *cmd, size_t len,
                                 const char *fallback, size_t flen) BT_MUSTCHECK;

#endif
