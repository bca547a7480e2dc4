/* relay_worker_t: one outbox relay instance, i.e. one table drained into Kafka through one
 * Postgres pool. It holds a leadership lease so that one replica relays at a time, and runs
 * rounds: read a batch after the durable progress, produce it, record the progress once Kafka
 * has acknowledged. What is read and how progress is recorded belong to its source: the event
 * store (relay_store.c) or a service's outbox table (relay_outbox.c). */
#ifndef BROKER_RELAY_WORKER_H
#define BROKER_RELAY_WORKER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "arena.h"
#include "broker.h"
#include "cloudevent.h"
#include "metrics.h"
#include "pg_pool.h"

typedef struct relay_worker relay_worker_t;

/* The lifecycle. A worker is a follower until it claims the lease; as leader it cycles
 * LEADER_IDLE -> READING -> PRODUCING -> SAVING -> READING or LEADER_IDLE, and BACKOFF after
 * a failure. RELEASING gives the lease back during a drain; STOPPED is final. */
typedef enum relay_state {
  RELAY_FOLLOWER,    /* the timer starts the next claim */
  RELAY_CLAIMING,    /* a claim (and, once, the table setup) is in flight */
  RELAY_LEADER_IDLE, /* caught up; the poll timer or a nudge starts the next round */
  RELAY_READING,     /* lease renewal + read of the next batch in flight */
  RELAY_PRODUCING,   /* records handed to the producer, delivery reports pending */
  RELAY_SAVING,      /* lease renewal + progress update in flight */
  RELAY_BACKOFF,     /* a round failed; the timer retries it from the durable progress */
  RELAY_RELEASING,   /* draining: the lease release is in flight */
  RELAY_STOPPED,
  RELAY_NSTATES
} relay_state_t;

const char *relay_state_name(relay_state_t s);

/* Storage for a source's statement parameters, owned by the caller of a source operation and
 * valid until the statements are submitted (the pool copies them then). */
typedef struct relay_params {
  const char *v[4];
  char buf[2][32];
} relay_params_t;

/* What differs between the event store and a service outbox. Every SQL string is a constant;
 * values are passed as parameters. */
typedef struct relay_source_ops {
  /* Idempotent statements that create the lease and progress tables and their rows; run in
   * the claim transaction until they succeed once. Returns how many were written to out. */
  size_t (*setup)(relay_worker_t *w, relay_params_t *p, bt_pg_stmt_t *out, size_t max);
  /* The lease table, as used in the claim, renew and release statements. */
  const char *lease_table;
  /* The read statements of a round, run after the lease renewal in the same transaction,
   * reading at most w->batch rows. Returns how many were written to out (at most 2). */
  size_t (*read)(relay_worker_t *w, relay_params_t *p, bt_pg_stmt_t *out);
  /* Turns the read's results (borrowed; res[0..] are those of read()'s statements) into
   * records, calling relay_worker_produce() for each row in order and stopping when it
   * fails. Sets the lag gauges. Returns the number of rows read (for "the round was full"). */
  size_t (*on_read)(relay_worker_t *w, const PGresult *const *res);
  /* The statements that record that records [0, n) of the round are in Kafka. Values may be
   * allocated in the round's arena. Returns how many were written to out (at most 1). */
  size_t (*ack)(relay_worker_t *w, size_t n, relay_params_t *p, bt_pg_stmt_t *out);
} relay_source_ops_t;

/* Counters and gauges of one worker, rendered with a relay="<name>" label. */
typedef struct relay_worker_stats {
  bt_gauge_t leader;
  bt_gauge_t lag_events;
  bt_gauge_t lag_seconds;
  bt_counter_t published;
  bt_counter_t rounds;
  bt_counter_t errors_pg, errors_kafka, errors_data;
  char names[8][128];
} relay_worker_stats_t;

/* One produced record of the current round, and its delivery opaque. */
typedef struct relay_slot {
  relay_worker_t *w;
  int64_t position;
  int err;      /* delivery outcome; 1 while pending */
} relay_slot_t;

struct relay_worker {
  broker_t *b;
  bt_pg_pool_t *pool;          /* borrowed (the store's) or owned (an outbox's) */
  bool owns_pool;
  const relay_source_ops_t *ops;
  void *src;                   /* the source's own state */
  char name[32];               /* "store", "outbox0", ...: lease name and metrics label */
  char holder[160];            /* hostname:pid:random, who we are in the lease table */

  relay_state_t state;
  bool setup_done;
  bool stopping;               /* the app is draining */
  bool nudged;                 /* new events were committed while a round was running */
  bool lease_lost;             /* our lease may have passed to another replica */
  bool renew_inflight;         /* the keepalive renewal is in flight */
  bool closed;                 /* the app's close hook ran */
  bool holding;                /* we hold the app's drain */
  unsigned pg_inflight;        /* our requests in flight in the pool */
  unsigned handles_open;

  uv_timer_t timer;            /* claim, poll and backoff */
  uv_timer_t lease_timer;      /* keepalive while leader */
  uint64_t lease_ms, poll_ms, backoff_ms;
  uint64_t lease_deadline;     /* uv_now() until which the lease is surely ours */
  uint64_t renewed_at;         /* uv_now() when the last successful renewal was sent */
  uint64_t read_sent, save_sent, renew_sent;

  /* The current round. */
  size_t batch;                /* most records per round */
  relay_slot_t *slots;         /* batch entries */
  size_t nrecords;             /* produced this round */
  size_t pending;              /* delivery reports outstanding */
  size_t nread;                /* rows read this round */
  size_t ndelivered;           /* length of the delivered prefix */
  bool round_error;            /* the round stopped at a failure (retry after a backoff) */
  bool round_more;             /* the producer's queue filled up: more rows wait at once */
  char round_errstr[160];      /* the round's first delivery error, for the log */
  bt_arena_t arena;            /* per-round memory (decoded data, extensions, headers) */

  /* Statements built once from the source's lease table name (a constant, never input). */
  char claim_sql[640], renew_sql[256], release_sql[192];

  relay_worker_stats_t stats;
};

/* Initialises w (zeroed by the caller) on b's loop with a pool and a source; does not start
 * it. `name` (a short label of [a-z0-9]) is copied; src is taken over and freed with free()
 * once the worker is done. Returns 0 or BT_ENOMEM. */
int relay_worker_init(relay_worker_t *w, broker_t *b, bt_pg_pool_t *pool, bool owns_pool,
                      const relay_source_ops_t *ops, void *src, const char *name) BT_MUSTCHECK;
/* Starts claiming at once. */
void relay_worker_start(relay_worker_t *w);
/* New events were committed: start a round now if leader and idle. */
void relay_worker_nudge(relay_worker_t *w);
/* App drain: finish the current round, save it, give the lease back; holds the app until
 * then. */
void relay_worker_drain(relay_worker_t *w);
/* App close: closes the timers (and an owned pool). The worker frees its round memory and
 * source once nothing of it is in flight; the struct itself (with the stats the metrics
 * registry points at) belongs to the caller and lives as long as the process. */
void relay_worker_close(relay_worker_t *w);
/* Registers the metrics of workers[0..n), grouped by metric family. */
void relay_worker_register_metrics(relay_worker_t *const *workers, size_t n);

/* Called by a source's on_read for each row, in order. The record is the event's CloudEvents
 * binary-mode headers plus `extra` headers, with ev's data as the value. Everything is
 * borrowed for the call (the producer copies it). Returns 0, or a BT_E* code after which the
 * source must stop (the round ends with the records produced so far). A row the source cannot
 * turn into a record is reported with relay_worker_poison() instead. */
int relay_worker_produce(relay_worker_t *w, int64_t position, const char *topic,
                         const char *key, const broker_event_t *ev,
                         const bt_kafka_header_t *extra, size_t nextra) BT_MUSTCHECK;
/* Reports a row that cannot be relayed (bad topic name, invalid event): the round stops
 * before it and is retried after a backoff, so the row holds the relay up until someone fixes
 * it. Nothing after it is relayed first, which keeps order and loses nothing. */
void relay_worker_poison(relay_worker_t *w, int64_t position, const char *why);

/* Decodes a row's data (bytea text, "\\x" hex; NULL for none) and extensions (jsonb text, may
 * be NULL) into ev, copying into the round arena. Extension names in `skip` (NULL-terminated,
 * may be NULL) are left out. On a malformed value the row poisons the relay at `position` (see
 * relay_worker_poison) and -1 is returned. */
int relay_worker_payload(relay_worker_t *w, int64_t position, broker_event_t *ev,
                         const char *data, const char *extensions, const char *const *skip);

/* A column's value, or NULL when it is SQL NULL. */
static inline const char *relay_col(const PGresult *res, int row, int c) {
  return PQgetisnull(res, row, c) ? NULL : PQgetvalue(res, row, c);
}

#endif
