/* bt_redis_t: one hiredis async connection on the loop, reconnected with backoff, with
 * single commands and pipelined batches. Commands issued while disconnected fail at once
 * with BT_ENOTCONN (no queueing: the caller decides whether to retry or answer 503).
 * Request/reply commands only: SUBSCRIBE and MONITOR are not supported. */
#ifndef BT_REDIS_CLIENT_H
#define BT_REDIS_CLIENT_H

#include <hiredis/hiredis.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "errors.h"

typedef struct bt_redis bt_redis_t;
typedef struct bt_redis_batch bt_redis_batch_t;

typedef struct bt_redis_config {
  const char *url;              /* redis://host:port[/db] (borrowed during new) */
  unsigned max_pending;         /* commands awaiting replies; past it BT_EAGAIN; 0 = 65536 */
  uint32_t connect_timeout_ms;  /* 0 = 2000 */
  uint32_t backoff_min_ms;      /* first reconnect delay, doubled per failure; 0 = 100 */
  uint32_t backoff_max_ms;      /* 0 = 5000 */
} bt_redis_config_t;

/* err is 0 or a BT_E* code: BT_ECONNRESET when the connection was lost before the reply
 * (the command may or may not have run), BT_ECANCELED at shutdown. reply is borrowed, NULL
 * when err != 0; a Redis error reply is a reply (type REDIS_REPLY_ERROR), not an err. */
typedef void (*bt_redis_reply_cb)(bt_redis_t *r, int err, const redisReply *reply, void *arg);

/* One completion for a whole batch. replies[i] answers the i-th command; replies and the
 * array are borrowed. err != 0 means the connection was lost midway: replies that did not
 * arrive are NULL. */
typedef void (*bt_redis_batch_cb)(bt_redis_t *r, int err, const redisReply *const *replies,
                                  size_t n, void *arg);

/* Creates the client, starts connecting, adds it to app's readiness as "redis", and
 * registers its shutdown hooks (the drain waits for pending replies). Returns 0 or
 * BT_EINVAL with errstr (256 bytes) naming the bad setting. */
int bt_redis_new(bt_redis_t **out, bt_app_t *app, const bt_redis_config_t *cfg,
                 char *errstr) BT_MUSTCHECK;

/* Sends one command given as argv (copied). Returns 0, after which cb (may be NULL) runs
 * exactly once, later; or BT_ENOTCONN, BT_EAGAIN (too many pending), BT_ECANCELED
 * (shutting down) and cb never runs. */
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

/* Whether the connection is up. */
bool bt_redis_ready(bt_redis_t *r);
/* Commands awaiting replies. */
unsigned bt_redis_pending(const bt_redis_t *r);

#endif
