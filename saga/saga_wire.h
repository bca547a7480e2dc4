/* saga_wire: the wire format between the orchestrator and its participants (issue 8 §2).
 * Builds a command as a Kafka record in CloudEvents binary mode (JSON value, or a protobuf
 * baton.v1.SagaCommand when the plan says `encoding: protobuf`), and parses a reply from any
 * of the accepted forms (binary-mode headers, structured-mode JSON, protobuf SagaReply) into
 * one struct, with a message naming the field at fault when the input is malformed. */
#ifndef SAGA_WIRE_H
#define SAGA_WIRE_H

#include <jansson.h>
#include <stdint.h>

#include "kafka_producer.h"
#include "saga_def.h"
#include "saga_machine.h"

#define SAGA_MAX_ID 64             /* saga ids (UUIDs are 36) */
#define SAGA_WIRE_MAX_HEADERS 16
#define SAGA_MAX_TRACEPARENT 128

/* What one command is about. Everything is borrowed. */
typedef struct saga_command_ctx {
  const char *saga_id;
  const saga_plan_t *plan;
  uint32_t step, attempt;
  saga_kind_t kind;
  uint64_t deadline_unix_ms; /* the attempt's deadline (ce_deadline) */
  const char *traceparent;   /* W3C traceparent, or NULL */
  const json_t *input;       /* the saga's start payload */
  const json_t *results;     /* object: step name -> its reply data */
} saga_command_ctx_t;

/* One record ready for the outbox or a producer. Owns its storage; free with
 * saga_wire_msg_free(). headers[i].name/value point into the message. */
typedef struct saga_wire_msg {
  const char *topic; /* borrowed from the plan */
  const char *key;   /* the saga id (points into storage) */
  size_t key_len;
  bt_kafka_header_t headers[SAGA_WIRE_MAX_HEADERS];
  size_t nheaders;
  void *value; /* malloc'd */
  size_t value_len;
  char storage[1024]; /* header values */
  size_t used;
} saga_wire_msg_t;

/* Builds the command (or compensation) record. Returns 0, or BT_EINVAL with a message (an id
 * too long, a step out of range, a compensation the step does not have). */
int saga_wire_build_command(const saga_command_ctx_t *c, saga_wire_msg_t *out, char *err,
                            size_t errsz) BT_MUSTCHECK;
void saga_wire_msg_free(saga_wire_msg_t *m);

/* A reply in any form. The step is named (JSON forms: ce_sagastep is the step's name) or
 * numbered (protobuf: the index); saga_wire_reply_step() resolves it against the plan. */
typedef struct saga_reply {
  char saga_id[SAGA_MAX_ID + 1];
  char step_name[SAGA_MAX_NAME + 1]; /* "" when the reply numbered the step */
  int32_t step_index;                /* -1 when the reply named the step */
  uint32_t attempt;
  saga_kind_t kind;
  saga_outcome_t outcome;
  json_t *data; /* owned; the result or error object, or NULL when the reply carries none */
  char traceparent[SAGA_MAX_TRACEPARENT + 1]; /* "" when absent */
} saga_reply_t;

/* Parses a Kafka record: binary mode when a ce_specversion header is present, a protobuf
 * SagaReply when content-type names protobuf, else a structured-mode JSON CloudEvent.
 * headers/value are borrowed. Returns 0 (free the reply with saga_wire_reply_free) or
 * BT_EINVAL with a message naming the form and the field at fault. */
int saga_wire_parse_reply(const bt_kafka_header_t *headers, size_t nheaders, const void *value,
                          size_t len, saga_reply_t *out, char *err, size_t errsz) BT_MUSTCHECK;
/* The three forms one by one (the HTTP replies route uses the structured one). */
int saga_wire_parse_binary(const bt_kafka_header_t *headers, size_t nheaders, const void *value,
                           size_t len, saga_reply_t *out, char *err, size_t errsz) BT_MUSTCHECK;
int saga_wire_parse_structured(const void *value, size_t len, saga_reply_t *out, char *err,
                               size_t errsz) BT_MUSTCHECK;
int saga_wire_parse_protobuf(const void *value, size_t len, saga_reply_t *out, char *err,
                             size_t errsz) BT_MUSTCHECK;
void saga_wire_reply_free(saga_reply_t *r);
/* The saga id a reply that failed to parse still names (the ce_sagaid header, or a
 * structured event's "sagaid" attribute) into out (37 bytes), so that the malformed reply can
 * be shown in that saga's history: true when there is one of a UUID's length (the caller
 * checks the rest with saga_uuid_valid). */
bool saga_wire_reply_saga_id(const bt_kafka_header_t *headers, size_t nheaders, const void *value,
                             size_t len, char out[37]);
/* The reply's step index in `plan`, or -1 when the plan has no such step. */
int saga_wire_reply_step(const saga_reply_t *r, const saga_plan_t *plan);

/* "2026-12-02T01:02:03.004Z" for a Unix time in ms, into out (at least 32 bytes). */
void saga_wire_rfc3339(uint64_t unix_ms, char *out, size_t outsz);

#endif
