/* Read, decide, write with optimistic concurrency (see saga_apply.h).
 *
 * Why optimistic: a pool request is one pipelined transaction, so the machine cannot decide
 * between a SELECT ... FOR UPDATE and the writes. Instead the write batch starts with a guard
 * that raises division_by_zero (SQLSTATE 22012) unless `seq` is still the value read; the
 * whole batch then rolls back and the event is decided again on fresh state. A reply's dedupe
 * key (saga.replies_seen) is inserted in the same batch: a reply applied concurrently makes it
 * fail with unique_violation (23505), and the next round sees the reply as already answered.
 * Nothing is written unless the whole transition commits. */
#include "saga_apply.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "saga.h"
#include "saga_txn.h"

typedef struct apply {
  bt_pg_pool_t *pg;
  char id[40];
  saga_event_t ev;
  char *step_name;
  json_t *data;
  char *trace_id;
  saga_apply_cb cb;
  void *arg;
  unsigned rounds;
  saga_instance_t after;
  saga_state_t before;
  uint64_t age_ms, since_ms;
  char saga_trace_id[40];
  char type[SAGA_MAX_NAME + 1];
  saga_verdict_t verdict;
  char reason[160];
} apply_t;

#define READ_COLUMNS                                                                      \
  "SELECT state, cursor::text, plan::text, input::text, results::text, seq, "              \
  "(extract(epoch FROM clock_timestamp() - created_at) * 1000)::bigint, "                  \
  "(extract(epoch FROM clock_timestamp() - updated_at) * 1000)::bigint, trace_id, type, "  \
  "id::text FROM saga.sagas "
static const char read_sql[] = READ_COLUMNS "WHERE id = $1::uuid";
static const char group_read_sql[] = READ_COLUMNS "WHERE id = ANY ($1::uuid[])";
enum { C_ID = 10 };

/* The guard: the transition commits only if seq is unchanged since it was read. */
static const char guard_sql[] =
    "WITH u AS (UPDATE saga.sagas SET state = $2, cursor = $3::jsonb, seq = seq + 1, "
    "updated_at = now(), ended_at = CASE WHEN $2 IN ('COMPLETED', 'COMPENSATED') THEN now() END "
    "WHERE id = $1::uuid AND seq = $4::bigint RETURNING 1) SELECT 1 / count(*)::int FROM u";

static const char seen_sql[] =
    "INSERT INTO saga.replies_seen (saga_id, step, attempt, kind, outcome) "
    "VALUES ($1::uuid, $2::int, $3::int, $4, $5)";

static const char end_timers_sql[] = "DELETE FROM saga.timers WHERE saga_id = $1::uuid";
static const char notify_sql[] = "SELECT pg_notify('" SAGA_ENDED_CHANNEL "', $1)";

static saga_apply_hook commit_hook;
static void *commit_hook_arg;

void saga_apply_on_commit(saga_apply_hook fn, void *arg) {
  commit_hook = fn;
  commit_hook_arg = arg;
}

static void finish(apply_t *a, int err, const char *errmsg) {
  saga_apply_result_t r = {.err = err,
                           .errmsg = errmsg ? errmsg : "",
                           .verdict = a->verdict,
                           .reason = a->reason,
                           .state = a->after.state,
                           .paused = a->after.paused,
                           .before = a->before,
                           .age_ms = a->age_ms,
                           .since_ms = a->since_ms,
                           .saga_id = a->id,
                           .type = a->type,
                           .trace_id = a->trace_id ? a->trace_id : a->saga_trace_id};
  if (err == 0 && commit_hook)
    commit_hook(&r, &a->ev, commit_hook_arg);
  a->cb(&r, a->arg);
  json_decref(a->data);
  free(a->step_name);
  free(a->trace_id);
  free(a);
}

static void read_round(apply_t *a);

static void write_done(const bt_pg_result_t *r, void *arg) {
  apply_t *a = arg;
  const char *state = r->error ? PQresultErrorField(r->error, PG_DIAG_SQLSTATE) : NULL;
  if (r->err == BT_EIO && state &&
      (strcmp(state, "22012") == 0 || strcmp(state, "23505") == 0)) {
    /* Another transition of this saga committed first: decide again on what it left. */
    read_round(a);
    return;
  }
  finish(a, r->err, r->errmsg);
}

/* Decides a's event on row `row` of res (a saga row, READ_COLUMNS) and stages the transition
 * in t. Returns 0 (staged: submit t), 1 (nothing to write; a->verdict says why) or BT_EIO
 * with err (a stored saga that cannot be read, a command that cannot be encoded). t borrows
 * names from the plan, returned in *plan_out: free it once t is submitted. */
static int stage(apply_t *a, const PGresult *res, int row, saga_txn_t *t, char *err,
                 size_t errsz, saga_plan_t **plan_out) {
  saga_state_t st = SAGA_RUNNING;
  json_t *cursor = json_loads(PQgetvalue(res, row, 1), 0, NULL);
  json_t *planj = json_loads(PQgetvalue(res, row, 2), 0, NULL);
  json_t *input = json_loads(PQgetvalue(res, row, 3), JSON_DECODE_ANY, NULL);
  json_t *results = json_loads(PQgetvalue(res, row, 4), 0, NULL);
  saga_plan_t *plan = planj ? saga_plan_from_json(planj, err, errsz) : NULL;
  saga_instance_t in;
  int rc = plan && cursor && results && saga_state_parse(PQgetvalue(res, row, 0), &st) == 0
               ? saga_instance_from_cursor(&in, st, cursor, err, errsz)
               : BT_EINVAL;
  if (rc != 0 && !plan)
    snprintf(err, errsz, "stored saga %s is unreadable", a->id);
  a->before = st;
  a->age_ms = strtoull(PQgetvalue(res, row, 6), NULL, 10);
  a->since_ms = strtoull(PQgetvalue(res, row, 7), NULL, 10);
  snprintf(a->saga_trace_id, sizeof a->saga_trace_id, "%s", PQgetvalue(res, row, 8));
  snprintf(a->type, sizeof a->type, "%s", PQgetvalue(res, row, 9));
  saga_decision_t d;
  if (rc == 0) {
    if (a->step_name) {
      int idx = saga_plan_step_index(plan, a->step_name);
      a->ev.step = idx < 0 ? UINT32_MAX : (uint32_t)idx; /* the machine ignores it, named */
    }
    uint64_t now = saga_unix_ms();
    a->verdict = saga_machine_decide(plan, &in, &a->ev, now, &a->after, &d);
    snprintf(a->reason, sizeof a->reason, "%s", d.reason);
    if (a->verdict == SAGA_REFUSED || d.nactions == 0) {
      rc = 1; /* nothing to write */
    } else {
      /* The next command carries every result, this reply's included. */
      for (unsigned i = 0; i < d.nactions; i++)
        if (d.actions[i].type == SAGA_ACT_STORE_RESULT)
          json_object_set(results, plan->steps[d.actions[i].step].name,
                          a->data ? a->data : json_null());
      /* Later commands continue the trace the start began: its trace id, a span id of the
       * saga's own (the first 16 hex digits of its id). */
      char traceparent[64] = "", span[17];
      size_t ns = 0;
      for (const char *p = a->id; *p && ns < 16; p++)
        if (*p != '-')
          span[ns++] = *p;
      span[ns] = '\0';
      if (strlen(a->saga_trace_id) == 32)
        snprintf(traceparent, sizeof traceparent, "00-%s-%s-01", a->saga_trace_id, span);
      saga_txn_ctx_t c = {.saga_id = a->id,
                          .traceparent = traceparent[0] ? traceparent : NULL,
                          .plan = plan,
                          .input = input,
                          .results = results,
                          .reply_data = a->data,
                          .trace_id = a->trace_id,
                          .now_unix_ms = now};
      if (a->verdict == SAGA_APPLIED) {
        json_t *cj = saga_instance_cursor_json(&a->after);
        char *ctext = json_dumps(cj, JSON_COMPACT);
        json_decref(cj);
        /* The guard goes first, so a conflict fails the batch before anything else runs. The
         * values live in the txn: a group submits it later. */
        t->owned[t->nowned++] = ctext;
        t->vals[0][0] = a->id;
        t->vals[0][1] = saga_state_name(a->after.state);
        t->vals[0][2] = ctext;
        t->vals[0][3] = t->owned[t->nowned++] = strdup(PQgetvalue(res, row, 5));
        t->stmts[0] = (bt_pg_stmt_t){guard_sql, 4, t->vals[0]};
        t->n = 1;
        if (a->ev.type == SAGA_EV_REPLY) {
          char num[16];
          t->vals[1][0] = a->id;
          snprintf(num, sizeof num, "%u", a->ev.step);
          t->vals[1][1] = t->owned[t->nowned++] = strdup(num);
          snprintf(num, sizeof num, "%u", a->ev.attempt);
          t->vals[1][2] = t->owned[t->nowned++] = strdup(num);
          t->vals[1][3] = saga_kind_name(a->ev.kind);
          t->vals[1][4] = saga_outcome_name(a->ev.outcome);
          t->stmts[1] = (bt_pg_stmt_t){seen_sql, 5, t->vals[1]};
          t->n = 2;
        }
        for (size_t i = 0; i < t->nowned; i++)
          if (!t->owned[i])
            rc = BT_ENOMEM;
      }
      if (rc == 0)
        rc = saga_txn_add_actions(t, &c, &d, err, errsz);
      if (rc == 0 && a->verdict == SAGA_APPLIED &&
          (saga_state_terminal(a->after.state) || a->after.state == SAGA_FAILED)) {
        /* The end: no timer can matter any more, and ?wait= waiters on any replica learn it
         * once this commits (NOTIFY is delivered at commit). */
        BT_ASSERT(t->n + 2 <= SAGA_TXN_MAX_STMTS);
        t->vals[t->n][0] = a->id;
        t->stmts[t->n] = (bt_pg_stmt_t){end_timers_sql, 1, t->vals[t->n]};
        t->n++;
        t->vals[t->n][0] = a->id;
        t->stmts[t->n] = (bt_pg_stmt_t){notify_sql, 1, t->vals[t->n]};
        t->n++;
      }
      if (rc != 0) {
        if (rc == BT_ENOMEM)
          snprintf(err, errsz, "out of memory");
        rc = BT_EIO;
      }
    }
  }
  *plan_out = plan;
  json_decref(cursor);
  json_decref(planj);
  json_decref(input);
  json_decref(results);
  return rc == 0 || rc == 1 ? rc : BT_EIO;
}

static void read_done(const bt_pg_result_t *r, void *arg) {
  apply_t *a = arg;
  if (r->err != 0) {
    finish(a, r->err, r->errmsg);
    return;
  }
  const PGresult *res = r->res[0];
  if (PQntuples(res) == 0) {
    finish(a, BT_ENOENT, "no such saga");
    return;
  }
  char err[256] = "";
  saga_txn_t t;
  saga_txn_init(&t);
  saga_plan_t *plan = NULL;
  int rc = stage(a, res, 0, &t, err, sizeof err, &plan);
  if (rc == 0 && bt_pg_pool_batch(a->pg, t.stmts, t.n, write_done, a) != 0) {
    snprintf(err, sizeof err, "cannot submit the transition");
    rc = BT_EIO;
  }
  saga_txn_free(&t);
  saga_plan_free(plan);
  if (rc == 1)
    finish(a, 0, NULL);
  else if (rc != 0)
    finish(a, BT_EIO, err);
}

static void read_round(apply_t *a) {
  if (++a->rounds > SAGA_APPLY_MAX_ROUNDS) {
    finish(a, BT_ECONFLICT, "too many concurrent transitions of this saga");
    return;
  }
  const char *v[] = {a->id};
  int rc = bt_pg_pool_query(a->pg, read_sql, 1, v, read_done, a);
  if (rc != 0)
    finish(a, rc, "cannot read the saga");
}

static apply_t *apply_new(bt_pg_pool_t *pg, const saga_apply_req_t *q) {
  apply_t *a = calloc(1, sizeof *a);
  if (!a || strlen(q->saga_id) >= sizeof a->id) {
    free(a);
    return NULL;
  }
  a->pg = pg;
  snprintf(a->id, sizeof a->id, "%s", q->saga_id);
  a->ev = q->ev;
  a->step_name = q->step_name ? strdup(q->step_name) : NULL;
  a->trace_id = q->trace_id ? strdup(q->trace_id) : NULL;
  a->data = q->data ? json_deep_copy(q->data) : NULL;
  a->cb = q->cb;
  a->arg = q->arg;
  a->rounds = 1;
  return a;
}

static void apply_free(apply_t *a) {
  json_decref(a->data);
  free(a->step_name);
  free(a->trace_id);
  free(a);
}

int saga_apply(bt_pg_pool_t *pg, const char *saga_id, const saga_event_t *ev,
               const char *step_name, const json_t *data, const char *trace_id, saga_apply_cb cb,
               void *arg) {
  saga_apply_req_t q = {saga_id, *ev, step_name, data, trace_id, cb, arg};
  apply_t *a = apply_new(pg, &q);
  if (!a)
    return strlen(saga_id) >= sizeof a->id ? BT_EINVAL : BT_ENOMEM;
  const char *v[] = {a->id};
  int rc = bt_pg_pool_query(pg, read_sql, 1, v, read_done, a);
  if (rc != 0)
    apply_free(a);
  return rc;
}

/* ---- group commit ----------------------------------------------------------------------- */

static bt_counter_t group_commits, group_transitions;

void saga_apply_register_metrics(void) {
  bt_metrics_counter(&group_commits, "baton_saga_group_commits_total",
                     "Transactions that carried the transitions of several sagas (group commit).");
  bt_metrics_counter(&group_transitions, "baton_saga_group_transitions_total",
                     "Transitions committed in those transactions.");
}

/* ---- group commit (continued) ----------------------------------------------------------------------- */

typedef struct group {
  bt_pg_pool_t *pg;
  size_t n;
  saga_txn_t *txns;  /* one per apply, staged by group_read_done */
  saga_plan_t **plans; /* their plans, which the txns borrow from until submitted */
  bool *staged;      /* its transition is in the group's transaction */
  bool *deferred;    /* another apply of the group has its saga: it runs after the group */
  char (*ids)[40];   /* a[i]'s saga id (a[i] is freed once it finished) */
  apply_t *a[];
} group_t;

static void group_free(group_t *g) {
  free(g->txns);
  free(g->plans);
  free(g->staged);
  free(g->deferred);
  free(g->ids);
  free(g);
}

/* Applies that could not join the group's transaction run alone, after it. */
static void group_end(group_t *g) {
  for (size_t i = 0; i < g->n; i++)
    if (g->deferred[i])
      read_round(g->a[i]);
  group_free(g);
}

static void group_write_done(const bt_pg_result_t *r, void *arg) {
  group_t *g = arg;
  const char *state = r->error ? PQresultErrorField(r->error, PG_DIAG_SQLSTATE) : NULL;
  bool conflict = r->err == BT_EIO && state &&
                  (strcmp(state, "22012") == 0 || strcmp(state, "23505") == 0);
  size_t staged = 0;
  for (size_t i = 0; i < g->n; i++)
    staged += g->staged[i];
  if (r->err == 0 && staged > 1) {
    bt_counter_inc(&group_commits);
    bt_counter_add(&group_transitions, staged);
  }
  for (size_t i = 0; i < g->n; i++) {
    if (!g->staged[i])
      continue;
    if (conflict)
      read_round(g->a[i]); /* one saga moved meanwhile: each decides again, alone */
    else
      finish(g->a[i], r->err, r->errmsg);
  }
  group_end(g);
}

static void group_read_done(const bt_pg_result_t *r, void *arg) {
  group_t *g = arg;
  if (r->err != 0) {
    for (size_t i = 0; i < g->n; i++)
      finish(g->a[i], r->err, r->errmsg);
    group_free(g);
    return;
  }
  const PGresult *res = r->res[0];
  int nrows = PQntuples(res);
  size_t total = 0;
  for (size_t i = 0; i < g->n; i++) {
    apply_t *a = g->a[i];
    for (size_t k = 0; k < i && !g->deferred[i]; k++)
      g->deferred[i] = strcmp(g->ids[k], g->ids[i]) == 0 && !g->deferred[k];
    if (g->deferred[i])
      continue;
    int row = 0;
    while (row < nrows && strcmp(PQgetvalue(res, row, C_ID), a->id) != 0)
      row++;
    if (row == nrows) {
      finish(a, BT_ENOENT, "no such saga");
      continue;
    }
    char err[256] = "";
    saga_txn_init(&g->txns[i]);
    int rc = stage(a, res, row, &g->txns[i], err, sizeof err, &g->plans[i]);
    if (rc == 0) {
      g->staged[i] = true;
      total += g->txns[i].n;
    } else {
      saga_txn_free(&g->txns[i]);
      saga_plan_free(g->plans[i]);
      g->plans[i] = NULL;
      finish(a, rc == 1 ? 0 : BT_EIO, rc == 1 ? NULL : err);
    }
  }
  bt_pg_stmt_t *all = total ? malloc(total * sizeof *all) : NULL;
  size_t k = 0;
  for (size_t i = 0; all && i < g->n; i++)
    for (size_t j = 0; g->staged[i] && j < g->txns[i].n; j++)
      all[k++] = g->txns[i].stmts[j];
  int rc = total == 0 ? 0
           : all     ? bt_pg_pool_batch(g->pg, all, total, group_write_done, g)
                     : BT_ENOMEM;
  free(all);
  for (size_t i = 0; i < g->n; i++)
    if (g->staged[i]) {
      saga_txn_free(&g->txns[i]);
      saga_plan_free(g->plans[i]);
      g->plans[i] = NULL;
    }
  if (total == 0) {
    group_end(g);
  } else if (rc != 0) {
    for (size_t i = 0; i < g->n; i++)
      if (g->staged[i])
        finish(g->a[i], rc, "cannot submit the group's transaction");
    group_end(g);
  }
}

int saga_apply_group(bt_pg_pool_t *pg, const saga_apply_req_t *reqs, size_t n) {
  if (n == 1)
    return saga_apply(pg, reqs[0].saga_id, &reqs[0].ev, reqs[0].step_name, reqs[0].data,
                      reqs[0].trace_id, reqs[0].cb, reqs[0].arg);
  group_t *g = calloc(1, sizeof *g + n * sizeof g->a[0]);
  char *ids = g ? malloc(n * 40 + 3) : NULL;
  if (g) {
    g->txns = malloc(n * sizeof *g->txns);
    g->staged = calloc(n, sizeof *g->staged);
    g->deferred = calloc(n, sizeof *g->deferred);
    g->ids = calloc(n, sizeof *g->ids);
    g->plans = calloc(n, sizeof *g->plans);
  }
  int rc = g && ids && g->txns && g->staged && g->deferred && g->ids && g->plans ? 0 : BT_ENOMEM;
  size_t len = 0;
  for (size_t i = 0; rc == 0 && i < n; i++) {
    if (!saga_uuid_valid(reqs[i].saga_id)) {
      rc = BT_EINVAL; /* Postgres would refuse the whole array */
      break;
    }
    snprintf(g->ids[i], sizeof g->ids[i], "%s", reqs[i].saga_id);
    if (!(g->a[i] = apply_new(pg, &reqs[i])))
      rc = BT_ENOMEM;
    else
      len += (size_t)sprintf(ids + len, "%s%s", i ? "," : "{", reqs[i].saga_id);
    g->n = i + 1;
  }
  if (rc == 0) {
    sprintf(ids + len, "}");
    g->pg = pg;
    const char *v[] = {ids};
    rc = bt_pg_pool_query(pg, group_read_sql, 1, v, group_read_done, g);
  }
  free(ids);
  if (rc != 0 && g) {
    for (size_t i = 0; i < g->n; i++)
      if (g->a[i])
        apply_free(g->a[i]);
    group_free(g);
  }
  return rc;
}

/* ---- malformed replies: shown in the history, applied to nothing ---- */

static const char malformed_sql[] =
    "INSERT INTO saga.history (saga_id, what, detail) "
    "SELECT $1::uuid, 'reply_ignored', $2 WHERE EXISTS (SELECT 1 FROM saga.sagas WHERE id = $1::uuid)";

static void malformed_noted(const bt_pg_result_t *r, void *arg) {
  BT_UNUSED(arg);
  if (r->err != 0)
    bt_log_warn("cannot record a malformed reply in the history", "{s:s}", "error", r->errmsg);
}

int saga_apply_note_malformed(bt_pg_pool_t *pg, const char *saga_id, const char *where,
                              const char *why) {
  char detail[400];
  snprintf(detail, sizeof detail, "malformed (%s): %s", where, why);
  const char *v[] = {saga_id, detail};
  return bt_pg_pool_query(pg, malformed_sql, 2, v, malformed_noted, NULL);
}
