/* bt_pg_listener_t: a connection of its own that LISTENs on a set of channels and delivers
 * every NOTIFY on the loop. Notifications sent while it was disconnected are lost (Postgres
 * queues them only for sessions listening at the time), so after every (re)connect, once
 * LISTEN is in place again, it tells its owner to run a catch-up query. */
#ifndef BT_PG_LISTENER_H
#define BT_PG_LISTENER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "app.h"
#include "pg_pool.h"

typedef struct bt_pg_listener bt_pg_listener_t;

/* LISTEN is in place on a new session (the first, or one after a reconnect): anything notified
 * before this moment may have been missed, so read the state the notifications are about. */
typedef void (*bt_pg_listening_cb)(void *arg);

/* Zero selects the pool's default. */
typedef struct bt_pg_listener_config {
  const char *dsn;                 /* copied */
  const char *name;                /* label in logs ["pg_listener"]; copied */
  const char *const *channels;     /* copied; each quoted as an identifier */
  size_t nchannels;                /* 1..64 */
  bt_pg_notify_cb on_notify;       /* required */
  bt_pg_listening_cb on_listening; /* required */
  void *arg;                       /* passed to both */
  uint64_t connect_timeout_ms, reconnect_min_ms, reconnect_max_ms, job_timeout_ms;
  bt_pg_stats_t *stats;            /* borrowed, may be NULL */
} bt_pg_listener_config_t;

/* Creates the listener; it connects on the loop's next iteration. Returns 0 and *out,
 * BT_EINVAL (bad config or DSN) or BT_ENOMEM. */
int bt_pg_listener_new(bt_pg_listener_t **out, uv_loop_t *loop,
                       const bt_pg_listener_config_t *cfg) BT_MUSTCHECK;
/* Readiness (a bt_app_ready_cb): connected with LISTEN in place. */
bool bt_pg_listener_ready(void *listener);
/* Wires the listener into the app: a readiness dependency named `dep` (borrowed) and a close
 * hook. */
void bt_pg_listener_attach(bt_pg_listener_t *l, bt_app_t *app, const char *dep);
/* Stops delivering at once and frees the listener from the loop; `l` must not be used after. */
void bt_pg_listener_close(bt_pg_listener_t *l);

#endif
