/* bt_kafka_producer_t: an idempotent (acks=all) Kafka producer on the loop. Every accepted
 * message completes its caller's callback exactly once, from its delivery report; a full
 * local queue is reported at once as BT_EAGAIN (backpressure), never by blocking. */
#ifndef BT_KAFKA_PRODUCER_H
#define BT_KAFKA_PRODUCER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "app.h"
#include "errors.h"
#include "metrics.h"

typedef struct bt_kafka_producer bt_kafka_producer_t;

typedef struct bt_kafka_producer_config {
  const char *brokers;            /* bootstrap list "host:port,..." (borrowed during new) */
  uint32_t delivery_timeout_ms;   /* message.timeout.ms: a report errs after this; 0 = 30000 */
  uint32_t queue_max_messages;    /* local queue bound in messages; 0 = 100000 */
  uint32_t queue_max_kbytes;      /* local queue bound in KiB; 0 = 65536 */
  uint32_t linger_ms;             /* batching delay; 0 sends at once */
  uint32_t stats_interval_ms;     /* broker health refresh; 0 = 1000 */
} bt_kafka_producer_config_t;

#define BT_KAFKA_PARTITION_ANY (-1) /* let the partitioner choose (by key) */

typedef struct bt_kafka_header {
  const char *name;  /* e.g. "ce_id", "traceparent" */
  const void *value;
  size_t len;
} bt_kafka_header_t;

/* One record to produce. Everything is borrowed: produce() copies what it keeps. */
typedef struct bt_kafka_record {
  const char *topic;
  int32_t partition;              /* BT_KAFKA_PARTITION_ANY or an explicit partition */
  const void *key;                /* NULL for no key */
  size_t key_len;
  const void *value;
  size_t value_len;
  const bt_kafka_header_t *headers;
  size_t nheaders;
} bt_kafka_record_t;

/* The outcome of one message. err is 0 or a BT_E* code (BT_ETIMEDOUT when the delivery
 * timeout passed, BT_ECANCELED when purged at shutdown, BT_EIO otherwise); kafka_err and
 * errstr carry librdkafka's detail. partition and offset are valid when err is 0. */
typedef struct bt_kafka_delivery {
  int err;
  int kafka_err;       /* rd_kafka_resp_err_t */
  const char *errstr;  /* borrowed, "" on success */
  int32_t partition;
  int64_t offset;
} bt_kafka_delivery_t;

/* Called once per accepted message, on the loop. d is borrowed. */
typedef void (*bt_kafka_delivery_cb)(const bt_kafka_delivery_t *d, void *opaque);

/* Counters, updated on the loop. */
typedef struct bt_kafka_producer_stats {
  bt_gauge_t in_flight_msgs;   /* accepted, report not yet seen */
  bt_gauge_t in_flight_bytes;  /* key + value bytes of those */
  bt_counter_t delivered;
  bt_counter_t failed;
  bt_counter_t queue_full;     /* produce() calls refused with BT_EAGAIN */
} bt_kafka_producer_stats_t;

/* Creates the producer, adds it to app's readiness as "kafka_producer", and registers its
 * drain and close hooks on app: the drain holds the
 * app until every in-flight message is reported (bounded by the app's deadline); the close
 * purges what is left (their callbacks see BT_ECANCELED) and destroys the handle.
 * Returns 0 or BT_EINVAL with errstr (256 bytes) naming the bad setting. */
int bt_kafka_producer_new(bt_kafka_producer_t **out, bt_app_t *app,
                          const bt_kafka_producer_config_t *cfg, char *errstr) BT_MUSTCHECK;

/* Enqueues one message (copied). On 0, cb(d, opaque) runs exactly once later, on the loop,
 * never from inside this call. On error cb never runs: BT_EAGAIN when the local queue is full
 * (retry later or answer 429), BT_ENOENT for an unknown topic or partition, BT_ERANGE for a
 * message that is too large, BT_EIO after a fatal producer error, BT_ECANCELED once the
 * app's close phase has begun, BT_ENOMEM. */
int bt_kafka_producer_produce(bt_kafka_producer_t *p, const bt_kafka_record_t *rec,
                              bt_kafka_delivery_cb cb, void *opaque) BT_MUSTCHECK;

/* Whether a broker is reachable and the producer is usable. Never blocks. */
bool bt_kafka_producer_ready(bt_kafka_producer_t *p);

/* Borrowed; lives as long as the producer. */
const bt_kafka_producer_stats_t *bt_kafka_producer_stats(const bt_kafka_producer_t *p);

/* Registers the stats as baton_kafka_producer_* metrics. Once per process: the names are
 * fixed, so a second producer's stats stay unregistered. */
void bt_kafka_producer_register_metrics(bt_kafka_producer_t *p);

#endif
