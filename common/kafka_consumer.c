/* Consumer bridged into the loop. librdkafka's main and consumer-group queues are both
 * forwarded to one application queue, the only one the loop watches, so messages, rebalances,
 * errors, statistics and commit results all arrive there in order. The same queue receives
 * the non-blocking close's events, so leaving the group never blocks the loop.
 *
 * Liveness invariant: librdkafka leaves the group when the application does not call
 * rd_kafka_consumer_poll() for max.poll.interval.ms. Our only call site is serve(), run
 * whenever the queue signals; the queue receives a statistics event every stats interval
 * (at most 60 s, far below the 300 s default), so an idle, paused or over-budget consumer is
 * still polled. Nothing here may therefore stop serving the queue for long: back-pressure
 * first stops polling for messages, which leaves librdkafka's prefetch where it is (bounded
 * by queued.min.messages, derived from the budget), and if that stalls (BACKSTOP_*) pauses
 * fetching (librdkafka's pause) and polls again.
 *
 * What still blocks: nothing on the loop after start-up. Assign, pause, resume and seek run
 * on the kafka_ctl worker; rd_kafka_subscribe() at start-up waits for the group thread once. */
#include "kafka_consumer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "fsm.h"
#include "kafka_client.h"
#include "kafka_ctl.h"
#include "log.h"

/* While the held queue is full and librdkafka's queue unpolled, fetching pauses and polling
 * goes on once nothing was delivered or released for BACKSTOP_IDLE_MS (the service is stuck,
 * not slow; a slow sink releases a batch at a time while delivery waits for half the budget),
 * or after BACKSTOP_MAX_MS in all: far below max.poll.interval.ms, so a slow sink that keeps
 * the held queue full for good still lets rebalances through. A slow sink that makes progress
 * costs no refetch. */
#define BACKSTOP_IDLE_MS 1000
#define BACKSTOP_MAX_MS 30000

typedef enum {
  CONSUMER_RUNNING,  /* delivering messages */
  CONSUMER_DRAINING, /* app draining: no new deliveries, commits still accepted */
  CONSUMER_CLOSING,  /* leaving the group; the handle is destroyed once closed */
  CONSUMER_NSTATES
} consumer_state_t;

static const char *const state_names[] = {"running", "draining", "closing"};
static const uint32_t legal_next[] = {
    [CONSUMER_RUNNING] = BT_FSM_BIT(CONSUMER_DRAINING) | BT_FSM_BIT(CONSUMER_CLOSING),
    [CONSUMER_DRAINING] = BT_FSM_BIT(CONSUMER_CLOSING),
    [CONSUMER_CLOSING] = 0,
};
static bt_fsm_def_t consumer_fsm = {.kind = "kafka consumer", .nstates = CONSUMER_NSTATES,
                                    .names = state_names, .legal = legal_next};

typedef struct commit_req {
  bt_kafka_consumer_t *c;
  bt_kafka_commit_cb cb;
  void *arg;
  struct commit_req *prev, *next;
} commit_req_t;

/* A delivered message. The view comes first so a view pointer is a msg_t pointer. */
typedef struct msg {
  bt_kafka_message_t view;
  rd_kafka_message_t *rkm;
  bool kept;
  bool delivering;         /* inside its callback: a release there leaves the free to deliver() */
  struct msg *prev, *next; /* in c->kept while kept */
} msg_t;

struct bt_kafka_consumer {
  bt_kafka_client_t c; /* first: librdkafka's opaque points here */
  consumer_state_t state;
  bt_kafka_message_cb cb;
  bt_kafka_batch_cb on_batch;
  bt_kafka_assign_cb on_assign;
  bt_kafka_revoke_cb on_revoke;
  void *arg;
  bool manual;
  bool cooperative; /* from the configured assignor: asking librdkafka would block */
  uint32_t batch_max, max_in_flight, commit_interval_ms;
  bool paused;         /* the service asked */
  bool over_budget;    /* too many unreleased messages: delivery waits */
  bool held_full;      /* the held queue reached held_high: polling for messages waits */
  bool backstop_fired; /* backlogged past BACKSTOP_*: fetching pauses, polling goes on */
  bool wake_pending;   /* a serve pass is already asked for */
  bool fetch_stopped;  /* a pause is queued or in force for every assigned partition */
  /* Held: messages polled while delivery waits (budget, service pause), in poll order, kept
   * instead of dropped so that a pause costs no refetch. A ring of held_max slots: held_high
   * stops polling, and a serve pass polls at most batch_max more. */
  rd_kafka_message_t **held;
  unsigned held_head, held_n, held_max, held_high;
  uv_timer_t backstop;
  uint64_t backlog_since, progress_at; /* uv_now() at held_full and at the last delivery or
                                          release */
  rd_kafka_topic_partition_list_t *assigned; /* our view; offset = unused */
  rd_kafka_topic_partition_list_t *rewind;   /* first undelivered offset while stopped */
  rd_kafka_topic_partition_list_t *seeking;  /* resumed with a seek to offset, not yet seen */
  bt_kafka_ctl_t ctl;
  uv_timer_t commit_timer;
  bool stored_dirty;   /* offsets stored since the last coalesced commit */
  bool holding;
  bool queue_closed;
  unsigned timers_closed; /* the commit timer and the backstop */
  msg_t *kept;         /* kept messages, freed at close if the service did not */
  msg_t **batch;       /* batch_max slots */
  commit_req_t *commits; /* awaiting their result; each completes exactly once */
  unsigned ncommits;
  unsigned unreleased;
  bt_kafka_consumer_stats_t stats;
};

static void set_state(bt_kafka_consumer_t *c, consumer_state_t next) {
  bt_fsm_move(&consumer_fsm, c->state, next, c->c.name);
  c->state = next;
}

static void update_hold(bt_kafka_consumer_t *c) {
  bt_app_hold_while(c->c.app, &c->holding, c->state == CONSUMER_DRAINING && c->ncommits > 0);
}

/* ---- commits ---- */

static commit_req_t *commit_new(bt_kafka_consumer_t *c, bt_kafka_commit_cb cb, void *arg) {
  commit_req_t *r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  *r = (commit_req_t){.c = c, .cb = cb, .arg = arg, .next = c->commits};
  if (c->commits)
    c->commits->prev = r;
  c->commits = r;
  c->ncommits++;
  return r;
}

static void commit_unlink(commit_req_t *r) {
  bt_kafka_consumer_t *c = r->c;
  if (r->prev)
    r->prev->next = r->next;
  else
    c->commits = r->next;
  if (r->next)
    r->next->prev = r->prev;
  c->ncommits--;
}

static void commit_finish(commit_req_t *r, int err) {
  commit_unlink(r);
  if (r->cb)
    r->cb(err, r->arg);
  free(r);
}

static void on_commit(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                      rd_kafka_topic_partition_list_t *offsets, void *opaque) {
  BT_UNUSED(rk);
  commit_req_t *r = opaque;
  bt_kafka_consumer_t *c = r->c;
  /* The request can succeed while a partition in it fails (e.g. after losing it). */
  for (int i = 0; !err && offsets && i < offsets->cnt; i++)
    err = offsets->elems[i].err;
  if (err == RD_KAFKA_RESP_ERR__NO_OFFSET) /* a coalesced commit with nothing new */
    err = 0;
  if (err)
    bt_log_warn("kafka commit failed", "{s:s, s:s}", "consumer", c->c.name, "error",
                rd_kafka_err2name(err));
  commit_finish(r, bt_kafka_err(err));
  update_hold(c);
}

/* Sends offsets (NULL: every stored offset of the assignment) as one asynchronous commit; the
 * result comes back on our queue. */
static int commit_send(bt_kafka_consumer_t *c, rd_kafka_topic_partition_list_t *offsets,
                       bt_kafka_commit_cb cb, void *arg) {
  commit_req_t *r = commit_new(c, cb, arg);
  if (!r)
    return BT_ENOMEM;
  rd_kafka_resp_err_t err = rd_kafka_commit_queue(c->c.rk, offsets, c->c.rkq, on_commit, r);
  if (err) {
    /* Not enqueued, so no result will come: the caller hears it from the return value. */
    commit_unlink(r);
    free(r);
    return bt_kafka_err(err);
  }
  bt_counter_inc(&c->stats.commits);
  update_hold(c);
  return 0;
}

static void commit_stored(bt_kafka_consumer_t *c) {
  if (!c->stored_dirty)
    return;
  c->stored_dirty = false;
  int rc = commit_send(c, NULL, NULL, NULL);
  if (rc != 0)
    bt_log_warn("kafka commit of stored offsets not sent", "{s:s, s:s}", "consumer", c->c.name,
                "error", bt_strerror(rc));
}

static void on_commit_timer(uv_timer_t *t) { commit_stored(t->data); }

/* ---- fetch control: pause for the service, for the budget and for the drain ---- */

static void ctl_push(bt_kafka_consumer_t *c, bt_kafka_ctl_op_t op,
                     const rd_kafka_topic_partition_list_t *parts) {
  if (bt_kafka_ctl_push(&c->ctl, op, parts) != 0)
    bt_fatal("kafka consumer %s: out of memory queueing a control call", c->c.name);
}

static rd_kafka_topic_partition_t *find(rd_kafka_topic_partition_list_t *l, const char *topic,
                                        int32_t partition) {
  return rd_kafka_topic_partition_list_find(l, topic, partition);
}

/* A resume seeks on the control worker, later. Until the seek takes effect, librdkafka's queue
 * may still hold messages fetched before it, past the seek's offset: delivered, they would
 * come again after the seek (a repeat, out of order). So, per partition, everything up to
 * the seek's own offset is dropped, and that offset ends the wait. */
static void set_seeking(bt_kafka_consumer_t *c, const char *topic, int32_t partition,
                        int64_t offset) {
  rd_kafka_topic_partition_t *s = find(c->seeking, topic, partition);
  if (!s)
    s = rd_kafka_topic_partition_list_add(c->seeking, topic, partition);
  s->offset = offset;
}

/* False for a message from before a pending seek (see set_seeking). */
static bool past_seek(bt_kafka_consumer_t *c, const rd_kafka_message_t *m) {
  if (c->seeking->cnt == 0) /* the common case, on every message: no lookup */
    return true;
  rd_kafka_topic_partition_t *s = find(c->seeking, rd_kafka_topic_name(m->rkt), m->partition);
  if (!s)
    return true;
  if (m->offset != s->offset)
    return false;
  rd_kafka_topic_partition_list_del(c->seeking, rd_kafka_topic_name(m->rkt), m->partition);
  return true;
}

static bool can_deliver(const bt_kafka_consumer_t *c) {
  return c->state == CONSUMER_RUNNING && !c->paused && !c->over_budget;
}

/* Whether serve() leaves messages in librdkafka's queue: the held queue is full, and not for
 * so long that fetching had to pause (then polling goes on; see the top of the file). */
static bool backlogged(const bt_kafka_consumer_t *c) {
  return c->held_full && !c->backstop_fired && c->state == CONSUMER_RUNNING;
}

/* Asks for a serve pass: nothing else would run one for held messages, or for messages left
 * in librdkafka's queue while backlogged (its wakeup came and went). One per pass. */
static void wake(bt_kafka_consumer_t *c) {
  if (c->wake_pending)
    return;
  c->wake_pending = true;
  bt_kafka_queue_wake(&c->c.queue);
}

static void on_backstop(uv_timer_t *t);

/* Keeps delivery, polling and fetching in step with the budget, the service's pause and the
 * state. The budget and the service's pause only stop delivery: what arrives meanwhile is
 * held, not dropped. At held_high, polling for messages stops, so librdkafka's prefetch stays
 * in its queue (it stops fetching at queued.min.messages) instead of being dropped; nothing
 * is fetched twice. Only if that stalls (BACKSTOP_*) does fetching pause, so the queue is
 * polled again for rebalances and the poll interval; librdkafka's pause drops its prefetch
 * and fetches again from the position after the last message we polled (the last held one),
 * and a resume seeks a partition back only when a message of it was dropped (the held queue
 * at held_max, see serve()), to that first dropped message. */
static void update_fetch(bt_kafka_consumer_t *c) {
  if (c->unreleased >= c->max_in_flight) {
    c->over_budget = true;
  } else if (c->unreleased <= c->max_in_flight / 2) {
    c->over_budget = false;
  }
  if (c->held_n >= c->held_high && !c->held_full) {
    c->held_full = true;
    c->backlog_since = uv_now(c->c.app->loop);
    if (c->state == CONSUMER_RUNNING)
      uv_timer_start(&c->backstop, on_backstop, BACKSTOP_IDLE_MS / 4, BACKSTOP_IDLE_MS / 4);
  } else if (c->held_full && c->held_n <= c->held_high / 2) {
    c->held_full = c->backstop_fired = false;
    if (c->state == CONSUMER_RUNNING)
      uv_timer_stop(&c->backstop);
    wake(c); /* librdkafka's queue was left unpolled */
  }
  if (c->held_n > 0 && can_deliver(c))
    wake(c);
  bool stop = (c->held_full && c->backstop_fired) || c->state != CONSUMER_RUNNING;
  if (stop == c->fetch_stopped)
    return;
  c->fetch_stopped = stop;
  if (stop) {
    ctl_push(c, BT_KAFKA_CTL_PAUSE, c->assigned);
    return;
  }
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_copy(c->assigned);
  for (int i = 0; i < l->cnt; i++) {
    rd_kafka_topic_partition_t *r = find(c->rewind, l->elems[i].topic, l->elems[i].partition);
    l->elems[i].offset = r ? r->offset : RD_KAFKA_OFFSET_INVALID;
    if (r)
      set_seeking(c, r->topic, r->partition, r->offset);
  }
  ctl_push(c, BT_KAFKA_CTL_RESUME, l);
  rd_kafka_topic_partition_list_destroy(l);
  rd_kafka_topic_partition_list_destroy(c->rewind);
  c->rewind = rd_kafka_topic_partition_list_new(0);
}

static void on_backstop(uv_timer_t *t) {
  bt_kafka_consumer_t *c = t->data;
  uint64_t now = uv_now(c->c.app->loop);
  if (now - c->progress_at < BACKSTOP_IDLE_MS && now - c->backlog_since < BACKSTOP_MAX_MS)
    return;
  uv_timer_stop(t);
  c->backstop_fired = true;
  bt_counter_inc(&c->stats.budget_pauses);
  update_fetch(c);
  wake(c);
}

/* A message that arrived while fetching was stopped: not delivered, fetched again later. */
static void remember_rewind(bt_kafka_consumer_t *c, const rd_kafka_message_t *m) {
  const char *topic = rd_kafka_topic_name(m->rkt);
  if (!find(c->rewind, topic, m->partition))
    rd_kafka_topic_partition_list_add(c->rewind, topic, m->partition)->offset = m->offset;
}

/* ---- held messages ---- */

static void held_push(bt_kafka_consumer_t *c, rd_kafka_message_t *m) {
  c->held[(c->held_head + c->held_n) % c->held_max] = m;
  c->held_n++;
  bt_gauge_set(&c->stats.held, c->held_n);
}

static rd_kafka_message_t *held_pop(bt_kafka_consumer_t *c) {
  rd_kafka_message_t *m = c->held[c->held_head];
  c->held_head = (c->held_head + 1) % c->held_max;
  c->held_n--;
  bt_gauge_set(&c->stats.held, c->held_n);
  return m;
}

/* Drops the held messages of parts (NULL: all), keeping the others in order: a revoked
 * partition's messages belong to another member now, and a reassigned one starts where the
 * assign says. */
static void held_drop(bt_kafka_consumer_t *c, const rd_kafka_topic_partition_list_t *parts) {
  unsigned n = c->held_n;
  c->held_n = 0;
  for (unsigned i = 0; i < n; i++) {
    rd_kafka_message_t *m = c->held[(c->held_head + i) % c->held_max];
    if (!parts || rd_kafka_topic_partition_list_find(parts, rd_kafka_topic_name(m->rkt),
                                                     m->partition))
      rd_kafka_message_destroy(m);
    else
      c->held[(c->held_head + c->held_n++) % c->held_max] = m;
  }
  bt_gauge_set(&c->stats.held, c->held_n);
}

/* ---- assignment ---- */

static void list_remove(rd_kafka_topic_partition_list_t *l,
                        const rd_kafka_topic_partition_list_t *parts) {
  for (int i = 0; i < parts->cnt; i++)
    rd_kafka_topic_partition_list_del(l, parts->elems[i].topic, parts->elems[i].partition);
}

static bt_kafka_partition_t *to_parts(const rd_kafka_topic_partition_list_t *l) {
  bt_kafka_partition_t *p = calloc((size_t)l->cnt + 1, sizeof *p);
  if (!p)
    bt_fatal("kafka consumer: out of memory in a rebalance");
  for (int i = 0; i < l->cnt; i++)
    p[i] = (bt_kafka_partition_t){.topic = l->elems[i].topic,
                                  .partition = l->elems[i].partition,
                                  .offset = l->elems[i].offset < 0 &&
                                                    l->elems[i].offset != RD_KAFKA_OFFSET_BEGINNING &&
                                                    l->elems[i].offset != RD_KAFKA_OFFSET_END
                                                ? BT_KAFKA_OFFSET_STORED
                                                : l->elems[i].offset};
  return p;
}

/* Takes parts (the service's hook may choose start offsets) and queues the assign, and a
 * pause behind it when fetching is stopped, so new partitions do not start fetching. */
static void take(bt_kafka_consumer_t *c, rd_kafka_topic_partition_list_t *parts,
                 bt_kafka_ctl_op_t op) {
  if (c->on_assign && parts->cnt > 0) {
    bt_kafka_partition_t *p = to_parts(parts);
    c->on_assign(c, p, (size_t)parts->cnt, c->arg);
    for (int i = 0; i < parts->cnt; i++)
      parts->elems[i].offset = p[i].offset == BT_KAFKA_OFFSET_STORED ? RD_KAFKA_OFFSET_INVALID
                                                                       : p[i].offset;
    free(p);
  }
  /* A (re)assigned partition starts where the assign says, not at an older seek. */
  list_remove(c->seeking, parts);
  list_remove(c->rewind, parts);
  held_drop(c, op == BT_KAFKA_CTL_ASSIGN ? NULL : parts);
  if (op == BT_KAFKA_CTL_ASSIGN) {
    rd_kafka_topic_partition_list_destroy(c->assigned);
    c->assigned = rd_kafka_topic_partition_list_copy(parts);
  } else {
    for (int i = 0; i < parts->cnt; i++)
      if (!find(c->assigned, parts->elems[i].topic, parts->elems[i].partition))
        rd_kafka_topic_partition_list_add(c->assigned, parts->elems[i].topic,
                                          parts->elems[i].partition);
  }
  ctl_push(c, op, parts);
  if (c->fetch_stopped)
    ctl_push(c, BT_KAFKA_CTL_PAUSE, parts);
  bt_gauge_set(&c->stats.assigned, c->assigned->cnt);
}

static void give_up(bt_kafka_consumer_t *c, rd_kafka_topic_partition_list_t *parts, bool lost) {
  if (c->on_revoke && parts->cnt > 0) {
    bt_kafka_partition_t *p = to_parts(parts);
    c->on_revoke(c, p, (size_t)parts->cnt, lost, c->arg);
    free(p);
  }
  /* In good order, what the service stored (in the hook too) is committed before the
   * partitions go: the commit request reaches the group thread before the unassign, which
   * the worker sends later. A lost assignment cannot commit any more. */
  if (!lost)
    commit_stored(c);
  list_remove(c->assigned, parts);
  list_remove(c->rewind, parts);
  list_remove(c->seeking, parts);
  held_drop(c, parts);
  if (c->cooperative)
    ctl_push(c, BT_KAFKA_CTL_INCR_UNASSIGN, parts);
  else
    ctl_push(c, BT_KAFKA_CTL_ASSIGN, NULL);
  bt_gauge_set(&c->stats.assigned, c->assigned->cnt);
}

/* Runs on the loop (inside rd_kafka_consumer_poll). librdkafka waits until we call assign or
 * unassign, so queueing the call to the worker is allowed: the group stays in its
 * wait-for-assign state meanwhile. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
  bt_kafka_consumer_t *c = opaque;
  bool assign = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
  bool lost = !assign && rd_kafka_assignment_lost(rk);
  bt_log_info(assign ? "kafka partitions assigned" : "kafka partitions revoked",
              "{s:s, s:i, s:b, s:s}", "consumer", c->c.name, "partitions", parts->cnt, "lost",
              lost, "protocol", c->cooperative ? "cooperative" : "eager");
  if (assign)
    take(c, parts, c->cooperative ? BT_KAFKA_CTL_INCR_ASSIGN : BT_KAFKA_CTL_ASSIGN);
  else if (err == RD_KAFKA_RESP_ERR__REVOKE_PARTITIONS)
    give_up(c, parts, lost);
  else {
    /* A rebalance error: drop everything and let the group start over. */
    rd_kafka_topic_partition_list_t *all = rd_kafka_topic_partition_list_copy(c->assigned);
    give_up(c, all, true);
    rd_kafka_topic_partition_list_destroy(all);
  }
}

/* ---- delivery ---- */

static void msg_free(bt_kafka_consumer_t *c, msg_t *m) {
  rd_kafka_message_destroy(m->rkm);
  free(m);
  c->unreleased--;
  bt_gauge_set(&c->stats.unreleased, c->unreleased);
}

static msg_t *msg_wrap(bt_kafka_consumer_t *c, rd_kafka_message_t *rkm) {
  msg_t *m = calloc(1, sizeof *m);
  if (!m)
    return NULL;
  rd_kafka_timestamp_type_t tstype;
  m->rkm = rkm;
  m->view = (bt_kafka_message_t){
      .topic = rd_kafka_topic_name(rkm->rkt),
      .partition = rkm->partition,
      .offset = rkm->offset,
      .timestamp_ms = rd_kafka_message_timestamp(rkm, &tstype),
      .key = rkm->key,
      .key_len = rkm->key_len,
      .value = rkm->payload,
      .value_len = rkm->len,
      .raw = rkm,
  };
  c->unreleased++;
  return m;
}

/* The callback may keep a message and release it before it returns (a batch the service
 * settles at once, every record malformed): the message is freed here, after the callback,
 * never under it (ASan saw the use after free in baton-saga). */
static void deliver(bt_kafka_consumer_t *c, size_t n) {
  c->progress_at = uv_now(c->c.app->loop);
  bt_gauge_set(&c->stats.unreleased, c->unreleased);
  bt_counter_add(&c->stats.delivered, n);
  for (size_t i = 0; i < n; i++)
    c->batch[i]->delivering = true;
  if (c->on_batch)
    c->on_batch(c, (bt_kafka_message_t *const *)c->batch, n, c->arg);
  else
    c->cb(c, &c->batch[0]->view, c->arg); /* single mode: batch_max is 1 */
  for (size_t i = 0; i < n; i++) {
    c->batch[i]->delivering = false;
    if (!c->batch[i]->kept)
      msg_free(c, c->batch[i]);
  }
  update_fetch(c);
}

static void maybe_free(bt_kafka_consumer_t *c);

static void on_queue_closed(bt_kafka_queue_t *q) {
  bt_kafka_consumer_t *c = BT_CONTAINER_OF(q, bt_kafka_consumer_t, c.queue);
  c->queue_closed = true;
  maybe_free(c);
}

static bool serve(void *arg) {
  bt_kafka_consumer_t *c = arg;
  size_t n = 0, polled = 0;
  bool empty = false;
  c->wake_pending = false;
  /* Held messages were polled first, so they go first. */
  while (n < c->batch_max && c->held_n > 0 && can_deliver(c))
    if (!(c->batch[n++] = msg_wrap(c, held_pop(c))))
      bt_fatal("kafka consumer %s: out of memory for a message", c->c.name);
  /* polled bounds a pass that only holds (nothing deliverable) like one that delivers, so
   * the held queue passes held_high by less than batch_max before update_fetch sees it. */
  while (!backlogged(c) && n < c->batch_max && polled++ < c->batch_max) {
    /* consumer_poll also runs the rebalance and commit callbacks, the close's included, and
     * is what keeps max.poll.interval.ms alive (see the top of the file). */
    rd_kafka_message_t *m = rd_kafka_consumer_poll(c->c.rk, 0);
    if (!m) {
      empty = true;
      break;
    }
    if (m->err) {
      if (m->err != RD_KAFKA_RESP_ERR__PARTITION_EOF)
        bt_log_warn("kafka consumer error", "{s:s, s:s, s:s}", "consumer", c->c.name, "error",
                    rd_kafka_err2name(m->err), "detail", rd_kafka_message_errstr(m));
      rd_kafka_message_destroy(m);
      continue;
    }
    bt_kafka_client_note_up(&c->c);
    if (!past_seek(c, m)) {
      bt_counter_inc(&c->stats.seek_dropped);
      rd_kafka_message_destroy(m);
      continue;
    }
    /* A message goes straight to the batch only when nothing older waits; after a drop, its
     * partition drops everything until the resume seeks back to the first dropped one. */
    if (can_deliver(c) && c->held_n == 0) {
      if (!(c->batch[n++] = msg_wrap(c, m)))
        bt_fatal("kafka consumer %s: out of memory for a message", c->c.name);
    } else if (c->state == CONSUMER_RUNNING && c->held_n < c->held_max &&
               !find(c->rewind, rd_kafka_topic_name(m->rkt), m->partition)) {
      held_push(c, m);
    } else {
      remember_rewind(c, m);
      rd_kafka_message_destroy(m);
    }
  }
  if (n > 0)
    deliver(c, n);
  else
    update_fetch(c); /* the held queue may have filled */
  if (empty && c->state == CONSUMER_CLOSING && !c->queue_closed &&
      !uv_is_closing((uv_handle_t *)&c->c.queue.poll) && rd_kafka_consumer_closed(c->c.rk)) {
    bt_log_info("kafka consumer closed", "{s:s}", "consumer", c->c.name);
    bt_kafka_client_close(&c->c, on_queue_closed);
  }
  /* Held messages that can go now need another pass even when librdkafka's queue is empty;
   * a backlogged queue waits for wake(). */
  return (!empty && !backlogged(c)) || (c->held_n > 0 && can_deliver(c));
}

/* ---- lag, from cached watermarks ---- */

static void refresh_lag(bt_kafka_client_t *kc) {
  bt_kafka_consumer_t *c = (bt_kafka_consumer_t *)kc;
  if (kc->rx_messages >= 0)
    bt_gauge_set(&c->stats.fetched, (double)kc->rx_messages);
  if (c->assigned->cnt == 0) {
    bt_gauge_set(&c->stats.lag_messages, 0);
    return;
  }
  rd_kafka_topic_partition_list_t *pos = rd_kafka_topic_partition_list_copy(c->assigned);
  rd_kafka_position(c->c.rk, pos); /* the application's position: reads, never asks */
  int64_t total = 0;
  for (int i = 0; i < pos->cnt; i++) {
    int64_t lo, hi;
    if (rd_kafka_get_watermark_offsets(c->c.rk, pos->elems[i].topic, pos->elems[i].partition,
                                       &lo, &hi) != 0 || hi < 0)
      continue;
    int64_t from = pos->elems[i].offset >= 0 ? pos->elems[i].offset : lo;
    if (from >= 0 && hi > from)
      total += hi - from;
  }
  rd_kafka_topic_partition_list_destroy(pos);
  bt_gauge_set(&c->stats.lag_messages, (double)total);
}

int bt_kafka_consumer_lag(bt_kafka_consumer_t *c, const char *topic, int32_t partition,
                          int64_t *lag) {
  if (!find(c->assigned, topic, partition))
    return BT_ENOENT;
  int64_t lo, hi;
  if (rd_kafka_get_watermark_offsets(c->c.rk, topic, partition, &lo, &hi) != 0 || hi < 0)
    return BT_ENOENT;
  rd_kafka_topic_partition_list_t *pos = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(pos, topic, partition);
  rd_kafka_position(c->c.rk, pos);
  int64_t from = pos->elems[0].offset >= 0 ? pos->elems[0].offset : lo;
  rd_kafka_topic_partition_list_destroy(pos);
  if (from < 0)
    return BT_ENOENT;
  *lag = hi > from ? hi - from : 0;
  return 0;
}

/* ---- lifecycle ---- */

static bool ready(void *arg) { return bt_kafka_consumer_ready(arg); }

static void on_drain(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  bt_kafka_consumer_t *c = arg;
  set_state(c, CONSUMER_DRAINING);
  update_fetch(c);
  commit_stored(c);
  update_hold(c);
}

static void on_timer_closed(uv_handle_t *h) {
  bt_kafka_consumer_t *c = h->data;
  c->timers_closed++;
  maybe_free(c);
}

static void on_ctl_idle(bt_kafka_ctl_t *ctl) {
  maybe_free(BT_CONTAINER_OF(ctl, bt_kafka_consumer_t, ctl));
}

/* The handle goes once nothing can touch it: the queue and timer are closed and no control
 * call is running on the worker. */
static void maybe_free(bt_kafka_consumer_t *c) {
  if (!c->queue_closed || c->timers_closed < 2 || !bt_kafka_ctl_idle(&c->ctl))
    return;
  /* librdkafka's destroy waits for every message it handed out; the service's kept ones end
   * here, as the header says. */
  while (c->kept) {
    msg_t *m = c->kept;
    c->kept = m->next;
    msg_free(c, m);
  }
  held_drop(c, NULL);
  bt_kafka_client_destroy(&c->c);
  /* Commit results that never arrived were destroyed with the handle. */
  while (c->commits)
    commit_finish(c->commits, BT_ECANCELED);
  rd_kafka_topic_partition_list_destroy(c->assigned);
  rd_kafka_topic_partition_list_destroy(c->rewind);
  rd_kafka_topic_partition_list_destroy(c->seeking);
  bt_fsm_leave(&consumer_fsm, c->state);
  free(c->held);
  free(c->batch);
  free(c);
}

static void on_close(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  bt_kafka_consumer_t *c = arg;
  set_state(c, CONSUMER_CLOSING);
  update_hold(c);
  /* Queued control calls still run: librdkafka may be waiting for a queued assign before it
   * can revoke for the close. */
  c->ctl.on_idle = on_ctl_idle;
  uv_close((uv_handle_t *)&c->commit_timer, on_timer_closed);
  uv_close((uv_handle_t *)&c->backstop, on_timer_closed);
  /* The close runs on librdkafka's threads and reports on our queue; serve() finishes it. */
  rd_kafka_error_t *error = rd_kafka_consumer_close_queue(c->c.rk, c->c.rkq);
  if (error) {
    bt_log_error("kafka consumer close failed", "{s:s, s:s}", "consumer", c->c.name, "error",
                 rd_kafka_error_string(error));
    rd_kafka_error_destroy(error);
    bt_kafka_client_close(&c->c, on_queue_closed);
    return;
  }
  bt_kafka_queue_wake(&c->c.queue);
}

static int configure(bt_kafka_consumer_t *c, rd_kafka_conf_t *conf,
                     const bt_kafka_consumer_config_t *cfg, char *errstr) {
  char session[16];
  snprintf(session, sizeof session, "%u",
           cfg->session_timeout_ms ? cfg->session_timeout_ms : 10000);
  /* No auto commit and no implicit offset store: an offset moves only through
   * bt_kafka_consumer_commit() or _store(), after the caller's own durable write. */
  const char *reset = cfg->auto_offset_reset ? cfg->auto_offset_reset : "earliest";
  const char *group = cfg->group_id && *cfg->group_id ? cfg->group_id : "baton-manual";
  if (bt_kafka_conf_set(conf, "group.id", group, errstr) != 0 ||
      bt_kafka_conf_set(conf, "enable.auto.commit", "false", errstr) != 0 ||
      bt_kafka_conf_set(conf, "enable.auto.offset.store", "false", errstr) != 0 ||
      bt_kafka_conf_set(conf, "auto.offset.reset", reset, errstr) != 0 ||
      bt_kafka_conf_set(conf, "session.timeout.ms", session, errstr) != 0 ||
      (cfg->assignor &&
       bt_kafka_conf_set(conf, "partition.assignment.strategy", cfg->assignor, errstr) != 0) ||
      (cfg->group_instance_id &&
       bt_kafka_conf_set(conf, "group.instance.id", cfg->group_instance_id, errstr) != 0))
    return BT_EINVAL;
  /* librdkafka's prefetch per partition, from the budget (its default is 100000): what it
   * keeps queued while we are backlogged. A setting in properties wins. */
  char qmin[16];
  snprintf(qmin, sizeof qmin, "%u", c->max_in_flight);
  if ((!cfg->properties || !strstr(cfg->properties, "queued.min.messages")) &&
      bt_kafka_conf_set(conf, "queued.min.messages", qmin, errstr) != 0)
    return BT_EINVAL;
  rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
  return 0;
}

static int subscribe(bt_kafka_consumer_t *c, const bt_kafka_consumer_config_t *cfg,
                     char *errstr) {
  rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new((int)cfg->ntopics);
  for (size_t i = 0; i < cfg->ntopics; i++)
    rd_kafka_topic_partition_list_add(topics, cfg->topics[i], RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t err = rd_kafka_subscribe(c->c.rk, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  if (!err)
    return 0;
  snprintf(errstr, 256, "kafka consumer subscribe: %s", rd_kafka_err2str(err));
  return BT_EINVAL;
}

int bt_kafka_consumer_new(bt_kafka_consumer_t **out, bt_app_t *app,
                          const bt_kafka_consumer_config_t *cfg, bt_kafka_message_cb cb,
                          void *arg, char *errstr) {
  if (!cfg->manual && (!cfg->group_id || !*cfg->group_id || cfg->ntopics == 0)) {
    snprintf(errstr, 256, "kafka consumer: a group id and at least one topic are required");
    return BT_EINVAL;
  }
  /* The statistics event is what wakes an idle consumer's poll (see the top of the file). */
  if (cfg->stats_interval_ms > 60000) {
    snprintf(errstr, 256, "kafka consumer: stats_interval_ms %u is above 60000, too close to "
             "max.poll.interval.ms", cfg->stats_interval_ms);
    return BT_EINVAL;
  }
  if (!cb && !cfg->on_batch) {
    snprintf(errstr, 256, "kafka consumer: a message or batch callback is required");
    return BT_EINVAL;
  }
  bt_kafka_consumer_t *c = calloc(1, sizeof *c);
  if (!c)
    return BT_ENOMEM;
  c->cb = cb;
  c->on_batch = cfg->on_batch;
  c->on_assign = cfg->on_assign;
  c->on_revoke = cfg->on_revoke;
  c->arg = arg;
  c->manual = cfg->manual;
  c->cooperative = cfg->assignor && strstr(cfg->assignor, "cooperative") != NULL;
  c->batch_max = !cfg->on_batch ? 1 : cfg->batch_max ? cfg->batch_max : 100;
  c->max_in_flight = cfg->max_in_flight ? cfg->max_in_flight : 10000;
  c->commit_interval_ms = cfg->commit_interval_ms ? cfg->commit_interval_ms : 1000;
  c->batch = calloc(c->batch_max, sizeof *c->batch);
  /* Half the budget held: what the service gets at once when the budget frees up. */
  c->held_high = c->max_in_flight / 2 ? c->max_in_flight / 2 : 1;
  c->held_max = c->held_high + c->batch_max;
  c->held = calloc(c->held_max, sizeof *c->held);
  c->assigned = rd_kafka_topic_partition_list_new(0);
  c->rewind = rd_kafka_topic_partition_list_new(0);
  c->seeking = rd_kafka_topic_partition_list_new(0);
  c->c.on_stats = refresh_lag;
  rd_kafka_conf_t *conf = bt_kafka_client_conf(&c->c, cfg->brokers, cfg->properties,
                                               cfg->stats_interval_ms, errstr);
  int rc = !c->batch || !c->held ? BT_ENOMEM : !conf ? BT_EINVAL : configure(c, conf, cfg, errstr);
  if (rc == 0)
    rc = bt_kafka_client_create(&c->c, app, "consumer", cfg->name, RD_KAFKA_CONSUMER, conf,
                                cfg->properties, errstr);
  else if (conf)
    rd_kafka_conf_destroy(conf);
  if (rc != 0) {
    rd_kafka_topic_partition_list_destroy(c->assigned);
    rd_kafka_topic_partition_list_destroy(c->rewind);
    rd_kafka_topic_partition_list_destroy(c->seeking);
    free(c->held);
    free(c->batch);
    free(c);
    return rc;
  }
  /* Main queue -> group queue -> our queue: one queue to watch. */
  rd_kafka_poll_set_consumer(c->c.rk);
  rd_kafka_queue_t *appq = rd_kafka_queue_new(c->c.rk);
  rd_kafka_queue_t *groupq = rd_kafka_queue_get_consumer(c->c.rk);
  rd_kafka_queue_forward(groupq, appq);
  rd_kafka_queue_destroy(groupq);
  c->c.rkq = appq;
  bt_kafka_ctl_init(&c->ctl, app->loop, c->c.rk, c->c.name);

  rc = cfg->manual ? 0 : subscribe(c, cfg, errstr);
  if (rc == 0) {
    rc = bt_kafka_client_bridge(&c->c, appq, serve, c);
    if (rc != 0)
      snprintf(errstr, 256, "kafka consumer: %s", bt_strerror(rc));
  }
  if (rc != 0) {
    bt_kafka_client_destroy(&c->c);
    rd_kafka_topic_partition_list_destroy(c->assigned);
    rd_kafka_topic_partition_list_destroy(c->rewind);
    rd_kafka_topic_partition_list_destroy(c->seeking);
    free(c->held);
    free(c->batch);
    free(c);
    return rc;
  }
  uv_timer_init(app->loop, &c->commit_timer);
  c->commit_timer.data = c;
  uv_timer_start(&c->commit_timer, on_commit_timer, c->commit_interval_ms,
                 c->commit_interval_ms);
  uv_timer_init(app->loop, &c->backstop);
  c->backstop.data = c;
  c->state = CONSUMER_RUNNING;
  bt_fsm_enter(&consumer_fsm, c->state);
  bt_app_add_dependency(app, c->c.name, ready, c);
  bt_app_on_shutdown(app, on_drain, on_close, c);
  *out = c;
  return 0;
}

int bt_kafka_consumer_commit(bt_kafka_consumer_t *c, const char *topic, int32_t partition,
                             int64_t next_offset, bt_kafka_commit_cb cb, void *arg) {
  if (c->state == CONSUMER_CLOSING)
    return BT_ECANCELED;
  rd_kafka_topic_partition_list_t *offsets = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(offsets, topic, partition)->offset = next_offset;
  int rc = commit_send(c, offsets, cb, arg);
  rd_kafka_topic_partition_list_destroy(offsets);
  return rc;
}

int bt_kafka_consumer_store(bt_kafka_consumer_t *c, const bt_kafka_message_t *m) {
  if (c->state == CONSUMER_CLOSING)
    return BT_ECANCELED;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(l, m->topic, m->partition)->offset = m->offset + 1;
  rd_kafka_resp_err_t err = rd_kafka_offsets_store(c->c.rk, l);
  if (!err)
    err = l->elems[0].err;
  rd_kafka_topic_partition_list_destroy(l);
  if (err)
    return BT_ENOENT;
  c->stored_dirty = true;
  return 0;
}

void bt_kafka_consumer_keep(bt_kafka_consumer_t *c, const bt_kafka_message_t *view) {
  msg_t *m = (msg_t *)view;
  if (m->kept)
    return;
  m->kept = true;
  m->prev = NULL;
  m->next = c->kept;
  if (c->kept)
    c->kept->prev = m;
  c->kept = m;
}

void bt_kafka_consumer_release(bt_kafka_consumer_t *c, const bt_kafka_message_t *view) {
  msg_t *m = (msg_t *)view;
  BT_ASSERT(m->kept);
  if (m->prev)
    m->prev->next = m->next;
  else
    c->kept = m->next;
  if (m->next)
    m->next->prev = m->prev;
  m->kept = false;
  c->progress_at = uv_now(c->c.app->loop);
  if (!m->delivering)
    msg_free(c, m);
  if (c->state != CONSUMER_CLOSING)
    update_fetch(c);
}

int bt_kafka_consumer_assign(bt_kafka_consumer_t *c, const bt_kafka_partition_t *parts,
                             size_t n) {
  if (!c->manual || c->state == CONSUMER_CLOSING)
    return BT_EINVAL;
  rd_kafka_topic_partition_list_t *l = rd_kafka_topic_partition_list_new((int)n);
  for (size_t i = 0; i < n; i++)
    rd_kafka_topic_partition_list_add(l, parts[i].topic, parts[i].partition)->offset =
        parts[i].offset == BT_KAFKA_OFFSET_STORED ? RD_KAFKA_OFFSET_INVALID : parts[i].offset;
  /* The service chose the offsets itself: no on_assign round trip. */
  bt_kafka_assign_cb hook = c->on_assign;
  c->on_assign = NULL;
  take(c, l, BT_KAFKA_CTL_ASSIGN);
  c->on_assign = hook;
  rd_kafka_topic_partition_list_destroy(l);
  return 0;
}

void bt_kafka_consumer_pause(bt_kafka_consumer_t *c) {
  c->paused = true;
  update_fetch(c);
}

void bt_kafka_consumer_resume(bt_kafka_consumer_t *c) {
  c->paused = false;
  if (c->state != CONSUMER_CLOSING)
    update_fetch(c);
}

int bt_kafka_message_header(const bt_kafka_message_t *m, const char *name, const void **value,
                            size_t *len) {
  rd_kafka_headers_t *hdrs;
  if (rd_kafka_message_headers(m->raw, &hdrs) != 0)
    return BT_ENOENT;
  return rd_kafka_header_get_last(hdrs, name, value, len) == 0 ? 0 : BT_ENOENT;
}

int bt_kafka_message_header_at(const bt_kafka_message_t *m, size_t idx, const char **name,
                               const void **value, size_t *len) {
  rd_kafka_headers_t *hdrs;
  if (rd_kafka_message_headers(m->raw, &hdrs) != 0)
    return BT_ENOENT;
  return rd_kafka_header_get_all(hdrs, idx, name, value, len) == 0 ? 0 : BT_ENOENT;
}

bool bt_kafka_consumer_ready(bt_kafka_consumer_t *c) {
  return c->state != CONSUMER_CLOSING && bt_kafka_client_ready(&c->c);
}

const bt_kafka_consumer_stats_t *bt_kafka_consumer_stats(const bt_kafka_consumer_t *c) {
  return &c->stats;
}

void bt_kafka_consumer_register_metrics(bt_kafka_consumer_t *c) {
  bt_fsm_register(&consumer_fsm, "baton_kafka_consumers", "Kafka consumers by lifecycle state.");
  bt_metrics_gauge(&c->stats.lag_messages, "baton_kafka_consumer_lag_messages",
                   "Messages behind the high watermark, over the assigned partitions.");
  bt_metrics_gauge(&c->stats.unreleased, "baton_kafka_consumer_unreleased_messages",
                   "Delivered messages the service has not released yet.");
  bt_metrics_gauge(&c->stats.assigned, "baton_kafka_consumer_assigned_partitions",
                   "Partitions assigned to this consumer.");
  bt_metrics_counter(&c->stats.delivered, "baton_kafka_consumer_delivered_total",
                     "Messages delivered to the service.");
  bt_metrics_counter(&c->stats.commits, "baton_kafka_consumer_commits_total",
                     "Offset commit requests sent.");
  bt_metrics_counter(&c->stats.budget_pauses, "baton_kafka_consumer_budget_pauses_total",
                     "Times fetching paused because the held queue filled while delivery "
                     "waited (max_in_flight unreleased, or paused by the service).");
  bt_metrics_gauge(&c->stats.fetched, "baton_kafka_consumer_fetched_messages",
                   "Messages received from brokers, refetches after a pause included "
                   "(librdkafka's statistics).");
  bt_metrics_gauge(&c->stats.held, "baton_kafka_consumer_held_messages",
                   "Fetched messages held for delivery once the budget or a pause allows.");
  bt_metrics_counter(&c->stats.seek_dropped, "baton_kafka_consumer_seek_dropped_total",
                     "Prefetched messages dropped because a resume's seek refetches them.");
}
