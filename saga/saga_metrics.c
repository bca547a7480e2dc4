/* The engine's metrics and transition logs (issue 8 §4).
 *
 * Sagas live in Postgres, shared by every replica, so the gauges that describe them
 * (baton_saga_sagas{type,state}, the age of the oldest live saga) are read from Postgres every
 * BATON_SAGA_STATS_INTERVAL: each replica reports the same, cluster-wide values. The counters
 * and histograms count what this process applied (sum them over replicas): they are fed by
 * saga_apply's hook, whatever brought the event (Kafka, HTTP, a timer). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "saga.h"
#include "saga_apply.h"

struct saga_metrics {
  saga_t *s;
  bt_timer_t poll;
  bool polling, stopped;
  size_t ntypes;
  char **types;              /* the loaded type names, one gauge per (type, state) */
  bt_gauge_t *sagas;         /* ntypes * SAGA_NSTATES */
  char **names;              /* their series names */
  bt_gauge_t oldest;
  bt_histogram_t step_latency, saga_latency;
  bt_counter_t compensations, ended;
  bt_metric_family_t *ignored;
};

static const char counts_sql[] = "SELECT type, state, count(*) FROM saga.sagas GROUP BY 1, 2";
/* From the partial index sagas_live. */
static const char oldest_sql[] =
    "SELECT coalesce(extract(epoch FROM now() - min(created_at)), 0) FROM saga.sagas "
    "WHERE state IN ('RUNNING', 'COMPENSATING', 'FAILED')";

static void schedule(saga_metrics_t *m) {
  if (!m->stopped)
    bt_timer_start(&m->s->wheel, &m->poll, (uint64_t)m->s->cfg.stats_interval_ms);
}

static void polled(const bt_pg_result_t *r, void *arg) {
  saga_metrics_t *m = arg;
  m->polling = false;
  if (r->err == 0) {
    for (size_t i = 0; i < m->ntypes * SAGA_NSTATES; i++)
      bt_gauge_set(&m->sagas[i], 0);
    const PGresult *c = r->res[0];
    for (int i = 0; i < PQntuples(c); i++) {
      saga_state_t st;
      if (saga_state_parse(PQgetvalue(c, i, 1), &st) != 0)
        continue;
      for (size_t t = 0; t < m->ntypes; t++)
        if (strcmp(m->types[t], PQgetvalue(c, i, 0)) == 0)
          bt_gauge_set(&m->sagas[t * SAGA_NSTATES + st], strtod(PQgetvalue(c, i, 2), NULL));
    }
    bt_gauge_set(&m->oldest, strtod(PQgetvalue(r->res[1], 0, 0), NULL));
  }
  schedule(m);
}

static void poll_due(bt_timers_t *w, bt_timer_t *t) {
  BT_UNUSED(w);
  saga_metrics_t *m = BT_CONTAINER_OF(t, saga_metrics_t, poll);
  if (m->stopped || m->polling)
    return;
  bt_pg_stmt_t stmts[] = {{counts_sql, 0, NULL}, {oldest_sql, 0, NULL}};
  m->polling = true;
  if (bt_pg_pool_batch(m->s->pg, stmts, 2, polled, m) != 0) {
    m->polling = false;
    schedule(m);
  }
}

static void metrics_drain(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  saga_metrics_t *m = arg;
  m->stopped = true;
  bt_timer_stop(&m->s->wheel, &m->poll);
}

void saga_metrics_on_apply(saga_t *s, const saga_apply_result_t *r, const saga_event_t *ev) {
  saga_metrics_t *m = s->metrics;
  if (r->verdict == SAGA_IGNORED) {
    if (ev->type == SAGA_EV_REPLY) {
      bt_counter_inc(bt_metrics_family_counter(m->ignored, r->reason));
      bt_log_info("reply ignored", "{s:s, s:s, s:s, s:i, s:s}", "saga_id", r->saga_id,
                  "trace_id", r->trace_id, "reason", r->reason, "attempt", (int)ev->attempt,
                  "kind", saga_kind_name(ev->kind));
    }
    return;
  }
  if (r->verdict != SAGA_APPLIED)
    return;
  if (ev->type == SAGA_EV_REPLY)
    bt_histogram_observe(&m->step_latency, (double)r->since_ms / 1000.0);
  if (r->before == SAGA_RUNNING && r->state == SAGA_COMPENSATING)
    bt_counter_inc(&m->compensations);
  bool end = r->state != r->before && (saga_state_terminal(r->state) || r->state == SAGA_FAILED);
  if (end) {
    bt_counter_inc(&m->ended);
    if (saga_state_terminal(r->state))
      bt_histogram_observe(&m->saga_latency, (double)r->age_ms / 1000.0);
    bt_log_info("saga ended", "{s:s, s:s, s:s, s:s, s:I}", "saga_id", r->saga_id, "trace_id",
                r->trace_id, "type", r->type, "state", saga_state_name(r->state),
                "duration_ms", (json_int_t)r->age_ms);
  } else if (r->state != r->before) {
    bt_log_info("saga compensating", "{s:s, s:s, s:s}", "saga_id", r->saga_id, "trace_id",
                r->trace_id, "type", r->type);
  }
}

int saga_metrics_start(saga_t *s) {
  saga_metrics_t *m = calloc(1, sizeof *m);
  if (!m)
    return BT_ENOMEM;
  m->s = s;
  s->metrics = m;
  /* One series per loaded type and state; several versions share their type's. */
  m->types = calloc(s->defs.n + 1, sizeof *m->types);
  m->sagas = calloc((s->defs.n + 1) * SAGA_NSTATES, sizeof *m->sagas);
  m->names = calloc((s->defs.n + 1) * SAGA_NSTATES, sizeof *m->names);
  if (!m->types || !m->sagas || !m->names)
    return BT_ENOMEM;
  for (size_t i = 0; i < s->defs.n; i++) {
    const char *type = s->defs.plans[i]->name;
    bool seen = false;
    for (size_t t = 0; t < m->ntypes && !seen; t++)
      seen = strcmp(m->types[t], type) == 0;
    if (seen)
      continue;
    m->types[m->ntypes] = (char *)type;
    for (int st = 0; st < SAGA_NSTATES; st++) {
      char *name = NULL;
      if (asprintf(&name, "baton_saga_sagas{type=\"%s\",state=\"%s\"}", type,
                   saga_state_name((saga_state_t)st)) < 0)
        return BT_ENOMEM;
      m->names[m->ntypes * SAGA_NSTATES + (size_t)st] = name;
      bt_metrics_gauge(&m->sagas[m->ntypes * SAGA_NSTATES + (size_t)st], name,
                       "Sagas per type and state, in Postgres (all replicas).");
    }
    m->ntypes++;
  }
  bt_metrics_gauge(&m->oldest, "baton_saga_oldest_live_seconds",
                   "Age of the oldest RUNNING, COMPENSATING or FAILED saga (0: none), for "
                   "alerts.");
  static const double bounds[] = {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60};
  bt_metrics_histogram(&m->step_latency, "baton_saga_step_latency_seconds",
                       "From a command's transition to its reply's.", bounds,
                       BT_ARRAY_LEN(bounds));
  bt_metrics_histogram(&m->saga_latency, "baton_saga_latency_seconds",
                       "From start to COMPLETED or COMPENSATED.", bounds, BT_ARRAY_LEN(bounds));
  bt_metrics_counter(&m->compensations, "baton_saga_compensations_total",
                     "Sagas that began compensating (refusal, exhausted retries, deadline, "
                     "abort).");
  bt_metrics_counter(&m->ended, "baton_saga_ended_total",
                     "Sagas this process took to COMPLETED, COMPENSATED or FAILED.");
  m->ignored = bt_metrics_family("baton_saga_replies_ignored_total",
                                 "Replies recorded as ignored (duplicate, stale, late, ...), by "
                                 "reason.",
                                 BT_METRIC_COUNTER, "reason", 16);
  saga_apply_register_metrics();
  bt_timer_init(&m->poll, poll_due);
  bt_app_on_shutdown(&s->app, metrics_drain, NULL, m);
  bt_timer_start(&s->wheel, &m->poll, 0);
  return 0;
}
