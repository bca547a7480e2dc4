/* The statements of a saga transition (see saga_txn.h). Parameters are text; the pool copies
 * them, so the txn's own copies are freed right after the batch is submitted. */
#include "saga_txn.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void saga_txn_init(saga_txn_t *t) { memset(t, 0, sizeof *t); }

void saga_txn_free(saga_txn_t *t) {
  for (size_t i = 0; i < t->nowned; i++)
    free(t->owned[i]);
  t->nowned = 0;
  t->n = 0;
}

/* Keeps s (malloc'd, or NULL on failure: the caller checks) for the life of the txn. */
static const char *own(saga_txn_t *t, char *s) {
  if (!s)
    return NULL;
  BT_ASSERT(t->nowned < BT_ARRAY_LEN(t->owned));
  t->owned[t->nowned++] = s;
  return s;
}

static const char *ownf(saga_txn_t *t, const char *fmt, ...) BT_PRINTF(2, 3);
static const char *ownf(saga_txn_t *t, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  char *s = NULL;
  if (vasprintf(&s, fmt, ap) < 0)
    s = NULL;
  va_end(ap);
  return own(t, s);
}

static const char *own_json(saga_txn_t *t, const json_t *j) {
  return own(t, json_dumps(j ? j : json_null(), JSON_COMPACT | JSON_ENCODE_ANY));
}

/* Adds a statement; its parameter array is the txn's row i. */
static const char **stmt(saga_txn_t *t, const char *sql, int nparams) {
  if (t->n == SAGA_TXN_MAX_STMTS)
    return NULL;
  BT_ASSERT(nparams <= SAGA_TXN_MAX_PARAMS);
  const char **v = t->vals[t->n];
  t->stmts[t->n++] = (bt_pg_stmt_t){sql, nparams, v};
  return v;
}

int saga_txn_insert_saga(saga_txn_t *t, const saga_txn_ctx_t *c, const saga_instance_t *in) {
  json_t *plan = saga_plan_to_json(c->plan), *cursor = saga_instance_cursor_json(in);
  const char **v = stmt(t,
                        "INSERT INTO saga.sagas (id, type, version, state, plan, cursor, input, "
                        "trace_id) VALUES ($1::uuid, $2, $3::int, $4, $5::jsonb, $6::jsonb, "
                        "$7::jsonb, $8)",
                        8);
  int rc = v ? 0 : BT_ERANGE;
  if (v) {
    v[0] = c->saga_id;
    v[1] = c->plan->name;
    v[2] = ownf(t, "%u", c->plan->version);
    v[3] = saga_state_name(in->state);
    v[4] = own_json(t, plan);
    v[5] = own_json(t, cursor);
    v[6] = own_json(t, c->input);
    v[7] = c->trace_id;
    if (!v[2] || !v[4] || !v[5] || !v[6])
      rc = BT_ENOMEM;
  }
  json_decref(plan);
  json_decref(cursor);
  return rc;
}

int saga_txn_idempotency_key(saga_txn_t *t, const saga_txn_ctx_t *c, const char *key,
                             const char *body) {
  const char **v = stmt(t,
                        "INSERT INTO saga.idempotency_keys (type, key, body_sha256, saga_id) "
                        "VALUES ($1, $2, encode(sha256(convert_to($3, 'UTF8')), 'hex'), $4::uuid)",
                        4);
  if (!v)
    return BT_ERANGE;
  v[0] = c->plan->name;
  v[1] = key;
  v[2] = body;
  v[3] = c->saga_id;
  return 0;
}

static const char *const timer_names[] = {"attempt", "backoff", "deadline"};

/* The command as an outbox row in the relay's layout: CloudEvents attributes in columns, the
 * other ce_ headers as extensions (without the prefix), traceparent among them. */
static int add_send(saga_txn_t *t, const saga_txn_ctx_t *c, const saga_action_t *a, char *err,
                    size_t errsz) {
  saga_command_ctx_t cc = {.saga_id = c->saga_id,
                           .plan = c->plan,
                           .step = a->step,
                           .attempt = a->attempt,
                           .kind = a->kind,
                           .deadline_unix_ms = a->due_ms,
                           .traceparent = c->traceparent,
                           .input = c->input,
                           .results = c->results};
  saga_wire_msg_t m;
  int rc = saga_wire_build_command(&cc, &m, err, errsz);
  if (rc != 0)
    return rc;
  json_t *ext = json_object();
  const char *cols[5] = {NULL}; /* id, type, source, subject, datacontenttype */
  static const char *const colnames[5] = {"ce_id", "ce_type", "ce_source", "ce_subject",
                                          "content-type"};
  for (size_t i = 0; i < m.nheaders; i++) {
    const char *name = m.headers[i].name;
    size_t k = 0;
    while (k < 5 && strcmp(colnames[k], name) != 0)
      k++;
    if (k < 5)
      cols[k] = m.headers[i].value;
    else if (strcmp(name, "ce_specversion") != 0)
      json_object_set_new(ext, strncmp(name, "ce_", 3) == 0 ? name + 3 : name,
                          json_string(m.headers[i].value));
  }
  char *hex = malloc(m.value_len * 2 + 3);
  if (hex) {
    hex[0] = '\\';
    hex[1] = 'x';
    for (size_t i = 0; i < m.value_len; i++)
      snprintf(hex + 2 + i * 2, 3, "%02x", ((const unsigned char *)m.value)[i]);
    hex[2 + m.value_len * 2] = '\0';
  }
  const char **v = stmt(t,
                        "INSERT INTO saga.outbox (topic, key, id, type, source, subject, "
                        "datacontenttype, data, extensions) VALUES ($1, $2, $3, $4, $5, $6, $7, "
                        "$8::bytea, $9::jsonb)",
                        9);
  rc = v ? 0 : BT_ERANGE;
  if (v) {
    v[0] = own(t, strdup(m.topic));
    v[1] = c->saga_id;
    for (int k = 0; k < 5; k++)
      v[2 + k] = own(t, strdup(cols[k]));
    v[7] = own(t, hex);
    v[8] = own_json(t, ext);
    hex = NULL;
    for (int k = 0; k < 9; k++)
      if (k != 1 && !v[k])
        rc = BT_ENOMEM;
  }
  free(hex);
  json_decref(ext);
  saga_wire_msg_free(&m);
  return rc;
}

int saga_txn_add_actions(saga_txn_t *t, const saga_txn_ctx_t *c, const saga_decision_t *d,
                         char *err, size_t errsz) {
  for (unsigned i = 0; i < d->nactions; i++) {
    const saga_action_t *a = &d->actions[i];
    const char **v = NULL;
    switch (a->type) {
    case SAGA_ACT_SEND: {
      int rc = add_send(t, c, a, err, errsz);
      if (rc != 0)
        return rc;
      continue;
    }
    case SAGA_ACT_ARM_TIMER:
      /* The deadline timer names no step; the others replace the saga's previous one. */
      v = stmt(t,
               "INSERT INTO saga.timers (saga_id, timer, step, attempt, kind, due_at) VALUES "
               "($1::uuid, $2, $3::int, $4::int, $5, to_timestamp($6::double precision / 1000)) "
               "ON CONFLICT (saga_id, timer) DO UPDATE SET step = EXCLUDED.step, attempt = "
               "EXCLUDED.attempt, kind = EXCLUDED.kind, due_at = EXCLUDED.due_at",
               6);
      if (!v)
        return BT_ERANGE;
      v[0] = c->saga_id;
      v[1] = timer_names[a->timer];
      v[2] = ownf(t, "%u", a->step);
      v[3] = ownf(t, "%u", a->attempt);
      v[4] = saga_kind_name(a->kind);
      v[5] = ownf(t, "%llu", (unsigned long long)a->due_ms);
      break;
    case SAGA_ACT_STORE_RESULT:
      v = stmt(t,
               "UPDATE saga.sagas SET results = results || jsonb_build_object($2::text, "
               "$3::jsonb) WHERE id = $1::uuid",
               3);
      if (!v)
        return BT_ERANGE;
      v[0] = c->saga_id;
      v[1] = c->plan->steps[a->step].name;
      v[2] = own_json(t, c->reply_data);
      break;
    case SAGA_ACT_HISTORY: {
      bool has_step = a->step < c->plan->nsteps;
      v = stmt(t,
               "INSERT INTO saga.history (saga_id, what, step, step_name, attempt, kind, detail, "
               "trace_id) VALUES ($1::uuid, $2, $3::int, $4, $5::int, $6, $7, $8)",
               8);
      if (!v)
        return BT_ERANGE;
      v[0] = c->saga_id;
      v[1] = a->what;
      /* An ignored reply may name a step the plan does not have: no number, no name. */
      v[2] = has_step ? ownf(t, "%u", a->step) : NULL;
      v[3] = has_step ? c->plan->steps[a->step].name : NULL;
      v[4] = ownf(t, "%u", a->attempt);
      v[5] = saga_kind_name(a->kind);
      v[6] = a->detail;
      v[7] = c->trace_id;
      break;
    }
    }
  }
  return 0;
}
