/* ?wait= on POST /v1/sagas/{type} and GET /v1/sagas/{id}: the request is held until the saga
 * ends (COMPLETED, COMPENSATED or FAILED) or the wait runs out, whichever replica applies the
 * last transition. That transition sends NOTIFY baton_saga_ended '<id>' in its own transaction
 * (saga_apply.c); every replica LISTENs (common/pg_listener.h) and wakes its waiters of that
 * id. After every (re)connect of the listener each waiter reads its saga again, since a
 * NOTIFY sent while disconnected is lost; and each waiter reads it once right after it is
 * registered, which covers a saga that ended before.
 *
 * Waiters are bounded (BATON_SAGA_MAX_WAITERS: 503 past it), freed when their client goes
 * away (bt_http_req_on_abort), and their time-outs sit on the process's timer wheel. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "pg_listener.h"
#include "saga.h"
#include "saga_apply.h"

#define NBUCKETS 1024

typedef struct waiter waiter_t;

struct waiter {
  waiter_t *prev, *next; /* bucket chain; linked while waiting */
  bool linked;
  saga_waits_t *w;
  bt_http_req_t *req;    /* NULL once the client went away */
  bt_timer_t timeout;
  char id[40];
  int timeout_status;    /* 202 (start) or 200 (GET) */
  unsigned checks;       /* state reads in flight: the waiter is freed after the last */
};

struct saga_waits {
  saga_t *s;
  bt_pg_listener_t *listener;
  waiter_t *buckets[NBUCKETS];
  size_t count;
  bt_gauge_t gauge;
  bt_counter_t woken, timed_out, gone, refused;
};

static const char state_sql[] = "SELECT state FROM saga.sagas WHERE id = $1::uuid";

static size_t bucket_of(const char *id) {
  size_t h = 5381;
  for (const char *p = id; *p; p++)
    h = h * 33 + (unsigned char)*p;
  return h % NBUCKETS;
}

static void unlink_waiter(waiter_t *wt) {
  if (!wt->linked)
    return;
  saga_waits_t *w = wt->w;
  if (wt->prev)
    wt->prev->next = wt->next;
  else
    w->buckets[bucket_of(wt->id)] = wt->next;
  if (wt->next)
    wt->next->prev = wt->prev;
  wt->linked = false;
  w->count--;
  bt_gauge_set(&w->gauge, (double)w->count);
  bt_timer_stop(&w->s->wheel, &wt->timeout);
}

static void maybe_free(waiter_t *wt) {
  if (!wt->linked && wt->checks == 0 && !wt->req)
    free(wt);
}

/* Answers with the saga as GET shows it: `status` (200 when it ended, else timeout_status). */
static void answer(waiter_t *wt, int status) {
  unlink_waiter(wt);
  bt_http_req_t *req = wt->req;
  wt->req = NULL;
  if (req) {
    bt_http_req_on_abort(req, NULL, NULL); /* the answer below now owns the request */
    saga_api_respond_saga(wt->w->s, req, wt->id, status);
  }
  maybe_free(wt);
}

static void on_abort(bt_http_req_t *req, void *arg) {
  BT_UNUSED(req);
  waiter_t *wt = arg;
  bt_counter_inc(&wt->w->gone);
  wt->req = NULL;
  unlink_waiter(wt);
  maybe_free(wt);
}

static void on_timeout(bt_timers_t *t, bt_timer_t *tm) {
  BT_UNUSED(t);
  waiter_t *wt = BT_CONTAINER_OF(tm, waiter_t, timeout);
  bt_counter_inc(&wt->w->timed_out);
  answer(wt, wt->timeout_status);
}

static bool ended(const char *state) {
  return strcmp(state, "COMPLETED") == 0 || strcmp(state, "COMPENSATED") == 0 ||
         strcmp(state, "FAILED") == 0;
}

static void checked(const bt_pg_result_t *r, void *arg) {
  waiter_t *wt = arg;
  wt->checks--;
  if (r->err == 0 && wt->linked && wt->req && PQntuples(r->res[0]) == 1 &&
      ended(PQgetvalue(r->res[0], 0, 0))) {
    bt_counter_inc(&wt->w->woken);
    answer(wt, 200);
    return;
  }
  /* Not ended (or unreadable: the NOTIFY or the time-out still answers). */
  maybe_free(wt);
}

static void check(waiter_t *wt) {
  const char *v[] = {wt->id};
  wt->checks++;
  if (bt_pg_pool_query(wt->w->s->pg, state_sql, 1, v, checked, wt) != 0)
    wt->checks--;
}

static void on_notify(const char *channel, const char *payload, int be_pid, void *arg) {
  BT_UNUSED(channel);
  BT_UNUSED(be_pid);
  saga_waits_t *w = arg;
  waiter_t *wt = w->buckets[bucket_of(payload)];
  while (wt) {
    waiter_t *next = wt->next;
    if (strcmp(wt->id, payload) == 0) {
      bt_counter_inc(&w->woken);
      answer(wt, 200);
    }
    wt = next;
  }
}

static void on_listening(void *arg) {
  saga_waits_t *w = arg;
  for (size_t b = 0; b < NBUCKETS; b++)
    for (waiter_t *wt = w->buckets[b]; wt; wt = wt->next)
      check(wt);
}

bool saga_wait_full(saga_t *s) {
  saga_waits_t *w = s->waits;
  if (w->count < (size_t)s->cfg.max_waiters)
    return false;
  bt_counter_inc(&w->refused);
  return true;
}

int saga_wait_param(saga_t *s, bt_http_req_t *req, uint64_t *ms) {
  char text[32];
  *ms = 0;
  if (bt_http_req_query(req, "wait", text, sizeof text) < 0)
    return 0;
  int64_t v = 0;
  bt_config_var_t var = {"wait", BT_CFG_DURATION, NULL, 0, s->cfg.max_wait_ms, 0, NULL, "", &v};
  char err[160];
  if (bt_config_parse_value(&var, text, err, sizeof err) != 0 || v < 0 || v > s->cfg.max_wait_ms) {
    bt_http_respond_error(req, 400, "invalid_wait",
                          "wait must be a duration (\"5s\", \"500ms\") of at most %lld ms",
                          (long long)s->cfg.max_wait_ms);
    return -1;
  }
  *ms = (uint64_t)v;
  return 0;
}

void saga_wait(saga_t *s, bt_http_req_t *req, const char *id, uint64_t ms, int timeout_status) {
  saga_waits_t *w = s->waits;
  waiter_t *wt = calloc(1, sizeof *wt);
  if (!wt) {
    saga_api_respond_saga(s, req, id, timeout_status);
    return;
  }
  wt->w = w;
  wt->req = req;
  wt->timeout_status = timeout_status;
  snprintf(wt->id, sizeof wt->id, "%s", id);
  size_t b = bucket_of(id);
  wt->next = w->buckets[b];
  if (wt->next)
    wt->next->prev = wt;
  w->buckets[b] = wt;
  wt->linked = true;
  w->count++;
  bt_gauge_set(&w->gauge, (double)w->count);
  bt_http_req_on_abort(req, on_abort, wt);
  bt_timer_init(&wt->timeout, on_timeout);
  bt_timer_start(&s->wheel, &wt->timeout, ms);
  check(wt); /* it may have ended already */
}

/* Drain: every waiter is answered now with what the saga is, so the drain is not held. */
static void waits_drain(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  saga_waits_t *w = arg;
  for (size_t b = 0; b < NBUCKETS; b++)
    while (w->buckets[b])
      answer(w->buckets[b], w->buckets[b]->timeout_status);
}

int saga_wait_start(saga_t *s) {
  saga_waits_t *w = calloc(1, sizeof *w);
  if (!w)
    return BT_ENOMEM;
  w->s = s;
  s->waits = w;
  bt_metrics_gauge(&w->gauge, "baton_saga_waiters", "Requests held by ?wait= right now.");
  bt_metrics_counter(&w->woken, "baton_saga_waits_ended_total",
                     "?wait= requests answered because their saga ended.");
  bt_metrics_counter(&w->timed_out, "baton_saga_waits_timed_out_total",
                     "?wait= requests answered when their wait ran out.");
  bt_metrics_counter(&w->gone, "baton_saga_waits_abandoned_total",
                     "?wait= requests whose client went away first.");
  bt_metrics_counter(&w->refused, "baton_saga_waits_refused_total",
                     "?wait= requests refused (503) at BATON_SAGA_MAX_WAITERS.");
  const char *channels[] = {SAGA_ENDED_CHANNEL};
  bt_pg_listener_config_t lc = {
      .dsn = s->cfg.pg_dsn,
      .name = "saga_wait",
      .channels = channels,
      .nchannels = 1,
      .on_notify = on_notify,
      .on_listening = on_listening,
      .arg = w,
  };
  if (bt_pg_listener_new(&w->listener, s->app.loop, &lc) != 0) {
    bt_log_error("cannot create the LISTEN connection", NULL);
    return BT_EINVAL;
  }
  bt_pg_listener_attach(w->listener, &s->app, "postgres_listen");
  bt_app_on_shutdown(&s->app, waits_drain, NULL, w);
  return 0;
}
