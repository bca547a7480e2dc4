/* The orchestrator's HTTP API: GET /v1/saga-types, POST /v1/sagas/{type} (start, with
 * Idempotency-Key) and GET /v1/sagas/{id}. Every answer comes from Postgres through the
 * pool; nothing here blocks the loop. Errors are JSON with a stable `error` code. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <time.h>

#include "log.h"
#include "saga.h"
#include "saga_apply.h"
#include "saga_machine.h"
#include "saga_txn.h"

/* ---- GET /v1/saga-types ------------------------------------------------------------------- */

/* Live instances per (type, version, state), from the partial index sagas_live. A version
 * that is no longer loaded but still has instances is listed with "loaded": false: those
 * instances finish on their persisted plan. */
static const char types_sql[] =
    "SELECT type, version, state, count(*) FROM saga.sagas "
    "WHERE state IN ('RUNNING', 'COMPENSATING', 'FAILED') GROUP BY 1, 2, 3";

typedef struct types_req {
  saga_t *s;
  bt_http_req_t *req;
} types_req_t;

static json_t *version_entry(json_t *types, const char *type, uint32_t version, bool loaded) {
  json_t *t = json_object_get(types, type);
  if (!t) {
    t = json_pack("{s:s, s:[]}", "saga", type, "versions");
    json_object_set_new(types, type, t);
  }
  json_t *versions = json_object_get(t, "versions");
  size_t i;
  json_t *v;
  json_array_foreach(versions, i, v) {
    if (json_integer_value(json_object_get(v, "version")) == (json_int_t)version)
      return v;
  }
  v = json_pack("{s:I, s:b, s:I, s:I, s:I}", "version", (json_int_t)version, "loaded", loaded,
                "running", (json_int_t)0, "compensating", (json_int_t)0, "failed", (json_int_t)0);
  json_array_append_new(versions, v);
  return v;
}

static int cmp_version(const void *a, const void *b) {
  json_int_t x = json_integer_value(json_object_get(*(json_t *const *)a, "version"));
  json_int_t y = json_integer_value(json_object_get(*(json_t *const *)b, "version"));
  return (x > y) - (x < y);
}

static void types_done(const bt_pg_result_t *r, void *arg) {
  types_req_t *tr = arg;
  saga_t *s = tr->s;
  if (r->err != 0) {
    bt_http_respond_error(tr->req, 503, "postgres_unavailable", "cannot count sagas: %s",
                          r->errmsg);
    free(tr);
    return;
  }
  json_t *types = json_object();
  for (size_t i = 0; i < s->defs.n; i++) {
    const saga_plan_t *p = s->defs.plans[i];
    json_t *v = version_entry(types, p->name, p->version, true);
    json_object_set_new(v, "steps", json_integer((json_int_t)p->nsteps));
    json_object_set_new(v, "file", json_string(p->file));
  }
  const PGresult *res = r->res[0];
  for (int row = 0; row < PQntuples(res); row++) {
    const char *type = PQgetvalue(res, row, 0);
    uint32_t version = (uint32_t)strtoul(PQgetvalue(res, row, 1), NULL, 10);
    const char *state = PQgetvalue(res, row, 2);
    json_t *v = version_entry(types, type, version, saga_defs_find(&s->defs, type, version));
    const char *key = strcmp(state, "RUNNING") == 0        ? "running"
                      : strcmp(state, "COMPENSATING") == 0 ? "compensating"
                                                           : "failed";
    json_object_set_new(v, key, json_integer(strtoll(PQgetvalue(res, row, 3), NULL, 10)));
  }
  /* An array sorted by name then version, so the answer reads the same on every replica. */
  json_t *out = json_array();
  const char *name;
  json_t *t;
  json_object_foreach(types, name, t) {
    json_t *versions = json_object_get(t, "versions");
    size_t n = json_array_size(versions);
    json_t **vs = calloc(n ? n : 1, sizeof *vs);
    for (size_t i = 0; vs && i < n; i++)
      vs[i] = json_incref(json_array_get(versions, i));
    if (vs)
      qsort(vs, n, sizeof *vs, cmp_version);
    json_array_clear(versions);
    for (size_t i = 0; vs && i < n; i++)
      json_array_append_new(versions, vs[i]);
    free(vs);
    json_array_append(out, t);
  }
  json_decref(types);
  bt_http_respond_json(tr->req, 200, json_pack("{s:o}", "types", out));
  free(tr);
}

static void get_types(bt_http_req_t *req, void *arg) {
  saga_t *s = arg;
  types_req_t *tr = malloc(sizeof *tr);
  if (!tr) {
    bt_http_respond_error(req, 503, "overloaded", "out of memory");
    return;
  }
  *tr = (types_req_t){s, req};
  int rc = bt_pg_pool_query(s->pg, types_sql, 0, NULL, types_done, tr);
  if (rc != 0) {
    free(tr);
    bt_http_respond_error(req, 503, "postgres_unavailable", "cannot query: %s", bt_strerror(rc));
  }
}

/* ---- POST /v1/sagas/{type} ---------------------------------------------------------------- */

typedef struct start_req {
  saga_t *s;
  bt_http_req_t *req;
  const saga_plan_t *plan;
  json_t *input;
  char *body;   /* the raw body: Postgres hashes it for the Idempotency-Key check */
  char *key;    /* Idempotency-Key or NULL */
  char id[40];
  char traceparent[SAGA_MAX_TRACEPARENT + 1];
  char trace_id[40];
  bool looked_again; /* the key was looked up again after a unique violation */
  uint64_t wait_ms;  /* ?wait=: answer once the saga ends (200) or with 202 after this */
} start_req_t;

static void start_free(start_req_t *st) {
  json_decref(st->input);
  free(st->body);
  free(st->key);
  free(st);
}

static void uuid_v4(char out[40]) {
  uint8_t b[16];
  if (getrandom(b, sizeof b, 0) != (ssize_t)sizeof b)
    bt_fatal("getrandom failed: cannot make a saga id");
  b[6] = (uint8_t)((b[6] & 0x0f) | 0x40);
  b[8] = (uint8_t)((b[8] & 0x3f) | 0x80);
  snprintf(out, 40, "%02x%02x%02x%02x-%02x%02x-%02x%02x-%02x%02x-%02x%02x%02x%02x%02x%02x", b[0],
           b[1], b[2], b[3], b[4], b[5], b[6], b[7], b[8], b[9], b[10], b[11], b[12], b[13], b[14],
           b[15]);
}

static void respond_saga(start_req_t *st, int status, const char *id, const char *type,
                         uint32_t version, const char *state) {
  if (st->wait_ms) {
    saga_wait(st->s, st->req, id, st->wait_ms, 202);
    return;
  }
  char loc[80];
  snprintf(loc, sizeof loc, "/v1/sagas/%s", id);
  bt_http_req_add_header(st->req, "Location", loc);
  bt_http_respond_json(st->req, status, json_pack("{s:s, s:s, s:I, s:s}", "id", id, "type", type,
                                                  "version", (json_int_t)version, "state", state));
}

static void start_insert(start_req_t *st);

/* The existing saga of an Idempotency-Key, with whether the body is the same. */
static const char key_sql[] =
    "SELECT s.id, s.type, s.version, s.state, "
    "k.body_sha256 = encode(sha256(convert_to($3, 'UTF8')), 'hex') "
    "FROM saga.idempotency_keys k JOIN saga.sagas s ON s.id = k.saga_id "
    "WHERE k.type = $1 AND k.key = $2";

static void key_done(const bt_pg_result_t *r, void *arg) {
  start_req_t *st = arg;
  if (r->err != 0) {
    bt_counter_inc(&st->s->stats.rejected);
    bt_http_respond_error(st->req, 503, "postgres_unavailable", "cannot read the key: %s",
                          r->errmsg);
    start_free(st);
    return;
  }
  const PGresult *res = r->res[0];
  if (PQntuples(res) == 0) {
    if (st->looked_again) {
      /* Violated, then gone: only a manual delete does that. Refuse rather than loop. */
      bt_http_respond_error(st->req, 409, "idempotency_conflict",
                            "the Idempotency-Key changed while this request ran; retry");
      start_free(st);
      return;
    }
    start_insert(st);
    return;
  }
  if (strcmp(PQgetvalue(res, 0, 4), "t") != 0) {
    bt_counter_inc(&st->s->stats.key_reused);
    bt_http_respond_error(st->req, 422, "idempotency_key_reused",
                          "Idempotency-Key '%.64s' was used for saga %s with another body",
                          st->key, PQgetvalue(res, 0, 0));
    start_free(st);
    return;
  }
  bt_counter_inc(&st->s->stats.idempotent);
  respond_saga(st, 201, PQgetvalue(res, 0, 0), PQgetvalue(res, 0, 1),
               (uint32_t)strtoul(PQgetvalue(res, 0, 2), NULL, 10), PQgetvalue(res, 0, 3));
  start_free(st);
}

static void look_up_key(start_req_t *st) {
  const char *v[] = {st->plan->name, st->key, st->body};
  int rc = bt_pg_pool_query(st->s->pg, key_sql, 3, v, key_done, st);
  if (rc != 0) {
    bt_counter_inc(&st->s->stats.rejected);
    bt_http_respond_error(st->req, 503, "postgres_unavailable", "cannot read the key: %s",
                          bt_strerror(rc));
    start_free(st);
  }
}

static void insert_done(const bt_pg_result_t *r, void *arg) {
  start_req_t *st = arg;
  const char *sqlstate = r->error ? PQresultErrorField(r->error, PG_DIAG_SQLSTATE) : NULL;
  if (r->err == BT_EIO && st->key && !st->looked_again && sqlstate &&
      strcmp(sqlstate, "23505") == 0) {
    /* A concurrent start with the same key committed first: answer with its saga. */
    st->looked_again = true;
    look_up_key(st);
    return;
  }
  if (r->err != 0) {
    bt_counter_inc(&st->s->stats.rejected);
    bt_log_warn("saga start failed", "{s:s, s:s, s:s}", "saga_id", st->id, "type", st->plan->name,
                "error", r->errmsg);
    bt_http_respond_error(st->req, 503, "postgres_unavailable", "the saga was not started: %s",
                          r->errmsg);
    start_free(st);
    return;
  }
  bt_counter_inc(&st->s->stats.started);
  saga_relay_nudge(st->s);
  bt_log_info("saga started", "{s:s, s:s, s:i, s:s}", "saga_id", st->id, "type", st->plan->name,
              "version", (int)st->plan->version, "trace_id", st->trace_id);
  respond_saga(st, 201, st->id, st->plan->name, st->plan->version, "RUNNING");
  start_free(st);
}

/* One transaction: the key, the saga row with its plan, the history, the timers and the first
 * command in the outbox. The relay (not this process) takes the command to Kafka. */
static void start_insert(start_req_t *st) {
  uuid_v4(st->id);
  saga_event_t ev = {.type = SAGA_EV_START};
  saga_instance_t in;
  saga_decision_t d;
  uint64_t now = saga_unix_ms();
  saga_machine_decide(st->plan, NULL, &ev, now, &in, &d);
  json_t *results = json_object();
  saga_txn_ctx_t c = {.saga_id = st->id,
                      .plan = st->plan,
                      .input = st->input,
                      .results = results,
                      .traceparent = st->traceparent[0] ? st->traceparent : NULL,
                      .trace_id = st->trace_id[0] ? st->trace_id : NULL,
                      .now_unix_ms = now};
  saga_txn_t t;
  saga_txn_init(&t);
  char err[256] = "";
  int rc = 0;
  if (st->key) /* the body itself: Postgres hashes it, as key_sql does */
    rc = saga_txn_idempotency_key(&t, &c, st->key, st->body);
  if (rc == 0)
    rc = saga_txn_insert_saga(&t, &c, &in);
  if (rc == 0)
    rc = saga_txn_add_actions(&t, &c, &d, err, sizeof err);
  json_decref(results);
  if (rc == 0)
    rc = bt_pg_pool_batch(st->s->pg, t.stmts, t.n, insert_done, st);
  saga_txn_free(&t);
  if (rc != 0) {
    bt_counter_inc(&st->s->stats.rejected);
    bt_http_respond_error(st->req, 503, "overloaded", "the saga was not started: %s",
                          err[0] ? err : bt_strerror(rc));
    start_free(st);
  }
}

/* traceparent: version-traceid-parentid-flags; we keep a well-formed one and its trace id. */
static void take_traceparent(start_req_t *st) {
  const char *tp = bt_http_req_header(st->req, "traceparent");
  if (!tp || strlen(tp) != 55 || tp[2] != '-' || tp[35] != '-' || tp[52] != '-' ||
      strspn(tp, "0123456789abcdef-") != 55)
    return;
  memcpy(st->traceparent, tp, 56);
  memcpy(st->trace_id, tp + 3, 32);
  st->trace_id[32] = '\0';
}

static void post_saga(bt_http_req_t *req, void *arg) {
  saga_t *s = arg;
  const char *type = bt_http_req_param(req, "type");
  const saga_plan_t *plan = saga_defs_find(&s->defs, type, 0);
  if (!plan) {
    bt_http_respond_error(req, 404, "unknown_saga_type", "no saga definition named '%.64s'", type);
    return;
  }
  uint64_t wait_ms;
  if (saga_wait_param(s, req, &wait_ms) != 0)
    return;
  if (wait_ms && saga_wait_full(s)) {
    /* Refused before anything starts: a retry cannot start the saga twice. */
    bt_http_req_add_header(req, "Retry-After", "1");
    bt_http_respond_error(req, 503, "too_many_waiters", "BATON_SAGA_MAX_WAITERS requests wait");
    return;
  }
  const char *key = bt_http_req_header(req, "idempotency-key");
  if (key && (strlen(key) == 0 || (int64_t)strlen(key) > s->cfg.max_key_len)) {
    bt_http_respond_error(req, 400, "invalid_idempotency_key",
                          "Idempotency-Key must have 1 to %lld characters",
                          (long long)s->cfg.max_key_len);
    return;
  }
  json_error_t je;
  json_t *input = req->body_len ? json_loadb(req->body, req->body_len, JSON_DECODE_ANY, &je) : NULL;
  if (!input) {
    bt_http_respond_error(req, 400, "invalid_json", "the body must be the saga's JSON input: %s",
                          req->body_len ? je.text : "empty body");
    return;
  }
  start_req_t *st = calloc(1, sizeof *st);
  if (!st || !(st->body = strndup(req->body, req->body_len)) || (key && !(st->key = strdup(key)))) {
    if (st)
      free(st->body);
    free(st);
    json_decref(input);
    bt_http_respond_error(req, 503, "overloaded", "out of memory");
    return;
  }
  st->s = s;
  st->req = req;
  st->wait_ms = wait_ms;
  st->plan = plan;
  st->input = input;
  take_traceparent(st);
  if (st->key)
    look_up_key(st);
  else
    start_insert(st);
}

/* ---- GET /v1/sagas/{id} ------------------------------------------------------------------- */

static const char saga_sql[] =
    "SELECT id, type, version, state, (cursor->>'paused')::boolean, input::text, results::text, "
    "trace_id, created_at, updated_at, ended_at FROM saga.sagas WHERE id = $1::uuid";
static const char history_sql[] =
    "SELECT at, what, step_name, attempt, kind, detail, trace_id FROM saga.history "
    "WHERE saga_id = $1::uuid ORDER BY id";

typedef struct get_req {
  bt_http_req_t *req;
  size_t limit; /* list only */
  int status;   /* the saga: 200, or 202 for a start whose wait ran out */
} get_req_t;

static json_t *col_json(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? json_null() : json_loads(PQgetvalue(r, row, col), JSON_DECODE_ANY, NULL);
}

static json_t *col_str(const PGresult *r, int row, int col) {
  return PQgetisnull(r, row, col) ? json_null() : json_string(PQgetvalue(r, row, col));
}

static void get_done(const bt_pg_result_t *r, void *arg) {
  get_req_t *g = arg;
  if (r->err != 0) {
    bt_http_respond_error(g->req, 503, "postgres_unavailable", "cannot read the saga: %s",
                          r->errmsg);
    free(g);
    return;
  }
  const PGresult *sr = r->res[0], *hr = r->res[1];
  if (PQntuples(sr) == 0) {
    bt_http_respond_error(g->req, 404, "saga_not_found", "no saga %s",
                          bt_http_req_param(g->req, "id"));
    free(g);
    return;
  }
  json_t *history = json_array();
  for (int i = 0; i < PQntuples(hr); i++) {
    json_t *h = json_pack("{s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "at", col_str(hr, i, 0), "what",
                          col_str(hr, i, 1), "step", col_str(hr, i, 2), "attempt",
                          PQgetisnull(hr, i, 3) ? json_null()
                                                : json_integer(atoll(PQgetvalue(hr, i, 3))),
                          "kind", col_str(hr, i, 4), "detail", col_str(hr, i, 5), "trace_id",
                          col_str(hr, i, 6));
    json_array_append_new(history, h);
  }
  json_t *out = json_pack(
      "{s:o, s:o, s:I, s:o, s:b, s:o, s:o, s:o, s:o, s:o, s:o, s:o}", "id", col_str(sr, 0, 0),
      "type", col_str(sr, 0, 1), "version", (json_int_t)atoll(PQgetvalue(sr, 0, 2)), "state",
      col_str(sr, 0, 3), "paused", strcmp(PQgetvalue(sr, 0, 4), "t") == 0, "input",
      col_json(sr, 0, 5), "results", col_json(sr, 0, 6), "trace_id", col_str(sr, 0, 7),
      "created_at", col_str(sr, 0, 8), "updated_at", col_str(sr, 0, 9), "ended_at",
      col_str(sr, 0, 10), "history", history);
  if (g->status == 202) {
    char loc[80];
    snprintf(loc, sizeof loc, "/v1/sagas/%s", PQgetvalue(sr, 0, 0));
    bt_http_req_add_header(g->req, "Location", loc);
  }
  bt_http_respond_json(g->req, g->status, out);
  free(g);
}

bool saga_uuid_valid(const char *s) {
  if (strlen(s) != 36)
    return false;
  for (int i = 0; i < 36; i++) {
    bool dash = i == 8 || i == 13 || i == 18 || i == 23;
    if (dash ? s[i] != '-' : !strchr("0123456789abcdefABCDEF", s[i]))
      return false;
  }
  return true;
}

void saga_api_respond_saga(saga_t *s, bt_http_req_t *req, const char *id, int status) {
  get_req_t *g = malloc(sizeof *g);
  if (!g) {
    bt_http_respond_error(req, 503, "overloaded", "out of memory");
    return;
  }
  g->req = req;
  g->status = status;
  const char *v[] = {id};
  bt_pg_stmt_t stmts[] = {{saga_sql, 1, v}, {history_sql, 1, v}};
  int rc = bt_pg_pool_batch(s->pg, stmts, 2, get_done, g);
  if (rc != 0) {
    free(g);
    bt_http_respond_error(req, 503, "postgres_unavailable", "cannot query: %s", bt_strerror(rc));
  }
}

static void get_saga(bt_http_req_t *req, void *arg) {
  saga_t *s = arg;
  const char *id = bt_http_req_param(req, "id");
  if (!saga_uuid_valid(id)) {
    bt_http_respond_error(req, 404, "saga_not_found", "'%.64s' is not a saga id (a UUID)", id);
    return;
  }
  uint64_t wait_ms;
  if (saga_wait_param(s, req, &wait_ms) != 0)
    return;
  if (wait_ms == 0) {
    saga_api_respond_saga(s, req, id, 200);
  } else if (saga_wait_full(s)) {
    bt_http_req_add_header(req, "Retry-After", "1");
    bt_http_respond_error(req, 503, "too_many_waiters", "BATON_SAGA_MAX_WAITERS requests wait");
  } else {
    saga_wait(s, req, id, wait_ms, 200);
  }
}

/* ---- GET /v1/sagas?state=&type=&limit=&cursor= ------------------------------------------
 * Keyset pagination on (created_at, id), which the sagas_by_state / sagas_by_type indexes
 * serve; the cursor is "<created_at in µs since the epoch>_<id>" of the last saga returned. */

static const char list_sql[] =
    "SELECT id, type, version, state, (cursor->>'paused')::boolean, created_at, updated_at, "
    "(extract(epoch FROM created_at) * 1000000)::bigint FROM saga.sagas "
    "WHERE ($1::text IS NULL OR state = $1) AND ($2::text IS NULL OR type = $2) "
    "AND ($3::bigint IS NULL OR (created_at, id) > (to_timestamp($3::double precision / 1e6), "
    "$4::uuid)) ORDER BY created_at, id LIMIT $5::int";

static void list_done(const bt_pg_result_t *r, void *arg) {
  get_req_t *g = arg;
  if (r->err != 0) {
    bt_http_respond_error(g->req, 503, "postgres_unavailable", "cannot list sagas: %s", r->errmsg);
    free(g);
    return;
  }
  const PGresult *res = r->res[0];
  json_t *list = json_array();
  int n = PQntuples(res);
  for (int i = 0; i < n; i++)
    json_array_append_new(
        list, json_pack("{s:o, s:o, s:I, s:o, s:b, s:o, s:o}", "id", col_str(res, i, 0), "type",
                        col_str(res, i, 1), "version", (json_int_t)atoll(PQgetvalue(res, i, 2)),
                        "state", col_str(res, i, 3), "paused",
                        strcmp(PQgetvalue(res, i, 4), "t") == 0, "created_at",
                        col_str(res, i, 5), "updated_at", col_str(res, i, 6)));
  json_t *next = json_null();
  if (n > 0 && (size_t)n == g->limit) {
    char c[96];
    snprintf(c, sizeof c, "%s_%s", PQgetvalue(res, n - 1, 7), PQgetvalue(res, n - 1, 0));
    next = json_string(c);
  }
  bt_http_respond_json(g->req, 200, json_pack("{s:o, s:o}", "sagas", list, "next_cursor", next));
  free(g);
}

static void list_sagas(bt_http_req_t *req, void *arg) {
  saga_t *s = arg;
  char state[32], type[SAGA_MAX_NAME + 1], limit[16], cursor[96];
  bool has_state = bt_http_req_query(req, "state", state, sizeof state) >= 0;
  bool has_type = bt_http_req_query(req, "type", type, sizeof type) >= 0;
  bool has_cursor = bt_http_req_query(req, "cursor", cursor, sizeof cursor) >= 0;
  saga_state_t st;
  if (has_state && saga_state_parse(state, &st) != 0) {
    bt_http_respond_error(req, 400, "invalid_state",
                          "state must be RUNNING, COMPENSATING, COMPENSATED, COMPLETED or FAILED");
    return;
  }
  long long lim = s->cfg.list_default;
  if (bt_http_req_query(req, "limit", limit, sizeof limit) >= 0) {
    char *end;
    lim = strtoll(limit, &end, 10);
    if (*end || lim < 1 || lim > s->cfg.list_max) {
      bt_http_respond_error(req, 400, "invalid_limit", "limit must be from 1 to %lld",
                            (long long)s->cfg.list_max);
      return;
    }
  }
  char *us = NULL, *id = NULL;
  if (has_cursor) {
    char *sep = strchr(cursor, '_');
    if (!sep || sep == cursor || strspn(cursor, "0123456789") != (size_t)(sep - cursor) ||
        !saga_uuid_valid(sep + 1)) {
      bt_http_respond_error(req, 400, "invalid_cursor", "cursor must be a next_cursor returned "
                                                        "by this endpoint");
      return;
    }
    *sep = '\0';
    us = cursor;
    id = sep + 1;
  }
  get_req_t *g = malloc(sizeof *g);
  if (!g) {
    bt_http_respond_error(req, 503, "overloaded", "out of memory");
    return;
  }
  g->req = req;
  g->limit = (size_t)lim;
  snprintf(limit, sizeof limit, "%lld", lim);
  const char *v[] = {has_state ? state : NULL, has_type ? type : NULL, us, id, limit};
  int rc = bt_pg_pool_query(s->pg, list_sql, 5, v, list_done, g);
  if (rc != 0) {
    free(g);
    bt_http_respond_error(req, 503, "postgres_unavailable", "cannot query: %s", bt_strerror(rc));
  }
}

/* ---- operator actions and HTTP replies: both go through saga_apply ------------------------ */

typedef struct act_req {
  bt_http_req_t *req;
  char id[40];
  bool is_reply;
} act_req_t;

static void act_done(const saga_apply_result_t *r, void *arg) {
  act_req_t *ar = arg;
  if (r->err == BT_ENOENT) {
    bt_http_respond_error(ar->req, 404, "saga_not_found", "no saga %s", ar->id);
  } else if (r->err == BT_ECONFLICT) {
    bt_http_respond_error(ar->req, 503, "contended", "%s; retry", r->errmsg);
  } else if (r->err != 0) {
    bt_http_respond_error(ar->req, 503, "postgres_unavailable", "the saga did not change: %s",
                          r->errmsg);
  } else if (r->verdict == SAGA_REFUSED) {
    /* 409 with the current state, as a field too so that scripts need not parse the text. */
    bt_http_respond_json(ar->req, 409,
                         json_pack("{s:s, s:s, s:s, s:b}", "error", "saga_state_conflict",
                                   "detail", r->reason, "state", saga_state_name(r->state),
                                   "paused", r->paused));
  } else {
    json_t *out = json_pack("{s:s, s:s, s:b, s:b}", "id", ar->id, "state",
                            saga_state_name(r->state), "paused", r->paused, "applied",
                            r->verdict == SAGA_APPLIED);
    if (r->verdict == SAGA_IGNORED)
      json_object_set_new(out, "ignored", json_string(r->reason));
    bt_http_respond_json(ar->req, 200, out);
  }
  free(ar);
}

static void apply_event(saga_t *s, bt_http_req_t *req, const saga_event_t *ev, const char *step_name,
                        const json_t *data, const char *trace_id) {
  const char *id = bt_http_req_param(req, "id");
  if (!saga_uuid_valid(id)) {
    bt_http_respond_error(req, 404, "saga_not_found", "'%.64s' is not a saga id (a UUID)", id);
    return;
  }
  act_req_t *ar = calloc(1, sizeof *ar);
  if (!ar) {
    bt_http_respond_error(req, 503, "overloaded", "out of memory");
    return;
  }
  ar->req = req;
  snprintf(ar->id, sizeof ar->id, "%s", id);
  int rc = saga_apply(s->pg, id, ev, step_name, data, trace_id, act_done, ar);
  if (rc != 0) {
    free(ar);
    bt_http_respond_error(req, 503, "postgres_unavailable", "cannot apply: %s", bt_strerror(rc));
  }
}

/* An operator route's argument: the process and the event the route stands for. */
typedef struct op_route {
  saga_t *s;
  saga_event_type_t ev;
} op_route_t;

static void post_operator(bt_http_req_t *req, void *arg) {
  const op_route_t *op = arg;
  saga_event_t ev = {.type = op->ev};
  apply_event(op->s, req, &ev, NULL, NULL, NULL);
}

/* POST /v1/sagas/{id}/replies: a structured-mode CloudEvent, as on the reply topic, for
 * participants that are plain HTTP services. Same dedupe and state checks as Kafka replies. */
static void post_reply(bt_http_req_t *req, void *arg) {
  saga_reply_t r;
  char err[256];
  if (saga_wire_parse_structured(req->body, req->body_len, &r, err, sizeof err) != 0) {
    saga_t *s = arg;
    const char *id = bt_http_req_param(req, "id");
    bt_counter_inc(&s->stats.replies_malformed);
    if (saga_uuid_valid(id))
      (void)saga_apply_note_malformed(s->pg, id, "http", err);
    bt_http_respond_error(req, 400, "invalid_reply", "%s", err);
    return;
  }
  const char *id = bt_http_req_param(req, "id");
  if (strcmp(r.saga_id, id) != 0) {
    bt_http_respond_error(req, 400, "invalid_reply", "sagaid '%s' is not the saga of the URL",
                          r.saga_id);
    saga_wire_reply_free(&r);
    return;
  }
  saga_event_t ev = {SAGA_EV_REPLY, r.outcome, 0, r.attempt, r.kind};
  char trace_id[33] = "";
  if (strlen(r.traceparent) == 55)
    snprintf(trace_id, sizeof trace_id, "%.32s", r.traceparent + 3);
  apply_event(arg, req, &ev, r.step_name, r.data, trace_id[0] ? trace_id : NULL);
  saga_wire_reply_free(&r);
}

void saga_api_start(saga_t *s) {
  bt_metrics_counter(&s->stats.started, "baton_saga_started_total", "Sagas started.");
  bt_metrics_counter(&s->stats.idempotent, "baton_saga_idempotent_starts_total",
                     "Starts answered with the saga of an earlier request with the same "
                     "Idempotency-Key and body.");
  bt_metrics_counter(&s->stats.key_reused, "baton_saga_idempotency_key_reused_total",
                     "Starts refused (422) for an Idempotency-Key used with another body.");
  bt_metrics_counter(&s->stats.rejected, "baton_saga_start_errors_total",
                     "Starts that failed for load or a Postgres error (503).");
  bt_metrics_counter(&s->stats.replies, "baton_saga_replies_total",
                     "Replies consumed from Kafka and applied or recorded as ignored.");
  bt_metrics_counter(&s->stats.replies_malformed, "baton_saga_replies_malformed_total",
                     "Reply records skipped: unparseable, or for a saga that does not exist.");
  bt_metrics_counter(&s->stats.reply_retries, "baton_saga_reply_retries_total",
                     "Reply batches applied again after a Postgres error.");
  bt_metrics_counter(&s->stats.timeouts, "baton_saga_timeouts_total",
                     "Attempts past their timeout.");
  bt_metrics_counter(&s->stats.retries, "baton_saga_retries_total",
                     "Backoffs done: another attempt sent.");
  bt_metrics_counter(&s->stats.deadlines, "baton_saga_deadlines_total",
                     "Sagas compensated for their deadline.");
  bt_http_server_route_auth(s->http, "GET", "/v1/saga-types", get_types, s);
  bt_http_server_route_auth(s->http, "POST", "/v1/sagas/{type}", post_saga, s);
  bt_http_server_route_auth(s->http, "GET", "/v1/sagas", list_sagas, s);
  bt_http_server_route_auth(s->http, "GET", "/v1/sagas/{id}", get_saga, s);
  bt_http_server_route_auth(s->http, "POST", "/v1/sagas/{id}/replies", post_reply, s);
  static const char *const paths[] = {"/v1/sagas/{id}/retry", "/v1/sagas/{id}/abort",
                                      "/v1/sagas/{id}/pause", "/v1/sagas/{id}/resume"};
  static op_route_t ops[4];
  const saga_event_type_t evs[] = {SAGA_EV_OP_RETRY, SAGA_EV_OP_ABORT, SAGA_EV_OP_PAUSE,
                                   SAGA_EV_OP_RESUME};
  for (size_t i = 0; i < BT_ARRAY_LEN(ops); i++) {
    ops[i] = (op_route_t){s, evs[i]};
    bt_http_server_route_auth(s->http, "POST", paths[i], post_operator, &ops[i]);
  }
}
