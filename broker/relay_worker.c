/* The relay's engine: leadership lease and rounds, shared by the event-store relay and the
 * service-outbox relays. A round reads at most relay_batch rows after the durable progress,
 * hands them to the idempotent producer in order, waits for every delivery report, and only
 * then records progress. A crash at any point therefore re-reads rows that may already be in
 * Kafka (duplicates, which keep their ce_id) and never skips one.
 *
 * Leadership. Only the holder of a lease row relays. The claim is one UPDATE that succeeds
 * when the lease has expired or is already ours; the leader renews it in every round's
 * transactions and at least every lease/3 from a keepalive timer, and a follower tries again
 * every lease/2 (sooner when the current lease is about to run out). A session advisory lock
 * would be simpler, but the pool reuses connections and reconnects on its own, so a session
 * is not an identity we can keep; a lease row is.
 *
 * Double publishing on failover. If a leader stalls (GC-like pause, partition from Postgres)
 * past its lease while records of a round are still in the producer, another replica may take
 * over, read from the same durable progress and publish those records again. The window is
 * bounded by the lease (plus the producer's delivery timeout for records already handed over)
 * and the duplicates carry the same ce_id, so consumers drop them. In steady state nothing is
 * published twice. */
#include "relay_worker.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "log.h"
#include "publish.h"

#define BACKOFF_MIN_MS 100
#define BACKOFF_MAX_MS 5000
/* A header per context attribute, one per extension, and the source's own. */
#define MAX_HEADERS (12 + BROKER_MAX_EXTENSIONS)

static const char *const state_names[RELAY_NSTATES] = {
    "follower", "claiming", "leader_idle", "reading", "producing",
    "saving",   "backoff",  "releasing",   "stopped",
};

const char *relay_state_name(relay_state_t s) {
  return s < RELAY_NSTATES ? state_names[s] : "?";
}

/* Legal transitions, [from] -> bit set of destinations. */
#define B(s) (1u << (s))
static const unsigned transitions[RELAY_NSTATES] = {
    [RELAY_FOLLOWER] = B(RELAY_CLAIMING) | B(RELAY_STOPPED),
    [RELAY_CLAIMING] = B(RELAY_FOLLOWER) | B(RELAY_READING) | B(RELAY_RELEASING) | B(RELAY_STOPPED),
    [RELAY_LEADER_IDLE] = B(RELAY_READING) | B(RELAY_FOLLOWER) | B(RELAY_RELEASING),
    [RELAY_READING] = B(RELAY_PRODUCING) | B(RELAY_LEADER_IDLE) | B(RELAY_BACKOFF) |
                      B(RELAY_FOLLOWER) | B(RELAY_RELEASING) | B(RELAY_STOPPED),
    [RELAY_PRODUCING] = B(RELAY_SAVING) | B(RELAY_BACKOFF) | B(RELAY_FOLLOWER) | B(RELAY_RELEASING),
    [RELAY_SAVING] = B(RELAY_READING) | B(RELAY_LEADER_IDLE) | B(RELAY_BACKOFF) |
                     B(RELAY_FOLLOWER) | B(RELAY_RELEASING),
    [RELAY_BACKOFF] = B(RELAY_READING) | B(RELAY_FOLLOWER) | B(RELAY_RELEASING),
    [RELAY_RELEASING] = B(RELAY_STOPPED),
    [RELAY_STOPPED] = 0,
};
#undef B

static bool is_leader_state(relay_state_t s) {
  return s == RELAY_LEADER_IDLE || s == RELAY_READING || s == RELAY_PRODUCING ||
         s == RELAY_SAVING || s == RELAY_BACKOFF;
}

static void set_state(relay_worker_t *w, relay_state_t to) {
  if (!(transitions[w->state] & (1u << to)))
    bt_fatal("relay %s: illegal transition %s -> %s", w->name, relay_state_name(w->state),
             relay_state_name(to));
  bt_log_debug("relay state", "{s:s, s:s, s:s}", "relay", w->name, "from",
               relay_state_name(w->state), "to", relay_state_name(to));
  bool was = is_leader_state(w->state), is = is_leader_state(to);
  w->state = to;
  bt_gauge_set(&w->stats.leader, is ? 1 : 0);
  if (was && !is) {
    /* Only the leader knows the lag; a follower reports none so that max() across replicas
     * is the leader's figure. */
    bt_gauge_set(&w->stats.lag_events, 0);
    bt_gauge_set(&w->stats.lag_seconds, 0);
  }
}

static uint64_t now_ms(relay_worker_t *w) { return uv_now(w->b->app.loop); }

static void maybe_done(relay_worker_t *w) {
  if (!w->closed || w->handles_open || w->pg_inflight || w->pending)
    return;
  free(w->slots);
  w->slots = NULL;
  bt_arena_reset(&w->arena);
  free(w->src);
  w->src = NULL;
}

static void on_timer(uv_timer_t *t);
static void claim(relay_worker_t *w);
static void start_round(relay_worker_t *w);
static void release(relay_worker_t *w);
static void on_keepalive(uv_timer_t *t);

static void schedule(relay_worker_t *w, uint64_t ms) { uv_timer_start(&w->timer, on_timer, ms, 0); }

static void pg_failed(relay_worker_t *w, const char *what, const bt_pg_result_t *r) {
  bt_counter_inc(&w->stats.errors_pg);
  bt_log_warn("relay: postgres request failed", "{s:s, s:s, s:s, s:s}", "relay", w->name, "op",
              what, "error", bt_strerror(r->err), "detail", r->errmsg);
}

static void submit_failed(relay_worker_t *w, const char *what, int rc) {
  bt_counter_inc(&w->stats.errors_pg);
  bt_log_warn("relay: postgres request not sent", "{s:s, s:s, s:s}", "relay", w->name, "op",
              what, "error", bt_strerror(rc));
}

static void stopped(relay_worker_t *w) {
  set_state(w, RELAY_STOPPED);
  if (w->holding) {
    w->holding = false;
    bt_app_release(&w->b->app);
  }
}

static void become_follower(relay_worker_t *w, uint64_t delay) {
  bool was_leader = is_leader_state(w->state);
  set_state(w, RELAY_FOLLOWER);
  uv_timer_stop(&w->lease_timer);
  if (was_leader)
    bt_log_warn("relay: leadership lost", "{s:s}", "relay", w->name);
  schedule(w, delay);
}

/* After a round's step, when nothing of ours is in flight: drain, step down, or go on. */
static bool must_leave(relay_worker_t *w) {
  if (w->stopping) {
    release(w);
    return true;
  }
  if (w->lease_lost) {
    become_follower(w, 0);
    return true;
  }
  return false;
}

static void after_failure(relay_worker_t *w) {
  if (must_leave(w))
    return;
  set_state(w, RELAY_BACKOFF);
  schedule(w, w->backoff_ms);
  w->backoff_ms = w->backoff_ms * 2 > BACKOFF_MAX_MS ? BACKOFF_MAX_MS : w->backoff_ms * 2;
}

/* The lease renewal ($1 name, $2 holder, $3 lease ms) that starts every round transaction.
 * Every transaction of ours also turns synchronous_commit off: losing the last renewal or
 * progress update in a Postgres crash only means a shorter lease or a re-read of delivered
 * rows (duplicates), never a lost row, and it keeps a round free of WAL flushes. */
static const char set_local_sql[] =
    "SELECT set_config('synchronous_commit', 'off', true), set_config('bytea_output', 'hex', true)";

typedef struct {
  char lease[24];
  const char *values[3];
} lease_params_t;

static void lease_params(relay_worker_t *w, lease_params_t *p) {
  snprintf(p->lease, sizeof p->lease, "%llu", (unsigned long long)w->lease_ms);
  p->values[0] = w->name;
  p->values[1] = w->holder;
  p->values[2] = p->lease;
}

/* A renewal succeeded: the row named us as holder, so no one else has the lease, whatever the
 * keepalive feared meanwhile. */
static void lease_renewed(relay_worker_t *w, uint64_t sent) {
  w->lease_lost = false;
  if (sent < w->renewed_at)
    return; /* a later renewal already completed */
  w->renewed_at = sent;
  /* The server set expires_at from its clock at or after `sent`; keeping a tenth of the
   * lease in hand covers a difference in clock rates. */
  w->lease_deadline = sent + w->lease_ms - w->lease_ms / 10;
}

/* ---- claiming ---------------------------------------------------------------------------- */

static void on_claimed(const bt_pg_result_t *r, void *arg) {
  relay_worker_t *w = arg;
  w->pg_inflight--;
  if (w->closed)
    return maybe_done(w);
  BT_ASSERT(w->state == RELAY_CLAIMING);
  if (r->err) {
    pg_failed(w, "claim", r);
    if (w->stopping)
      return stopped(w);
    /* A lost connection may have hidden a successful claim; the next claim, as the same
     * holder, finds it. */
    return become_follower(w, w->lease_ms / 2);
  }
  w->setup_done = true;
  const PGresult *res = r->res[r->n - 1];
  bool won = PQntuples(res) == 1 && strcmp(PQgetvalue(res, 0, 0), "1") == 0;
  if (!won) {
    if (w->stopping)
      return stopped(w);
    /* Try again when the current lease runs out, and at least every lease/2. No lease row
     * at all (someone deleted it) runs the setup again, which recreates it. */
    uint64_t delay = w->lease_ms / 2;
    if (PQntuples(res) == 1) {
      long long left = strtoll(PQgetvalue(res, 0, 2), NULL, 10);
      if (left >= 0 && (uint64_t)left + 10 < delay)
        delay = (uint64_t)left + 10;
    } else {
      w->setup_done = false;
    }
    set_state(w, RELAY_FOLLOWER);
    return schedule(w, delay);
  }
  lease_renewed(w, w->read_sent);
  w->lease_lost = false;
  w->backoff_ms = BACKOFF_MIN_MS;
  if (w->stopping)
    return release(w);
  bt_log_info("relay: leader", "{s:s, s:s}", "relay", w->name, "holder", w->holder);
  uv_timer_start(&w->lease_timer, on_keepalive, w->lease_ms / 3, w->lease_ms / 3);
  start_round(w);
}

static void claim(relay_worker_t *w) {
  set_state(w, RELAY_CLAIMING);
  bt_pg_stmt_t stmts[8];
  relay_params_t sp;
  size_t n = w->setup_done ? 0 : w->ops->setup(w, &sp, stmts, 6);
  lease_params_t lp;
  lease_params(w, &lp);
  stmts[n++] = (bt_pg_stmt_t){w->claim_sql, 3, lp.values};
  w->read_sent = now_ms(w);
  int rc = bt_pg_pool_batch(w->pool, stmts, n, on_claimed, w);
  if (rc != 0) {
    submit_failed(w, "claim", rc);
    if (w->stopping)
      return stopped(w);
    return become_follower(w, w->lease_ms / 2);
  }
  w->pg_inflight++;
}

/* ---- the keepalive ---------------------------------------------------------------------- */

static void on_renewed(const bt_pg_result_t *r, void *arg) {
  relay_worker_t *w = arg;
  w->pg_inflight--;
  w->renew_inflight = false;
  if (w->closed)
    return maybe_done(w);
  if (r->err) {
    pg_failed(w, "renew", r);
    return;
  }
  if (PQntuples(r->res[1]) == 1)
    return lease_renewed(w, w->renew_sent);
  w->lease_lost = true;
  if (w->state == RELAY_LEADER_IDLE || w->state == RELAY_BACKOFF) {
    uv_timer_stop(&w->timer);
    become_follower(w, w->lease_ms / 2);
  }
}

/* Every lease/3 while leader: renew if no round did lately (a round stuck waiting for Kafka's
 * delivery timeout, a backoff), and notice when the lease can no longer be counted on. */
static void on_keepalive(uv_timer_t *t) {
  relay_worker_t *w = t->data;
  if (w->lease_lost || w->stopping)
    return;
  uint64_t now = now_ms(w);
  if (now >= w->lease_deadline) {
    w->lease_lost = true;
    bt_log_warn("relay: lease not renewed in time; stepping down", "{s:s}", "relay", w->name);
    if (w->state == RELAY_LEADER_IDLE || w->state == RELAY_BACKOFF) {
      uv_timer_stop(&w->timer);
      become_follower(w, 0);
    }
    return;
  }
  if (w->renew_inflight || now - w->renewed_at < w->lease_ms / 3)
    return;
  lease_params_t lp;
  lease_params(w, &lp);
  bt_pg_stmt_t stmts[2] = {{set_local_sql, 0, NULL}, {w->renew_sql, 3, lp.values}};
  w->renew_sent = now;
  int rc = bt_pg_pool_batch(w->pool, stmts, 2, on_renewed, w);
  if (rc != 0)
    return submit_failed(w, "renew", rc);
  w->renew_inflight = true;
  w->pg_inflight++;
}

/* ---- rounds ------------------------------------------------------------------------------ */

static void on_saved(const bt_pg_result_t *r, void *arg);

static void save(relay_worker_t *w, size_t k) {
  set_state(w, RELAY_SAVING);
  w->ndelivered = k;
  lease_params_t lp;
  lease_params(w, &lp);
  bt_pg_stmt_t stmts[4] = {{set_local_sql, 0, NULL}, {w->renew_sql, 3, lp.values}};
  relay_params_t ap;
  size_t n = 2 + w->ops->ack(w, k, &ap, &stmts[2]);
  w->save_sent = now_ms(w);
  int rc = bt_pg_pool_batch(w->pool, stmts, n, on_saved, w);
  if (rc != 0) {
    submit_failed(w, "save", rc);
    return after_failure(w);
  }
  w->pg_inflight++;
}

static void round_delivered(relay_worker_t *w) {
  BT_ASSERT(w->state == RELAY_PRODUCING);
  size_t ok = 0, k = w->nrecords;
  for (size_t i = 0; i < w->nrecords; i++) {
    if (w->slots[i].err == 0)
      ok++;
    else if (k == w->nrecords)
      k = i;
  }
  bt_counter_add(&w->stats.published, ok);
  if (k < w->nrecords) {
    w->round_error = true;
    bt_counter_inc(&w->stats.errors_kafka);
    bt_log_warn("relay: Kafka did not acknowledge every record; retrying from the last delivered one",
                "{s:s, s:i, s:i, s:I, s:s}", "relay", w->name, "records", (int)w->nrecords,
                "failed", (int)(w->nrecords - ok), "first_failed_position",
                (json_int_t)w->slots[k].position, "error", w->round_errstr);
  }
  /* Progress covers the delivered prefix only: a record after a failed one may be in Kafka,
   * but recording it would let the failed one be published after it (or, for a cursor, be
   * skipped). The prefix is never read again; the rest is, and may be published twice. */
  if (k > 0)
    return save(w, k);
  after_failure(w);
}

static void on_delivery(const bt_kafka_delivery_t *d, void *opaque) {
  relay_slot_t *s = opaque;
  relay_worker_t *w = s->w;
  s->err = d->err;
  if (d->err && !w->round_errstr[0])
    snprintf(w->round_errstr, sizeof w->round_errstr, "%s: %s", bt_strerror(d->err),
             d->errstr ? d->errstr : "");
  w->pending--;
  if (w->closed)
    return maybe_done(w);
  if (w->pending == 0)
    round_delivered(w);
}

int relay_worker_produce(relay_worker_t *w, int64_t position, const char *topic, const char *key,
                         const broker_event_t *ev, const bt_kafka_header_t *extra, size_t nextra) {
  BT_ASSERT(w->nrecords < w->batch);
  bt_kafka_header_t hdrs[MAX_HEADERS];
  size_t nh = broker_event_headers(ev, &w->arena, hdrs, MAX_HEADERS - nextra);
  for (size_t i = 0; i < nextra; i++)
    hdrs[nh++] = extra[i];
  bt_kafka_record_t rec = {topic, BT_KAFKA_PARTITION_ANY, key, key ? strlen(key) : 0,
                           ev->data, ev->data ? ev->data_len : 0, hdrs, nh};
  relay_slot_t *s = &w->slots[w->nrecords];
  *s = (relay_slot_t){w, position, 1};
  int rc = bt_kafka_producer_produce(w->b->producer, &rec, on_delivery, s);
  if (rc == 0) {
    w->nrecords++;
    w->pending++;
    return 0;
  }
  if (rc == BT_EAGAIN && w->nrecords > 0) {
    /* The producer's queue is full (publish traffic shares it): end the round here and go
     * on as soon as what we produced is acknowledged. */
    w->round_more = true;
    return rc;
  }
  w->round_error = true;
  bt_counter_inc(&w->stats.errors_kafka);
  bt_log_warn("relay: the producer refused a record", "{s:s, s:I, s:s, s:s}", "relay", w->name,
              "position", (json_int_t)position, "topic", topic, "error", bt_strerror(rc));
  return rc;
}

void relay_worker_poison(relay_worker_t *w, int64_t position, const char *why) {
  w->round_error = true;
  bt_counter_inc(&w->stats.errors_data);
  bt_log_error("relay: a row cannot be relayed; the relay waits at it until it is fixed",
               "{s:s, s:I, s:s}", "relay", w->name, "position", (json_int_t)position, "error", why);
}

static void on_read(const bt_pg_result_t *r, void *arg) {
  relay_worker_t *w = arg;
  w->pg_inflight--;
  if (w->closed)
    return maybe_done(w);
  BT_ASSERT(w->state == RELAY_READING);
  if (r->err) {
    pg_failed(w, "read", r);
    return after_failure(w);
  }
  if (PQntuples(r->res[1]) != 1) {
    /* Another replica holds the lease: ours expired while we could not renew it. Nothing of
     * this read is produced. */
    w->lease_lost = true;
    if (w->stopping)
      return stopped(w);
    return become_follower(w, w->lease_ms / 2);
  }
  lease_renewed(w, w->read_sent);
  if (w->stopping)
    return release(w);
  bt_counter_inc(&w->stats.rounds);
  w->nread = w->ops->on_read(w, r->res + 2);
  if (w->nrecords > 0)
    return set_state(w, RELAY_PRODUCING);
  if (w->round_error)
    return after_failure(w);
  if (must_leave(w))
    return;
  set_state(w, RELAY_LEADER_IDLE);
  schedule(w, w->nudged ? 0 : w->poll_ms);
}

static void start_round(relay_worker_t *w) {
  set_state(w, RELAY_READING);
  bt_arena_reset(&w->arena);
  w->nrecords = w->pending = w->nread = w->ndelivered = 0;
  w->round_error = w->round_more = w->nudged = false;
  w->round_errstr[0] = '\0';
  lease_params_t lp;
  lease_params(w, &lp);
  relay_params_t rp;
  bt_pg_stmt_t stmts[4] = {{set_local_sql, 0, NULL}, {w->renew_sql, 3, lp.values}};
  size_t n = 2 + w->ops->read(w, &rp, &stmts[2]);
  w->read_sent = now_ms(w);
  int rc = bt_pg_pool_batch(w->pool, stmts, n, on_read, w);
  if (rc != 0) {
    submit_failed(w, "read", rc);
    return after_failure(w);
  }
  w->pg_inflight++;
}

static void on_saved(const bt_pg_result_t *r, void *arg) {
  relay_worker_t *w = arg;
  w->pg_inflight--;
  if (w->closed)
    return maybe_done(w);
  BT_ASSERT(w->state == RELAY_SAVING);
  if (r->err) {
    /* BT_ECONNRESET leaves the update's outcome unknown; either way the next round reads
     * from what is durable, so at worst it re-publishes the delivered prefix. */
    pg_failed(w, "save", r);
    return after_failure(w);
  }
  /* The progress committed even if the lease moved on: the rows were delivered, and the
   * update never moves progress backwards. */
  if (PQntuples(r->res[1]) != 1)
    w->lease_lost = true;
  else
    lease_renewed(w, w->save_sent);
  if (w->round_error)
    return after_failure(w);
  w->backoff_ms = BACKOFF_MIN_MS;
  if (must_leave(w))
    return;
  if (w->nread >= w->batch || w->round_more || w->nudged)
    return start_round(w);
  set_state(w, RELAY_LEADER_IDLE);
  schedule(w, w->poll_ms);
}

/* ---- the lease release --------------------------------------------------------------------- */

static void on_released(const bt_pg_result_t *r, void *arg) {
  relay_worker_t *w = arg;
  w->pg_inflight--;
  if (w->closed)
    return maybe_done(w);
  if (r->err)
    pg_failed(w, "release", r);
  else
    bt_log_info("relay: lease released", "{s:s}", "relay", w->name);
  stopped(w);
}

/* Gives the lease back at shutdown so that another replica takes over at its next claim
 * instead of waiting for the lease to run out. */
static void release(relay_worker_t *w) {
  set_state(w, RELAY_RELEASING);
  uv_timer_stop(&w->lease_timer);
  const char *values[2] = {w->name, w->holder};
  int rc = bt_pg_pool_query(w->pool, w->release_sql, 2, values, on_released, w);
  if (rc != 0) {
    submit_failed(w, "release", rc);
    return stopped(w);
  }
  w->pg_inflight++;
}

/* ---- timers and entry points ------------------------------------------------------------ */

static void on_timer(uv_timer_t *t) {
  relay_worker_t *w = t->data;
  switch (w->state) {
  case RELAY_FOLLOWER:
    return claim(w);
  case RELAY_LEADER_IDLE:
  case RELAY_BACKOFF:
    if (w->lease_lost)
      return become_follower(w, 0);
    return start_round(w);
  default:
    bt_fatal("relay %s: timer fired in state %s", w->name, relay_state_name(w->state));
  }
}

void relay_worker_nudge(relay_worker_t *w) {
  switch (w->state) {
  case RELAY_LEADER_IDLE:
    if (!w->stopping)
      schedule(w, 0);
    break;
  case RELAY_READING:
  case RELAY_PRODUCING:
  case RELAY_SAVING:
  case RELAY_BACKOFF:
    w->nudged = true;
    break;
  default:
    break; /* a follower: the leader (elsewhere) polls */
  }
}

void relay_worker_drain(relay_worker_t *w) {
  if (w->stopping)
    return;
  w->stopping = true;
  if (w->state == RELAY_STOPPED)
    return;
  w->holding = true;
  bt_app_hold(&w->b->app);
  uv_timer_stop(&w->lease_timer);
  switch (w->state) {
  case RELAY_FOLLOWER:
    uv_timer_stop(&w->timer);
    return stopped(w);
  case RELAY_LEADER_IDLE:
  case RELAY_BACKOFF:
    uv_timer_stop(&w->timer);
    return release(w);
  case RELAY_CLAIMING:
  case RELAY_READING:
  case RELAY_PRODUCING:
  case RELAY_SAVING:
  case RELAY_RELEASING:
    return; /* the step in flight sees `stopping` when it completes */
  default:
    bt_fatal("relay %s: drain in state %s", w->name, relay_state_name(w->state));
  }
}

static void on_handle_closed(uv_handle_t *h) {
  relay_worker_t *w = h->data;
  w->handles_open--;
  maybe_done(w);
}

void relay_worker_close(relay_worker_t *w) {
  if (w->closed)
    return;
  w->closed = true;
  uv_close((uv_handle_t *)&w->timer, on_handle_closed);
  uv_close((uv_handle_t *)&w->lease_timer, on_handle_closed);
  if (w->owns_pool)
    bt_pg_pool_close(w->pool);
}

void relay_worker_start(relay_worker_t *w) {
  w->state = RELAY_FOLLOWER;
  schedule(w, 0);
}

static void make_holder(char *out, size_t n) {
  char host[64] = "unknown";
  if (gethostname(host, sizeof host) != 0)
    snprintf(host, sizeof host, "unknown");
  host[sizeof host - 1] = '\0';
  uint32_t rnd = 0;
  if (getrandom(&rnd, sizeof rnd, GRND_NONBLOCK) != (ssize_t)sizeof rnd)
    rnd = (uint32_t)uv_hrtime();
  snprintf(out, n, "%s:%d:%08x", host, (int)getpid(), (unsigned)rnd);
}

int relay_worker_init(relay_worker_t *w, broker_t *b, bt_pg_pool_t *pool, bool owns_pool,
                      const relay_source_ops_t *ops, void *src, const char *name) {
  w->b = b;
  w->pool = pool;
  w->owns_pool = owns_pool;
  w->ops = ops;
  w->src = src;
  snprintf(w->name, sizeof w->name, "%s", name);
  make_holder(w->holder, sizeof w->holder);
  w->state = RELAY_FOLLOWER;
  w->lease_ms = (uint64_t)b->cfg.relay_lease_ms;
  w->poll_ms = (uint64_t)b->cfg.relay_poll_ms;
  w->backoff_ms = BACKOFF_MIN_MS;
  w->batch = (size_t)b->cfg.relay_batch;
  w->slots = calloc(w->batch, sizeof *w->slots);
  if (!w->slots)
    return BT_ENOMEM;
  bt_arena_init(&w->arena, 0);
  /* The claim reports, when it fails, how long the current lease has left, so a follower can
   * take over as soon as a dead leader's lease runs out. The outer SELECT sees the row as it
   * was before the CTE's update. */
  snprintf(w->claim_sql, sizeof w->claim_sql,
           "WITH c AS (UPDATE %s SET holder = $2, "
           "expires_at = now() + $3::bigint * interval '1 millisecond' "
           "WHERE name = $1 AND (holder = $2 OR expires_at < now()) RETURNING 1) "
           "SELECT (SELECT count(*) FROM c), l.holder, CASE WHEN l.expires_at < now() THEN 0 "
           "ELSE (extract(epoch FROM l.expires_at - now()) * 1000)::bigint END "
           "FROM %s l WHERE l.name = $1",
           ops->lease_table, ops->lease_table);
  snprintf(w->renew_sql, sizeof w->renew_sql,
           "UPDATE %s SET expires_at = now() + $3::bigint * interval '1 millisecond' "
           "WHERE name = $1 AND holder = $2 RETURNING 1",
           ops->lease_table);
  snprintf(w->release_sql, sizeof w->release_sql,
           "UPDATE %s SET holder = NULL, expires_at = 'epoch' WHERE name = $1 AND holder = $2",
           ops->lease_table);
  uv_loop_t *loop = b->app.loop;
  uv_timer_init(loop, &w->timer);
  uv_timer_init(loop, &w->lease_timer);
  w->timer.data = w->lease_timer.data = w;
  w->handles_open = 2;
  return 0;
}

/* ---- helpers for sources ------------------------------------------------------------------ */

static int hexval(char c) {
  if (c >= '0' && c <= '9')
    return c - '0';
  if (c >= 'a' && c <= 'f')
    return c - 'a' + 10;
  if (c >= 'A' && c <= 'F')
    return c - 'A' + 10;
  return -1;
}

static char *decode_bytea(relay_worker_t *w, const char *text, size_t *len) {
  /* Every read transaction sets bytea_output to hex, so this is the only format we see. */
  if (text[0] != '\\' || text[1] != 'x')
    return NULL;
  const char *h = text + 2;
  size_t n = strlen(h);
  if (n % 2)
    return NULL;
  char *out = bt_arena_alloc(&w->arena, n / 2 + 1);
  if (!out)
    return NULL;
  for (size_t i = 0; i < n / 2; i++) {
    int hi = hexval(h[2 * i]), lo = hexval(h[2 * i + 1]);
    if (hi < 0 || lo < 0)
      return NULL;
    out[i] = (char)(hi << 4 | lo);
  }
  out[n / 2] = '\0';
  *len = n / 2;
  return out;
}

static int decode_extensions(relay_worker_t *w, broker_event_t *ev, const char *text,
                            const char *const *skip) {
  if (!text)
    return 0;
  json_t *obj = json_loads(text, 0, NULL);
  if (!json_is_object(obj)) {
    json_decref(obj);
    return -1;
  }
  int rc = 0;
  const char *name;
  json_t *v;
  json_object_foreach(obj, name, v) {
    bool skipped = false;
    for (size_t i = 0; skip && skip[i] && !skipped; i++)
      skipped = strcmp(skip[i], name) == 0;
    if (skipped || json_is_null(v))
      continue;
    if (ev->next == BROKER_MAX_EXTENSIONS) {
      rc = -1;
      break;
    }
    char *nm = bt_arena_strdup(&w->arena, name);
    char *val;
    if (json_is_string(v)) {
      val = bt_arena_strdup(&w->arena, json_string_value(v));
    } else {
      char *s = json_dumps(v, JSON_COMPACT | JSON_ENCODE_ANY);
      val = s ? bt_arena_strdup(&w->arena, s) : NULL;
      free(s);
    }
    if (!nm || !val) {
      rc = -1;
      break;
    }
    ev->ext[ev->next++] = (broker_ext_t){nm, val};
  }
  json_decref(obj);
  return rc;
}

/* ---- metrics --------------------------------------------------------------------------------- */

void relay_worker_register_metrics(relay_worker_t *const *ws, size_t n) {
  /* Series of one family must be contiguous in the exposition, so register family by
   * family across workers. */
  static const struct {
    const char *base, *labels, *help;
    size_t off;
    bool counter;
  } fams[] = {
      {"baton_broker_relay_leader", "", "1 while this replica holds the relay's lease.",
       offsetof(relay_worker_stats_t, leader), false},
      {"baton_broker_relay_lag_events", "",
       "Events committed but not yet relayed (the leader's view; 0 on followers). For an "
       "outbox, the span of positions still in the table.",
       offsetof(relay_worker_stats_t, lag_events), false},
      {"baton_broker_relay_lag_seconds", "",
       "Age of the oldest event not yet relayed; 0 when caught up (and on followers).",
       offsetof(relay_worker_stats_t, lag_seconds), false},
      {"baton_broker_relay_published_total", "", "Records the relay got acknowledged by Kafka.",
       offsetof(relay_worker_stats_t, published), true},
      {"baton_broker_relay_rounds_total", "", "Relay rounds (reads) run as leader.",
       offsetof(relay_worker_stats_t, rounds), true},
      {"baton_broker_relay_errors_total", ",class=\"pg\"", "Relay failures by class.",
       offsetof(relay_worker_stats_t, errors_pg), true},
      {"baton_broker_relay_errors_total", ",class=\"kafka\"", "",
       offsetof(relay_worker_stats_t, errors_kafka), true},
      {"baton_broker_relay_errors_total", ",class=\"data\"", "",
       offsetof(relay_worker_stats_t, errors_data), true},
  };
  _Static_assert(BT_ARRAY_LEN(fams) <= BT_ARRAY_LEN(((relay_worker_stats_t *)0)->names),
                 "one name slot per family");
  for (size_t f = 0; f < BT_ARRAY_LEN(fams); f++) {
    for (size_t i = 0; i < n; i++) {
      relay_worker_stats_t *s = &ws[i]->stats;
      snprintf(s->names[f], sizeof s->names[f], "%s{relay=\"%s\"%s}", fams[f].base, ws[i]->name,
               fams[f].labels);
      void *p = (char *)s + fams[f].off;
      if (fams[f].counter)
        bt_metrics_counter(p, s->names[f], fams[f].help);
      else
        bt_metrics_gauge(p, s->names[f], fams[f].help);
    }
  }
}

int relay_worker_payload(relay_worker_t *w, int64_t position, broker_event_t *ev,
                         const char *data, const char *extensions, const char *const *skip) {
  if (data && !(ev->data = decode_bytea(w, data, &ev->data_len))) {
    relay_worker_poison(w, position, "data is not a hex bytea value (or out of memory)");
    return -1;
  }
  if (decode_extensions(w, ev, extensions, skip) != 0) {
    relay_worker_poison(w, position, "extensions is not a JSON object of at most 32 members");
    return -1;
  }
  return 0;
}
