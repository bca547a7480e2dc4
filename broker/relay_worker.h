/* The broker's side of the runtime's outbox relay (common/outbox_relay.h): what both of the
 * broker's sources (the event store, relay_store.c, and service outboxes, relay_outbox.c)
 * share. Rows hold CloudEvents; these helpers decode a row into a broker_event_t, check its
 * topic against the broker's rules, and hand it to the engine as a binary-mode record. */
#ifndef BROKER_RELAY_WORKER_H
#define BROKER_RELAY_WORKER_H

#include <libpq-fe.h>
#include <stddef.h>
#include <stdint.h>

#include "broker.h"
#include "cloudevent.h"
#include "outbox_relay.h"

/* The engine settings every broker relay shares, from b's configuration. label and lease
 * are borrowed until bt_outbox_relay_init() copies them. */
void relay_worker_config(const broker_t *b, const char *label, const char *lease,
                         bt_outbox_relay_config_t *cfg);

/* Decodes a row's data (bytea text, "\\x" hex; NULL for none) and extensions (jsonb text, may
 * be NULL) into ev, copying into the round's arena. Extension names in `skip` (NULL-terminated,
 * may be NULL) are left out. Returns 0, or -1 with the reason in why. */
int relay_worker_payload(bt_outbox_relay_t *r, broker_event_t *ev, const char *data,
                         const char *extensions, const char *const *skip, char *why, size_t whysz);

/* Why `topic` cannot take this relay's records (not a valid Kafka topic name, or not allowed
 * by BATON_BROKER_TOPICS), written into why; NULL when it can. topic may be NULL (no route). */
const char *relay_worker_topic_refused(const broker_t *b, const char *topic, char *why,
                                       size_t whysz);

/* Produces ev as the row at `position` to topic with key: the event's CloudEvents binary-mode
 * headers plus `extra`, with ev's data as the value. When `why` is not NULL the row is
 * rejected for that reason instead (bt_outbox_relay_reject: dead-letter topic, or hold).
 * Everything is borrowed for the call. Returns as bt_outbox_relay_produce. */
int relay_worker_produce(bt_outbox_relay_t *r, int64_t position, const char *topic,
                         const char *key, const broker_event_t *ev,
                         const bt_kafka_header_t *extra, size_t nextra,
                         const char *why) BT_MUSTCHECK;

/* A column's value, or NULL when it is SQL NULL. */
static inline const char *relay_col(const PGresult *res, int row, int c) {
  return PQgetisnull(res, row, c) ? NULL : PQgetvalue(res, row, c);
}

#endif
