/* Group consumer bridged into the loop. librdkafka's main and consumer-group queues are both
 * forwarded to one application queue, the only one the loop watches, so messages, rebalances,
 * errors, statistics and commit results all arrive there in order. The same queue receives
 * the non-blocking close's events, so leaving the group never blocks the loop. */
#include "kafka_consumer.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "kafka_client.h"
#include "log.h"

typedef enum {
  CONSUMER_RUNNING,  /* delivering messages */
  CONSUMER_DRAINING, /* app draining: no new deliveries, commits still accepted */
  CONSUMER_CLOSING,  /* leaving the group; the handle is destroyed once closed */
} consumer_state_t;

typedef struct commit_req {
  bt_kafka_consumer_t *c;
  bt_kafka_commit_cb cb;
  void *arg;
  struct commit_req *prev, *next;
} commit_req_t;

struct bt_kafka_consumer {
  bt_kafka_client_t c; /* first: librdkafka's opaque points here */
  consumer_state_t state;
  bt_kafka_message_cb cb;
  void *arg;
  bool paused;
  bool holding;
  commit_req_t *commits; /* awaiting their result; each completes exactly once */
  unsigned ncommits;
};

static const char *state_name(consumer_state_t s) {
  switch (s) {
  case CONSUMER_RUNNING: return "running";
  case CONSUMER_DRAINING: return "draining";
  case CONSUMER_CLOSING: return "closing";
  }
  return "?";
}

static void set_state(bt_kafka_consumer_t *c, consumer_state_t next) {
  bool legal = (c->state == CONSUMER_RUNNING && next == CONSUMER_DRAINING) ||
               (c->state == CONSUMER_RUNNING && next == CONSUMER_CLOSING) ||
               (c->state == CONSUMER_DRAINING && next == CONSUMER_CLOSING);
  if (!legal)
    bt_fatal("kafka consumer: illegal transition %s -> %s", state_name(c->state),
             state_name(next));
  c->state = next;
}

static void update_hold(bt_kafka_consumer_t *c) {
  bool want = c->state == CONSUMER_DRAINING && c->ncommits > 0;
  if (want == c->holding)
    return;
  c->holding = want;
  if (want)
    bt_app_hold(c->c.app);
  else
    bt_app_release(c->c.app);
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
  commit_req_t *r = opaque;
  bt_kafka_consumer_t *c = r->c;
  /* The request can succeed while a partition in it fails (e.g. after losing it). */
  for (int i = 0; !err && offsets && i < offsets->cnt; i++)
    err = offsets->elems[i].err;
  if (err)
    bt_log_warn("kafka commit failed", "{s:s}", "error", rd_kafka_err2name(err));
  commit_finish(r, bt_kafka_err(err));
  update_hold(c);
}

static void pause_list(bt_kafka_consumer_t *c, rd_kafka_topic_partition_list_t *parts,
                       bool pause) {
  rd_kafka_resp_err_t err = pause ? rd_kafka_pause_partitions(c->c.rk, parts)
                                  : rd_kafka_resume_partitions(c->c.rk, parts);
  if (err)
    bt_log_warn(pause ? "kafka pause failed" : "kafka resume failed", "{s:s}", "error",
                rd_kafka_err2name(err));
}

/* Takes the assignment librdkafka proposes; a paused consumer keeps new partitions paused
 * so that pause() covers partitions that arrive later too. */
static void on_rebalance(rd_kafka_t *rk, rd_kafka_resp_err_t err,
                         rd_kafka_topic_partition_list_t *parts, void *opaque) {
  bt_kafka_consumer_t *c = opaque;
  bool cooperative = strcmp(rd_kafka_rebalance_protocol(rk), "COOPERATIVE") == 0;
  bool assign = err == RD_KAFKA_RESP_ERR__ASSIGN_PARTITIONS;
  rd_kafka_error_t *error = NULL;
  rd_kafka_resp_err_t aerr = 0;
  if (cooperative)
    error = assign ? rd_kafka_incremental_assign(rk, parts)
                   : rd_kafka_incremental_unassign(rk, parts);
  else
    aerr = rd_kafka_assign(rk, assign ? parts : NULL);
  if (error) {
    aerr = rd_kafka_error_code(error);
    rd_kafka_error_destroy(error);
  }
  bt_log(aerr ? BT_LOG_ERROR : BT_LOG_INFO,
         assign ? "kafka partitions assigned" : "kafka partitions revoked", "{s:i, s:s}",
         "partitions", parts->cnt, "error", rd_kafka_err2name(aerr));
  if (assign && !aerr && (c->paused || c->state != CONSUMER_RUNNING))
    pause_list(c, parts, true);
}

static void deliver(bt_kafka_consumer_t *c, const rd_kafka_message_t *m) {
  rd_kafka_timestamp_type_t tstype;
  int64_t ts = rd_kafka_message_timestamp(m, &tstype);
  bt_kafka_message_t view = {
      .topic = rd_kafka_topic_name(m->rkt),
      .partition = m->partition,
      .offset = m->offset,
      .timestamp_ms = ts,
      .key = m->key,
      .key_len = m->key_len,
      .value = m->payload,
      .value_len = m->len,
      .raw = m,
  };
  c->cb(c, &view, c->arg);
}

static void on_queue_closed(bt_kafka_queue_t *q) {
  bt_kafka_consumer_t *c = BT_CONTAINER_OF(q, bt_kafka_consumer_t, c.queue);
  bt_kafka_client_destroy(&c->c);
  /* Commit results that never arrived were destroyed with the handle. */
  while (c->commits)
    commit_finish(c->commits, BT_ECANCELED);
  free(c);
}

static bool serve(void *arg) {
  bt_kafka_consumer_t *c = arg;
  /* consumer_poll also runs the rebalance and commit callbacks, the close's included. */
  rd_kafka_message_t *m = rd_kafka_consumer_poll(c->c.rk, 0);
  if (!m) {
    if (c->state == CONSUMER_CLOSING && rd_kafka_consumer_closed(c->c.rk)) {
      bt_log_info("kafka consumer closed", NULL);
      bt_kafka_client_close(&c->c, on_queue_closed);
    }
    return false;
  }
  if (m->err) {
    bt_log_warn("kafka consumer error", "{s:s, s:s}", "error", rd_kafka_err2name(m->err),
                "detail", rd_kafka_message_errstr(m));
  } else {
    bt_kafka_client_note_up(&c->c);
    if (c->state == CONSUMER_RUNNING)
      deliver(c, m);
  }
  rd_kafka_message_destroy(m);
  return true;
}

static bool ready(void *arg) { return bt_kafka_consumer_ready(arg); }

static void on_drain(bt_app_t *app, void *arg) {
  bt_kafka_consumer_t *c = arg;
  set_state(c, CONSUMER_DRAINING);
  bt_kafka_consumer_pause(c);
  update_hold(c);
}

static void on_close(bt_app_t *app, void *arg) {
  bt_kafka_consumer_t *c = arg;
  set_state(c, CONSUMER_CLOSING);
  /* The close runs on librdkafka's threads and reports on our queue; serve() finishes it. */
  rd_kafka_error_t *error = rd_kafka_consumer_close_queue(c->c.rk, c->c.rkq);
  if (error) {
    bt_log_error("kafka consumer close failed", "{s:s}", "error", rd_kafka_error_string(error));
    rd_kafka_error_destroy(error);
    bt_kafka_client_close(&c->c, on_queue_closed);
    return;
  }
  bt_kafka_queue_wake(&c->c.queue);
}

int bt_kafka_consumer_new(bt_kafka_consumer_t **out, bt_app_t *app,
                          const bt_kafka_consumer_config_t *cfg, bt_kafka_message_cb cb,
                          void *arg, char *errstr) {
  if (!cfg->group_id || !*cfg->group_id || cfg->ntopics == 0) {
    snprintf(errstr, 256, "kafka consumer: a group id and at least one topic are required");
    return BT_EINVAL;
  }
  bt_kafka_consumer_t *c = calloc(1, sizeof *c);
  if (!c)
    return BT_ENOMEM;
  c->cb = cb;
  c->arg = arg;
  rd_kafka_conf_t *conf = bt_kafka_client_conf(&c->c, cfg->brokers, cfg->stats_interval_ms,
                                               errstr);
  if (!conf) {
    free(c);
    return BT_EINVAL;
  }
  char session[16];
  snprintf(session, sizeof session, "%u",
           cfg->session_timeout_ms ? cfg->session_timeout_ms : 10000);
  /* No auto commit and no implicit offset store: an offset moves only through
   * bt_kafka_consumer_commit(), after the caller's own durable write. */
  const char *reset = cfg->auto_offset_reset ? cfg->auto_offset_reset : "earliest";
  if (bt_kafka_conf_set(conf, "group.id", cfg->group_id, errstr) != 0 ||
      bt_kafka_conf_set(conf, "enable.auto.commit", "false", errstr) != 0 ||
      bt_kafka_conf_set(conf, "enable.auto.offset.store", "false", errstr) != 0 ||
      bt_kafka_conf_set(conf, "auto.offset.reset", reset, errstr) != 0 ||
      bt_kafka_conf_set(conf, "session.timeout.ms", session, errstr) != 0) {
    rd_kafka_conf_destroy(conf);
    free(c);
    return BT_EINVAL;
  }
  rd_kafka_conf_set_rebalance_cb(conf, on_rebalance);
  int rc = bt_kafka_client_create(&c->c, app, "consumer", RD_KAFKA_CONSUMER, conf, errstr);
  if (rc != 0) {
    free(c);
    return rc;
  }
  /* Main queue -> group queue -> our queue: one queue to watch. */
  rd_kafka_poll_set_consumer(c->c.rk);
  rd_kafka_queue_t *appq = rd_kafka_queue_new(c->c.rk);
  rd_kafka_queue_t *groupq = rd_kafka_queue_get_consumer(c->c.rk);
  rd_kafka_queue_forward(groupq, appq);
  rd_kafka_queue_destroy(groupq);

  rd_kafka_topic_partition_list_t *topics = rd_kafka_topic_partition_list_new((int)cfg->ntopics);
  for (size_t i = 0; i < cfg->ntopics; i++)
    rd_kafka_topic_partition_list_add(topics, cfg->topics[i], RD_KAFKA_PARTITION_UA);
  rd_kafka_resp_err_t err = rd_kafka_subscribe(c->c.rk, topics);
  rd_kafka_topic_partition_list_destroy(topics);
  if (err) {
    snprintf(errstr, 256, "kafka consumer subscribe: %s", rd_kafka_err2str(err));
    rc = BT_EINVAL;
  } else {
    rc = bt_kafka_client_bridge(&c->c, appq, serve, c);
    if (rc != 0)
      snprintf(errstr, 256, "kafka consumer: %s", bt_strerror(rc));
  }
  if (rc != 0) {
    c->c.rkq = appq;
    bt_kafka_client_destroy(&c->c);
    free(c);
    return rc;
  }
  bt_app_add_dependency(app, "kafka_consumer", ready, c);
  bt_app_on_shutdown(app, on_drain, on_close, c);
  *out = c;
  return 0;
}

int bt_kafka_consumer_commit(bt_kafka_consumer_t *c, const char *topic, int32_t partition,
                             int64_t next_offset, bt_kafka_commit_cb cb, void *arg) {
  if (c->state == CONSUMER_CLOSING)
    return BT_ECANCELED;
  commit_req_t *r = calloc(1, sizeof *r);
  if (!r)
    return BT_ENOMEM;
  *r = (commit_req_t){.c = c, .cb = cb, .arg = arg, .next = c->commits};
  if (c->commits)
    c->commits->prev = r;
  c->commits = r;
  c->ncommits++;
  rd_kafka_topic_partition_list_t *offsets = rd_kafka_topic_partition_list_new(1);
  rd_kafka_topic_partition_list_add(offsets, topic, partition)->offset = next_offset;
  /* The result comes back on our queue, so on_commit runs on the loop. */
  rd_kafka_resp_err_t err = rd_kafka_commit_queue(c->c.rk, offsets, c->c.rkq, on_commit, r);
  rd_kafka_topic_partition_list_destroy(offsets);
  if (err) {
    /* Not enqueued, so no result will come: the caller hears it from the return value. */
    commit_unlink(r);
    free(r);
    return bt_kafka_err(err);
  }
  update_hold(c);
  return 0;
}

static void set_paused(bt_kafka_consumer_t *c, bool pause) {
  if (c->paused == pause)
    return;
  c->paused = pause;
  rd_kafka_topic_partition_list_t *parts = NULL;
  if (rd_kafka_assignment(c->c.rk, &parts) == 0) {
    pause_list(c, parts, pause);
    rd_kafka_topic_partition_list_destroy(parts);
  }
}

void bt_kafka_consumer_pause(bt_kafka_consumer_t *c) { set_paused(c, true); }

void bt_kafka_consumer_resume(bt_kafka_consumer_t *c) {
  if (c->state == CONSUMER_RUNNING)
    set_paused(c, false);
}

int bt_kafka_message_header(const bt_kafka_message_t *m, const char *name, const void **value,
                            size_t *len) {
  rd_kafka_headers_t *hdrs;
  if (rd_kafka_message_headers(m->raw, &hdrs) != 0)
    return BT_ENOENT;
  return rd_kafka_header_get_last(hdrs, name, value, len) == 0 ? 0 : BT_ENOENT;
}

bool bt_kafka_consumer_ready(bt_kafka_consumer_t *c) {
  return c->state != CONSUMER_CLOSING && bt_kafka_client_ready(&c->c);
}
