/* CloudEvents 1.0 ingest: the four content modes of DESIGN.md mapped onto broker_event_t,
 * and the validation rules every mode shares. Errors name the event index and attribute so a
 * caller can fix a batch without guessing. */
#include "cloudevent.h"

#include <ctype.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "baton/v1/event.pb-c.h"

int broker_parse_fail(broker_parse_error_t *err, int status, const char *code, int index,
                      const char *attribute, const char *fmt, ...) {
  err->status = status;
  err->code = code;
  err->index = index;
  snprintf(err->attribute, sizeof err->attribute, "%s", attribute ? attribute : "");
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err->detail, sizeof err->detail, fmt, ap);
  va_end(ap);
  return -1;
}

/* ---- shared rules ------------------------------------------------------------------------- */

static bool two_digits(const char *s, int lo, int hi, int *out) {
  if (!isdigit((unsigned char)s[0]) || !isdigit((unsigned char)s[1]))
    return false;
  *out = (s[0] - '0') * 10 + (s[1] - '0');
  return *out >= lo && *out <= hi;
}

bool broker_rfc3339_valid(const char *s) {
  int v;
  for (int i = 0; i < 4; i++)
    if (!isdigit((unsigned char)s[i]))
      return false;
  if (s[4] != '-' || !two_digits(s + 5, 1, 12, &v) || s[7] != '-' || !two_digits(s + 8, 1, 31, &v))
    return false;
  if (s[10] != 'T' && s[10] != 't' && s[10] != ' ')
    return false;
  if (!two_digits(s + 11, 0, 23, &v) || s[13] != ':' || !two_digits(s + 14, 0, 59, &v) ||
      s[16] != ':' || !two_digits(s + 17, 0, 60, &v))
    return false;
  const char *p = s + 19;
  if (*p == '.') {
    p++;
    if (!isdigit((unsigned char)*p))
      return false;
    while (isdigit((unsigned char)*p))
      p++;
  }
  if ((*p == 'Z' || *p == 'z') && p[1] == '\0')
    return true;
  if (*p != '+' && *p != '-')
    return false;
  return two_digits(p + 1, 0, 23, &v) && p[3] == ':' && two_digits(p + 4, 0, 59, &v) &&
         p[6] == '\0';
}

static bool ext_name_valid(const char *name) {
  size_t n = strlen(name);
  if (n == 0 || n > BROKER_MAX_EXT_NAME)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!((name[i] >= 'a' && name[i] <= 'z') || (name[i] >= '0' && name[i] <= '9')))
      return false;
  return true;
}

int broker_event_validate(const broker_event_t *ev, int index, broker_parse_error_t *err) {
  struct { const char *name, *value; } required[] = {
      {"specversion", ev->specversion}, {"id", ev->id}, {"source", ev->source}, {"type", ev->type}};
  for (size_t i = 0; i < BT_ARRAY_LEN(required); i++)
    if (!required[i].value || !*required[i].value)
      return broker_parse_fail(err, 400, "invalid_event", index, required[i].name,
                  "event %d: required attribute '%s' is missing or empty", index, required[i].name);
  if (strcmp(ev->specversion, "1.0") != 0)
    return broker_parse_fail(err, 400, "invalid_event", index, "specversion",
                "event %d: specversion must be \"1.0\", got \"%.40s\"", index, ev->specversion);
  if (ev->time && !broker_rfc3339_valid(ev->time))
    return broker_parse_fail(err, 400, "invalid_event", index, "time",
                "event %d: time \"%.60s\" is not an RFC 3339 timestamp", index, ev->time);
  for (unsigned i = 0; i < ev->next; i++)
    if (!ext_name_valid(ev->ext[i].name))
      return broker_parse_fail(err, 400, "invalid_event", index, ev->ext[i].name,
                  "event %d: extension name '%.64s' must be 1-64 lower-case letters or digits",
                  index, ev->ext[i].name);
  return 0;
}

const char *broker_event_ext(const broker_event_t *ev, const char *name) {
  for (unsigned i = 0; i < ev->next; i++)
    if (strcmp(ev->ext[i].name, name) == 0)
      return ev->ext[i].value;
  return NULL;
}

const char *broker_event_key(const broker_event_t *ev, const char *fallback) {
  const char *pk = broker_event_ext(ev, "partitionkey");
  if (pk)
    return pk;
  if (fallback)
    return fallback;
  return ev->subject;
}

/* Adds an extension; the caller has checked the name is not a context attribute. */
static int add_ext(broker_event_t *ev, const char *name, const char *value, int index,
                   broker_parse_error_t *err) {
  if (ev->next == BROKER_MAX_EXTENSIONS)
    return broker_parse_fail(err, 400, "invalid_event", index, name, "event %d: more than %d extensions", index,
                BROKER_MAX_EXTENSIONS);
  ev->ext[ev->next].name = name;
  ev->ext[ev->next].value = value;
  ev->next++;
  return 0;
}

/* ---- base64 (data_base64) ----------------------------------------------------------------- */

static int b64val(char c) {
  if (c >= 'A' && c <= 'Z')
    return c - 'A';
  if (c >= 'a' && c <= 'z')
    return c - 'a' + 26;
  if (c >= '0' && c <= '9')
    return c - '0' + 52;
  if (c == '+' || c == '-')
    return 62;
  if (c == '/' || c == '_')
    return 63;
  return -1;
}

/* Decodes standard or URL-safe base64, padding optional. Returns the length or -1. */
static long b64_decode(const char *in, size_t len, unsigned char *out) {
  while (len > 0 && in[len - 1] == '=')
    len--;
  size_t o = 0;
  unsigned acc = 0;
  int bits = 0;
  for (size_t i = 0; i < len; i++) {
    int v = b64val(in[i]);
    if (v < 0)
      return -1;
    acc = (acc << 6) | (unsigned)v;
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      out[o++] = (unsigned char)(acc >> bits);
    }
  }
  if (bits >= 6) /* a lone trailing character cannot be valid base64 */
    return -1;
  return (long)o;
}

static const char b64chars[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

static char *b64_encode(const unsigned char *in, size_t len) {
  char *out = malloc((len + 2) / 3 * 4 + 1);
  if (!out)
    return NULL;
  size_t o = 0;
  for (size_t i = 0; i < len; i += 3) {
    unsigned v = (unsigned)in[i] << 16 | (i + 1 < len ? (unsigned)in[i + 1] << 8 : 0) |
                 (i + 2 < len ? in[i + 2] : 0);
    out[o++] = b64chars[(v >> 18) & 63];
    out[o++] = b64chars[(v >> 12) & 63];
    out[o++] = i + 1 < len ? b64chars[(v >> 6) & 63] : '=';
    out[o++] = i + 2 < len ? b64chars[v & 63] : '=';
  }
  out[o] = '\0';
  return out;
}

/* ---- structured JSON ---------------------------------------------------------------------- */

/* JSON data is embedded as JSON when the content type is JSON or absent (CloudEvents JSON
 * format 3.1: an absent datacontenttype implies application/json). */
static bool is_json_type(const char *ct) {
  if (!ct)
    return true;
  size_t n = strcspn(ct, ";");
  while (n > 0 && ct[n - 1] == ' ')
    n--;
  return (n == 16 && strncasecmp(ct, "application/json", 16) == 0) ||
         (n >= 5 && strncasecmp(ct + n - 5, "+json", 5) == 0) ||
         (n == 9 && strncasecmp(ct, "text/json", 9) == 0);
}

static const char *const context_attrs[] = {"id", "source", "type", "specversion", "subject", "time",
                                            "datacontenttype", "dataschema"};

int broker_event_from_json(json_t *obj, int index, bt_arena_t *arena, broker_event_t *ev,
                           broker_parse_error_t *err) {
  memset(ev, 0, sizeof *ev);
  if (!json_is_object(obj))
    return broker_parse_fail(err, 400, "invalid_event", index, "", "event %d: must be a JSON object", index);
  const char **slots[] = {&ev->id, &ev->source, &ev->type, &ev->specversion, &ev->subject,
                          &ev->time, &ev->datacontenttype, &ev->dataschema};
  json_t *data = NULL, *data_b64 = NULL;
  const char *key;
  json_t *val;
  json_object_foreach(obj, key, val) {
    if (strcmp(key, "data") == 0) {
      data = val;
      continue;
    }
    if (strcmp(key, "data_base64") == 0) {
      data_b64 = val;
      continue;
    }
    size_t slot = BT_ARRAY_LEN(context_attrs);
    for (size_t i = 0; i < BT_ARRAY_LEN(context_attrs); i++)
      if (strcmp(key, context_attrs[i]) == 0)
        slot = i;
    if (json_is_null(val))
      continue; /* CloudEvents: a null attribute is an absent one */
    if (slot < BT_ARRAY_LEN(context_attrs)) {
      if (!json_is_string(val))
        return broker_parse_fail(err, 400, "invalid_event", index, key, "event %d: attribute '%s' must be a string",
                    index, key);
      *slots[slot] = bt_arena_strndup(arena, json_string_value(val), json_string_length(val));
      if (!*slots[slot])
        return broker_parse_fail(err, 413, "too_large", index, key, "event %d: request too large", index);
      continue;
    }
    /* Extensions carry strings, integers or booleans; in Kafka headers they are text. */
    char num[32];
    const char *text;
    if (json_is_string(val))
      text = json_string_value(val);
    else if (json_is_integer(val))
      snprintf(num, sizeof num, "%" JSON_INTEGER_FORMAT, json_integer_value(val)), text = num;
    else if (json_is_boolean(val))
      text = json_is_true(val) ? "true" : "false";
    else
      return broker_parse_fail(err, 400, "invalid_event", index, key,
                  "event %d: extension '%.64s' must be a string, integer or boolean", index, key);
    const char *name = bt_arena_strdup(arena, key), *value = bt_arena_strdup(arena, text);
    if (!name || !value)
      return broker_parse_fail(err, 413, "too_large", index, key, "event %d: request too large", index);
    if (add_ext(ev, name, value, index, err))
      return -1;
  }
  if (data && data_b64)
    return broker_parse_fail(err, 400, "invalid_event", index, "data_base64",
                "event %d: data and data_base64 are mutually exclusive", index);
  if (data_b64) {
    if (!json_is_string(data_b64))
      return broker_parse_fail(err, 400, "invalid_event", index, "data_base64",
                  "event %d: data_base64 must be a string", index);
    size_t len = json_string_length(data_b64);
    unsigned char *out = bt_arena_alloc(arena, len + 1);
    if (!out)
      return broker_parse_fail(err, 413, "too_large", index, "data_base64", "event %d: request too large", index);
    long n = b64_decode(json_string_value(data_b64), len, out);
    if (n < 0)
      return broker_parse_fail(err, 400, "invalid_event", index, "data_base64",
                  "event %d: data_base64 is not valid base64", index);
    ev->data = (const char *)out;
    ev->data_len = (size_t)n;
  } else if (data && !json_is_null(data)) {
    if (json_is_string(data) && !is_json_type(ev->datacontenttype)) {
      ev->data = bt_arena_strndup(arena, json_string_value(data), json_string_length(data));
      ev->data_len = json_string_length(data);
    } else {
      char *text = json_dumps(data, JSON_COMPACT | JSON_ENCODE_ANY);
      ev->data_len = text ? strlen(text) : 0;
      ev->data = text ? bt_arena_strndup(arena, text, ev->data_len) : NULL;
      free(text);
      if (!ev->datacontenttype)
        ev->datacontenttype = "application/json";
    }
    if (!ev->data)
      return broker_parse_fail(err, 413, "too_large", index, "data", "event %d: request too large", index);
  }
  return broker_event_validate(ev, index, err);
}

json_t *broker_event_to_json(const broker_event_t *ev) {
  json_t *o = json_pack("{s:s, s:s, s:s, s:s}", "specversion", ev->specversion, "id", ev->id,
                        "source", ev->source, "type", ev->type);
  const char *opt[][2] = {{"subject", ev->subject}, {"time", ev->time},
                          {"datacontenttype", ev->datacontenttype}, {"dataschema", ev->dataschema}};
  for (size_t i = 0; i < BT_ARRAY_LEN(opt); i++)
    if (opt[i][1])
      json_object_set_new(o, opt[i][0], json_string(opt[i][1]));
  for (unsigned i = 0; i < ev->next; i++)
    json_object_set_new(o, ev->ext[i].name, json_string(ev->ext[i].value));
  if (ev->data) {
    json_t *d = is_json_type(ev->datacontenttype) ? json_loadb(ev->data, ev->data_len, JSON_DECODE_ANY, NULL)
                                                  : NULL;
    if (!d && !is_json_type(ev->datacontenttype) && ev->datacontenttype &&
        strncasecmp(ev->datacontenttype, "text/", 5) == 0)
      d = json_stringn(ev->data, ev->data_len); /* NULL if not UTF-8: falls back to base64 */
    if (d) {
      json_object_set_new(o, "data", d);
    } else {
      char *b64 = b64_encode((const unsigned char *)ev->data, ev->data_len);
      if (b64)
        json_object_set_new(o, "data_base64", json_string(b64));
      free(b64);
    }
  }
  return o;
}

/* ---- the four content modes --------------------------------------------------------------- */

static bool media_type_is(const char *ct, const char *want) {
  size_t n = strcspn(ct, ";");
  while (n > 0 && ct[n - 1] == ' ')
    n--;
  return strlen(want) == n && strncasecmp(ct, want, n) == 0;
}

static int parse_json_body(const bt_http_req_t *req, bool batch, bt_arena_t *arena,
                           size_t max_events, broker_event_t **events, size_t *nevents,
                           broker_parse_error_t *err) {
  json_error_t jerr;
  json_t *doc = json_loadb(req->body, req->body_len, 0, &jerr);
  if (!doc)
    return broker_parse_fail(err, 400, "invalid_json", -1, "", "body is not valid JSON: %s at line %d column %d",
                jerr.text, jerr.line, jerr.column);
  int rc = 0;
  if (batch && !json_is_array(doc)) {
    rc = broker_parse_fail(err, 400, "invalid_json", -1, "", "a cloudevents-batch+json body must be a JSON array");
    goto out;
  }
  size_t n = batch ? json_array_size(doc) : 1;
  if (n == 0) {
    rc = broker_parse_fail(err, 400, "empty_batch", -1, "", "the batch holds no events");
    goto out;
  }
  if (n > max_events) {
    rc = broker_parse_fail(err, 413, "batch_too_large", -1, "", "the batch holds %zu events; the limit is %zu", n,
              max_events);
    goto out;
  }
  *events = bt_arena_alloc(arena, n * sizeof **events);
  if (!*events) {
    rc = broker_parse_fail(err, 413, "too_large", -1, "", "request too large");
    goto out;
  }
  for (size_t i = 0; i < n && rc == 0; i++)
    rc = broker_event_from_json(batch ? json_array_get(doc, i) : doc, (int)i, arena, &(*events)[i], err);
  *nevents = n;
out:
  json_decref(doc);
  return rc;
}

static int parse_protobuf(const bt_http_req_t *req, bt_arena_t *arena, size_t max_events,
                          broker_event_t **events, size_t *nevents, broker_parse_error_t *err) {
  Baton__V1__EventBatch *b =
      baton__v1__event_batch__unpack(NULL, req->body_len, (const uint8_t *)req->body);
  if (!b)
    return broker_parse_fail(err, 400, "invalid_protobuf", -1, "", "body is not a valid baton.v1.EventBatch");
  int rc = 0;
  if (b->n_events == 0 || b->n_events > max_events) {
    rc = b->n_events == 0 ? broker_parse_fail(err, 400, "empty_batch", -1, "", "the batch holds no events")
                          : broker_parse_fail(err, 413, "batch_too_large", -1, "",
                                 "the batch holds %zu events; the limit is %zu", b->n_events, max_events);
    goto out;
  }
  *events = bt_arena_alloc(arena, b->n_events * sizeof **events);
  if (!*events) {
    rc = broker_parse_fail(err, 413, "too_large", -1, "", "request too large");
    goto out;
  }
  for (size_t i = 0; i < b->n_events && rc == 0; i++) {
    const Baton__V1__Event *pe = b->events[i];
    broker_event_t *ev = &(*events)[i];
    memset(ev, 0, sizeof *ev);
    /* proto3 cannot tell an empty string from an absent one: empty means absent. */
#define COPY(field) ev->field = *pe->field ? bt_arena_strdup(arena, pe->field) : NULL
    COPY(id);
    COPY(source);
    COPY(type);
    COPY(specversion);
    COPY(subject);
    COPY(time);
    COPY(datacontenttype);
    COPY(dataschema);
#undef COPY
    if (pe->data.len) {
      ev->data = bt_arena_strndup(arena, (const char *)pe->data.data, pe->data.len);
      ev->data_len = pe->data.len;
    }
    for (size_t k = 0; k < pe->n_extensions && rc == 0; k++)
      rc = add_ext(ev, bt_arena_strdup(arena, pe->extensions[k]->key),
                   bt_arena_strdup(arena, pe->extensions[k]->value), (int)i, err);
    if (rc == 0)
      rc = broker_event_validate(ev, (int)i, err);
  }
  *nevents = b->n_events;
out:
  baton__v1__event_batch__free_unpacked(b, NULL);
  return rc;
}

/* HTTP binary mode: attributes in ce-* headers, the body is the data. */
static int parse_binary(const bt_http_req_t *req, bt_arena_t *arena, broker_event_t **events,
                        size_t *nevents, broker_parse_error_t *err) {
  broker_event_t *ev = bt_arena_alloc(arena, sizeof *ev);
  if (!ev)
    return broker_parse_fail(err, 413, "too_large", -1, "", "request too large");
  memset(ev, 0, sizeof *ev);
  const char **slots[] = {&ev->id, &ev->source, &ev->type, &ev->specversion, &ev->subject,
                          &ev->time, &ev->datacontenttype, &ev->dataschema};
  for (unsigned h = 0; h < req->nheaders; h++) {
    const char *name = req->headers[h].name;
    if (strncmp(name, "ce-", 3) != 0)
      continue;
    name += 3;
    /* HTTP binding 3.1.3.2: header values are percent-encoded. */
    size_t vlen = strlen(req->headers[h].value);
    char *value = bt_arena_alloc(arena, vlen + 1);
    if (!value || bt_http_pct_decode(value, req->headers[h].value, vlen, false) < 0)
      return broker_parse_fail(err, 400, "invalid_event", 0, name, "event 0: header ce-%s is not valid percent-encoding",
                  name);
    size_t slot = BT_ARRAY_LEN(context_attrs);
    for (size_t i = 0; i < BT_ARRAY_LEN(context_attrs); i++)
      if (strcmp(name, context_attrs[i]) == 0)
        slot = i;
    if (slot == 6) /* datacontenttype travels as Content-Type in binary mode */
      continue;
    if (slot < BT_ARRAY_LEN(context_attrs))
      *slots[slot] = value;
    else if (add_ext(ev, bt_arena_strdup(arena, name), value, 0, err))
      return -1;
  }
  const char *ct = bt_http_req_header(req, "content-type");
  ev->datacontenttype = ct ? bt_arena_strdup(arena, ct) : NULL;
  if (req->body_len) {
    ev->data = bt_arena_strndup(arena, req->body, req->body_len);
    ev->data_len = req->body_len;
  }
  *events = ev;
  *nevents = 1;
  return broker_event_validate(ev, 0, err);
}

int broker_events_parse(const bt_http_req_t *req, bt_arena_t *arena, size_t max_events,
                        broker_event_t **events, size_t *nevents, broker_parse_error_t *err) {
  const char *ct = bt_http_req_header(req, "content-type");
  *nevents = 0;
  if (ct && media_type_is(ct, "application/cloudevents+json"))
    return parse_json_body(req, false, arena, max_events, events, nevents, err);
  if (ct && media_type_is(ct, "application/cloudevents-batch+json"))
    return parse_json_body(req, true, arena, max_events, events, nevents, err);
  if (ct && media_type_is(ct, "application/x-protobuf"))
    return parse_protobuf(req, arena, max_events, events, nevents, err);
  if (bt_http_req_header(req, "ce-specversion"))
    return parse_binary(req, arena, events, nevents, err);
  return broker_parse_fail(err, 415, "unsupported_media_type", -1, "",
              "Content-Type %.100s is not accepted: use application/cloudevents+json, "
              "application/cloudevents-batch+json, application/x-protobuf, or binary mode "
              "with ce-* headers",
              ct ? ct : "(none)");
}
