/* proj_runner: one projection's consume → decode → map → dead-letter → sink-write loop.
 *
 * Invariants:
 * - A sink's offset of a partition moves only in the sink's own write, atomically with the
 *   effects of every event below it (proj_sink.h). An event is either applied, or skipped as
 *   a tombstone, or dead-lettered before any sink's offset passes it: the dead letters of a
 *   batch are acknowledged by Kafka before either sink is written.
 * - Each sink applies only events at or above its own offset, so a sink that is behind
 *   catches up from the same batch without the other applying anything twice, and a replay
 *   (a restart, a rebalance, a seek to the lower of the two) applies nothing again.
 * - Start offsets come from the sinks (the lower of the two) at every assignment; Kafka's
 *   committed offsets are stored after both sinks hold a batch and are informative only.
 * - One batch at a time per projection, so a key's changes are applied in Kafka order.
 * - A failure leaves nothing half done: the batch is kept (its messages stay unreleased,
 *   which pauses fetching past max_in_flight), the failed sink's offsets are reloaded (the
 *   write's outcome may be unknown), and the batch is retried with backoff. */
#include "proj_runner.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <uv.h>

#include "backoff.h"
#include "fsm.h"
#include "kafka_consumer.h"
#include "log.h"
#include "proj_apply.h"
#include "proj_decode.h"
#include "proj_sink.h"
#include "projector.h"

typedef enum {
  RUNNER_LOADING,      /* reading the sinks' offsets before subscribing */
  RUNNER_IDLE,         /* waiting for messages */
  RUNNER_DEAD_LETTERS, /* the batch's poison events are being written to the DLQ topic */
  RUNNER_APPLYING,     /* the sinks are writing the batch */
  RUNNER_BACKOFF,      /* a step failed; retrying after a delay */
  RUNNER_STOPPED,      /* drained */
  RUNNER_NSTATES
} runner_state_t;

static const char *const state_names[] = {"loading", "idle",    "dead_letters",
                                          "applying", "backoff", "stopped"};
#define B BT_FSM_BIT
static const uint32_t legal[] = {
    [RUNNER_LOADING] = B(RUNNER_IDLE) | B(RUNNER_BACKOFF) | B(RUNNER_STOPPED),
    [RUNNER_IDLE] = B(RUNNER_DEAD_LETTERS) | B(RUNNER_APPLYING) | B(RUNNER_STOPPED),
    [RUNNER_DEAD_LETTERS] = B(RUNNER_APPLYING) | B(RUNNER_BACKOFF) | B(RUNNER_STOPPED),
    [RUNNER_APPLYING] = B(RUNNER_IDLE) | B(RUNNER_BACKOFF) | B(RUNNER_STOPPED),
    [RUNNER_BACKOFF] = B(RUNNER_LOADING) | B(RUNNER_DEAD_LETTERS) | B(RUNNER_APPLYING) |
                       B(RUNNER_STOPPED),
    [RUNNER_STOPPED] = 0,
};
#undef B
static bt_fsm_def_t runner_fsm = {"projection runner", RUNNER_NSTATES, state_names, legal, {{0}}};

enum { MAX_SINKS = 2 };

/* A partition the runner has seen: its name is kept here so that batches and callbacks never
 * read a Kafka message after it may have been freed. */
typedef struct part {
  char *topic;
  int32_t partition;
  bool assigned;
  /* What every sink is known to hold since the assignment: the start offset, then the end of
   * each batch completed. A sink found below it has lost data (a Redis restarted empty). */
  int64_t held;
  bt_gauge_t *lag;             /* baton_projector_lag_messages{partition="P:topic:n"} */
} part_t;

/* One message of the batch. */
typedef struct item {
  const bt_kafka_message_t *m; /* kept; read only while the batch is being built */
  size_t part;                 /* into r->parts */
  int64_t offset;
  int64_t timestamp_ms;
  bool has_change;
  proj_change_t change;
  const char *dl_class;        /* NULL, "decode", "unmapped" or "mapping" */
  char *dl_reason;
  bool dl_pending;             /* still to be written to the DLQ */
} item_t;

typedef enum { SINK_PENDING, SINK_BUSY, SINK_DONE, SINK_FAILED } sink_step_t;

typedef struct sink_slot {
  struct proj_runner *r;
  proj_sink_t *sink;
  sink_step_t step;
  int err;
  /* The write in flight: what the sink's filter chose, kept until the write completes. */
  proj_move_t *moves;
  size_t nmoves;
  proj_change_t *changes;      /* shallow copies of the items' changes */
  size_t nchanges;
  json_t *keys;
  proj_state_t state;
  proj_effects_t effects;
} sink_slot_t;

struct proj_runner {
  projector_t *p;
  const proj_def_t *def;
  int version;
  bool building;               /* a rebuild's version: readers do not see it yet */
  bool retired;                /* replaced by a rebuild: applies nothing more */
  runner_state_t state;
  char group[256];
  bt_kafka_consumer_t *consumer;
  sink_slot_t sinks[MAX_SINKS];
  size_t nsinks;
  part_t *parts;
  size_t nparts, capparts;
  /* Delivered, kept messages not yet in a batch: a queue (head..n) bounded by the consumer's
   * max_in_flight, past which it pauses fetching. */
  const bt_kafka_message_t **queue;
  size_t qhead, qn, qcap;
  item_t *items;               /* the batch in hand */
  size_t nitems;
  unsigned dl_outstanding;
  bool dl_failed;
  bt_backoff_t backoff;
  uv_timer_t timer;
  bool stopping, held;
  bool failing;                /* holding a batch for a failure (cleared by its success) */
  char errstr[300];
  char *freshness_name;        /* baton_projector_event_age_seconds{projection="P"} */
  char dep_name[200];          /* readiness: "projection:P" */
  int64_t newest_event_ms;
};

static void pump(proj_runner_t *r);
static void apply_batch(proj_runner_t *r);
static void sink_run(proj_runner_t *r, sink_slot_t *slot);

static void set_state(proj_runner_t *r, runner_state_t to) {
  bt_fsm_move(&runner_fsm, r->state, to, r->def->name);
  r->state = to;
  bt_app_hold_while(&r->p->app, &r->held,
                    r->stopping && (to == RUNNER_DEAD_LETTERS || to == RUNNER_APPLYING));
}

static size_t part_index(proj_runner_t *r, const char *topic, int32_t partition) {
  for (size_t i = 0; i < r->nparts; i++)
    if (r->parts[i].partition == partition && strcmp(r->parts[i].topic, topic) == 0)
      return i;
  if (r->nparts == r->capparts) {
    size_t cap = r->capparts ? r->capparts * 2 : 16;
    part_t *v = realloc(r->parts, cap * sizeof *v);
    if (!v)
      bt_fatal("projector: out of memory for partitions");
    r->parts = v;
    r->capparts = cap;
  }
  part_t *pt = &r->parts[r->nparts];
  memset(pt, 0, sizeof *pt);
  if (!(pt->topic = strdup(topic)))
    bt_fatal("projector: out of memory for partitions");
  pt->partition = partition;
  char label[400];
  snprintf(label, sizeof label, "%s:%s:%d", r->def->name, topic, (int)partition);
  pt->lag = bt_metrics_family_gauge(r->p->lag_family, label);
  return r->nparts++;
}

/* ---- the batch ---- */

/* Forgets a sink's plan of the batch (what it chose, the state and the effects). */
static void slot_reset(sink_slot_t *slot) {
  free(slot->moves);
  free(slot->changes);
  json_decref(slot->keys);
  proj_state_free(&slot->state);
  proj_effects_clear(&slot->effects);
  slot->moves = NULL;
  slot->changes = NULL;
  slot->keys = NULL;
  slot->nmoves = slot->nchanges = 0;
}

static void batch_clear(proj_runner_t *r) {
  for (size_t i = 0; i < r->nitems; i++) {
    proj_change_clear(&r->items[i].change);
    free(r->items[i].dl_reason);
  }
  r->nitems = 0;
  for (size_t s = 0; s < r->nsinks; s++) {
    sink_slot_t *slot = &r->sinks[s];
    slot_reset(slot);
    slot->step = SINK_PENDING;
  }
}

/* The lowest offset every sink holds for part: events below it are in both sinks already. */
static int64_t applied_by_all(proj_runner_t *r, size_t part) {
  int64_t low = INT64_MAX;
  for (size_t s = 0; s < r->nsinks; s++) {
    int64_t o = proj_offsets_get(&r->sinks[s].sink->offsets, r->parts[part].topic,
                                 r->parts[part].partition);
    low = o < low ? o : low;
  }
  return low;
}

/* The highest: an event below it has been passed by some sink, so it was dead-lettered if it
 * had to be (a sink's offset never passes an event that is in neither a sink nor the DLQ). */
static int64_t applied_by_any(proj_runner_t *r, size_t part) {
  int64_t high = 0;
  for (size_t s = 0; s < r->nsinks; s++) {
    int64_t o = proj_offsets_get(&r->sinks[s].sink->offsets, r->parts[part].topic,
                                 r->parts[part].partition);
    high = o > high ? o : high;
  }
  return high;
}

/* The live runner of r's projection (r itself unless r is a rebuild's). */
static const proj_runner_t *live_of(const proj_runner_t *r) {
  for (size_t i = 0; i < r->p->nrunners; i++)
    if (r->p->runners[i] && r->p->runners[i]->def == r->def)
      return r->p->runners[i];
  return NULL;
}

/* The highest next offset any of r's sinks holds for topic/partition. */
static int64_t held_by_any(const proj_runner_t *r, const char *topic, int32_t partition) {
  int64_t high = 0;
  for (size_t s = 0; s < r->nsinks; s++) {
    int64_t o = proj_offsets_get(&r->sinks[s].sink->offsets, topic, partition);
    high = o > high ? o : high;
  }
  return high;
}

/* Decodes and maps one message into its item. */
static void item_build(proj_runner_t *r, item_t *it, const bt_kafka_message_t *m) {
  memset(it, 0, sizeof *it);
  it->m = m;
  it->part = part_index(r, m->topic, m->partition);
  it->offset = m->offset;
  it->timestamp_ms = m->timestamp_ms;
  if (m->offset < applied_by_all(r, it->part))
    return; /* every sink has it: nothing to decode */
  proj_header_t hdrs[64];
  size_t nh = 0;
  while (nh < BT_ARRAY_LEN(hdrs) && bt_kafka_message_header_at(m, nh, &hdrs[nh].name,
                                                               &hdrs[nh].value, &hdrs[nh].len) == 0)
    nh++;
  proj_record_t rec = {.topic = m->topic,
                       .partition = m->partition,
                       .offset = m->offset,
                       .value = m->value,
                       .value_len = m->value_len,
                       .headers = hdrs,
                       .nheaders = nh};
  proj_event_t ev = {0};
  char reason[512];
  proj_decode_result_t dr = proj_decode(r->def->format, &rec, &ev, reason, sizeof reason);
  if (dr == PROJ_SKIPPED)
    return;
  if (dr == PROJ_POISON) {
    it->dl_class = "decode";
  } else {
    int rc = proj_map(r->def, &ev, &it->change, reason, sizeof reason);
    bool unmapped = proj_def_rule(r->def, ev.type) == NULL;
    proj_event_clear(&ev);
    if (rc == BT_ENOMEM)
      bt_fatal("projector: out of memory mapping an event");
    if (rc == 0) {
      it->has_change = true;
      return;
    }
    it->dl_class = unmapped ? "unmapped" : "mapping";
  }
  if (!(it->dl_reason = strdup(reason)))
    bt_fatal("projector: out of memory");
  it->dl_pending = m->offset >= applied_by_any(r, it->part);
  /* A rebuild has no effect beyond its own keys: the live version dead-lettered whatever it
   * has passed already, so the rebuild sends only what lies beyond the live version. */
  const proj_runner_t *live = r->building ? live_of(r) : NULL;
  if (live && m->offset < held_by_any(live, m->topic, m->partition))
    it->dl_pending = false;
}

/* ---- dead letters ---- */

typedef struct dl_ctx {
  proj_runner_t *r;
  size_t item;
} dl_ctx_t;

static void dead_letters_done(proj_runner_t *r);

static void on_dead_letter(const bt_kafka_delivery_t *d, void *opaque) {
  dl_ctx_t *ctx = opaque;
  proj_runner_t *r = ctx->r;
  if (d->err == 0) {
    r->items[ctx->item].dl_pending = false;
    bt_counter_inc(&r->p->stats.dead_letters);
    bt_log_warn("poison event sent to the dead-letter topic", "{s:s, s:s, s:i, s:I, s:s, s:s}",
                "projection", r->def->name, "topic", r->parts[r->items[ctx->item].part].topic,
                "partition", (int)r->parts[r->items[ctx->item].part].partition, "offset",
                (json_int_t)r->items[ctx->item].offset, "class", r->items[ctx->item].dl_class,
                "error", r->items[ctx->item].dl_reason);
  } else {
    r->dl_failed = true;
    snprintf(r->errstr, sizeof r->errstr, "dead-letter topic %s: %s", r->p->cfg.dlq_topic,
             d->errstr);
  }
  free(ctx);
  if (--r->dl_outstanding == 0)
    dead_letters_done(r);
}

static int produce_dead_letter(proj_runner_t *r, size_t i) {
  item_t *it = &r->items[i];
  const bt_kafka_message_t *m = it->m;
  bt_kafka_header_t hdrs[64 + 5];
  size_t nh = 0;
  char part[16], off[32];
  snprintf(part, sizeof part, "%d", (int)m->partition);
  snprintf(off, sizeof off, "%" PRId64, m->offset);
  hdrs[nh++] = (bt_kafka_header_t){"baton_dl_class", it->dl_class, strlen(it->dl_class)};
  hdrs[nh++] = (bt_kafka_header_t){"baton_dl_error", it->dl_reason, strlen(it->dl_reason)};
  hdrs[nh++] = (bt_kafka_header_t){"baton_dl_topic", m->topic, strlen(m->topic)};
  hdrs[nh++] = (bt_kafka_header_t){"baton_dl_partition", part, strlen(part)};
  hdrs[nh++] = (bt_kafka_header_t){"baton_dl_offset", off, strlen(off)};
  /* The original headers go along, so a CloudEvent in binary mode can be replayed as is. */
  for (size_t k = 0; nh < BT_ARRAY_LEN(hdrs); k++) {
    const char *name;
    const void *value;
    size_t len;
    if (bt_kafka_message_header_at(m, k, &name, &value, &len) != 0)
      break;
    hdrs[nh++] = (bt_kafka_header_t){name, value, len};
  }
  bt_kafka_record_t rec = {.topic = r->p->cfg.dlq_topic,
                           .partition = BT_KAFKA_PARTITION_ANY,
                           .key = m->key,
                           .key_len = m->key_len,
                           .value = m->value,
                           .value_len = m->value_len,
                           .headers = hdrs,
                           .nheaders = nh};
  dl_ctx_t *ctx = malloc(sizeof *ctx);
  if (!ctx)
    return BT_ENOMEM;
  *ctx = (dl_ctx_t){r, i};
  int rc = bt_kafka_producer_produce(r->p->dlq, &rec, on_dead_letter, ctx);
  if (rc) {
    free(ctx);
    snprintf(r->errstr, sizeof r->errstr, "dead-letter topic %s: %s", r->p->cfg.dlq_topic,
             bt_strerror(rc));
  }
  return rc;
}

static void retry_later(proj_runner_t *r, uint64_t delay_ms);
static void load_start_offsets(proj_runner_t *r);

static void dead_letters(proj_runner_t *r) {
  set_state(r, RUNNER_DEAD_LETTERS);
  r->dl_failed = false;
  r->dl_outstanding = 1; /* held until every produce call is made */
  for (size_t i = 0; i < r->nitems; i++) {
    if (!r->items[i].dl_pending)
      continue;
    if (produce_dead_letter(r, i) != 0) {
      r->dl_failed = true;
      break;
    }
    r->dl_outstanding++;
  }
  if (--r->dl_outstanding == 0)
    dead_letters_done(r);
}

static void dead_letters_done(proj_runner_t *r) {
  if (r->state != RUNNER_DEAD_LETTERS)
    return; /* stopped meanwhile */
  if (r->dl_failed) {
    r->failing = true;
    bt_log_warn("dead-letter write failed; holding the projection", "{s:s, s:s}", "projection",
                r->def->name, "error", r->errstr);
    retry_later(r, bt_backoff_next(&r->backoff));
    return;
  }
  apply_batch(r);
}

/* ---- sinks ---- */

static void slot_failed(proj_runner_t *r, sink_slot_t *slot, int err);
static void sink_finished(proj_runner_t *r);

static int cmp_move(const void *a, const void *b) {
  const proj_move_t *x = a, *y = b;
  int c = strcmp(x->topic, y->topic);
  return c ? c : (x->partition > y->partition) - (x->partition < y->partition);
}

/* Chooses what the sink lacks of the batch: per partition, the events at or above its offset
 * (moves[] says from where to where), and the changes among them, in Kafka order. */
static int slot_select(proj_runner_t *r, sink_slot_t *slot) {
  proj_sink_t *s = slot->sink;
  size_t np = r->nparts;
  int64_t *next = malloc((np ? np : 1) * sizeof *next);
  int64_t *from = malloc((np ? np : 1) * sizeof *from);
  slot->moves = calloc(np ? np : 1, sizeof *slot->moves);
  slot->changes = calloc(r->nitems ? r->nitems : 1, sizeof *slot->changes);
  slot->keys = json_array();
  json_t *seen = json_object();
  int rc = next && from && slot->moves && slot->changes && slot->keys && seen ? 0 : BT_ENOMEM;
  for (size_t i = 0; !rc && i < np; i++)
    from[i] = next[i] = proj_offsets_get(&s->offsets, r->parts[i].topic, r->parts[i].partition);
  for (size_t i = 0; !rc && i < r->nitems; i++) {
    item_t *it = &r->items[i];
    /* Below the sink's offset, or a duplicate of an earlier message of this batch (a seek
     * back after a rebalance can deliver a range twice): already in this sink. */
    if (it->offset < next[it->part])
      continue;
    next[it->part] = it->offset + 1;
    if (!it->has_change)
      continue;
    slot->changes[slot->nchanges++] = it->change;
    if (!json_object_get(seen, it->change.key) &&
        (json_object_set_new(seen, it->change.key, json_true()) ||
         json_array_append_new(slot->keys, json_string(it->change.key))))
      rc = BT_ENOMEM;
  }
  for (size_t i = 0; !rc && i < np; i++)
    if (next[i] > from[i])
      slot->moves[slot->nmoves++] =
          (proj_move_t){r->parts[i].topic, r->parts[i].partition, from[i], next[i]};
  if (!rc)
    qsort(slot->moves, slot->nmoves, sizeof *slot->moves, cmp_move);
  free(next);
  free(from);
  json_decref(seen);
  return rc;
}

static int64_t batch_event_time(proj_runner_t *r) {
  int64_t t = -1;
  for (size_t i = 0; i < r->nitems; i++)
    t = r->items[i].timestamp_ms > t ? r->items[i].timestamp_ms : t;
  return t;
}

static void on_written(proj_sink_t *s, int err, void *arg) {
  sink_slot_t *slot = arg;
  proj_runner_t *r = slot->r;
  if (err) {
    slot_failed(r, slot, err);
    return;
  }
  /* The write moved the sink's offsets exactly as planned (its guard saw `from`). */
  for (size_t i = 0; i < slot->nmoves; i++)
    if (proj_sink_set_offset(s, slot->moves[i].topic, slot->moves[i].partition,
                             slot->moves[i].to) != 0)
      s->loaded = false; /* out of memory: reload before the next write */
  bt_counter_inc(&r->p->stats.batches);
  /* Reads waiting on ?after= re-check at once instead of at their next poll. */
  if (strcmp(s->ops->name, "redis") == 0)
    proj_read_applied(r->p->read, r->def->name);
  slot->step = SINK_DONE;
  sink_finished(r);
}

static void write_slot(proj_runner_t *r, sink_slot_t *slot) {
  proj_sink_batch_t b = {.moves = slot->moves,
                         .nmoves = slot->nmoves,
                         .effects = &slot->effects,
                         .old = slot->state.docs,
                         .keys = slot->keys,
                         .event_time_ms = batch_event_time(r)};
  int rc = slot->sink->ops->write(slot->sink, &b, on_written, slot);
  if (rc)
    slot_failed(r, slot, rc);
}

static void on_docs(proj_sink_t *s, int err, json_t *docs, void *arg) {
  (void)s;
  sink_slot_t *slot = arg;
  proj_runner_t *r = slot->r;
  if (err) {
    slot_failed(r, slot, err);
    return;
  }
  /* Seed the state with the documents as the sink holds them; the effects are computed
   * against these, and the write's guard makes sure they still hold. */
  json_object_update(slot->state.docs, docs);
  int rc = proj_apply_batch(&slot->state, r->def, slot->changes, slot->nchanges, &slot->effects);
  if (rc) {
    slot_failed(r, slot, rc);
    return;
  }
  write_slot(r, slot);
}

static void on_offsets_loaded(proj_sink_t *s, int err, void *arg) {
  (void)s;
  sink_slot_t *slot = arg;
  if (err)
    slot_failed(slot->r, slot, err);
  else
    sink_run(slot->r, slot);
}

/* A sink whose offsets went below what it was known to hold lost data: a Redis restarted
 * without persistence, a restored backup. Its missing events are behind the consumer's
 * position and this consumer cannot seek back on its own, so the process ends (crash-only,
 * exit 75) and its successor seeks every partition to the lower sink's offset at start, from
 * where the sink that lost data catches up alone. */
static bool sink_lost_data(proj_runner_t *r, sink_slot_t *slot) {
  for (size_t i = 0; i < r->nparts; i++) {
    int64_t o = proj_offsets_get(&slot->sink->offsets, r->parts[i].topic, r->parts[i].partition);
    if (!r->parts[i].assigned || o >= r->parts[i].held)
      continue;
    char why[256];
    snprintf(why, sizeof why, "%s sink of projection %s went back to offset %lld of %s:%d "
             "(held %lld): restarting to replay from it", slot->sink->ops->name, r->def->name,
             (long long)o, r->parts[i].topic, (int)r->parts[i].partition,
             (long long)r->parts[i].held);
    bt_log_error("sink lost data", "{s:s}", "reason", why);
    bt_app_fail(&r->p->app, 75, why);
    return true;
  }
  return false;
}

/* One sink's part of the batch: reload its offsets if they may be stale, choose what it
 * lacks, read the old documents, compute the effects, write. */
static void sink_run(proj_runner_t *r, sink_slot_t *slot) {
  proj_sink_t *s = slot->sink;
  slot->step = SINK_BUSY;
  int rc;
  if (!s->loaded) {
    if ((rc = s->ops->load_offsets(s, on_offsets_loaded, slot)) != 0)
      slot_failed(r, slot, rc);
    return;
  }
  slot_reset(slot);
  if (sink_lost_data(r, slot))
    return;
  if ((rc = slot_select(r, slot)) != 0 || (rc = proj_state_init(&slot->state)) != 0) {
    slot_failed(r, slot, rc);
    return;
  }
  if (slot->nmoves == 0) {
    slot->step = SINK_DONE; /* the sink holds the whole batch already */
    sink_finished(r);
    return;
  }
  if (json_array_size(slot->keys) == 0) {
    write_slot(r, slot); /* only tombstones or dead letters: the offsets move alone */
    return;
  }
  if ((rc = s->ops->fetch(s, slot->keys, on_docs, slot)) != 0)
    slot_failed(r, slot, rc);
}

static void slot_failed(proj_runner_t *r, sink_slot_t *slot, int err) {
  slot->step = SINK_FAILED;
  slot->err = err;
  /* Whatever happened, the sink may hold more than we think (an answer lost in flight):
   * read its offsets again before the retry. */
  slot->sink->loaded = false;
  if (err == BT_ECONFLICT) {
    bt_counter_inc(&r->p->stats.conflicts);
    bt_log_info("sink write refused by its guard; reloading", "{s:s, s:s, s:s}", "projection",
                r->def->name, "sink", slot->sink->ops->name, "reason", slot->sink->errstr);
  } else {
    r->failing = true;
    bt_counter_inc(&r->p->stats.sink_errors);
    bt_log_warn("sink write failed; holding the projection", "{s:s, s:s, s:s}", "projection",
                r->def->name, "sink", slot->sink->ops->name, "error",
                slot->sink->errstr[0] ? slot->sink->errstr : bt_strerror(err));
  }
  sink_finished(r);
}

static void batch_done(proj_runner_t *r);

static void sink_finished(proj_runner_t *r) {
  bool conflict_only = true;
  for (size_t s = 0; s < r->nsinks; s++) {
    if (r->sinks[s].step == SINK_BUSY || r->sinks[s].step == SINK_PENDING)
      return;
    if (r->sinks[s].step == SINK_FAILED && r->sinks[s].err != BT_ECONFLICT)
      conflict_only = false;
  }
  if (r->state != RUNNER_APPLYING)
    return; /* stopped meanwhile */
  for (size_t s = 0; s < r->nsinks; s++)
    if (r->sinks[s].step == SINK_FAILED) {
      /* A conflict is another writer's progress, not a fault: retry at once. */
      retry_later(r, conflict_only ? 0 : bt_backoff_next(&r->backoff));
      return;
    }
  batch_done(r);
}

static void apply_batch(proj_runner_t *r) {
  set_state(r, RUNNER_APPLYING);
  for (size_t s = 0; s < r->nsinks; s++)
    if (r->sinks[s].step != SINK_DONE)
      r->sinks[s].step = SINK_PENDING;
  for (size_t s = 0; s < r->nsinks; s++)
    if (r->sinks[s].step == SINK_PENDING)
      sink_run(r, &r->sinks[s]);
}

/* Both sinks hold the batch: release it, store the Kafka offsets (informative), next. */
static void batch_done(proj_runner_t *r) {
  bt_backoff_reset(&r->backoff);
  r->failing = false;
  for (size_t i = 0; i < r->nitems; i++) {
    item_t *it = &r->items[i];
    bool last = true; /* the last message of its partition in the batch is stored */
    for (size_t j = i + 1; j < r->nitems && last; j++)
      last = r->items[j].part != it->part;
    /* BT_ENOENT: the partition was revoked meanwhile; its new owner starts from the sinks. */
    if (last && r->parts[it->part].assigned && bt_kafka_consumer_store(r->consumer, it->m) != 0)
      bt_log_debug("offset not stored: partition revoked", "{s:s}", "projection", r->def->name);
    if (it->timestamp_ms > r->newest_event_ms)
      r->newest_event_ms = it->timestamp_ms;
    if (it->offset + 1 > r->parts[it->part].held)
      r->parts[it->part].held = it->offset + 1;
    bt_kafka_consumer_release(r->consumer, it->m);
  }
  bt_counter_add(&r->p->stats.events, r->nitems);
  for (size_t i = 0; i < r->nparts; i++) {
    int64_t lag;
    if (r->parts[i].assigned && r->parts[i].lag &&
        bt_kafka_consumer_lag(r->consumer, r->parts[i].topic, r->parts[i].partition, &lag) == 0)
      bt_gauge_set(r->parts[i].lag, (double)lag);
  }
  batch_clear(r);
  set_state(r, r->stopping ? RUNNER_STOPPED : RUNNER_IDLE);
  pump(r);
}

/* ---- retries ---- */

static void on_timer(uv_timer_t *t) {
  proj_runner_t *r = t->data;
  if (r->state != RUNNER_BACKOFF)
    return;
  if (r->nitems == 0) {
    /* Only the start-up offsets can fail without a batch in hand. */
    set_state(r, RUNNER_LOADING);
    load_start_offsets(r);
    return;
  }
  bool dl = false;
  for (size_t i = 0; i < r->nitems; i++)
    dl = dl || r->items[i].dl_pending;
  if (dl)
    dead_letters(r);
  else
    apply_batch(r);
}

static void retry_later(proj_runner_t *r, uint64_t delay_ms) {
  if (r->stopping) {
    set_state(r, RUNNER_STOPPED); /* the successor retries from the sinks' offsets */
    return;
  }
  set_state(r, RUNNER_BACKOFF);
  uv_timer_start(&r->timer, on_timer, delay_ms, 0);
}

/* ---- consuming ---- */

static void on_assign(bt_kafka_consumer_t *c, bt_kafka_partition_t *parts, size_t n, void *arg) {
  (void)c;
  proj_runner_t *r = arg;
  for (size_t i = 0; i < n; i++) {
    size_t pi = part_index(r, parts[i].topic, parts[i].partition);
    r->parts[pi].assigned = true;
    int64_t start = applied_by_all(r, pi);
    r->parts[pi].held = start;
    /* The sinks decide, never the group's committed offset. Nothing held: the beginning. */
    parts[i].offset = start > 0 ? start : BT_KAFKA_OFFSET_BEGINNING;
    bt_log_info("partition assigned", "{s:s, s:s, s:i, s:I}", "projection", r->def->name,
                "topic", parts[i].topic, "partition", (int)parts[i].partition, "start",
                (json_int_t)start);
  }
}

static void on_revoke(bt_kafka_consumer_t *c, const bt_kafka_partition_t *parts, size_t n,
                      bool lost, void *arg) {
  (void)lost;
  proj_runner_t *r = arg;
  for (size_t i = 0; i < n; i++)
    r->parts[part_index(r, parts[i].topic, parts[i].partition)].assigned = false;
  /* Queued messages of revoked partitions are dropped: whoever gets the partition starts
   * from the sinks' offsets. A batch in hand finishes; its sink writes are guarded. */
  size_t w = r->qhead;
  for (size_t k = r->qhead; k < r->qn; k++) {
    const bt_kafka_message_t *m = r->queue[k];
    if (r->parts[part_index(r, m->topic, m->partition)].assigned)
      r->queue[w++] = m;
    else
      bt_kafka_consumer_release(c, m);
  }
  r->qn = w;
}

static void on_batch(bt_kafka_consumer_t *c, bt_kafka_message_t *const *msgs, size_t n, void *arg) {
  proj_runner_t *r = arg;
  if (r->qhead > 0 && r->qn + n > r->qcap) {
    memmove(r->queue, r->queue + r->qhead, (r->qn - r->qhead) * sizeof *r->queue);
    r->qn -= r->qhead;
    r->qhead = 0;
  }
  if (r->qn + n > r->qcap) {
    size_t cap = r->qcap ? r->qcap : 1024;
    while (cap < r->qn + n)
      cap *= 2;
    const bt_kafka_message_t **q = realloc(r->queue, cap * sizeof *q);
    if (!q)
      bt_fatal("projector: out of memory for the message queue");
    r->queue = q;
    r->qcap = cap;
  }
  for (size_t i = 0; i < n; i++) {
    bt_kafka_consumer_keep(c, msgs[i]);
    r->queue[r->qn++] = msgs[i];
  }
  pump(r);
}

/* Starts the next batch when idle and messages wait. */
static void pump(proj_runner_t *r) {
  if (r->state != RUNNER_IDLE || r->stopping || r->retired || r->qhead == r->qn)
    return;
  size_t n = r->qn - r->qhead;
  if (n > (size_t)r->p->cfg.batch_max)
    n = (size_t)r->p->cfg.batch_max;
  item_t *items = realloc(r->items, n * sizeof *items);
  if (!items)
    bt_fatal("projector: out of memory for a batch");
  r->items = items;
  for (size_t i = 0; i < n; i++)
    item_build(r, &r->items[i], r->queue[r->qhead + i]);
  r->nitems = n;
  r->qhead += n;
  if (r->qhead == r->qn)
    r->qhead = r->qn = 0;
  bool dl = false;
  for (size_t i = 0; i < n; i++)
    dl = dl || r->items[i].dl_pending;
  if (dl)
    dead_letters(r);
  else
    apply_batch(r);
}

/* ---- start: offsets first, then the subscription ---- */

static int subscribe(proj_runner_t *r) {
  char err[256], instance[300];
  const char *inst = r->p->cfg.instance_id;
  if (inst && *inst)
    snprintf(instance, sizeof instance, "%s-%s", inst, r->def->name);
  bt_kafka_consumer_config_t kc = {
      .name = r->group,
      .brokers = r->p->cfg.kafka_brokers,
      .properties = r->p->cfg.kafka_properties,
      .group_id = r->group,
      .topics = (const char *const *)r->def->topics,
      .ntopics = r->def->ntopics,
      .batch_max = (uint32_t)r->p->cfg.batch_max,
      .max_in_flight = (uint32_t)r->p->cfg.max_in_flight,
      .on_batch = on_batch,
      .on_assign = on_assign,
      .on_revoke = on_revoke,
      .group_instance_id = inst && *inst ? instance : NULL,
      .session_timeout_ms = (uint32_t)r->p->cfg.session_timeout_ms,
  };
  if (bt_kafka_consumer_new(&r->consumer, &r->p->app, &kc, NULL, r, err) != 0) {
    bt_log_error("cannot create the consumer", "{s:s, s:s}", "projection", r->def->name, "error",
                 err);
    return BT_EINVAL;
  }
  if (!r->p->consumer_metrics) {
    bt_kafka_consumer_register_metrics(r->consumer);
    r->p->consumer_metrics = true;
  }
  return 0;
}

static void on_start_offsets(proj_sink_t *s, int err, void *arg) {
  (void)s;
  sink_slot_t *slot = arg;
  proj_runner_t *r = slot->r;
  slot->step = err ? SINK_FAILED : SINK_DONE;
  slot->err = err;
  for (size_t i = 0; i < r->nsinks; i++)
    if (r->sinks[i].step == SINK_BUSY)
      return;
  if (r->state != RUNNER_LOADING)
    return;
  for (size_t i = 0; i < r->nsinks; i++)
    if (r->sinks[i].step == SINK_FAILED) {
      bt_log_warn("cannot read the sinks' offsets; retrying", "{s:s, s:s, s:s}", "projection",
                  r->def->name, "sink", r->sinks[i].sink->ops->name, "error",
                  r->sinks[i].sink->errstr);
      retry_later(r, bt_backoff_next(&r->backoff));
      return;
    }
  for (size_t i = 0; i < r->nsinks; i++)
    r->sinks[i].step = SINK_PENDING;
  bt_backoff_reset(&r->backoff);
  if (!r->consumer && subscribe(r) != 0) {
    bt_app_fail(&r->p->app, 1, "cannot create a projection's consumer");
    return;
  }
  bt_log_info("projection started", "{s:s, s:i, s:s}", "projection", r->def->name, "version",
              r->version, "group", r->group);
  set_state(r, RUNNER_IDLE);
  pump(r);
}

static void load_start_offsets(proj_runner_t *r) {
  for (size_t i = 0; i < r->nsinks; i++)
    r->sinks[i].step = SINK_BUSY;
  for (size_t i = 0; i < r->nsinks; i++) {
    proj_sink_t *s = r->sinks[i].sink;
    int rc = s->ops->load_offsets(s, on_start_offsets, &r->sinks[i]);
    if (rc) {
      snprintf(s->errstr, sizeof s->errstr, "read offsets: %s", bt_strerror(rc));
      on_start_offsets(s, rc, &r->sinks[i]);
    }
  }
}

/* ---- lifecycle ---- */

static void on_drain(bt_app_t *app, void *arg) {
  (void)app;
  proj_runner_t *r = arg;
  r->stopping = true;
  /* A batch being written is finished (held); a waiting retry is abandoned. */
  if (r->state == RUNNER_BACKOFF || r->state == RUNNER_IDLE || r->state == RUNNER_LOADING) {
    uv_timer_stop(&r->timer);
    set_state(r, RUNNER_STOPPED);
  } else {
    bt_app_hold_while(&r->p->app, &r->held, true);
  }
}

static void on_close(bt_app_t *app, void *arg) {
  (void)app;
  proj_runner_t *r = arg;
  if (r->state != RUNNER_STOPPED)
    set_state(r, RUNNER_STOPPED);
  uv_close((uv_handle_t *)&r->timer, NULL);
}

static double freshness(void *arg) {
  proj_runner_t *r = arg;
  if (r->newest_event_ms <= 0)
    return 0;
  struct timespec ts;
  clock_gettime(CLOCK_REALTIME, &ts);
  double now_ms = (double)ts.tv_sec * 1e3 + (double)ts.tv_nsec / 1e6;
  return (now_ms - (double)r->newest_event_ms) / 1e3;
}

bool proj_runner_ready(void *runner) {
  proj_runner_t *r = runner;
  if (r->retired || r->building)
    return true; /* readers are served by the live version */
  /* Loading (offsets not read yet) or holding a batch for a failure (a sink or the DLQ topic
   * unavailable, whether waiting to retry or retrying): not serving fresh reads. */
  return r->state != RUNNER_LOADING && r->state != RUNNER_BACKOFF && !r->failing;
}

int proj_runner_new(proj_runner_t **out, projector_t *p, const proj_def_t *d, int version,
                    bool building) {
  proj_runner_t *r = calloc(1, sizeof *r);
  if (!r)
    return BT_ENOMEM;
  r->p = p;
  r->def = d;
  r->version = version;
  r->building = building;
  r->state = RUNNER_LOADING;
  /* Each version has its own group, so a rebuild reads the topics from the start beside the
   * live version without taking its partitions away. */
  if (version == 1)
    snprintf(r->group, sizeof r->group, "baton-projector-%s", d->name);
  else
    snprintf(r->group, sizeof r->group, "baton-projector-%s-v%d", d->name, version);
  bt_fsm_register(&runner_fsm, "baton_projector_runners", "Projection runners by state.");
  bt_fsm_enter(&runner_fsm, RUNNER_LOADING);
  int rc = 0;
  if (projector_has_sink(d, PROJ_SINK_REDIS))
    rc = proj_sink_redis_new(&r->sinks[r->nsinks++].sink, p, d, version);
  if (!rc && projector_has_sink(d, PROJ_SINK_POSTGRES))
    rc = proj_sink_pg_new(&r->sinks[r->nsinks++].sink, p, d, version);
  if (rc) {
    *out = r;
    return rc;
  }
  for (size_t i = 0; i < r->nsinks; i++) {
    r->sinks[i].r = r;
    r->sinks[i].sink->building = building;
  }
  bt_backoff_init(&r->backoff, (uint64_t)p->cfg.retry_min_ms, (uint64_t)p->cfg.retry_max_ms, true);
  uv_timer_init(p->app.loop, &r->timer);
  r->timer.data = r;
  char name[200];
  snprintf(name, sizeof name, "baton_projector_event_age_seconds{projection=\"%s\",version=\"%d\"}",
           d->name, version);
  r->freshness_name = strdup(name);
  if (!r->freshness_name) {
    *out = r;
    return BT_ENOMEM;
  }
  bt_metrics_gauge_fn(r->freshness_name,
                      "Now minus the time of the newest event applied (event-time freshness).",
                      freshness, r);
  snprintf(r->dep_name, sizeof r->dep_name, "projection:%s:v%d", d->name, version);
  bt_app_add_dependency(&p->app, r->dep_name, proj_runner_ready, r);
  bt_app_on_shutdown(&p->app, on_drain, on_close, r);
  *out = r;
  load_start_offsets(r);
  return 0;
}

void proj_runner_free(proj_runner_t *r) {
  if (!r)
    return;
  batch_clear(r);
  for (size_t i = 0; i < r->nsinks; i++)
    if (r->sinks[i].sink)
      r->sinks[i].sink->ops->free(r->sinks[i].sink);
  for (size_t i = 0; i < r->nparts; i++)
    free(r->parts[i].topic);
  free(r->parts);
  free(r->queue);
  free(r->items);
  /* The metric's name stays registered until exit; the registry borrows it. */
  free(r);
}

/* ---- rebuilds ---- */

int proj_runner_version(const proj_runner_t *r) { return r->version; }

void proj_runner_retire(proj_runner_t *r) {
  r->retired = true;
  bt_log_info("projection version retired", "{s:s, s:i}", "projection", r->def->name, "version",
              r->version);
}

void proj_runner_promote(proj_runner_t *r) {
  r->building = false;
  for (size_t i = 0; i < r->nsinks; i++)
    r->sinks[i].sink->building = false;
}

bool proj_runner_caught_up(const proj_runner_t *r, const proj_runner_t *live) {
  if (r->state == RUNNER_LOADING || !r->consumer)
    return false;
  /* Every partition any live sink holds something of: r's sinks hold at least as much. */
  for (size_t s = 0; s < live->nsinks; s++) {
    const proj_offsets_t *lo = &live->sinks[s].sink->offsets;
    for (size_t i = 0; i < lo->n; i++)
      for (size_t k = 0; k < r->nsinks; k++)
        if (proj_offsets_get(&r->sinks[k].sink->offsets, lo->v[i].topic, lo->v[i].partition) <
            lo->v[i].next)
          return false;
  }
  return true;
}
