/* bt_kafka_consumer_t: a Kafka group consumer on the loop. Messages reach a callback on the
 * loop thread; nothing is committed automatically: the caller commits a partition's next
 * offset after its own durable write, so a crash anywhere redelivers, never skips. */
#ifndef BT_KAFKA_CONSUMER_H
#define BT_KAFKA_CONSUMER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "errors.h"

typedef struct bt_kafka_consumer bt_kafka_consumer_t;

typedef struct bt_kafka_consumer_config {
  const char *brokers;             /* bootstrap list (borrowed during new) */
  const char *group_id;
  const char *const *topics;       /* subscription (borrowed during new) */
  size_t ntopics;
  const char *auto_offset_reset;   /* where a group without a commit starts; NULL = "earliest" */
  uint32_t session_timeout_ms;     /* 0 = 10000 */
  uint32_t stats_interval_ms;      /* broker health refresh; 0 = 1000 */
} bt_kafka_consumer_config_t;

/* One fetched record. Borrowed: valid only during the message callback. */
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
/* err is 0 or a BT_E* code (BT_ECANCELED if the consumer closed first). */
typedef void (*bt_kafka_commit_cb)(int err, void *arg);

/* Creates the consumer, subscribes, adds it to app's readiness as "kafka_consumer" and
 * registers its shutdown hooks: once the drain starts no further message is delivered
 * (undelivered ones stay uncommitted, so another member gets them), the drain waits for
 * pending commits, and close leaves the group without blocking the loop.
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

/* Stops fetching on every assigned partition (and those assigned later) until resume.
 * Messages fetched but not yet delivered are dropped and fetched again after resume, from
 * the position after the last delivered message. Idempotent. */
void bt_kafka_consumer_pause(bt_kafka_consumer_t *c);
void bt_kafka_consumer_resume(bt_kafka_consumer_t *c);

/* Value of the last header named name: 0 and *value, *len (borrowed like m), or BT_ENOENT. */
int bt_kafka_message_header(const bt_kafka_message_t *m, const char *name, const void **value,
                            size_t *len) BT_MUSTCHECK;

/* Whether a broker is reachable and the consumer is usable. Never blocks. */
bool bt_kafka_consumer_ready(bt_kafka_consumer_t *c);

#endif
