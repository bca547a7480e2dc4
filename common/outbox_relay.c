/* The runtime's outbox relay engine (see outbox_relay.h): leadership lease, rounds, durable
 * progress, dead letters and the producer budget, for any source of positioned rows.
 *
 * A round reads at most `batch` rows after the durable progress, hands them to the
 * idempotent producer in order, waits for every delivery report, and only then records the
 * delivered prefix as progress. A crash at any point therefore re-reads rows that may
 * already be in Kafka (duplicates, which keep their identity) and never skips one.
 *
 * Leadership. Only the holder of a lease row relays. The claim is one UPDATE that succeeds
 * when the lease has expired or is already ours; the leader renews it in every round's
 * transactions and at least every lease/3 from a keepalive timer, and a follower tries again
 * every lease/2 (sooner when the current lease is about to run out). A session advisory lock
 * would be simpler, but the pool reuses connections and reconnects on its own, so a session
 * is not an identity we can keep; a lease row is. A leader that cannot produce (its producer
 * is not ready, or Kafka refused records in max_failed_rounds rounds in a row) gives the
 * lease back and waits a lease before claiming again, so that a replica that can reach Kafka
 * takes over; a follower whose producer is not ready does not claim.
 *
 * Order through a refused record. Progress covers the delivered prefix only, so a refused
 * record is re-sent. Records behind it in its partition must then not be in Kafka already
 * (v6 before the re-sent v5): the producer is gap-less, so a refusal makes it fatal instead
 * of writing past the gap, and every later record of the round fails too. The next round
 * renews the producer (a fresh idempotent producer id, nothing stale in flight) and re-sends
 * from the progress: duplicates of records of other partitions, never a reordering. The
 * refused record keeps its own error, so dead letters count as before.
 *
 * Dead letters. A record that Kafka refuses with a non-retriable error dead_letter_after
 * times (at the head of the round's failures) is produced to the dead-letter topic
 * in its place, at its position, with the error and its coordinates in headers, and the
 * relay goes on. Retriable errors are retried forever: nothing is skipped silently.
 *
 * Double publishing on failover. If a leader stalls past its lease while records of a round
 * are still in the producer, another replica may read from the same durable progress and
 * publish those records again. The window is bounded by the lease (plus the producer's
 * delivery timeout for records already handed over). In steady state nothing is published
 * twice. */
#include "outbox_relay.h"

#include <jansson.h>
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/random.h>
#include <unistd.h>

#include "fsm.h"
#include "log.h"

#define S(x) BT_OUTBOX_RELAY_##x
#define B BT_FSM_BIT
/* The dead-letter headers added to a record's own. */
#define DL_HEADERS 4

static const char *const state_names[S(NSTATES)] = {
    "follower", "claiming", "leader_idle", "reading", "producing",
    "saving",   "backoff",  "releasing",   "stopped",
};

static const uint32_t legal[S(NSTATES)] = {
    [S(FOLLOWER)] = B(S(CLAIMING)) | B(S(STOPPED)),
    [S(CLAIMING)] = B(S(FOLLOWER)) | B(S(READING)) | B(S(RELEASING)) | B(S(STOPPED)),
    [S(LEADER_IDLE)] = B(S(READING)) | B(S(FOLLOWER)) | B(S(RELEASING)),
    [S(READING)] = B(S(PRODUCING)) | B(S(LEADER_IDLE)) | B(S(BACKOFF)) | B(S(FOLLOWER)) |
                   B(S(RELEASING)) | B(S(STOPPED)),
    [S(PRODUCING)] = B(S(SAVING)) | B(S(BACKOFF)) | B(S(FOLLOWER)) | B(S(RELEASING)),
    [S(SAVING)] = B(S(READING)) | B(S(LEADER_IDLE)) | B(S(BACKOFF)) | B(S(FOLLOWER)) |
                  B(S(RELEASING)),
    [S(BACKOFF)] = B(S(READING)) | B(S(FOLLOWER)) | B(S(RELEASING)),
    [S(RELEASING)] = B(S(STOPPED)) | B(S(FOLLOWER)),
    [S(STOPPED)] = 0,
};

static bt_fsm_def_t fsm = {"outbox relay", S(NSTATES), state_names, legal, {{0}}};

const char *bt_outbox_relay_state_name(bt_outbox_relay_state_t s) { return bt_fsm_name(&fsm, s); }

static bool is_leader_state(bt_outbox_relay_state_t s) {
  return s == S(LEADER_IDLE) || s == S(READING) || s == S(PRODUCING) || s == S(SAVING) ||
         s == S(BACKOFF);
}

static void set_state(bt_outbox_relay_t *r, bt_outbox_relay_state_t to) {
  bt_fsm_move(&fsm, r->state, to, r->label);
  bt_log_debug("relay state", "{s:s, s:s, s:s}", "relay", r->label, "from",
               bt_fsm_name(&fsm, r->state), "to", bt_fsm_name(&fsm, to));
  bool was = is_leader_state(r->state), is = is_leader_state(to);
  r->state = to;
  bt_gauge_set(&r->stats.leader, is ? 1 : 0);
  if (was && !is) {
    /* Only the leader knows the lag; a follower reports none so that max() across replicas
     * is the leader's figure. */
    bt_gauge_set(&r->stats.lag_events, 0);
    bt_gauge_set(&r->stats.lag_seconds, 0);
  }
}

static uint64_t now_ms(bt_outbox_relay_t *r) { return uv_now(r->app->loop); }

static void maybe_done(bt_outbox_relay_t *r) {
  if (!r->closed || r->handles_open || r->pg_inflight || r->pending)
    return;
  free(r->slots);
  r->slots = NULL;
  bt_arena_reset(&r->arena);
  free(r->src);
  r->src = NULL;
}

static void on_timer(uv_timer_t *t);
static void claim(bt_outbox_relay_t *r);
static void start_round(bt_outbox_relay_t *r);
static void release(bt_outbox_relay_t *r, const char *why);
static void on_keepalive(uv_timer_t *t);

static void schedule(bt_outbox_relay_t *r, uint64_t ms) {
  uv_timer_start(&r->timer, on_timer, ms, 0);
}

static void pg_failed(bt_outbox_relay_t *r, const char *what, const bt_pg_result_t *res) {
  bt_counter_inc(&r->stats.errors_pg);
  bt_log_warn("relay: postgres request failed", "{s:s, s:s, s:s, s:s}", "relay", r->label, "op",
              what, "error", bt_strerror(res->err), "detail", res->errmsg);
}

static void submit_failed(bt_outbox_relay_t *r, const char *what, int rc) {
  bt_counter_inc(&r->stats.errors_pg);
  bt_log_warn("relay: postgres request not sent", "{s:s, s:s, s:s}", "relay", r->label, "op",
              what, "error", bt_strerror(rc));
}

static void stopped(bt_outbox_relay_t *r) {
  set_state(r, S(STOPPED));
  if (r->holding) {
    r->holding = false;
    bt_app_release(r->app);
  }
}

static void become_follower(bt_outbox_relay_t *r, uint64_t delay) {
  bool was_leader = is_leader_state(r->state);
  set_state(r, S(FOLLOWER));
  uv_timer_stop(&r->lease_timer);
  if (was_leader)
    bt_log_warn("relay: leadership lost", "{s:s}", "relay", r->label);
  schedule(r, delay);
}

/* Whether this leader should hand its lease to a replica that can produce. */
static const char *cannot_produce(bt_outbox_relay_t *r) {
  if (!bt_kafka_producer_ready(r->producer))
    return "the Kafka producer is not ready";
  if (r->cfg.max_failed_rounds && r->failed_rounds >= r->cfg.max_failed_rounds)
    return "Kafka refused records in too many rounds in a row";
  return NULL;
}

/* After a round's step, when nothing of ours is in flight: drain, step down, or go on. */
static bool must_leave(bt_outbox_relay_t *r) {
  if (r->stopping) {
    release(r, "draining");
    return true;
  }
  if (r->lease_lost) {
    become_follower(r, 0);
    return true;
  }
  const char *why = cannot_produce(r);
  if (why) {
    bt_counter_inc(&r->stats.lease_given_up);
    release(r, why);
    return true;
  }
  return false;
}

static void after_failure(bt_outbox_relay_t *r) {
  if (r->round_kafka_error)
    r->failed_rounds++;
  if (must_leave(r))
    return;
  set_state(r, S(BACKOFF));
  schedule(r, bt_backoff_next(&r->backoff));
}

/* Every transaction of ours turns synchronous_commit off: losing the last renewal or
 * progress update in a Postgres crash only means a shorter lease or a re-read of delivered
 * rows (duplicates), never a lost row, and it keeps a round free of WAL flushes. */
static const char set_local_sql[] =
    "SELECT set_config('synchronous_commit', 'off', true), set_config('bytea_output', 'hex', true)";

typedef struct {
  char lease[24];
  const char *values[3];
} lease_params_t;

static void lease_params(bt_outbox_relay_t *r, lease_params_t *p) {
  snprintf(p->lease, sizeof p->lease, "%llu", (unsigned long long)r->cfg.lease_ms);
  p->values[0] = r->lease_name;
  p->values[1] = r->holder;
  p->values[2] = p->lease;
}

/* A renewal succeeded: the row named us as holder, so no one else has the lease. */
static void lease_renewed(bt_outbox_relay_t *r, uint64_t sent) {
  r->lease_lost = false;
  if (sent < r->renewed_at)
    return; /* a later renewal already completed */
  r->renewed_at = sent;
  /* The server set expires_at from its clock at or after `sent`; keeping a tenth of the
   * lease in hand covers a difference in clock rates. */
  r->lease_deadline = sent + r->cfg.lease_ms - r->cfg.lease_ms / 10;
}

/* ---- claiming ---------------------------------------------------------------------------- */

static void on_claimed(const bt_pg_result_t *res, void *arg) {
  bt_outbox_relay_t *r = arg;
  r->pg_inflight--;
  if (r->closed)
    return maybe_done(r);
  BT_ASSERT(r->state == S(CLAIMING));
  if (res->err) {
    pg_failed(r, "claim", res);
    if (r->stopping)
      return stopped(r);
    /* A lost connection may have hidden a successful claim; the next claim, as the same
     * holder, finds it. */
    return become_follower(r, r->cfg.lease_ms / 2);
  }
  r->setup_done = true;
  const PGresult *pr = res->res[res->n - 1];
  bool won = PQntuples(pr) == 1 && strcmp(PQgetvalue(pr, 0, 0), "1") == 0;
  if (!won) {
    if (r->stopping)
      return stopped(r);
    /* Try again when the current lease runs out, and at least every lease/2. No lease row
     * at all (someone deleted it) runs the setup again, which recreates it. */
    uint64_t delay = r->cfg.lease_ms / 2;
    if (PQntuples(pr) == 1) {
      long long left = strtoll(PQgetvalue(pr, 0, 2), NULL, 10);
      if (left >= 0 && (uint64_t)left + 10 < delay)
        delay = (uint64_t)left + 10;
    } else {
      r->setup_done = false;
    }
    set_state(r, S(FOLLOWER));
    return schedule(r, delay);
  }
  lease_renewed(r, r->read_sent);
  r->lease_lost = false;
  r->failed_rounds = 0;
  bt_backoff_reset(&r->backoff);
  if (r->stopping)
    return release(r, "draining");
  bt_log_info("relay: leader", "{s:s, s:s}", "relay", r->label, "holder", r->holder);
  uv_timer_start(&r->lease_timer, on_keepalive, r->cfg.lease_ms / 3, r->cfg.lease_ms / 3);
  start_round(r);
}

static void claim(bt_outbox_relay_t *r) {
  set_state(r, S(CLAIMING));
  bt_pg_stmt_t stmts[8];
  bt_outbox_relay_params_t sp;
  size_t n = r->setup_done ? 0 : r->ops->setup(r, &sp, stmts, 6);
  lease_params_t lp;
  lease_params(r, &lp);
  stmts[n++] = (bt_pg_stmt_t){r->claim_sql, 3, lp.values};
  r->read_sent = now_ms(r);
  int rc = bt_pg_pool_batch(r->pool, stmts, n, on_claimed, r);
  if (rc != 0) {
    submit_failed(r, "claim", rc);
    if (r->stopping)
      return stopped(r);
    return become_follower(r, r->cfg.lease_ms / 2);
  }
  r->pg_inflight++;
}

/* ---- the keepalive ---------------------------------------------------------------------- */

static void on_renewed(const bt_pg_result_t *res, void *arg) {
  bt_outbox_relay_t *r = arg;
  r->pg_inflight--;
  r->renew_inflight = false;
  if (r->closed)
    return maybe_done(r);
  if (res->err) {
    pg_failed(r, "renew", res);
    return;
  }
  if (PQntuples(res->res[1]) == 1)
    return lease_renewed(r, r->renew_sent);
  r->lease_lost = true;
  if (r->state == S(LEADER_IDLE) || r->state == S(BACKOFF)) {
    uv_timer_stop(&r->timer);
    become_follower(r, r->cfg.lease_ms / 2);
  }
}

/* Every lease/3 while leader: renew if no round did lately (a round stuck waiting for Kafka's
 * delivery timeout, a backoff), and notice when the lease can no longer be counted on. */
static void on_keepalive(uv_timer_t *t) {
  bt_outbox_relay_t *r = t->data;
  if (r->lease_lost || r->stopping)
    return;
  uint64_t now = now_ms(r);
  if (now >= r->lease_deadline) {
    r->lease_lost = true;
    bt_log_warn("relay: lease not renewed in time; stepping down", "{s:s}", "relay", r->label);
    if (r->state == S(LEADER_IDLE) || r->state == S(BACKOFF)) {
      uv_timer_stop(&r->timer);
      become_follower(r, 0);
    }
    return;
  }
  if (r->renew_inflight || now - r->renewed_at < r->cfg.lease_ms / 3)
    return;
  lease_params_t lp;
  lease_params(r, &lp);
  bt_pg_stmt_t stmts[2] = {{set_local_sql, 0, NULL}, {r->renew_sql, 3, lp.values}};
  r->renew_sent = now;
  int rc = bt_pg_pool_batch(r->pool, stmts, 2, on_renewed, r);
  if (rc != 0)
    return submit_failed(r, "renew", rc);
  r->renew_inflight = true;
  r->pg_inflight++;
}

/* ---- rounds ------------------------------------------------------------------------------ */

static void on_saved(const bt_pg_result_t *res, void *arg);

static void save(bt_outbox_relay_t *r, size_t k) {
  set_state(r, S(SAVING));
  r->ndelivered = k;
  lease_params_t lp;
  lease_params(r, &lp);
  bt_pg_stmt_t stmts[4] = {{set_local_sql, 0, NULL}, {r->renew_sql, 3, lp.values}};
  bt_outbox_relay_params_t ap;
  size_t n = 2 + r->ops->ack(r, k, &ap, &stmts[2]);
  r->save_sent = now_ms(r);
  int rc = bt_pg_pool_batch(r->pool, stmts, n, on_saved, r);
  if (rc != 0) {
    submit_failed(r, "save", rc);
    return after_failure(r);
  }
  r->pg_inflight++;
}

/* The round's first failed record is at `position`: remember a non-retriable failure so
 * that, repeated at the same position, the record moves to the dead-letter topic. A
 * retriable error in between neither counts nor resets: it says nothing about the record
 * (an idempotent producer fails the records queued behind a refusal with retriable errors
 * while it bumps its epoch, and resetting there would let such a record never move). */
static void note_failure(bt_outbox_relay_t *r, int64_t position, bool nonretriable,
                         const char *error) {
  if (!nonretriable)
    return;
  if (r->nr_count == 0 || r->nr_position != position) {
    r->nr_position = position;
    r->nr_count = 0;
    snprintf(r->nr_error, sizeof r->nr_error, "%s", error);
  }
  r->nr_count++;
}

static void round_delivered(bt_outbox_relay_t *r) {
  BT_ASSERT(r->state == S(PRODUCING));
  size_t ok = 0, k = r->nrecords;
  for (size_t i = 0; i < r->nrecords; i++) {
    const bt_outbox_relay_slot_t *s = &r->slots[i];
    if (s->err == 0) {
      ok++;
      if (s->dead) {
        bt_counter_inc(&r->stats.dead_lettered);
        if (s->position == r->nr_position)
          r->nr_count = 0;
      }
    } else if (k == r->nrecords) {
      k = i;
    }
  }
  bt_counter_add(&r->stats.published, ok);
  if (k < r->nrecords) {
    r->round_error = r->round_kafka_error = true;
    bt_counter_inc(&r->stats.errors_kafka);
    const bt_outbox_relay_slot_t *s = &r->slots[k];
    bool nonretriable = bt_outbox_relay_nonretriable(s->kafka_err);
    /* A dead letter that fails is retried as one: the count stays where it was. */
    if (!s->dead)
      note_failure(r, s->position, nonretriable, rd_kafka_err2str(s->kafka_err));
    bt_log_warn("relay: Kafka did not acknowledge every record; retrying from the first failed one",
                "{s:s, s:i, s:i, s:I, s:s, s:b}", "relay", r->label, "records", (int)r->nrecords,
                "failed", (int)(r->nrecords - ok), "first_failed_position",
                (json_int_t)s->position, "error", r->round_errstr, "retriable", !nonretriable);
  } else {
    r->failed_rounds = 0;
  }
  /* Progress covers the delivered prefix only: a record after a failed one may be in Kafka,
   * but recording it would let the failed one be published after it (or, for a cursor, be
   * skipped). The prefix is never read again; the rest is, and may be published twice. */
  if (k > 0)
    return save(r, k);
  after_failure(r);
}

static void on_delivery(const bt_kafka_delivery_t *d, void *opaque) {
  bt_outbox_relay_slot_t *s = opaque;
  bt_outbox_relay_t *r = s->r;
  s->err = d->err;
  s->kafka_err = d->kafka_err;
  if (d->err && !r->round_errstr[0])
    snprintf(r->round_errstr, sizeof r->round_errstr, "%s: %s", bt_strerror(d->err),
             d->errstr ? d->errstr : "");
  if (r->budget) {
    r->budget->msgs--;
    r->budget->bytes -= s->bytes;
  }
  r->pending--;
  if (r->closed)
    return maybe_done(r);
  if (r->pending == 0)
    round_delivered(r);
}

bool bt_outbox_relay_nonretriable(int kafka_err) {
  switch ((rd_kafka_resp_err_t)kafka_err) {
  case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE:
  case RD_KAFKA_RESP_ERR_INVALID_MSG_SIZE:
  case RD_KAFKA_RESP_ERR_RECORD_LIST_TOO_LARGE:
  case RD_KAFKA_RESP_ERR_INVALID_RECORD:
  case RD_KAFKA_RESP_ERR_TOPIC_EXCEPTION:
  case RD_KAFKA_RESP_ERR_TOPIC_AUTHORIZATION_FAILED:
  case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART:
  case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
  case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
  case RD_KAFKA_RESP_ERR__INVALID_ARG:
    return true;
  default:
    return false;
  }
}

/* Produces rec to `topic` with `extra` headers after its own. */
static int produce_to(bt_outbox_relay_t *r, int64_t position, const bt_kafka_record_t *rec,
                      const char *topic, const bt_kafka_header_t *extra, size_t nextra,
                      bool dead) {
  BT_ASSERT(r->nrecords < r->batch);
  size_t bytes = rec->key_len + rec->value_len;
  if (r->budget && r->nrecords > 0 &&
      (r->budget->msgs + 1 > r->budget->max_msgs || r->budget->bytes + bytes > r->budget->max_bytes)) {
    /* The relays' share of the producer is used up: end the round here and go on as soon
     * as what we produced is acknowledged. A round's first record always goes, so a record
     * above the byte budget still moves (the producer's queue has room above the budget). */
    bt_counter_inc(&r->budget->exhausted);
    r->round_more = true;
    return BT_EAGAIN;
  }
  bt_kafka_record_t out = *rec;
  out.topic = topic;
  bt_kafka_header_t *hdrs = NULL;
  if (nextra) {
    hdrs = bt_arena_alloc(&r->arena, (rec->nheaders + nextra) * sizeof *hdrs);
    if (!hdrs)
      return BT_ENOMEM;
    if (rec->nheaders)
      memcpy(hdrs, rec->headers, rec->nheaders * sizeof *hdrs);
    memcpy(hdrs + rec->nheaders, extra, nextra * sizeof *hdrs);
    out.headers = hdrs;
    out.nheaders = rec->nheaders + nextra;
  }
  bt_outbox_relay_slot_t *s = &r->slots[r->nrecords];
  *s = (bt_outbox_relay_slot_t){r, position, bytes, 1, 0, dead};
  int rc = bt_kafka_producer_produce(r->producer, &out, on_delivery, s);
  if (rc == 0) {
    r->nrecords++;
    r->pending++;
    if (r->budget) {
      r->budget->msgs++;
      r->budget->bytes += bytes;
    }
    return 0;
  }
  if (rc == BT_EAGAIN && r->nrecords > 0) {
    /* The producer's queue is full: end the round here, go on once it is acknowledged. */
    r->round_more = true;
    return rc;
  }
  r->round_error = r->round_kafka_error = true;
  bt_counter_inc(&r->stats.errors_kafka);
  snprintf(r->round_errstr, sizeof r->round_errstr, "the producer refused the record: %s",
           bt_strerror(rc));
  /* A topic the producer knows not to exist or a record it knows too large will be refused
   * again: count it towards the dead letter like a refusal from Kafka. */
  if (!dead)
    note_failure(r, position, rc == BT_ENOENT || rc == BT_ERANGE, r->round_errstr);
  bt_log_warn("relay: the producer refused a record", "{s:s, s:I, s:s, s:s}", "relay", r->label,
              "position", (json_int_t)position, "topic", topic, "error", bt_strerror(rc));
  return rc;
}

static bool dead_letters(const bt_outbox_relay_t *r) {
  return r->cfg.dead_letter_topic && r->cfg.dead_letter_topic[0];
}

static int produce_dead(bt_outbox_relay_t *r, int64_t position, const bt_kafka_record_t *rec,
                        const char *topic, const char *why) {
  char pos[24];
  snprintf(pos, sizeof pos, "%lld", (long long)position);
  const char *dl_topic = topic ? topic : "";
  const bt_kafka_header_t extra[DL_HEADERS] = {
      {"baton_dl_error", why, strlen(why)},
      {"baton_dl_topic", dl_topic, strlen(dl_topic)},
      {"baton_dl_relay", r->label, strlen(r->label)},
      {"baton_dl_position", pos, strlen(pos)},
  };
  bt_kafka_record_t empty = {0};
  bt_log_error("relay: a record cannot be relayed; moving it to the dead-letter topic",
               "{s:s, s:I, s:s, s:s, s:s}", "relay", r->label, "position", (json_int_t)position,
               "topic", dl_topic, "dead_letter_topic", r->cfg.dead_letter_topic, "error", why);
  /* produce_to copies the headers (values included) into the producer before returning. */
  return produce_to(r, position, rec ? rec : &empty, r->cfg.dead_letter_topic, extra, DL_HEADERS,
                    true);
}

int bt_outbox_relay_produce(bt_outbox_relay_t *r, int64_t position, const bt_kafka_record_t *rec) {
  unsigned after = r->cfg.dead_letter_after ? r->cfg.dead_letter_after : 1;
  if (dead_letters(r) && r->nr_count >= after && position == r->nr_position)
    return produce_dead(r, position, rec, rec->topic, r->nr_error);
  return produce_to(r, position, rec, rec->topic, NULL, 0, false);
}

int bt_outbox_relay_reject(bt_outbox_relay_t *r, int64_t position, const bt_kafka_record_t *rec,
                           const char *why) {
  bt_counter_inc(&r->stats.errors_data);
  if (dead_letters(r))
    return produce_dead(r, position, rec, rec ? rec->topic : NULL, why);
  r->round_error = true;
  bt_log_error("relay: a row cannot be relayed; the relay waits at it until it is fixed",
               "{s:s, s:I, s:s}", "relay", r->label, "position", (json_int_t)position, "error", why);
  return BT_EINVAL;
}

void bt_outbox_relay_lag(bt_outbox_relay_t *r, double events, double seconds) {
  bt_gauge_set(&r->stats.lag_events, events);
  bt_gauge_set(&r->stats.lag_seconds, seconds);
}

int64_t bt_outbox_relay_position(const bt_outbox_relay_t *r, size_t i) {
  BT_ASSERT(i < r->nrecords);
  return r->slots[i].position;
}

const char *bt_outbox_relay_positions_array(bt_outbox_relay_t *r, size_t n) {
  char *buf = bt_arena_alloc(&r->arena, n * 21 + 3);
  BT_ASSERT(buf); /* the arena is unlimited; allocation failure is out of memory */
  size_t len = 0;
  buf[len++] = '{';
  for (size_t i = 0; i < n; i++)
    len += (size_t)sprintf(buf + len, "%s%lld", i ? "," : "", (long long)bt_outbox_relay_position(r, i));
  buf[len++] = '}';
  buf[len] = '\0';
  return buf;
}

static void on_read(const bt_pg_result_t *res, void *arg) {
  bt_outbox_relay_t *r = arg;
  r->pg_inflight--;
  if (r->closed)
    return maybe_done(r);
  BT_ASSERT(r->state == S(READING));
  if (res->err) {
    pg_failed(r, "read", res);
    return after_failure(r);
  }
  if (PQntuples(res->res[1]) != 1) {
    /* Another replica holds the lease: ours expired while we could not renew it. Nothing of
     * this read is produced. */
    r->lease_lost = true;
    if (r->stopping)
      return stopped(r);
    return become_follower(r, r->cfg.lease_ms / 2);
  }
  lease_renewed(r, r->read_sent);
  if (r->stopping)
    return release(r, "draining");
  bt_counter_inc(&r->stats.rounds);
  r->nread = r->ops->on_read(r, res->res + 2);
  if (r->nrecords > 0)
    return set_state(r, S(PRODUCING));
  if (r->round_error)
    return after_failure(r);
  if (must_leave(r))
    return;
  set_state(r, S(LEADER_IDLE));
  schedule(r, r->nudged ? 0 : r->cfg.poll_ms);
}

/* A gap-less producer that Kafka refused a record goes fatal: nothing after the gap was
 * written, and its handle is unusable. A fresh one (see renew_on_fatal) carries no stale
 * retry that could land a later record of the partition before the re-sent ones, so the
 * round about to start re-sends from the durable progress in order. While another relay's
 * records are still in the old handle, the renewal waits: this round's records are refused
 * and it backs off. */
static void renew_producer(bt_outbox_relay_t *r) {
  if (!bt_kafka_producer_fatal(r->producer))
    return;
  char err[256];
  int rc = bt_kafka_producer_renew(r->producer, err);
  if (rc == 0)
    bt_counter_inc(&r->stats.producer_renewed);
  else if (rc != BT_EAGAIN)
    bt_log_error("relay: cannot renew the Kafka producer", "{s:s, s:s}", "relay", r->label,
                 "error", rc == BT_EINVAL ? err : bt_strerror(rc));
}

static void start_round(bt_outbox_relay_t *r) {
  /* A leader that cannot produce would only hold the rows up: hand them to another replica. */
  if (must_leave(r))
    return;
  renew_producer(r);
  set_state(r, S(READING));
  bt_arena_reset(&r->arena);
  r->nrecords = r->pending = r->nread = r->ndelivered = 0;
  r->round_error = r->round_kafka_error = r->round_more = r->nudged = false;
  r->round_errstr[0] = '\0';
  lease_params_t lp;
  lease_params(r, &lp);
  bt_outbox_relay_params_t rp;
  bt_pg_stmt_t stmts[4] = {{set_local_sql, 0, NULL}, {r->renew_sql, 3, lp.values}};
  size_t n = 2 + r->ops->read(r, &rp, &stmts[2]);
  r->read_sent = now_ms(r);
  int rc = bt_pg_pool_batch(r->pool, stmts, n, on_read, r);
  if (rc != 0) {
    submit_failed(r, "read", rc);
    return after_failure(r);
  }
  r->pg_inflight++;
}

static void on_saved(const bt_pg_result_t *res, void *arg) {
  bt_outbox_relay_t *r = arg;
  r->pg_inflight--;
  if (r->closed)
    return maybe_done(r);
  BT_ASSERT(r->state == S(SAVING));
  if (res->err) {
    /* BT_ECONNRESET leaves the update's outcome unknown; either way the next round reads
     * from what is durable, so at worst it re-publishes the delivered prefix. */
    pg_failed(r, "save", res);
    return after_failure(r);
  }
  /* The progress committed even if the lease moved on: the rows were delivered, and the
   * update never moves progress backwards. */
  if (PQntuples(res->res[1]) != 1)
    r->lease_lost = true;
  else
    lease_renewed(r, r->save_sent);
  if (r->round_error)
    return after_failure(r);
  bt_backoff_reset(&r->backoff);
  if (must_leave(r))
    return;
  if (r->nread >= r->batch || r->round_more || r->nudged)
    return start_round(r);
  set_state(r, S(LEADER_IDLE));
  schedule(r, r->cfg.poll_ms);
}

/* ---- the lease release ------------------------------------------------------------------- */

static void on_released(const bt_pg_result_t *res, void *arg) {
  bt_outbox_relay_t *r = arg;
  r->pg_inflight--;
  if (r->closed)
    return maybe_done(r);
  if (res->err)
    pg_failed(r, "release", res);
  else
    bt_log_info("relay: lease released", "{s:s}", "relay", r->label);
  if (r->stopping)
    return stopped(r);
  /* Given up for want of Kafka: wait a lease before claiming again, which gives a replica
   * that can produce the time to take over. */
  become_follower(r, r->cfg.lease_ms);
}

/* Gives the lease back so that another replica takes over at its next claim instead of
 * waiting for the lease to run out: at shutdown, or when this leader cannot produce. */
static void release(bt_outbox_relay_t *r, const char *why) {
  if (!r->stopping)
    bt_log_warn("relay: giving the lease up", "{s:s, s:s}", "relay", r->label, "reason", why);
  set_state(r, S(RELEASING));
  uv_timer_stop(&r->lease_timer);
  r->failed_rounds = 0;
  const char *values[2] = {r->lease_name, r->holder};
  int rc = bt_pg_pool_query(r->pool, r->release_sql, 2, values, on_released, r);
  if (rc != 0) {
    submit_failed(r, "release", rc);
    if (r->stopping)
      return stopped(r);
    return become_follower(r, r->cfg.lease_ms);
  }
  r->pg_inflight++;
}

/* ---- timers and entry points ------------------------------------------------------------ */

static void on_timer(uv_timer_t *t) {
  bt_outbox_relay_t *r = t->data;
  switch (r->state) {
  case S(FOLLOWER):
    /* Leading without a producer would hold the rows up: leave them to a replica with one.
     * Look again soon, not after a poll interval: at start-up the producer is typically a few
     * ms from ready, and a 60 s poll would leave the relay without a leader for a minute
     * (it_relay_basic's nudge test saw exactly that). Checking a flag twice a second is free. */
    if (!bt_kafka_producer_ready(r->producer))
      return schedule(r, 500);
    return claim(r);
  case S(LEADER_IDLE):
  case S(BACKOFF):
    if (r->lease_lost)
      return become_follower(r, 0);
    return start_round(r);
  default:
    bt_fatal("relay %s: timer fired in state %s", r->label, bt_fsm_name(&fsm, r->state));
  }
}

void bt_outbox_relay_nudge(bt_outbox_relay_t *r) {
  switch (r->state) {
  case S(LEADER_IDLE):
    if (!r->stopping)
      schedule(r, 0);
    break;
  case S(READING):
  case S(PRODUCING):
  case S(SAVING):
  case S(BACKOFF):
    r->nudged = true;
    break;
  default:
    break; /* a follower: the leader (elsewhere) polls */
  }
}

void bt_outbox_relay_drain(bt_outbox_relay_t *r) {
  if (r->stopping)
    return;
  r->stopping = true;
  if (r->state == S(STOPPED))
    return;
  r->holding = true;
  bt_app_hold(r->app);
  uv_timer_stop(&r->lease_timer);
  switch (r->state) {
  case S(FOLLOWER):
    uv_timer_stop(&r->timer);
    return stopped(r);
  case S(LEADER_IDLE):
  case S(BACKOFF):
    uv_timer_stop(&r->timer);
    return release(r, "draining");
  case S(CLAIMING):
  case S(READING):
  case S(PRODUCING):
  case S(SAVING):
  case S(RELEASING):
    return; /* the step in flight sees `stopping` when it completes */
  default:
    bt_fatal("relay %s: drain in state %s", r->label, bt_fsm_name(&fsm, r->state));
  }
}

static void on_handle_closed(uv_handle_t *h) {
  bt_outbox_relay_t *r = h->data;
  r->handles_open--;
  maybe_done(r);
}

void bt_outbox_relay_close(bt_outbox_relay_t *r) {
  if (r->closed)
    return;
  r->closed = true;
  uv_close((uv_handle_t *)&r->timer, on_handle_closed);
  uv_close((uv_handle_t *)&r->lease_timer, on_handle_closed);
  if (r->owns_pool)
    bt_pg_pool_close(r->pool);
}

void bt_outbox_relay_start(bt_outbox_relay_t *r) { schedule(r, 0); }

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

int bt_outbox_relay_init(bt_outbox_relay_t *r, bt_app_t *app, bt_pg_pool_t *pool, bool owns_pool,
                         bt_kafka_producer_t *producer, bt_outbox_relay_budget_t *budget,
                         const bt_outbox_relay_config_t *cfg,
                         const bt_outbox_relay_source_t *ops, void *src) {
  r->app = app;
  r->pool = pool;
  r->owns_pool = owns_pool;
  r->producer = producer;
  r->budget = budget;
  r->ops = ops;
  r->src = src;
  r->cfg = *cfg;
  snprintf(r->label, sizeof r->label, "%s", cfg->label);
  snprintf(r->lease_name, sizeof r->lease_name, "%s", cfg->lease_name);
  r->cfg.label = r->label;
  r->cfg.lease_name = r->lease_name;
  make_holder(r->holder, sizeof r->holder);
  r->state = S(FOLLOWER);
  bt_fsm_enter(&fsm, S(FOLLOWER));
  bt_backoff_init(&r->backoff, cfg->backoff_min_ms ? cfg->backoff_min_ms : 100,
                  cfg->backoff_max_ms ? cfg->backoff_max_ms : 5000, true);
  r->batch = cfg->batch;
  r->slots = calloc(r->batch, sizeof *r->slots);
  if (!r->slots)
    return BT_ENOMEM;
  bt_arena_init(&r->arena, 0);
  /* The claim reports, when it fails, how long the current lease has left, so a follower can
   * take over as soon as a dead leader's lease runs out. The outer SELECT sees the row as it
   * was before the CTE's update. */
  snprintf(r->claim_sql, sizeof r->claim_sql,
           "WITH c AS (UPDATE %s SET holder = $2, "
           "expires_at = now() + $3::bigint * interval '1 millisecond' "
           "WHERE name = $1 AND (holder = $2 OR expires_at < now()) RETURNING 1) "
           "SELECT (SELECT count(*) FROM c), l.holder, CASE WHEN l.expires_at < now() THEN 0 "
           "ELSE (extract(epoch FROM l.expires_at - now()) * 1000)::bigint END "
           "FROM %s l WHERE l.name = $1",
           ops->lease_table, ops->lease_table);
  snprintf(r->renew_sql, sizeof r->renew_sql,
           "UPDATE %s SET expires_at = now() + $3::bigint * interval '1 millisecond' "
           "WHERE name = $1 AND holder = $2 RETURNING 1",
           ops->lease_table);
  snprintf(r->release_sql, sizeof r->release_sql,
           "UPDATE %s SET holder = NULL, expires_at = 'epoch' WHERE name = $1 AND holder = $2",
           ops->lease_table);
  uv_loop_t *loop = app->loop;
  uv_timer_init(loop, &r->timer);
  uv_timer_init(loop, &r->lease_timer);
  r->timer.data = r->lease_timer.data = r;
  r->handles_open = 2;
  return 0;
}

/* ---- metrics --------------------------------------------------------------------------------- */

void bt_outbox_relay_register_metrics(bt_outbox_relay_t *const *rs, size_t n,
                                      bt_outbox_relay_budget_t *budget) {
  if (n == 0)
    return;
  bt_fsm_register(&fsm, "baton_outbox_relay_state", "Outbox relays per state.");
  /* Series of one family must be contiguous in the exposition, so register family by
   * family across relays. */
  static const struct {
    const char *suffix, *labels, *help;
    size_t off;
    bool counter;
  } fams[] = {
      {"leader", "", "1 while this replica holds the relay's lease.",
       offsetof(bt_outbox_relay_stats_t, leader), false},
      {"lag_events", "",
       "Rows committed but not yet relayed (the leader's view; 0 on followers). For a service "
       "outbox, the span of positions still in the table.",
       offsetof(bt_outbox_relay_stats_t, lag_events), false},
      {"lag_seconds", "", "Age of the oldest row not yet relayed; 0 when caught up (and on followers).",
       offsetof(bt_outbox_relay_stats_t, lag_seconds), false},
      {"published_total", "", "Records the relay got acknowledged by Kafka.",
       offsetof(bt_outbox_relay_stats_t, published), true},
      {"rounds_total", "", "Relay rounds (reads) run as leader.",
       offsetof(bt_outbox_relay_stats_t, rounds), true},
      {"errors_total", ",class=\"pg\"", "Relay failures by class.",
       offsetof(bt_outbox_relay_stats_t, errors_pg), true},
      {"errors_total", ",class=\"kafka\"", "", offsetof(bt_outbox_relay_stats_t, errors_kafka),
       true},
      {"errors_total", ",class=\"data\"", "", offsetof(bt_outbox_relay_stats_t, errors_data),
       true},
      {"dead_lettered_total", "",
       "Records moved to the dead-letter topic (refused by Kafka for good, or unroutable).",
       offsetof(bt_outbox_relay_stats_t, dead_lettered), true},
      {"lease_given_up_total", "",
       "Times this replica gave its lease up because it could not produce.",
       offsetof(bt_outbox_relay_stats_t, lease_given_up), true},
      {"producer_renewed_total", "",
       "Times this relay replaced the gap-less producer after a fatal error, to re-send from its "
       "progress in order.",
       offsetof(bt_outbox_relay_stats_t, producer_renewed), true},
  };
  _Static_assert(BT_ARRAY_LEN(fams) <= BT_ARRAY_LEN(((bt_outbox_relay_stats_t *)0)->names),
                 "one name slot per family");
  const char *prefix = rs[0]->cfg.metrics_prefix;
  for (size_t f = 0; f < BT_ARRAY_LEN(fams); f++) {
    for (size_t i = 0; i < n; i++) {
      bt_outbox_relay_stats_t *s = &rs[i]->stats;
      snprintf(s->names[f], sizeof s->names[f], "%s_%s{relay=\"%s\"%s}", prefix, fams[f].suffix,
               rs[i]->label, fams[f].labels);
      void *p = (char *)s + fams[f].off;
      if (fams[f].counter)
        bt_metrics_counter(p, s->names[f], fams[f].help);
      else
        bt_metrics_gauge(p, s->names[f], fams[f].help);
    }
  }
  if (budget) {
    static char name[128];
    snprintf(name, sizeof name, "%s_budget_exhausted_total", prefix);
    bt_metrics_counter(&budget->exhausted, name,
                       "Relay rounds cut short because the relays' producer budget was in use.");
  }
}
