/* bt_outbox_relay_t: the runtime's outbox relay. One instance drains one table of one Postgres
 * database into Kafka: it holds a leadership lease so that one replica relays at a time, and
 * runs rounds (read a batch after the durable progress, produce it in order, record the
 * progress once Kafka has acknowledged the delivered prefix). It gives its lease up when it
 * cannot produce, moves records Kafka refuses for good to a dead-letter topic, and shares a
 * producer budget with the other relays of the process.
 *
 * What a round reads and how progress is recorded belong to its source, a small interface
 * of callbacks (bt_outbox_relay_source_t). The engine knows positions (int64, increasing in
 * the order records must reach Kafka), records and leases; nothing about what they carry.
 * The broker's event-store relay and service-outbox relays are its sources today; the saga
 * engine's command outbox is meant to be the next.
 *
 * Order per key through a refused record needs the producer made with gapless and
 * renew_on_fatal (kafka_producer.h): the refusal then stops everything after it in its
 * partition, the relay renews the producer at its next round and re-sends from its progress.
 * With another producer a record written past a refused one comes before the re-sent one. */
#ifndef BT_OUTBOX_RELAY_H
#define BT_OUTBOX_RELAY_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "app.h"
#include "arena.h"
#include "backoff.h"
#include "kafka_producer.h"
#include "metrics.h"
#include "pg_pool.h"

typedef struct bt_outbox_relay bt_outbox_relay_t;

/* The lifecycle. A relay is a follower until it claims the lease; as leader it cycles
 * LEADER_IDLE -> READING -> PRODUCING -> SAVING -> READING or LEADER_IDLE, and BACKOFF after
 * a failure. RELEASING gives the lease back: during a drain (then STOPPED), or when the
 * leader cannot produce (then FOLLOWER, so a healthy replica takes over). */
typedef enum bt_outbox_relay_state {
  BT_OUTBOX_RELAY_FOLLOWER,    /* the timer starts the next claim */
  BT_OUTBOX_RELAY_CLAIMING,    /* a claim (and, once, the table setup) is in flight */
  BT_OUTBOX_RELAY_LEADER_IDLE, /* caught up; the poll timer or a nudge starts the next round */
  BT_OUTBOX_RELAY_READING,     /* lease renewal + read of the next batch in flight */
  BT_OUTBOX_RELAY_PRODUCING,   /* records handed to the producer, delivery reports pending */
  BT_OUTBOX_RELAY_SAVING,      /* lease renewal + progress update in flight */
  BT_OUTBOX_RELAY_BACKOFF,     /* a round failed; the timer retries it from the durable progress */
  BT_OUTBOX_RELAY_RELEASING,   /* the lease release is in flight */
  BT_OUTBOX_RELAY_STOPPED,
  BT_OUTBOX_RELAY_NSTATES
} bt_outbox_relay_state_t;

/* Storage for a source's statement parameters, owned by the engine for the call and valid
 * until the statements are submitted (the pool copies them then). */
typedef struct bt_outbox_relay_params {
  const char *v[4];
  char buf[2][32];
} bt_outbox_relay_params_t;

/* What a source provides. Every SQL string is a constant; values are parameters. The source's
 * state is r->src. */
typedef struct bt_outbox_relay_source {
  /* The lease table, as used in the claim, renew and release statements (a constant). */
  const char *lease_table;
  /* Idempotent statements that create the lease (and progress) tables and rows; run in the
   * claim transaction until they succeed once. Returns how many were written to out. */
  size_t (*setup)(bt_outbox_relay_t *r, bt_outbox_relay_params_t *p, bt_pg_stmt_t *out,
                  size_t max);
  /* The read statements of a round (at most 2), run after the lease renewal in the same
   * transaction, reading at most r->batch rows in position order. Returns their number. */
  size_t (*read)(bt_outbox_relay_t *r, bt_outbox_relay_params_t *p, bt_pg_stmt_t *out);
  /* Turns the read's results (borrowed; res[i] is read()'s statement i) into records,
   * calling bt_outbox_relay_produce() or _reject() for each row in order and stopping at the
   * first nonzero return. Sets the lag with bt_outbox_relay_lag(). Returns the rows read. */
  size_t (*on_read)(bt_outbox_relay_t *r, const PGresult *const *res);
  /* The statement (at most 1) that records that records [0, n) of the round are in Kafka
   * (their positions: bt_outbox_relay_position()). Values may live in r->arena. */
  size_t (*ack)(bt_outbox_relay_t *r, size_t n, bt_outbox_relay_params_t *p, bt_pg_stmt_t *out);
} bt_outbox_relay_source_t;

/* A producer budget shared by the relays of a process: together they keep at most max_msgs
 * records and max_bytes of keys and values in the producer. Size the producer's queue as
 * the publishers' limit plus this one, and neither side can starve the other. */
typedef struct bt_outbox_relay_budget {
  uint64_t max_msgs, max_bytes;
  uint64_t msgs, bytes;     /* in use */
  bt_counter_t exhausted;   /* rounds cut short by the budget */
} bt_outbox_relay_budget_t;

typedef struct bt_outbox_relay_config {
  const char *label;             /* logs and the metrics' relay="<label>" (copied) */
  const char *lease_name;        /* the row in the lease table; stable across replicas (copied) */
  const char *metrics_prefix;    /* e.g. "baton_broker_relay" (borrowed; a literal) */
  uint64_t lease_ms, poll_ms;
  size_t batch;                  /* most records per round */
  uint64_t backoff_min_ms, backoff_max_ms; /* 0: 100 and 5000 */
  /* Where a record goes that Kafka refuses for good (or a source rejects); NULL or "": such
   * a record holds the relay until someone fixes it (borrowed; must outlive the relay). */
  const char *dead_letter_topic;
  unsigned dead_letter_after;    /* non-retriable failures at one record before it moves; 0 = 1 */
  /* Consecutive rounds in which Kafka refused a record before the leader gives its lease up
   * (and waits a lease before claiming again); 0 = never. A producer that is not ready gives
   * it up at once. */
  unsigned max_failed_rounds;
} bt_outbox_relay_config_t;

/* Counters and gauges, rendered with a relay="<label>" label. */
typedef struct bt_outbox_relay_stats {
  bt_gauge_t leader;
  bt_gauge_t lag_events;
  bt_gauge_t lag_seconds;
  bt_counter_t published;
  bt_counter_t rounds;
  bt_counter_t errors_pg, errors_kafka, errors_data;
  bt_counter_t dead_lettered;
  bt_counter_t lease_given_up;
  bt_counter_t producer_renewed;
  char names[12][192];
} bt_outbox_relay_stats_t;

/* One produced record of the current round; the delivery opaque. */
typedef struct bt_outbox_relay_slot {
  bt_outbox_relay_t *r;
  int64_t position;
  size_t bytes;        /* charged to the budget */
  int err;             /* delivery outcome; 1 while pending */
  int kafka_err;
  bool dead;           /* sent to the dead-letter topic */
} bt_outbox_relay_slot_t;

struct bt_outbox_relay {
  bt_app_t *app;
  bt_pg_pool_t *pool;            /* owned when owns_pool */
  bool owns_pool;
  bt_kafka_producer_t *producer; /* borrowed */
  bt_outbox_relay_budget_t *budget; /* borrowed, may be NULL */
  const bt_outbox_relay_source_t *ops;
  void *src;                     /* the source's state, freed with free() once done */
  bt_outbox_relay_config_t cfg;
  char label[96];
  char lease_name[64];
  char holder[160];              /* hostname:pid:random, who we are in the lease table */

  bt_outbox_relay_state_t state;
  bool setup_done;
  bool stopping;                 /* the app is draining */
  bool nudged;                   /* new rows were committed while a round was running */
  bool lease_lost;               /* our lease may have passed to another replica */
  bool renew_inflight;
  bool closed;
  bool holding;                  /* we hold the app's drain */
  unsigned pg_inflight;
  unsigned handles_open;

  uv_timer_t timer;              /* claim, poll and backoff */
  uv_timer_t lease_timer;        /* keepalive while leader */
  bt_backoff_t backoff;
  uint64_t lease_deadline;       /* uv_now() until which the lease is surely ours */
  uint64_t renewed_at;
  uint64_t read_sent, save_sent, renew_sent;
  unsigned failed_rounds;        /* consecutive rounds with a Kafka failure */

  /* The record Kafka refused for good, until it is dead-lettered (or delivered). */
  int64_t nr_position;
  unsigned nr_count;
  char nr_error[200];

  /* The current round. */
  size_t batch;
  bt_outbox_relay_slot_t *slots; /* batch entries */
  size_t nrecords, pending, nread, ndelivered;
  bool round_error;              /* the round stopped at a failure (retry after a backoff) */
  bool round_kafka_error;        /* ... and Kafka was the cause */
  bool round_more;               /* the producer or the budget filled up: more rows wait */
  char round_errstr[200];
  bt_arena_t arena;              /* per-round memory */

  char claim_sql[640], renew_sql[256], release_sql[192];
  bt_outbox_relay_stats_t stats;
};

/* Initialises r (zeroed by the caller, which keeps it for the life of the process: the
 * metrics point into it) on app's loop. pool is taken over when owns_pool; producer and
 * budget are borrowed; src is taken over and freed with free() once the relay is done.
 * Does not start it. Returns 0 or BT_ENOMEM. */
int bt_outbox_relay_init(bt_outbox_relay_t *r, bt_app_t *app, bt_pg_pool_t *pool, bool owns_pool,
                         bt_kafka_producer_t *producer, bt_outbox_relay_budget_t *budget,
                         const bt_outbox_relay_config_t *cfg,
                         const bt_outbox_relay_source_t *ops, void *src) BT_MUSTCHECK;
/* Starts claiming at once. */
void bt_outbox_relay_start(bt_outbox_relay_t *r);
/* New rows were committed: start a round now if leader and idle. */
void bt_outbox_relay_nudge(bt_outbox_relay_t *r);
/* App drain: finish the current round, save it, give the lease back; holds the app until
 * then. */
void bt_outbox_relay_drain(bt_outbox_relay_t *r);
/* App close: closes the timers (and an owned pool); round memory and src are freed once
 * nothing of the relay is in flight. */
void bt_outbox_relay_close(bt_outbox_relay_t *r);
/* Registers the metrics of rs[0..n) (all with one metrics_prefix), family by family, and
 * the budget's (may be NULL). */
void bt_outbox_relay_register_metrics(bt_outbox_relay_t *const *rs, size_t n,
                                      bt_outbox_relay_budget_t *budget);
const char *bt_outbox_relay_state_name(bt_outbox_relay_state_t s);

/* For on_read, once per row in order: produce rec (everything borrowed for the call) as
 * the row at `position`. Returns 0, or a BT_E* code after which the source must stop (the
 * round ends with what was produced so far and goes on from there). A record that Kafka
 * refused for good in earlier rounds goes to the dead-letter topic instead, with headers
 * baton_dl_error, baton_dl_topic, baton_dl_relay and baton_dl_position added to its own. */
int bt_outbox_relay_produce(bt_outbox_relay_t *r, int64_t position,
                            const bt_kafka_record_t *rec) BT_MUSTCHECK;
/* For on_read: the row at `position` cannot go where it should (no valid or allowed topic,
 * an invalid record), for the reason `why`. With a dead-letter topic, rec (its topic
 * ignored; NULL for an empty record) goes there as above and the result is that of
 * produce(); without one, the relay holds at the row until it is fixed: counted, logged,
 * and BT_EINVAL returned. */
int bt_outbox_relay_reject(bt_outbox_relay_t *r, int64_t position, const bt_kafka_record_t *rec,
                           const char *why) BT_MUSTCHECK;
/* For on_read: the lag of the source (events waiting, age of the oldest in seconds). */
void bt_outbox_relay_lag(bt_outbox_relay_t *r, double events, double seconds);
/* For ack: the position of the round's record i. */
int64_t bt_outbox_relay_position(const bt_outbox_relay_t *r, size_t i);
/* For ack: the positions of records [0, n) as a Postgres bigint[] literal ("{4,5,9}"), in the
 * round's arena: a delete-after-ack source deletes exactly those. */
const char *bt_outbox_relay_positions_array(bt_outbox_relay_t *r, size_t n);

/* Whether a delivery error (librdkafka's rd_kafka_resp_err_t) means Kafka will refuse the
 * record whatever we do: too large, invalid, a topic that does not exist or is not ours. */
bool bt_outbox_relay_nonretriable(int kafka_err);

#endif
