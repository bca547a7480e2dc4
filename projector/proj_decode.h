/* proj_decode: one Kafka record of a source topic to (event type, JSON document `$`), for the
 * three source formats. It reads a plain record struct, not the consumer's message, so the
 * consumer (Runtime v2's batch consume) fills proj_record_t and nothing here depends on it. */
#ifndef PROJ_DECODE_H
#define PROJ_DECODE_H

#include <jansson.h>
#include <stddef.h>
#include <stdint.h>

#include "proj_def.h"

typedef struct proj_header {
  const char *name;
  const void *value;           /* may be NULL for a header without a value */
  size_t len;
} proj_header_t;

/* A record as fetched. Everything is borrowed from the caller for the call's duration. */
typedef struct proj_record {
  const char *topic;
  int32_t partition;
  int64_t offset;
  const void *value;           /* NULL (or len 0) for a tombstone */
  size_t value_len;
  const proj_header_t *headers;
  size_t nheaders;
} proj_record_t;

typedef enum {
  PROJ_DECODED = 0,            /* out holds the event */
  PROJ_SKIPPED = 1,            /* nothing to project (a Debezium tombstone) */
  PROJ_POISON = 2,             /* undecodable: reason says why; it goes to the dead-letter topic */
} proj_decode_result_t;

/* The decoded event. type and doc are owned by the event: release with proj_event_clear. */
typedef struct proj_event {
  char *type;
  json_t *doc;
} proj_event_t;

/* Largest Debezium table name or event type accepted, so a type stays printable in a reason. */
#define PROJ_EVENT_TYPE_MAX 256

/* Decodes rec as fmt. On PROJ_POISON, reason (reasonlen bytes) names what is wrong with the
 * record; the caller adds topic, partition and offset to the dead letter. */
proj_decode_result_t proj_decode(proj_format_t fmt, const proj_record_t *rec, proj_event_t *out,
                                 char *reason, size_t reasonlen);

void proj_event_clear(proj_event_t *e);

#endif
