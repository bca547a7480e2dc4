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
  const char *name;               /* readiness dependency name (borrowed for the producer's
                                     life; a literal); NULL = "kafka_producer" */
  const char *brokers;            /* bootstrap list "host:port,..." (borrowed during new) */
  const char *properties;         /* BATON_KAFKA_PROPERTIES pass-through (kafka_props.h);
                                     borrowed during new; NULL = none */
  uint32_t delivery_timeout_ms;   /* message.timeout.ms: a report errs after this; 0 = 30000 */
  uint32_t queue_max_messages;    /* local queue bound in messages; 0 = 100000 */
  uint32_t queue_max_kbytes;      /* local queue bound in KiB; 0 = 65536 */
  uint32_t linger_ms;             /* batching delay; 0 sends at once */
  uint32_t message_max_bytes;     /* message.max.bytes: larger records are refused at produce
                                     (BT_ERANGE); 0 = 1000000 */
  uint32_t stats_interval_ms;     /* broker health refresh; 0 = 1000 */
  /* Gap-less ordering (enable.gapless.guarantee). Without it a permanent error on one batch
   * fails only that batch while later records of the same partition are written, so a caller
   * that re-sends the failed record puts v6, v5, v6 in the partition. With it such an error
   * is fatal instead: nothing after the gap is written, the app fails (crash-only, see
   * kafka_client.h) and a restarted relay re-sends from its checkpoint in order, duplicates
   * possible. Records failing by delivery timeout are not covered (librdkafka's documented
   * limit); they come back with possibly_persisted set. Turn it on for a producer whose
   * caller re-sends in order (the relay); leave it off where one bad record must not stop the
   * process (publish). */
  bool gapless;
  /* A fatal error (the gap-less guarantee's, a fenced epoch) does not fail the app: the
   * producer refuses messages (BT_EIO) until its owner calls bt_kafka_producer_renew(), and
   * stays ready meanwhile. For an owner that re-sends from a checkpoint in order (the outbox
   * relay): a fresh handle has nothing stale in flight, so the re-sent records follow what
   * was acknowledged without a gap and without a reordering retry. */
  bool renew_on_fatal;
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
 * errstr carry librdkafka's detail. partition and offset are valid when err is 0.
 * possibly_persisted is set on a failure whose request reached a broker without an answer
 * (a timeout in flight, a purge in flight): the record may be in Kafka all the same, so the
 * outcome is unknown, as BT_ECONNRESET is for pg_pool. A caller must not report such a
 * record as "not written"; re-sending it may duplicate it. */
typedef struct bt_kafka_delivery {
  int err;
  bool possibly_persisted;
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

/* Creates the producer, adds it to app's readiness as cfg->name, and registers its
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

/* Whether a fatal error made the handle unusable (only a renew_on_fatal producer lives on
 * with one). */
bool bt_kafka_producer_fatal(bt_kafka_producer_t *p);

/* Replaces a renew_on_fatal producer's handle with a fresh one (same settings, a new
 * idempotent producer id). Only with no message in flight: BT_EAGAIN otherwise, and BT_EINVAL
 * for a producer made without renew_on_fatal. Blocks the loop while librdkafka joins the old
 * handle's threads (milliseconds; bounded by the same backstop as the close). Not from inside
 * a delivery callback of this producer. Returns 0, or BT_EINVAL with errstr (256 bytes). */
int bt_kafka_producer_renew(bt_kafka_producer_t *p, char *errstr) BT_MUSTCHECK;

/* Borrowed; lives as long as the producer. */
const bt_kafka_producer_stats_t *bt_kafka_producer_stats(const bt_kafka_producer_t *p);

/* Registers the stats as baton_kafka_producer_* metrics. Once per process: the names are
 * fixed, so a second producer's stats stay unregistered. */
void bt_kafka_producer_register_metrics(bt_kafka_producer_t *p);

#endif
