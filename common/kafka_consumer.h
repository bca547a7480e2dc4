/* bt_kafka_consumer_t: a Kafka consumer on the loop, in a group or (manual) on partitions the
 * service assigns itself. Messages reach a callback on the loop thread, one at a time or in
 * bounded batches; nothing is committed automatically: the caller commits (or stores, for a
 * coalesced commit) a partition's next offset after its own durable write, so a crash
 * anywhere redelivers, never skips. No call here waits for librdkafka's threads: assignment,
 * pause, resume and seek run on a worker (kafka_ctl.h). */
#ifndef BT_KAFKA_CONSUMER_H
#define BT_KAFKA_CONSUMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "errors.h"
#include "metrics.h"

typedef struct bt_kafka_consumer bt_kafka_consumer_t;

/* Start offsets an on_assign hook may set (anything >= 0 is an absolute offset). */
#define BT_KAFKA_OFFSET_STORED (-1000)   /* the group's committed offset, else the reset policy */
#define BT_KAFKA_OFFSET_BEGINNING (-2)
#define BT_KAFKA_OFFSET_END (-1)

/* One partition in an assignment hook. topic is borrowed for the hook's duration. */
typedef struct bt_kafka_partition {
  const char *topic;
  int32_t partition;
  int64_t offset; /* on_assign: where to start, BT_KAFKA_OFFSET_STORED unless the hook sets it */
} bt_kafka_partition_t;

/* One fetched record. Borrowed: valid only during the message callback, unless the handler
 * calls bt_kafka_consumer_keep(); then it stays valid until bt_kafka_consumer_release(). */
typedef struct bt_kafka_message {
  const char *topic;
  int32_t partition;
  int64_t offset;
  int64_t timestamp_ms;            /* -1 if the record has none */
  const void *key;                 /* NULL if absent */
  size_t key_len;
  const void *value;               /* NULL for a tombstone */
  size_t value_len;
  const void *raw;                 /* internal: the rd_kafka_message_t */
} bt_kafka_message_t;

typedef void (*bt_kafka_message_cb)(bt_kafka_consumer_t *c, const bt_kafka_message_t *m,
                                    void *arg);
/* A batch of 1..batch_max messages, in fetch order (per partition, offset order). The array
 * and the messages are borrowed like single messages. */
typedef void (*bt_kafka_batch_cb)(bt_kafka_consumer_t *c, bt_kafka_message_t *const *msgs,
                                  size_t n, void *arg);
/* Partitions newly assigned, before fetching starts. The hook may set parts[i].offset (the
 * projector starts from the offsets kept in its sinks); the array is borrowed. */
typedef void (*bt_kafka_assign_cb)(bt_kafka_consumer_t *c, bt_kafka_partition_t *parts,
                                   size_t n, void *arg);
/* Partitions taken away. lost = false: a revoke in good order; offsets stored so far are
 * committed right after the hook returns, so a handler that finishes (and stores) work for
 * these partitions inside the hook gets it committed. lost = true: the group has already given
 * them to another member (session timeout, fenced): commits for them fail, and work in hand
 * for them must be dropped, not committed. */
typedef void (*bt_kafka_revoke_cb)(bt_kafka_consumer_t *c, const bt_kafka_partition_t *parts,
                                   size_t n, bool lost, void *arg);
/* err is 0 or a BT_E* code (BT_ECANCELED if the consumer closed first). */
typedef void (*bt_kafka_commit_cb)(int err, void *arg);

typedef struct bt_kafka_consumer_config {
  const char *name;                /* readiness dependency name (borrowed for the consumer's
                                      life); NULL = "kafka_consumer" */
  const char *brokers;             /* bootstrap list (borrowed during new) */
  const char *properties;          /* BATON_KAFKA_PROPERTIES pass-through; NULL = none */
  const char *group_id;            /* required unless manual */
  const char *const *topics;       /* subscription (borrowed during new); unused when manual */
  size_t ntopics;
  bool manual;                     /* no group subscription: bt_kafka_consumer_assign() only */
  const char *auto_offset_reset;   /* where a group without a commit starts; NULL = "earliest" */
  const char *assignor;            /* partition.assignment.strategy, e.g. "cooperative-sticky";
                                      NULL = librdkafka's default (range,roundrobin) */
  const char *group_instance_id;   /* static membership (a restart inside the session timeout
                                      keeps its partitions); NULL = dynamic */
  uint32_t session_timeout_ms;     /* 0 = 10000 */
  uint32_t stats_interval_ms;      /* broker health and lag refresh; 0 = 1000, at most 60000 */
  uint32_t commit_interval_ms;     /* coalesced commit of stored offsets; 0 = 1000 */
  uint32_t batch_max;              /* most messages per on_batch call; 0 = 100 */
  uint32_t max_in_flight;          /* delivered, not released messages before delivery
                                      waits; as many more fetched ones are held meanwhile,
                                      and fetching pauses once half that many are; 0 = 10000 */
  bt_kafka_batch_cb on_batch;      /* optional: batch delivery instead of the message cb */
  bt_kafka_assign_cb on_assign;    /* optional */
  bt_kafka_revoke_cb on_revoke;    /* optional */
} bt_kafka_consumer_config_t;

typedef struct bt_kafka_consumer_stats {
  bt_gauge_t lag_messages;   /* sum over assigned partitions of high watermark - position */
  bt_gauge_t unreleased;     /* delivered messages not yet released */
  bt_gauge_t assigned;       /* partitions assigned */
  bt_counter_t delivered;
  bt_counter_t commits;      /* commit requests sent */
  bt_gauge_t fetched;        /* messages received from brokers, refetches included
                                (librdkafka's statistics; 0 before the first report) */
  bt_gauge_t held;           /* fetched, waiting for the budget or a resume to deliver */
  bt_counter_t budget_pauses;/* times fetching paused because the held queue filled */
  bt_counter_t seek_dropped; /* prefetched messages dropped while a resume's seek was pending */
} bt_kafka_consumer_stats_t;

/* Creates the consumer, subscribes (unless manual), adds it to app's readiness as cfg->name
 * and registers its shutdown hooks: once the drain starts no further message is delivered
 * (undelivered ones stay uncommitted, so another member gets them), stored offsets are
 * committed and the drain waits for pending commits, and close leaves the group without
 * blocking the loop. cb (single messages) may be NULL when cfg->on_batch is set.
 * Returns 0 or BT_EINVAL with errstr (256 bytes) naming the bad setting. */
int bt_kafka_consumer_new(bt_kafka_consumer_t **out, bt_app_t *app,
                          const bt_kafka_consumer_config_t *cfg, bt_kafka_message_cb cb,
                          void *arg, char *errstr) BT_MUSTCHECK;

/* Commits next_offset (the offset of the last processed message + 1) for one partition,
 * asynchronously. Returns 0, after which cb (may be NULL) runs exactly once with the
 * outcome, later, on the loop; or a BT_E* code (BT_ECANCELED once the consumer is closing),
 * and cb never runs. */
int bt_kafka_consumer_commit(bt_kafka_consumer_t *c, const char *topic, int32_t partition,
                             int64_t next_offset, bt_kafka_commit_cb cb, void *arg) BT_MUSTCHECK;

/* Stores m's offset + 1 as its partition's next commit, without a request: stored offsets are
 * committed together every commit_interval_ms, at a revoke and at the drain. BT_ENOENT if the
 * partition is no longer assigned (its work belongs to another member now). */
int bt_kafka_consumer_store(bt_kafka_consumer_t *c, const bt_kafka_message_t *m) BT_MUSTCHECK;

/* Keeps m (delivered to the current callback) valid past the callback. Every kept message
 * counts against max_in_flight until bt_kafka_consumer_release(c, m), which frees it. */
void bt_kafka_consumer_keep(bt_kafka_consumer_t *c, const bt_kafka_message_t *m);
void bt_kafka_consumer_release(bt_kafka_consumer_t *c, const bt_kafka_message_t *m);

/* Manual consumers only: replaces the assignment with parts (offsets as in on_assign;
 * copied), asynchronously. BT_EINVAL for a group consumer. */
int bt_kafka_consumer_assign(bt_kafka_consumer_t *c, const bt_kafka_partition_t *parts,
                             size_t n) BT_MUSTCHECK;

/* Stops delivery on every assigned partition (and those assigned later) until resume.
 * Messages fetched meanwhile are held (up to max_in_flight, after which fetching pauses) and
 * delivered after resume, in order, before anything newer; none is delivered twice.
 * Idempotent; never blocks. */
void bt_kafka_consumer_pause(bt_kafka_consumer_t *c);
void bt_kafka_consumer_resume(bt_kafka_consumer_t *c);

/* Lag of one assigned partition from librdkafka's cached high watermark (updated by every
 * fetch response; never a request): 0 and *lag, or BT_ENOENT while unknown. */
int bt_kafka_consumer_lag(bt_kafka_consumer_t *c, const char *topic, int32_t partition,
                          int64_t *lag) BT_MUSTCHECK;

/* Value of the last header named name: 0 and *value, *len (borrowed like m), or BT_ENOENT. */
int bt_kafka_message_header(const bt_kafka_message_t *m, const char *name, const void **value,
                            size_t *len) BT_MUSTCHECK;

/* The idx-th header of m (0-based, in record order): 0 and *name, *value, *len (borrowed like
 * m; value NULL for a header without one), or BT_ENOENT past the last. For services that pass
 * every header on (the projector's decoders and dead letters). */
int bt_kafka_message_header_at(const bt_kafka_message_t *m, size_t idx, const char **name,
                               const void **value, size_t *len) BT_MUSTCHECK;
/* Whether a broker is reachable and the consumer is usable. Never blocks. */
bool bt_kafka_consumer_ready(bt_kafka_consumer_t *c);

/* Borrowed; lives as long as the consumer. */
const bt_kafka_consumer_stats_t *bt_kafka_consumer_stats(const bt_kafka_consumer_t *c);

/* Registers the stats as baton_kafka_consumer_* metrics. Once per process, like the
 * producer's. */
void bt_kafka_consumer_register_metrics(bt_kafka_consumer_t *c);

#endif
