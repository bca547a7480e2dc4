/* Decoding of source records. Anything a record can get wrong is reported as poison with a
 * reason, never as a crash or a silent skip: only a Debezium tombstone is skipped, because
 * the delete it follows already carried the row. */
#include "proj_decode.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/v1/billing.pb-c.h"

static proj_decode_result_t poison(char *reason, size_t len, const char *fmt, ...) BT_PRINTF(3, 4);

static proj_decode_result_t poison(char *reason, size_t len, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(reason, len, fmt, ap);
  va_end(ap);
  return PROJ_POISON;
}

static json_t *parse_json(const void *buf, size_t len, char *reason, size_t rlen) {
  json_error_t e;
  json_t *j = json_loadb(buf, len, JSON_DECODE_ANY, &e);
  if (!j)
    snprintf(reason, rlen, "invalid JSON at line %d column %d: %s", e.line, e.column, e.text);
  return j;
}

static proj_decode_result_t set_event(proj_event_t *out, const char *type, size_t tlen,
                                      json_t *doc, char *reason, size_t rlen) {
  if (tlen == 0 || tlen > PROJ_EVENT_TYPE_MAX || memchr(type, '\0', tlen)) {
    json_decref(doc);
    return poison(reason, rlen, "event type is empty, too long or not text");
  }
  out->type = strndup(type, tlen);
  out->doc = doc;
  if (!out->type) {
    proj_event_clear(out);
    return poison(reason, rlen, "out of memory");
  }
  return PROJ_DECODED;
}

/* ---- Debezium ------------------------------------------------------------------------------ */

static proj_decode_result_t decode_debezium(const proj_record_t *rec, proj_event_t *out,
                                            char *reason, size_t rlen) {
  if (!rec->value || rec->value_len == 0)
    return PROJ_SKIPPED;
  json_t *root = parse_json(rec->value, rec->value_len, reason, rlen);
  if (!root)
    return PROJ_POISON;
  /* With the JSON converter's schemas.enable the envelope sits under "payload". */
  json_t *env = root;
  if (json_is_object(root) && json_object_get(root, "schema") && json_object_get(root, "payload"))
    env = json_object_get(root, "payload");
  proj_decode_result_t r;
  if (json_is_null(env)) {
    r = PROJ_SKIPPED;
    goto done;
  }
  const char *op = json_string_value(json_object_get(env, "op"));
  const char *table = json_string_value(json_object_get(json_object_get(env, "source"), "table"));
  if (!json_is_object(env) || !op) {
    r = poison(reason, rlen, "not a Debezium envelope: no \"op\"");
    goto done;
  }
  if (!table) {
    r = poison(reason, rlen, "Debezium envelope without source.table");
    goto done;
  }
  const char *side;
  if (strcmp(op, "c") == 0 || strcmp(op, "u") == 0 || strcmp(op, "r") == 0)
    side = "after";
  else if (strcmp(op, "d") == 0)
    side = "before";
  else {
    r = poison(reason, rlen, "unsupported Debezium op \"%.16s\"", op);
    goto done;
  }
  json_t *row = json_object_get(env, side);
  if (!json_is_object(row)) {
    r = poison(reason, rlen, "Debezium op \"%s\" without \"%s\" row", op, side);
    goto done;
  }
  char type[PROJ_EVENT_TYPE_MAX + 2];
  int n = snprintf(type, sizeof type, "%s:%s", table, op);
  r = set_event(out, type, n < 0 ? 0 : (size_t)n, json_incref(row), reason, rlen);
done:
  json_decref(root);
  return r;
}

/* ---- CloudEvents ------------------------------------------------------------------------- */

static const proj_header_t *header(const proj_record_t *rec, const char *name) {
  for (size_t i = 0; i < rec->nheaders; i++)
    if (strcmp(rec->headers[i].name, name) == 0)
      return &rec->headers[i];
  return NULL;
}

static bool is_json_type(const void *v, size_t len) {
  /* application/json, application/cloudevents+json, text/json, ...+json; charset=... */
  char buf[128];
  size_t n = len < sizeof buf - 1 ? len : sizeof buf - 1;
  memcpy(buf, v, n);
  buf[n] = '\0';
  buf[strcspn(buf, ";")] = '\0';
  size_t l = strlen(buf);
  return l >= 4 && strncmp(buf + l - 4, "json", 4) == 0;
}

static proj_decode_result_t decode_cloudevent(const proj_record_t *rec, proj_event_t *out,
                                              char *reason, size_t rlen) {
  const proj_header_t *type = header(rec, "ce_type");
  const proj_header_t *ctype = header(rec, "content-type");
  if (type) {
    /* Binary mode, as the broker writes: attributes in headers, the data is the value. */
    if (ctype && ctype->value && !is_json_type(ctype->value, ctype->len))
      return poison(reason, rlen, "binary-mode data is %.*s, not JSON", (int)(ctype->len > 64 ? 64 : ctype->len),
                    (const char *)ctype->value);
    json_t *doc = rec->value_len ? parse_json(rec->value, rec->value_len, reason, rlen) : json_null();
    if (!doc)
      return PROJ_POISON;
    return set_event(out, type->value ? type->value : "", type->value ? type->len : 0, doc, reason, rlen);
  }
  if (!rec->value || rec->value_len == 0)
    return poison(reason, rlen, "empty record without a ce_type header");
  json_t *root = parse_json(rec->value, rec->value_len, reason, rlen);
  if (!root)
    return PROJ_POISON;
  proj_decode_result_t r;
  const char *t = json_string_value(json_object_get(root, "type"));
  if (!json_is_object(root) || !json_is_string(json_object_get(root, "specversion")) || !t)
    r = poison(reason, rlen, "neither a ce_type header nor a structured CloudEvent (specversion, type)");
  else if (json_object_get(root, "data_base64"))
    r = poison(reason, rlen, "data_base64 carries binary data, not JSON");
  else {
    json_t *data = json_object_get(root, "data");
    r = set_event(out, t, strlen(t), data ? json_incref(data) : json_null(), reason, rlen);
  }
  json_decref(root);
  return r;
}

/* ---- protobuf ---------------------------------------------------------------------------- */

/* Proto3 message to JSON by its descriptor: scalar fields only, which is all billing.proto
 * uses; a field of any other type makes the event poison rather than half-decoded. */
static json_t *message_json(const ProtobufCMessage *m, char *reason, size_t rlen) {
  json_t *o = json_object();
  const ProtobufCMessageDescriptor *d = m->descriptor;
  for (unsigned i = 0; o && i < d->n_fields; i++) {
    const ProtobufCFieldDescriptor *f = &d->fields[i];
    const char *p = (const char *)m + f->offset;
    json_t *v = NULL;
    if (f->label == PROTOBUF_C_LABEL_REPEATED) {
      snprintf(reason, rlen, "%s.%s: repeated fields are not supported", d->short_name, f->name);
      json_decref(o);
      return NULL;
    }
    switch (f->type) {
    case PROTOBUF_C_TYPE_STRING: v = json_string(*(char *const *)p ? *(char *const *)p : ""); break;
    case PROTOBUF_C_TYPE_INT64: case PROTOBUF_C_TYPE_SINT64: case PROTOBUF_C_TYPE_SFIXED64:
      v = json_integer(*(const int64_t *)p); break;
    case PROTOBUF_C_TYPE_INT32: case PROTOBUF_C_TYPE_SINT32: case PROTOBUF_C_TYPE_SFIXED32:
      v = json_integer(*(const int32_t *)p); break;
    case PROTOBUF_C_TYPE_UINT32: case PROTOBUF_C_TYPE_FIXED32: v = json_integer(*(const uint32_t *)p); break;
    case PROTOBUF_C_TYPE_BOOL: v = json_boolean(*(const protobuf_c_boolean *)p); break;
    case PROTOBUF_C_TYPE_DOUBLE: v = json_real(*(const double *)p); break;
    default:
      snprintf(reason, rlen, "%s.%s: field type not supported", d->short_name, f->name);
      json_decref(o);
      return NULL;
    }
    if (!v || json_object_set_new(o, f->name, v)) {
      snprintf(reason, rlen, "out of memory");
      json_decref(o);
      return NULL;
    }
  }
  return o;
}

static proj_decode_result_t decode_protobuf(const proj_record_t *rec, proj_event_t *out,
                                            char *reason, size_t rlen) {
  Baton__V1__BillingEvent *ev =
      baton__v1__billing_event__unpack(NULL, rec->value_len, rec->value ? rec->value : (const void *)"");
  if (!ev)
    return poison(reason, rlen, "not a baton.v1.BillingEvent (protobuf unpack failed)");
  proj_decode_result_t r;
  const ProtobufCFieldDescriptor *f =
      ev->event_case == BATON__V1__BILLING_EVENT__EVENT__NOT_SET
          ? NULL
          : protobuf_c_message_descriptor_get_field(ev->base.descriptor, (unsigned)ev->event_case);
  if (!f) {
    r = poison(reason, rlen, "BillingEvent with no event set");
  } else {
    /* Every member of the oneof is a message; the member's message name is the event type. */
    const ProtobufCMessage *sub = *(ProtobufCMessage *const *)((const char *)ev + f->offset);
    const ProtobufCMessageDescriptor *sd = f->descriptor;
    json_t *doc = sub ? message_json(sub, reason, rlen) : NULL;
    r = doc ? set_event(out, sd->short_name, strlen(sd->short_name), doc, reason, rlen) : PROJ_POISON;
  }
  baton__v1__billing_event__free_unpacked(ev, NULL);
  return r;
}

proj_decode_result_t proj_decode(proj_format_t fmt, const proj_record_t *rec, proj_event_t *out,
                                 char *reason, size_t reasonlen) {
  memset(out, 0, sizeof *out);
  reason[0] = '\0';
  switch (fmt) {
  case PROJ_FMT_DEBEZIUM_JSON: return decode_debezium(rec, out, reason, reasonlen);
  case PROJ_FMT_CLOUDEVENTS_JSON: return decode_cloudevent(rec, out, reason, reasonlen);
  case PROJ_FMT_PROTOBUF: return decode_protobuf(rec, out, reason, reasonlen);
  }
  return poison(reason, reasonlen, "unknown format %d", (int)fmt);
}

void proj_event_clear(proj_event_t *e) {
  free(e->type);
  json_decref(e->doc);
  e->type = NULL;
  e->doc = NULL;
}
