/* The reply consumer: replies from the reply topic(s), in the consumer group shared by every
 * replica (BATON_SAGA_CONSUMER_GROUP), parsed by saga_wire and applied through saga_apply,
 * the same path as HTTP replies (dedupe key, state checks, one transaction per transition).
 *
 * A fetched batch is applied with group commit (saga_apply_group): one read of every saga
 * concerned and one transaction for all their transitions; replies to a saga the group
 * already changes, and a group that meets a concurrent transition, fall back to one
 * transaction each. Offsets are stored only once every reply of the
 * batch is in Postgres, applied or recorded as ignored, so a crash redelivers and the dedupe
 * key makes the redelivery an ignored duplicate. A reply that fails for a Postgres error is
 * retried with backoff, holding the batch's offsets back. Malformed records, and replies to a
 * saga that does not exist, are logged, counted and skipped: no retry could ever apply them. */
#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backoff.h"
#include "log.h"
#include "saga.h"
#include "saga_apply.h"
#include "saga_wire.h"

#define MAX_TOPICS 32

struct saga_replies {
  saga_t *s;
  bt_kafka_consumer_t *consumer;
  char *topics[MAX_TOPICS];
  size_t ntopics;
};

typedef struct reply_batch reply_batch_t;

typedef struct reply_item {
  reply_batch_t *b;
  const bt_kafka_message_t *m;
  saga_reply_t r;
  bool parsed;
  bool failed; /* a transient error: apply again */
  unsigned tries;
} reply_item_t;

struct reply_batch {
  saga_replies_t *rp;
  bt_timer_t retry;
  bt_backoff_t backoff;
  size_t n, pending;
  reply_item_t items[];
};

static void apply_item(reply_item_t *it);

static void batch_done(reply_batch_t *b) {
  saga_replies_t *rp = b->rp;
  for (size_t i = 0; i < b->n; i++) {
    /* Fetch order: the last store of a partition is its highest offset. BT_ENOENT means the
     * partition went to another member, which will see these replies again: harmless. */
    int rc = bt_kafka_consumer_store(rp->consumer, b->items[i].m);
    BT_UNUSED(rc);
    bt_kafka_consumer_release(rp->consumer, b->items[i].m);
    if (b->items[i].parsed)
      saga_wire_reply_free(&b->items[i].r);
  }
  free(b);
}

static void retry_due(bt_timers_t *w, bt_timer_t *t) {
  BT_UNUSED(w);
  reply_batch_t *b = BT_CONTAINER_OF(t, reply_batch_t, retry);
  for (size_t i = 0; i < b->n; i++)
    if (b->items[i].failed)
      b->pending++;
  for (size_t i = 0; i < b->n; i++)
    if (b->items[i].failed)
      apply_item(&b->items[i]);
}

static void item_settled(reply_item_t *it) {
  reply_batch_t *b = it->b;
  if (--b->pending > 0)
    return;
  bool again = false;
  for (size_t i = 0; i < b->n; i++)
    again |= b->items[i].failed;
  if (!again) {
    batch_done(b);
    return;
  }
  bt_counter_inc(&b->rp->s->stats.reply_retries);
  bt_timer_start(&b->rp->s->wheel, &b->retry, bt_backoff_next(&b->backoff));
}

static void applied(const saga_apply_result_t *r, void *arg) {
  reply_item_t *it = arg;
  saga_t *s = it->b->rp->s;
  char trace_id[33] = "";
  if (strlen(it->r.traceparent) == 55)
    snprintf(trace_id, sizeof trace_id, "%.32s", it->r.traceparent + 3);
  it->failed = false;
  if (r->err == BT_ENOENT) {
    bt_counter_inc(&s->stats.replies_malformed);
    bt_log_warn("reply to an unknown saga skipped", "{s:s, s:s, s:s, s:i, s:I}", "saga_id",
                it->r.saga_id, "trace_id", trace_id, "topic", it->m->topic, "partition",
                (int)it->m->partition, "offset", (json_int_t)it->m->offset);
  } else if (r->err != 0 && ++it->tries >= (unsigned)s->cfg.reply_max_tries) {
    /* A reply Postgres keeps refusing must not hold its partition forever. Dropping it is
     * safe: the step's attempt times out and the command is sent again, and the
     * participant answers again. */
    bt_counter_inc(&s->stats.replies_malformed);
    bt_log_error("reply dropped after repeated failures", "{s:s, s:s, s:s, s:i, s:s}", "saga_id",
                 it->r.saga_id, "trace_id", trace_id, "topic", it->m->topic, "tries",
                 (int)it->tries, "error", r->errmsg);
  } else if (r->err != 0) {
    it->failed = true;
    bt_log_warn("reply not applied; retrying", "{s:s, s:s, s:s}", "saga_id", it->r.saga_id,
                "trace_id", trace_id, "error", r->errmsg);
  } else {
    bt_counter_inc(&s->stats.replies);
    bt_log_debug("reply", "{s:s, s:s, s:s, s:i, s:s, s:s, s:s}", "saga_id", it->r.saga_id,
                 "trace_id", trace_id, "step", it->r.step_name, "attempt", (int)it->r.attempt,
                 "outcome", saga_outcome_name(it->r.outcome), "verdict",
                 r->verdict == SAGA_APPLIED ? "applied" : "ignored", "reason", r->reason);
  }
  item_settled(it);
}

/* The apply request of it's reply; trace_id (33 bytes) holds its trace id. */
static saga_apply_req_t item_req(reply_item_t *it, char *trace_id) {
  saga_reply_t *r = &it->r;
  trace_id[0] = '\0';
  if (strlen(r->traceparent) == 55)
    snprintf(trace_id, 33, "%.32s", r->traceparent + 3);
  saga_event_t ev = {SAGA_EV_REPLY, r->outcome, r->step_index < 0 ? 0 : (uint32_t)r->step_index,
                     r->attempt, r->kind};
  return (saga_apply_req_t){r->saga_id, ev, r->step_index < 0 ? r->step_name : NULL, r->data,
                            trace_id[0] ? trace_id : NULL, applied, it};
}

/* Applies items[0..n) together (group commit: one read, one transaction); any that cannot
 * be submitted settle at once as failed, to be retried. */
static void apply_items(reply_item_t **items, size_t n) {
  if (n == 0)
    return;
  saga_t *s = items[0]->b->rp->s;
  saga_apply_req_t *reqs = malloc(n * sizeof *reqs);
  char (*traces)[33] = malloc(n * sizeof *traces);
  int rc = reqs && traces ? 0 : BT_ENOMEM;
  for (size_t i = 0; rc == 0 && i < n; i++)
    reqs[i] = item_req(items[i], traces[i]);
  if (rc == 0)
    rc = saga_apply_group(s->pg, reqs, n);
  free(reqs);
  free(traces);
  for (size_t i = 0; rc != 0 && i < n; i++) {
    saga_apply_result_t res = {.err = rc, .errmsg = bt_strerror(rc)};
    applied(&res, items[i]);
  }
}

static void apply_item(reply_item_t *it) { apply_items(&it, 1); }

/* Every header of m (borrowed like m), up to max. */
static size_t message_headers(const bt_kafka_message_t *m, bt_kafka_header_t *out, size_t max) {
  rd_kafka_headers_t *hs = NULL;
  if (rd_kafka_message_headers((const rd_kafka_message_t *)m->raw, &hs) != RD_KAFKA_RESP_ERR_NO_ERROR)
    return 0;
  size_t n = 0;
  const char *name;
  const void *v;
  size_t len;
  for (size_t i = 0; n < max && rd_kafka_header_get_all(hs, i, &name, &v, &len) ==
                                    RD_KAFKA_RESP_ERR_NO_ERROR;
       i++)
    out[n++] = (bt_kafka_header_t){name, v, len};
  return n;
}

static void on_batch(bt_kafka_consumer_t *c, bt_kafka_message_t *const *msgs, size_t n,
                     void *arg) {
  saga_replies_t *rp = arg;
  reply_batch_t *b = calloc(1, sizeof *b + n * sizeof b->items[0]);
  if (!b)
    bt_fatal("out of memory for a batch of %zu replies", n);
  b->rp = rp;
  b->n = n;
  b->pending = n + 1; /* one for this function, so nothing settles the batch before the end */
  bt_timer_init(&b->retry, retry_due);
  bt_backoff_init(&b->backoff, 100, 5000, true);
  reply_item_t **ready = malloc(n * sizeof *ready);
  if (!ready)
    bt_fatal("out of memory for a batch of %zu replies", n);
  size_t nready = 0;
  for (size_t i = 0; i < n; i++) {
    reply_item_t *it = &b->items[i];
    const bt_kafka_message_t *m = msgs[i];
    it->b = b;
    it->m = m;
    bt_kafka_consumer_keep(c, m);
    bt_kafka_header_t hdrs[SAGA_WIRE_MAX_HEADERS * 2];
    size_t nh = message_headers(m, hdrs, BT_ARRAY_LEN(hdrs));
    char err[256];
    if (saga_wire_parse_reply(hdrs, nh, m->value, m->value ? m->value_len : 0, &it->r, err,
                              sizeof err) != 0) {
      bt_counter_inc(&rp->s->stats.replies_malformed);
      bt_log_warn("malformed reply skipped", "{s:s, s:s, s:i, s:I}", "error", err, "topic",
                  m->topic, "partition", (int)m->partition, "offset", (json_int_t)m->offset);
      char saga_id[37];
      if (saga_wire_reply_saga_id(hdrs, nh, m->value, m->value ? m->value_len : 0, saga_id) &&
          saga_uuid_valid(saga_id))
        (void)saga_apply_note_malformed(rp->s->pg, saga_id, "kafka", err);
      b->pending--;
      continue;
    }
    it->parsed = true;
    if (!saga_uuid_valid(it->r.saga_id)) {
      /* Postgres would refuse it on every retry: no saga can have this id. */
      bt_counter_inc(&rp->s->stats.replies_malformed);
      bt_log_warn("reply with an invalid saga id skipped", "{s:s, s:s, s:I}", "saga_id",
                  it->r.saga_id, "topic", m->topic, "offset", (json_int_t)m->offset);
      b->pending--;
      continue;
    }
    ready[nready++] = it;
  }
  apply_items(ready, nready);
  free(ready);
  item_settled(&(reply_item_t){.b = b});
}

int saga_replies_start(saga_t *s) {
  saga_replies_t *rp = calloc(1, sizeof *rp);
  if (!rp)
    return BT_ENOMEM;
  rp->s = s;
  /* BATON_SAGA_REPLY_TOPIC, then every plan's reply_topic not already listed. */
  char *list = strdup(s->cfg.reply_topics ? s->cfg.reply_topics : "");
  for (char *save = NULL, *t = strtok_r(list, ", ", &save); t && rp->ntopics < MAX_TOPICS;
       t = strtok_r(NULL, ", ", &save))
    rp->topics[rp->ntopics++] = strdup(t);
  free(list);
  for (size_t i = 0; i < s->defs.n && rp->ntopics < MAX_TOPICS; i++) {
    const char *t = s->defs.plans[i]->reply_topic;
    bool seen = false;
    for (size_t k = 0; k < rp->ntopics && !seen; k++)
      seen = strcmp(rp->topics[k], t) == 0;
    if (!seen)
      rp->topics[rp->ntopics++] = strdup(t);
  }
  for (size_t k = 0; k < rp->ntopics; k++)
    if (!rp->topics[k] || !saga_topic_name_valid(rp->topics[k])) {
      bt_log_error("invalid reply topic", "{s:s}", "topic", rp->topics[k] ? rp->topics[k] : "");
      return BT_EINVAL;
    }
  if (rp->ntopics == 0) {
    bt_log_error("no reply topic: set BATON_SAGA_REPLY_TOPIC", NULL);
    return BT_EINVAL;
  }
  bt_kafka_consumer_config_t cc = {
      .name = "kafka_replies",
      .brokers = s->cfg.kafka_brokers,
      .properties = s->cfg.kafka_properties,
      .group_id = s->cfg.group_id,
      .topics = (const char *const *)rp->topics,
      .ntopics = rp->ntopics,
      .assignor = "cooperative-sticky",
      .batch_max = (uint32_t)s->cfg.reply_batch,
      .max_in_flight = (uint32_t)s->cfg.reply_max_inflight,
      .on_batch = on_batch,
  };
  char err[256];
  if (bt_kafka_consumer_new(&rp->consumer, &s->app, &cc, NULL, rp, err) != 0) {
    bt_log_error("cannot create the reply consumer", "{s:s}", "error", err);
    return BT_EINVAL;
  }
  bt_kafka_consumer_register_metrics(rp->consumer);
  s->replies = rp;
  bt_log_info("reply consumer started", "{s:s, s:s, s:i}", "group", s->cfg.group_id, "topic",
              rp->topics[0], "topics", (int)rp->ntopics);
  return 0;
}
