/* Helpers of the publish path that the relay shares: topic rules and the CloudEvents Kafka
 * binding (binary content mode). */
#ifndef BROKER_PUBLISH_H
#define BROKER_PUBLISH_H

#include <stdbool.h>
#include <stddef.h>

#include "arena.h"
#include "cloudevent.h"
#include "kafka_producer.h"

/* A legal Kafka topic name: 1-249 characters of [a-zA-Z0-9._-], not "." or "..". */
bool broker_topic_name_valid(const char *topic);
/* Whether `allow` (BATON_BROKER_TOPICS: names, or prefixes ending in '*'; NULL = all)
 * admits topic. */
bool broker_topic_allowed(const char *allow, const char *topic);
/* Fills out[] with the event's Kafka headers (ce_* attributes, content-type, extensions as
 * ce_<name>, traceparent/tracestate under their own names). Header names and values are
 * borrowed from ev or allocated in arena. Returns the number of headers. */
size_t broker_event_headers(const broker_event_t *ev, bt_arena_t *arena, bt_kafka_header_t *out,
                            size_t max);

/* An upper estimate of the Kafka record that carries ev with this key (NULL: none), as the
 * producer measures it against message.max.bytes: data, key, the headers of
 * broker_event_headers() and the record's framing. Extra headers a caller adds (the relay's
 * ce_stream, ce_streamversion) are not included. */
size_t broker_event_record_bytes(const broker_event_t *ev, const char *key);

#endif
