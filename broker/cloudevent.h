/* broker_event_t: one CloudEvent 1.0 as the broker accepts it, from any ingest format
 * (structured JSON, JSON batch, HTTP binary mode, protobuf EventBatch), validated and copied
 * into a request arena so that it outlives the parsed document. */
#ifndef BROKER_CLOUDEVENT_H
#define BROKER_CLOUDEVENT_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "arena.h"
#include "http_server.h"

#define BROKER_MAX_EXTENSIONS 32
#define BROKER_MAX_EXT_NAME 64

typedef struct broker_ext {
  const char *name; /* lower-case letters and digits */
  const char *value;
} broker_ext_t;

typedef struct broker_event {
  const char *id, *source, *type, *specversion;    /* required */
  const char *subject, *time, *datacontenttype, *dataschema; /* NULL when absent */
  const char *data; /* the record value: raw bytes (JSON text for JSON data); NULL if none */
  size_t data_len;
  broker_ext_t ext[BROKER_MAX_EXTENSIONS];
  unsigned next;
} broker_event_t;

/* Why a request's events were refused: the HTTP status (400, 413 or 415), a stable error
 * code, and for a bad event its index and attribute. */
typedef struct broker_parse_error {
  int status;
  const char *code;
  int index;           /* -1 when not about one event */
  char attribute[BROKER_MAX_EXT_NAME + 1];
  char detail[256];
} broker_parse_error_t;

/* Fills err (detail from the printf-style fmt) and returns -1, for the parsers of every
 * request format that shares broker_parse_error_t. */
int broker_parse_fail(broker_parse_error_t *err, int status, const char *code, int index,
                      const char *attribute, const char *fmt, ...) BT_PRINTF(6, 7);

/* Parses the request body by its Content-Type into at most max_events events, allocated in
 * arena. Returns 0, or -1 with err filled. Nothing is kept from req after it returns. */
int broker_events_parse(const bt_http_req_t *req, bt_arena_t *arena, size_t max_events,
                        broker_event_t **events, size_t *nevents, broker_parse_error_t *err);

/* Parses one structured-mode JSON event object (borrowed) into ev; `index` is used in errors. */
int broker_event_from_json(json_t *obj, int index, bt_arena_t *arena, broker_event_t *ev,
                           broker_parse_error_t *err);

/* Checks the CloudEvents 1.0 rules common to every format. */
int broker_event_validate(const broker_event_t *ev, int index, broker_parse_error_t *err);

/* Value of an extension, or NULL. */
const char *broker_event_ext(const broker_event_t *ev, const char *name);

/* The Kafka record key: the partitionkey extension, else `fallback` if non-NULL, else the
 * subject. (Publish passes NULL; the relay passes the stream id, which keeps a stream in one
 * partition.) */
const char *broker_event_key(const broker_event_t *ev, const char *fallback);

/* True for "YYYY-MM-DDTHH:MM:SS[.frac](Z|+HH:MM|-HH:MM)" with valid ranges. */
bool broker_rfc3339_valid(const char *s);

/* Serialises the event as a structured-mode JSON object (new reference). Data that is JSON
 * (by datacontenttype) is embedded as JSON, other data as data_base64. */
json_t *broker_event_to_json(const broker_event_t *ev);

#endif
