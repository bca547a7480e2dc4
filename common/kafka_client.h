/* bt_kafka_client_t: the part a producer and a consumer share. It owns the rd_kafka_t,
 * serves its final queue on the loop, routes librdkafka's logs and errors into ours, and
 * tracks whether any broker is reachable for readiness. Embedded as the first member of
 * bt_kafka_producer_t and bt_kafka_consumer_t; services use those, not this. */
#ifndef BT_KAFKA_CLIENT_H
#define BT_KAFKA_CLIENT_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <stdint.h>

#include "app.h"
#include "errors.h"
#include "kafka_queue.h"

typedef struct bt_kafka_client {
  bt_app_t *app;
  const char *kind; /* "producer" or "consumer", for logs; a string literal */
  const char *name; /* readiness dependency name, from the caller (borrowed, outlives c) */
  rd_kafka_t *rk;
  rd_kafka_queue_t *rkq; /* the final queue served on the loop (our reference) */
  bt_kafka_queue_t queue;
  bool up;          /* a broker connection is usable, as last reported */
  bool stats_seen;  /* statistics are authoritative for `up` from the first report on */
  bool fatal;       /* librdkafka raised a fatal error: the handle is unusable */
  /* Set by the owner before the handle is created: a fatal error does not fail the app; the
   * owner replaces the handle (bt_kafka_client_renew) and goes on. */
  bool renewable;
  /* Optional, set by the owner: runs on the loop after each statistics report (the consumer
   * refreshes its lag gauges there, from cached watermarks). */
  void (*on_stats)(struct bt_kafka_client *c);
  /* Messages received from brokers (librdkafka's statistics, top-level rxmsgs), refetches
   * included; -1 before the first report. */
  int64_t rx_messages;
} bt_kafka_client_t;

/* Creates a configuration with the settings every client shares: bootstrap brokers,
 * statistics every stats_interval_ms (the source of broker health), the pass-through
 * properties (BATON_KAFKA_PROPERTIES syntax, see kafka_props.h; NULL for none), and log,
 * error and statistics callbacks bound to c. Returns NULL and fills errstr (256 bytes) on a
 * bad value. */
rd_kafka_conf_t *bt_kafka_client_conf(bt_kafka_client_t *c, const char *brokers,
                                      const char *properties, uint32_t stats_interval_ms,
                                      char *errstr);

/* Sets one librdkafka property; on failure fills errstr (256 bytes) naming it and returns
 * BT_EINVAL. */
int bt_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
                      char *errstr) BT_MUSTCHECK;

/* Creates the handle (takes ownership of conf, even on failure) without bridging a queue
 * yet, so the caller can redirect queues first, and logs the client's settings once with
 * secrets masked. name is the readiness dependency name (borrowed; NULL = "kafka_<kind>").
 * Returns 0 or BT_EINVAL with errstr. */
int bt_kafka_client_create(bt_kafka_client_t *c, bt_app_t *app, const char *kind,
                           const char *name, rd_kafka_type_t type, rd_kafka_conf_t *conf,
                           const char *properties, char *errstr) BT_MUSTCHECK;

/* Bridges rkq (ownership taken) into the loop; serve is called until the queue is empty. */
int bt_kafka_client_bridge(bt_kafka_client_t *c, rd_kafka_queue_t *rkq,
                           bt_kafka_queue_serve_fn serve, void *arg) BT_MUSTCHECK;

/* Whether a broker is reachable and no fatal error was raised. Never blocks. A fatal error
 * (fenced or gap-less guarantee broken) also fails the app: bt_app_fail() turns liveness off,
 * sets exit code BT_KAFKA_FATAL_EXIT and starts the drain, so a restart gets a fresh client.
 * A renewable client is the exception: it stays ready and its owner renews the handle. */
bool bt_kafka_client_ready(bt_kafka_client_t *c);

/* Replaces a renewable client's handle with a new one made from conf (ownership taken, even
 * on failure): the old handle's queue is unbridged and the handle destroyed (blocking, with
 * the same backstop as bt_kafka_client_destroy; call it with nothing of the old handle left
 * to serve), the new one's main queue bridged in its place. Connection state carries over
 * until the new handle's statistics say otherwise. Returns 0 or BT_EINVAL with errstr. */
int bt_kafka_client_renew(bt_kafka_client_t *c, rd_kafka_type_t type, rd_kafka_conf_t *conf,
                          char *errstr) BT_MUSTCHECK;

/* Records proof of a working connection (a delivery or a fetched message). */
void bt_kafka_client_note_up(bt_kafka_client_t *c);

/* Closes the bridge; closed(q) runs once its handle is closed. Call
 * bt_kafka_client_destroy() from there. */
void bt_kafka_client_close(bt_kafka_client_t *c, bt_kafka_queue_closed_fn closed);

/* Exit code of a process ended by a fatal Kafka client error. */
#define BT_KAFKA_FATAL_EXIT 70 /* EX_SOFTWARE */

/* Releases the queue and destroys the handle. rd_kafka_destroy() joins librdkafka's threads
 * and may block, so this is for shutdown only; an alarm() backstop ends the process (exit 1,
 * with a log line) if it blocks past the app's remaining shutdown deadline. */
void bt_kafka_client_destroy(bt_kafka_client_t *c);

/* Maps a librdkafka error to a BT_E* code. */
int bt_kafka_err(rd_kafka_resp_err_t err);

#endif
