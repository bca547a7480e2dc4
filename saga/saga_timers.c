/* Saga timers: per-attempt step timeouts, retry backoffs and saga deadlines. They live in
 * saga.timers (armed in the transition's own transaction, saga_txn.c), so they survive
 * restarts and are shared by every replica; this module fires them.
 *
 * Every poll interval a replica claims the timers due within the look-ahead window with
 * FOR UPDATE SKIP LOCKED, so two replicas never claim the same row. A claim is a lease: it
 * moves the row's due_at forward by BATON_SAGA_TIMER_LEASE and keeps the original due time in
 * memory, where the timer wheel (common/timers.h) fires it on time. Firing applies the timer
 * event through saga_apply (the machine ignores a timer that no longer matches what the saga
 * waits for), then deletes the row only if it is still the claimed one: a transition that
 * re-armed the timer has replaced it (new due_at) and the new one stays. A replica that dies
 * holding claims loses nothing: the rows come due again when the lease runs out. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "saga.h"
#include "saga_apply.h"

typedef struct timer_item timer_item_t;

struct timer_item {
  bt_timer_t t;
  saga_timers_t *owner;
  timer_item_t *prev, *next; /* the owner's list of items not yet finished */
  char saga_id[40];
  char timer[16];
  char leased_due[64]; /* due_at as written by the claim: the row is ours while it holds */
  saga_event_t ev;
  bool in_flight;      /* saga_apply or the delete is running */
};

struct saga_timers {
  saga_t *s;
  bt_timer_t poll;
  bool claiming, stopped;
  size_t held; /* items claimed and not finished */
  timer_item_t *items;
};

/* Claims due rows (and the nearly due: the wheel fires those on time) by pushing due_at one
 * lease ahead. Returns the original due time in Unix ms and the leased due_at as text. */
static const char claim_sql[] =
    "WITH due AS (SELECT saga_id, timer, due_at FROM saga.timers "
    "WHERE due_at <= now() + $1::bigint * interval '1 millisecond' "
    "ORDER BY due_at LIMIT $2::int FOR UPDATE SKIP LOCKED) "
    "UPDATE saga.timers t SET due_at = due.due_at + $3::bigint * interval '1 millisecond' "
    "FROM due WHERE t.saga_id = due.saga_id AND t.timer = due.timer "
    "RETURNING t.saga_id, t.timer, t.step, t.attempt, t.kind, "
    "(extract(epoch FROM due.due_at) * 1000)::bigint, t.due_at::text";

static const char delete_sql[] =
    "DELETE FROM saga.timers WHERE saga_id = $1::uuid AND timer = $2 "
    "AND due_at = $3::timestamptz";

static void item_free(timer_item_t *it) {
  saga_timers_t *tm = it->owner;
  if (it->prev)
    it->prev->next = it->next;
  else
    tm->items = it->next;
  if (it->next)
    it->next->prev = it->prev;
  tm->held--;
  free(it);
}

static void deleted(const bt_pg_result_t *r, void *arg) {
  timer_item_t *it = arg;
  if (r->err != 0) /* the lease runs out and the timer fires again; the machine ignores it */
    bt_log_warn("saga timer not removed", "{s:s, s:s, s:s}", "saga_id", it->saga_id, "timer",
                it->timer, "error", r->errmsg);
  item_free(it);
}

static void applied(const saga_apply_result_t *r, void *arg) {
  timer_item_t *it = arg;
  saga_t *s = it->owner->s;
  if (r->err != 0 && r->err != BT_ENOENT) {
    /* Left claimed: it fires again once the lease runs out. */
    bt_log_warn("saga timer not applied; it fires again after the lease", "{s:s, s:s, s:s}",
                "saga_id", it->saga_id, "timer", it->timer, "error", r->errmsg);
    item_free(it);
    return;
  }
  if (r->err == 0 && r->verdict == SAGA_APPLIED) {
    bt_counter_inc(it->ev.type == SAGA_EV_ATTEMPT_TIMEOUT ? &s->stats.timeouts
                   : it->ev.type == SAGA_EV_DEADLINE      ? &s->stats.deadlines
                                                          : &s->stats.retries);
    bt_log_info("saga timer fired", "{s:s, s:s, s:i, s:i, s:s}", "saga_id", it->saga_id, "timer",
                it->timer, "step", (int)it->ev.step, "attempt", (int)it->ev.attempt, "state",
                saga_state_name(r->state));
  }
  const char *v[] = {it->saga_id, it->timer, it->leased_due};
  if (bt_pg_pool_query(s->pg, delete_sql, 3, v, deleted, it) != 0)
    item_free(it);
}

static void fire(bt_timers_t *w, bt_timer_t *t) {
  BT_UNUSED(w);
  timer_item_t *it = BT_CONTAINER_OF(t, timer_item_t, t);
  it->in_flight = true;
  if (saga_apply(it->owner->s->pg, it->saga_id, &it->ev, NULL, NULL, NULL, applied, it) != 0)
    item_free(it); /* the pool is full or closing: the lease brings it back */
}

static void schedule_poll(saga_timers_t *tm, uint64_t ms);

static void claimed(const bt_pg_result_t *r, void *arg) {
  saga_timers_t *tm = arg;
  saga_t *s = tm->s;
  tm->claiming = false;
  if (tm->stopped)
    return;
  if (r->err != 0) {
    bt_log_warn("saga timers not claimed", "{s:s}", "error", r->errmsg);
    schedule_poll(tm, (uint64_t)s->cfg.timer_poll_ms);
    return;
  }
  const PGresult *res = r->res[0];
  int n = PQntuples(res);
  uint64_t now = saga_unix_ms();
  for (int i = 0; i < n; i++) {
    timer_item_t *it = calloc(1, sizeof *it);
    if (!it)
      break; /* the lease brings the rest back */
    it->owner = tm;
    snprintf(it->saga_id, sizeof it->saga_id, "%s", PQgetvalue(res, i, 0));
    snprintf(it->timer, sizeof it->timer, "%s", PQgetvalue(res, i, 1));
    snprintf(it->leased_due, sizeof it->leased_due, "%s", PQgetvalue(res, i, 6));
    it->ev.type = strcmp(it->timer, "attempt") == 0   ? SAGA_EV_ATTEMPT_TIMEOUT
                  : strcmp(it->timer, "backoff") == 0 ? SAGA_EV_BACKOFF_DONE
                                                      : SAGA_EV_DEADLINE;
    it->ev.step = (uint32_t)strtoul(PQgetvalue(res, i, 2), NULL, 10);
    it->ev.attempt = (uint32_t)strtoul(PQgetvalue(res, i, 3), NULL, 10);
    it->ev.kind = strcmp(PQgetvalue(res, i, 4), "command") == 0 ? SAGA_KIND_COMMAND
                                                                : SAGA_KIND_COMPENSATION;
    uint64_t due = strtoull(PQgetvalue(res, i, 5), NULL, 10);
    it->next = tm->items;
    if (tm->items)
      tm->items->prev = it;
    tm->items = it;
    tm->held++;
    bt_timer_init(&it->t, fire);
    bt_timer_start(&s->wheel, &it->t, due > now ? due - now : 0);
  }
  /* A full batch: more are due, claim again at once. */
  schedule_poll(tm, (size_t)n == (size_t)s->cfg.timer_batch ? 0 : (uint64_t)s->cfg.timer_poll_ms);
}

static void poll_due(bt_timers_t *w, bt_timer_t *t) {
  BT_UNUSED(w);
  saga_timers_t *tm = BT_CONTAINER_OF(t, saga_timers_t, poll);
  saga_t *s = tm->s;
  if (tm->stopped || tm->claiming)
    return;
  /* Bounded memory: claim only what the in-memory budget still holds. */
  if (tm->held + (size_t)s->cfg.timer_batch > (size_t)s->cfg.timer_max_held) {
    schedule_poll(tm, (uint64_t)s->cfg.timer_poll_ms);
    return;
  }
  char ahead[24], batch[24], lease[24];
  snprintf(ahead, sizeof ahead, "%lld", (long long)s->cfg.timer_poll_ms * 2);
  snprintf(batch, sizeof batch, "%lld", (long long)s->cfg.timer_batch);
  snprintf(lease, sizeof lease, "%lld", (long long)s->cfg.timer_lease_ms);
  const char *v[] = {ahead, batch, lease};
  tm->claiming = true;
  if (bt_pg_pool_query(s->pg, claim_sql, 3, v, claimed, tm) != 0) {
    tm->claiming = false;
    schedule_poll(tm, (uint64_t)s->cfg.timer_poll_ms);
  }
}

static void schedule_poll(saga_timers_t *tm, uint64_t ms) {
  if (!tm->stopped)
    bt_timer_start(&tm->s->wheel, &tm->poll, ms);
}

/* Drain: claim nothing more. Items on the wheel are dropped at close; their rows come due
 * again when the lease runs out (here or on another replica). */
static void timers_drain(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  saga_timers_t *tm = arg;
  tm->stopped = true;
  bt_timer_stop(&tm->s->wheel, &tm->poll);
}

static void timers_close(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  saga_timers_t *tm = arg;
  tm->stopped = true;
  for (timer_item_t *it = tm->items, *next; it; it = next) {
    next = it->next;
    if (!it->in_flight) {
      bt_timer_stop(&tm->s->wheel, &it->t);
      item_free(it);
    }
  }
}

int saga_timers_start(saga_t *s) {
  saga_timers_t *tm = calloc(1, sizeof *tm);
  if (!tm)
    return BT_ENOMEM;
  tm->s = s;
  s->timers = tm;
  bt_timer_init(&tm->poll, poll_due);
  bt_app_on_shutdown(&s->app, timers_drain, timers_close, tm);
  schedule_poll(tm, 0);
  return 0;
}
