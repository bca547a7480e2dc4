/* broker_group_commit_t: queues concurrent appends to the event store and commits them in
 * groups, one baton.append_batch() call per transaction, so that many appends share one
 * commit (and one WAL flush). Each append still gets its own exact outcome. */
#ifndef BROKER_GROUP_COMMIT_H
#define BROKER_GROUP_COMMIT_H

#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "cloudevent.h"
#include "metrics.h"
#include "pg_pool.h"

#define BROKER_EXPECT_ANY (-1) /* expected_version "any"; "no_stream" is 0 */

typedef enum {
  BROKER_APPEND_APPENDED,          /* written: first/last version, position */
  BROKER_APPEND_DUPLICATE,         /* every id was stored already: the original versions */
  BROKER_APPEND_WRONG_VERSION,     /* current_version is the stream's true version */
  BROKER_APPEND_PARTIAL_DUPLICATE, /* `stored` of the ids are stored already; nothing written */
  BROKER_APPEND_ID_CONFLICT,       /* event `stored` (0-based) has a (source, id) stored with
                                    * other content; nothing written */
  BROKER_APPEND_PARTITIONKEY_CONFLICT, /* the stream's events carry another partitionkey */
  BROKER_APPEND_FAILED,            /* err says why; see broker_group_commit_submit */
} broker_append_status_t;

typedef struct broker_append broker_append_t;
typedef struct broker_group_commit broker_group_commit_t;

/* Called exactly once per submitted append, from the loop and never from inside
 * broker_group_commit_submit(). errmsg (borrowed, valid during the call) explains a FAILED
 * outcome and is "" otherwise. */
typedef void (*broker_append_cb)(broker_append_t *a, const char *errmsg);

struct broker_append {
  /* Input, set by the caller; everything is borrowed until the callback runs. The events'
   * (source, id) pairs must be unique within the append. */
  const char *stream;
  const char *partitionkey; /* the events' partitionkey extension (all the same), or NULL */
  int64_t expected; /* BROKER_EXPECT_ANY, or the stream's exact current version (0: none) */
  const broker_event_t *events;
  size_t nevents;
  broker_append_cb done;
  /* Outcome, valid in the callback. */
  broker_append_status_t status;
  /* FAILED only: BT_EAGAIN (Postgres pool saturated), BT_ENOTCONN / BT_ETIMEDOUT (nothing was
   * sent), BT_ECONNRESET (sent, outcome unknown: it may have committed), BT_EIO (Postgres
   * refused it, even alone, or a connection or shutdown error (SQLSTATE class 08 or 57)
   * failed its whole group; sqlstate says why), BT_ECANCELED (shutting down, not sent),
   * BT_ENOMEM. */
  int err;
  char sqlstate[6];
  int64_t first_version, last_version, position; /* APPENDED, DUPLICATE */
  int64_t current_version; /* the stream's version after this append was decided */
  int64_t stored;          /* PARTIAL_DUPLICATE */
  /* Private. */
  broker_append_t *next;
  size_t bytes; /* encoded size estimate, for the group's byte budget */
};

/* Counters the group commit updates; owned by the caller, which registers them and keeps
 * them alive as long as the metrics registry (as bt_pg_stats_t). */
typedef struct broker_group_commit_stats {
  bt_gauge_t queued;         /* appends waiting for a group */
  bt_histogram_t group_size; /* appends per group transaction */
  bt_histogram_t latency;    /* seconds from sending a group to its outcome */
  bt_counter_t groups;       /* group transactions sent */
  bt_counter_t split;        /* failed transactions that were split in two and retried */
} broker_group_commit_stats_t;

void broker_group_commit_stats_register(broker_group_commit_stats_t *s);

typedef struct broker_group_commit_config {
  bt_pg_pool_t *pg;     /* borrowed */
  bt_app_t *app;        /* its drain waits for queued and in-flight appends */
  size_t batch_max;     /* appends per group */
  size_t events_max;    /* events per group; must be >= the largest append allowed */
  size_t bytes_max;     /* encoded bytes per group (data counts twice, as hex); a group
                         * always takes its first append, whatever its size */
  size_t queue_max;     /* appends waiting; more are refused with BT_EAGAIN */
  unsigned concurrency; /* groups in flight at once (1 or 2); a second one starts only while
                         * a full group (batch_max appends) waits */
  broker_group_commit_stats_t *stats; /* borrowed */
  /* Called after a group that wrote events committed (before the appends' callbacks). */
  void (*committed)(void *arg);
  void *arg;
} broker_group_commit_config_t;

/* Creates the group commit and registers its drain and close hooks on cfg->app. Returns 0,
 * BT_EINVAL or BT_ENOMEM. The object frees itself after the app closes it. */
int broker_group_commit_new(broker_group_commit_t **out,
                            const broker_group_commit_config_t *cfg) BT_MUSTCHECK;

/* Queues `a` (borrowed until its callback). Returns 0, BT_EAGAIN when queue_max appends are
 * waiting already (answer 429), or BT_ECANCELED once closing; the callback is not called then. */
int broker_group_commit_submit(broker_group_commit_t *gc, broker_append_t *a) BT_MUSTCHECK;

/* Appends waiting for a group (for tests and logs). */
size_t broker_group_commit_queued(const broker_group_commit_t *gc);

#endif
