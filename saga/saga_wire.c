/* Commands to participants and their replies, on the wire (see saga_wire.h). The header
 * names and the value layout are a public contract: participants in any language read them,
 * so a change here is a change of the documented format (docs/architecture.md). */
#include "saga_wire.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

#include "baton/v1/saga.pb-c.h"

static int fail(char *err, size_t errsz, const char *fmt, ...) BT_PRINTF(3, 4);
static int fail(char *err, size_t errsz, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(err, errsz, fmt, ap);
  va_end(ap);
  return BT_EINVAL;
}

void saga_wire_rfc3339(uint64_t unix_ms, char *out, size_t outsz) {
  time_t s = (time_t)(unix_ms / 1000);
  struct tm tm;
  gmtime_r(&s, &tm);
  char base[32];
  strftime(base, sizeof base, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(out, outsz, "%s.%03uZ", base, (unsigned)(unix_ms % 1000));
}

/* ---- commands ----------------------------------------------------------------------------- */

/* Adds a header whose value is copied into the message's storage. */
static int add_header(saga_wire_msg_t *m, const char *name, const char *value) {
  size_t len = strlen(value);
  if (m->nheaders == SAGA_WIRE_MAX_HEADERS || m->used + len + 1 > sizeof m->storage)
    return BT_ERANGE;
  char *v = m->storage + m->used;
  memcpy(v, value, len + 1);
  m->used += len + 1;
  m->headers[m->nheaders++] = (bt_kafka_header_t){name, v, len};
  return 0;
}

int saga_wire_build_command(const saga_command_ctx_t *c, saga_wire_msg_t *out, char *err,
                            size_t errsz) {
  memset(out, 0, sizeof *out);
  const saga_plan_t *p = c->plan;
  if (c->step >= p->nsteps)
    return fail(err, errsz, "command: step %u is beyond the plan's %zu steps", c->step, p->nsteps);
  const saga_step_t *s = &p->steps[c->step];
  if (!c->saga_id || !*c->saga_id || strlen(c->saga_id) > SAGA_MAX_ID)
    return fail(err, errsz, "command: the saga id must have 1 to %d characters", SAGA_MAX_ID);
  if (c->kind == SAGA_KIND_COMPENSATION && !s->compensation)
    return fail(err, errsz, "command: step \"%s\" has no compensation", s->name);
  const char *type = c->kind == SAGA_KIND_COMMAND ? s->command : s->compensation;
  char id[SAGA_MAX_ID + SAGA_MAX_NAME + 48], source[SAGA_MAX_NAME + 16], attempt[16], deadline[40];
  snprintf(id, sizeof id, "%s/%s/%u/%s", c->saga_id, s->name, c->attempt, saga_kind_name(c->kind));
  snprintf(source, sizeof source, "/baton/saga/%s", p->name);
  snprintf(attempt, sizeof attempt, "%u", c->attempt);
  saga_wire_rfc3339(c->deadline_unix_ms, deadline, sizeof deadline);
  bool pb = p->encoding == SAGA_ENCODING_PROTOBUF;
  /* Binary mode: every context attribute is a ce_ header, content-type is datacontenttype. */
  int rc = add_header(out, "ce_specversion", "1.0") || add_header(out, "ce_type", type) ||
           add_header(out, "ce_id", id) || add_header(out, "ce_source", source) ||
           add_header(out, "ce_subject", c->saga_id) || add_header(out, "ce_sagaid", c->saga_id) ||
           add_header(out, "ce_sagatype", p->name) || add_header(out, "ce_sagastep", s->name) ||
           add_header(out, "ce_sagaattempt", attempt) ||
           add_header(out, "ce_sagakind", saga_kind_name(c->kind)) ||
           add_header(out, "ce_replyto", p->reply_topic) ||
           add_header(out, "ce_deadline", deadline) ||
           add_header(out, "content-type", pb ? "application/protobuf" : "application/json");
  if (rc == 0 && c->traceparent && *c->traceparent)
    rc = add_header(out, "traceparent", c->traceparent);
  if (rc != 0)
    return fail(err, errsz, "command: headers exceed %zu bytes", sizeof out->storage);
  out->key = out->headers[4].value; /* ce_subject: the saga id */
  out->key_len = strlen(c->saga_id);
  out->topic = s->topic;

  /* The value: the start payload and every result so far, so a compensation sees what its
   * step returned (VoidPayment gets the authorization id). */
  json_t *none = c->results ? NULL : json_object();
  json_t *v = json_pack("{s:O, s:O}", "input", c->input ? c->input : json_null(), "results",
                        c->results ? c->results : none);
  json_decref(none);
  char *text = v ? json_dumps(v, JSON_COMPACT) : NULL;
  json_decref(v);
  if (!text)
    return fail(err, errsz, "command: out of memory encoding the value");
  if (!pb) {
    out->value = text;
    out->value_len = strlen(text);
    return 0;
  }
  Baton__V1__SagaCommand cmd = BATON__V1__SAGA_COMMAND__INIT;
  cmd.saga_id = (char *)c->saga_id;
  cmd.saga_type = p->name;
  cmd.step = c->step;
  cmd.attempt = c->attempt;
  cmd.kind = c->kind == SAGA_KIND_COMMAND ? BATON__V1__SAGA_COMMAND__KIND__COMMAND
                                          : BATON__V1__SAGA_COMMAND__KIND__COMPENSATION;
  cmd.command_type = (char *)type;
  cmd.payload.data = (uint8_t *)text;
  cmd.payload.len = strlen(text);
  cmd.reply_topic = p->reply_topic;
  cmd.deadline_unix_ms = (int64_t)c->deadline_unix_ms;
  out->value_len = baton__v1__saga_command__get_packed_size(&cmd);
  out->value = malloc(out->value_len ? out->value_len : 1);
  if (!out->value) {
    free(text);
    return fail(err, errsz, "command: out of memory encoding the value");
  }
  baton__v1__saga_command__pack(&cmd, out->value);
  free(text);
  return 0;
}

void saga_wire_msg_free(saga_wire_msg_t *m) {
  free(m->value);
  m->value = NULL;
}

/* ---- replies ------------------------------------------------------------------------------ */

void saga_wire_reply_free(saga_reply_t *r) {
  json_decref(r->data);
  r->data = NULL;
}

static const bt_kafka_header_t *header(const bt_kafka_header_t *h, size_t n, const char *name);

bool saga_wire_reply_saga_id(const bt_kafka_header_t *h, size_t n, const void *value, size_t len,
                             char out[37]) {
  const bt_kafka_header_t *sh = header(h, n, "ce_sagaid");
  if (sh && sh->len == 36) {
    memcpy(out, sh->value, 36);
    out[36] = '\0';
    return true;
  }
  if (sh || !value || len == 0)
    return false;
  json_t *obj = json_loadb(value, len, 0, NULL);
  const char *id = json_string_value(json_object_get(obj, "sagaid"));
  bool ok = id && strlen(id) == 36;
  if (ok)
    memcpy(out, id, 37);
  json_decref(obj);
  return ok;
}

int saga_wire_reply_step(const saga_reply_t *r, const saga_plan_t *plan) {
  if (r->step_index >= 0)
    return (size_t)r->step_index < plan->nsteps ? r->step_index : -1;
  return saga_plan_step_index(plan, r->step_name);
}

/* Field readers shared by the binary and structured forms; `form` and `field` name the input
 * in messages ("binary reply: header ce_sagaattempt: ..."). */
static int copy_field(char *dst, size_t dstsz, const char *v, size_t len, const char *form,
                      const char *field, char *err, size_t errsz) {
  if (len == 0 || len >= dstsz || memchr(v, '\0', len))
    return fail(err, errsz, "%s: %s: must have 1 to %zu characters", form, field, dstsz - 1);
  memcpy(dst, v, len);
  dst[len] = '\0';
  return 0;
}

static int parse_attempt(const char *v, size_t len, const char *form, const char *field,
                         uint32_t *out, char *err, size_t errsz) {
  char buf[16];
  if (len == 0 || len >= sizeof buf || strspn(v, "0123456789") < len)
    return fail(err, errsz, "%s: %s: \"%.*s\" is not an attempt number", form, field,
                (int)(len > 32 ? 32 : len), v);
  memcpy(buf, v, len);
  buf[len] = '\0';
  unsigned long long a = strtoull(buf, NULL, 10);
  /* Postgres keeps attempts as int: the bound is INT32_MAX, far beyond any retry limit. */
  if (a < 1 || a > INT32_MAX)
    return fail(err, errsz, "%s: %s: %s is out of range (1-2147483647)", form, field, buf);
  *out = (uint32_t)a;
  return 0;
}

static int parse_kind(const char *v, size_t len, const char *form, const char *field,
                      saga_kind_t *out, char *err, size_t errsz) {
  if (len == 7 && memcmp(v, "command", 7) == 0)
    *out = SAGA_KIND_COMMAND;
  else if (len == 12 && memcmp(v, "compensation", 12) == 0)
    *out = SAGA_KIND_COMPENSATION;
  else
    return fail(err, errsz, "%s: %s: \"%.*s\" is not command or compensation", form, field,
                (int)(len > 32 ? 32 : len), v);
  return 0;
}

static int parse_outcome(const char *v, size_t len, const char *form, const char *field,
                         saga_outcome_t *out, char *err, size_t errsz) {
  static const struct {
    const char *w;
    saga_outcome_t o;
  } words[] = {{"success", SAGA_OUTCOME_SUCCESS},
               {"failure", SAGA_OUTCOME_FAILURE},
               {"retry", SAGA_OUTCOME_RETRY}};
  for (size_t i = 0; i < BT_ARRAY_LEN(words); i++)
    if (strlen(words[i].w) == len && memcmp(words[i].w, v, len) == 0) {
      *out = words[i].o;
      return 0;
    }
  return fail(err, errsz, "%s: %s: \"%.*s\" is not success, failure or retry", form, field,
              (int)(len > 32 ? 32 : len), v);
}

static const bt_kafka_header_t *header(const bt_kafka_header_t *h, size_t n, const char *name) {
  const bt_kafka_header_t *found = NULL;
  for (size_t i = 0; i < n; i++) /* the last one wins, as bt_kafka_message_header does */
    if (strcmp(h[i].name, name) == 0)
      found = &h[i];
  return found;
}

static int parse_data(const void *value, size_t len, const char *form, json_t **out, char *err,
                      size_t errsz) {
  *out = NULL;
  if (!value || len == 0)
    return 0;
  json_error_t je;
  *out = json_loadb(value, len, JSON_DECODE_ANY, &je);
  if (!*out)
    return fail(err, errsz, "%s: data is not JSON: %s at byte %d", form, je.text, je.position);
  return 0;
}

int saga_wire_parse_binary(const bt_kafka_header_t *h, size_t n, const void *value, size_t len,
                           saga_reply_t *out, char *err, size_t errsz) {
  static const char form[] = "binary reply";
  memset(out, 0, sizeof *out);
  out->step_index = -1;
  static const char *const required[] = {"ce_sagaid", "ce_sagastep", "ce_sagaattempt",
                                         "ce_sagakind", "ce_outcome"};
  const bt_kafka_header_t *v[BT_ARRAY_LEN(required)];
  for (size_t i = 0; i < BT_ARRAY_LEN(required); i++)
    if (!(v[i] = header(h, n, required[i])))
      return fail(err, errsz, "%s: header %s is missing", form, required[i]);
  char field[40];
#define F(i) (snprintf(field, sizeof field, "header %s", required[i]), field)
  if (copy_field(out->saga_id, sizeof out->saga_id, v[0]->value, v[0]->len, form, F(0), err,
                 errsz) ||
      copy_field(out->step_name, sizeof out->step_name, v[1]->value, v[1]->len, form, F(1), err,
                 errsz) ||
      parse_attempt(v[2]->value, v[2]->len, form, F(2), &out->attempt, err, errsz) ||
      parse_kind(v[3]->value, v[3]->len, form, F(3), &out->kind, err, errsz) ||
      parse_outcome(v[4]->value, v[4]->len, form, F(4), &out->outcome, err, errsz))
    return BT_EINVAL;
#undef F
  const bt_kafka_header_t *tp = header(h, n, "traceparent");
  if (tp && tp->len < sizeof out->traceparent) {
    memcpy(out->traceparent, tp->value, tp->len);
    out->traceparent[tp->len] = '\0';
  }
  return parse_data(value, len, form, &out->data, err, errsz);
}

/* A structured-mode attribute: a string, or (sagaattempt) a JSON integer too. */
static int attr(json_t *obj, const char *name, const char **s, size_t *len, char *num,
                size_t numsz, char *err, size_t errsz) {
  json_t *a = json_object_get(obj, name);
  if (json_is_string(a)) {
    *s = json_string_value(a);
    *len = json_string_length(a);
    return 0;
  }
  if (num && json_is_integer(a)) {
    snprintf(num, numsz, "%lld", (long long)json_integer_value(a));
    *s = num;
    *len = strlen(num);
    return 0;
  }
  return fail(err, errsz, "structured reply: attribute %s is %s", name,
              a ? "not a string" : "missing");
}

int saga_wire_parse_structured(const void *value, size_t len, saga_reply_t *out, char *err,
                               size_t errsz) {
  static const char form[] = "structured reply";
  memset(out, 0, sizeof *out);
  out->step_index = -1;
  json_error_t je;
  json_t *obj = value ? json_loadb(value, len, 0, &je) : NULL;
  if (!obj)
    return fail(err, errsz, "%s: not a JSON object: %s", form, value ? je.text : "empty");
  const char *s[5];
  size_t l[5];
  char num[32];
  int rc = BT_EINVAL;
  json_t *data = json_object_get(obj, "data");
  if (!json_is_object(obj)) {
    fail(err, errsz, "%s: not a JSON object", form);
  } else if (attr(obj, "sagaid", &s[0], &l[0], NULL, 0, err, errsz) ||
             attr(obj, "sagastep", &s[1], &l[1], NULL, 0, err, errsz) ||
             attr(obj, "sagaattempt", &s[2], &l[2], num, sizeof num, err, errsz) ||
             attr(obj, "sagakind", &s[3], &l[3], NULL, 0, err, errsz) ||
             attr(obj, "outcome", &s[4], &l[4], NULL, 0, err, errsz)) {
  } else if (copy_field(out->saga_id, sizeof out->saga_id, s[0], l[0], form, "attribute sagaid",
                        err, errsz) ||
             copy_field(out->step_name, sizeof out->step_name, s[1], l[1], form,
                        "attribute sagastep", err, errsz) ||
             parse_attempt(s[2], l[2], form, "attribute sagaattempt", &out->attempt, err, errsz) ||
             parse_kind(s[3], l[3], form, "attribute sagakind", &out->kind, err, errsz) ||
             parse_outcome(s[4], l[4], form, "attribute outcome", &out->outcome, err, errsz)) {
  } else {
    json_t *tp = json_object_get(obj, "traceparent");
    if (json_is_string(tp) && json_string_length(tp) < sizeof out->traceparent)
      strcpy(out->traceparent, json_string_value(tp));
    out->data = data ? json_incref(data) : NULL;
    rc = 0;
  }
  json_decref(obj);
  return rc;
}

int saga_wire_parse_protobuf(const void *value, size_t len, saga_reply_t *out, char *err,
                             size_t errsz) {
  static const char form[] = "protobuf reply";
  memset(out, 0, sizeof *out);
  Baton__V1__SagaReply *r = baton__v1__saga_reply__unpack(NULL, len, value);
  if (!r)
    return fail(err, errsz, "%s: not a baton.v1.SagaReply message", form);
  int rc = copy_field(out->saga_id, sizeof out->saga_id, r->saga_id, strlen(r->saga_id), form,
                      "saga_id", err, errsz);
  if (rc == 0 && (r->attempt < 1 || r->attempt > INT32_MAX || r->step >= SAGA_MAX_STEPS))
    rc = fail(err, errsz, "%s: step %u or attempt %u out of range", form, r->step, r->attempt);
  if (rc == 0 && (int)r->outcome > BATON__V1__SAGA_REPLY__OUTCOME__RETRY)
    rc = fail(err, errsz, "%s: outcome %d is not SUCCESS, FAILURE or RETRY", form, (int)r->outcome);
  if (rc == 0 && (int)r->kind > BATON__V1__SAGA_COMMAND__KIND__COMPENSATION)
    rc = fail(err, errsz, "%s: kind %d is not COMMAND or COMPENSATION", form, (int)r->kind);
  if (rc == 0) {
    out->step_index = (int32_t)r->step;
    out->attempt = r->attempt;
    out->kind = r->kind == BATON__V1__SAGA_COMMAND__KIND__COMPENSATION ? SAGA_KIND_COMPENSATION
                                                                       : SAGA_KIND_COMMAND;
    out->outcome = r->outcome == BATON__V1__SAGA_REPLY__OUTCOME__FAILURE ? SAGA_OUTCOME_FAILURE
                   : r->outcome == BATON__V1__SAGA_REPLY__OUTCOME__RETRY ? SAGA_OUTCOME_RETRY
                                                                         : SAGA_OUTCOME_SUCCESS;
    rc = parse_data(r->payload.data, r->payload.len, form, &out->data, err, errsz);
    /* A failure with an error text and no payload still tells the history why. */
    if (rc == 0 && !out->data && r->error && *r->error)
      out->data = json_pack("{s:s}", "error", r->error);
  }
  baton__v1__saga_reply__free_unpacked(r, NULL);
  return rc;
}

int saga_wire_parse_reply(const bt_kafka_header_t *h, size_t n, const void *value, size_t len,
                          saga_reply_t *out, char *err, size_t errsz) {
  if (header(h, n, "ce_specversion"))
    return saga_wire_parse_binary(h, n, value, len, out, err, errsz);
  const bt_kafka_header_t *ct = header(h, n, "content-type");
  if (ct && memmem(ct->value, ct->len, "protobuf", 8))
    return saga_wire_parse_protobuf(value, len, out, err, errsz);
  return saga_wire_parse_structured(value, len, out, err, errsz);
}
