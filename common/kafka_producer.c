/* Idempotent producer bridged into the loop. Delivery reports arrive on librdkafka's main
 * queue, which is served from the loop, so every caller callback runs on the loop thread.
 * Each accepted message carries a small heap record naming its callback; the report frees
 * it, which is what makes completion exactly-once. */
#include "kafka_producer.h"

#include <stdio.h>
#include <stdlib.h>

#include "fsm.h"
#include "kafka_client.h"
#include "log.h"

typedef enum {
  PRODUCER_RUNNING,  /* accepting messages */
  PRODUCER_DRAINING, /* app draining: still accepting; holds the app while reports are due */
  PRODUCER_CLOSING,  /* purged and closing the bridge; refuses messages; freed once closed */
  PRODUCER_NSTATES
} producer_state_t;

static const char *const state_names[] = {"running", "draining", "closing"};
static const uint32_t legal_next[] = {
    [PRODUCER_RUNNING] = BT_FSM_BIT(PRODUCER_DRAINING) | BT_FSM_BIT(PRODUCER_CLOSING),
    [PRODUCER_DRAINING] = BT_FSM_BIT(PRODUCER_CLOSING),
    [PRODUCER_CLOSING] = 0,
};
static bt_fsm_def_t producer_fsm = {.kind = "kafka producer", .nstates = PRODUCER_NSTATES,
                                    .names = state_names, .legal = legal_next};

struct bt_kafka_producer {
  bt_kafka_client_t c; /* first: librdkafka's opaque points here */
  producer_state_t state;
  bool holding; /* we hold the app: draining with messages in flight */
  rd_kafka_conf_t *tpl; /* renew_on_fatal: the settings a renewed handle is made from */
  bt_kafka_producer_stats_t stats;
};

static void set_state(bt_kafka_producer_t *p, producer_state_t next) {
  bt_fsm_move(&producer_fsm, p->state, next, p->c.name);
  p->state = next;
}

typedef struct delivery {
  bt_kafka_delivery_cb cb;
  void *opaque;
  size_t bytes;
} delivery_t;

/* Holds the drain open exactly while it runs and messages are in flight. */
static void update_hold(bt_kafka_producer_t *p) {
  bt_app_hold_while(p->c.app, &p->holding,
                    p->state == PRODUCER_DRAINING && p->stats.in_flight_msgs.value > 0);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  BT_UNUSED(rk);
  bt_kafka_producer_t *p = opaque;
  delivery_t *d = m->_private;
  bt_kafka_delivery_t out = {
      .err = bt_kafka_err(m->err),
      .possibly_persisted =
          m->err != 0 && rd_kafka_message_status(m) == RD_KAFKA_MSG_STATUS_POSSIBLY_PERSISTED,
      .kafka_err = m->err,
      .errstr = m->err ? rd_kafka_err2str(m->err) : "",
      .partition = m->partition,
      .offset = m->offset,
  };
  bt_gauge_add(&p->stats.in_flight_msgs, -1);
  bt_gauge_add(&p->stats.in_flight_bytes, -(double)d->bytes);
  if (m->err) {
    bt_counter_inc(&p->stats.failed);
  } else {
    bt_counter_inc(&p->stats.delivered);
    bt_kafka_client_note_up(&p->c);
  }
  d->cb(&out, d->opaque);
  free(d);
  update_hold(p);
}

static bool serve(void *arg) {
  bt_kafka_producer_t *p = arg;
  return rd_kafka_poll(p->c.rk, 0) > 0;
}

static bool ready(void *arg) { return bt_kafka_producer_ready(arg); }

static void on_drain(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  bt_kafka_producer_t *p = arg;
  set_state(p, PRODUCER_DRAINING);
  update_hold(p);
}

static void on_queue_closed(bt_kafka_queue_t *q) {
  bt_kafka_producer_t *p = BT_CONTAINER_OF(q, bt_kafka_producer_t, c.queue);
  bt_kafka_client_destroy(&p->c);
  if (p->tpl)
    rd_kafka_conf_destroy(p->tpl);
  bt_fsm_leave(&producer_fsm, p->state);
  free(p);
}

static void on_close(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  bt_kafka_producer_t *p = arg;
  set_state(p, PRODUCER_CLOSING);
  update_hold(p); /* the drain is over: a hold left (deadline passed) is moot now */
  /* The drain waited for every report, so normally nothing is left. A message produced
   * since (from another close hook) is purged and its callback hears BT_ECANCELED here,
   * because rd_kafka_destroy() would drop it without a report. */
  rd_kafka_purge(p->c.rk, RD_KAFKA_PURGE_F_QUEUE | RD_KAFKA_PURGE_F_INFLIGHT);
  while (rd_kafka_poll(p->c.rk, 0) > 0) {
  }
  bt_kafka_client_close(&p->c, on_queue_closed);
}

int bt_kafka_producer_new(bt_kafka_producer_t **out, bt_app_t *app,
                          const bt_kafka_producer_config_t *cfg, char *errstr) {
  bt_kafka_producer_t *p = calloc(1, sizeof *p);
  if (!p)
    return BT_ENOMEM;
  rd_kafka_conf_t *conf = bt_kafka_client_conf(&p->c, cfg->brokers, cfg->properties,
                                               cfg->stats_interval_ms, errstr);
  if (!conf) {
    free(p);
    return BT_EINVAL;
  }
  char timeout[16], maxmsgs[16], maxkb[16], linger[16], msgmax[16];
  snprintf(timeout, sizeof timeout, "%u",
           cfg->delivery_timeout_ms ? cfg->delivery_timeout_ms : 30000);
  snprintf(maxmsgs, sizeof maxmsgs, "%u",
           cfg->queue_max_messages ? cfg->queue_max_messages : 100000);
  snprintf(maxkb, sizeof maxkb, "%u", cfg->queue_max_kbytes ? cfg->queue_max_kbytes : 65536);
  snprintf(linger, sizeof linger, "%u", cfg->linger_ms);
  snprintf(msgmax, sizeof msgmax, "%u", cfg->message_max_bytes ? cfg->message_max_bytes : 1000000);
  /* Idempotence keeps per-partition order and drops broker-side duplicates from retries;
   * with acks=all an ack means every in-sync replica has the record. */
  if (bt_kafka_conf_set(conf, "enable.idempotence", "true", errstr) != 0 ||
      bt_kafka_conf_set(conf, "acks", "all", errstr) != 0 ||
      bt_kafka_conf_set(conf, "message.timeout.ms", timeout, errstr) != 0 ||
      bt_kafka_conf_set(conf, "queue.buffering.max.messages", maxmsgs, errstr) != 0 ||
      bt_kafka_conf_set(conf, "queue.buffering.max.kbytes", maxkb, errstr) != 0 ||
      bt_kafka_conf_set(conf, "linger.ms", linger, errstr) != 0 ||
      bt_kafka_conf_set(conf, "message.max.bytes", msgmax, errstr) != 0 ||
      (cfg->gapless &&
       bt_kafka_conf_set(conf, "enable.gapless.guarantee", "true", errstr) != 0)) {
    rd_kafka_conf_destroy(conf);
    free(p);
    return BT_EINVAL;
  }
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  p->c.renewable = cfg->renew_on_fatal;
  if (cfg->renew_on_fatal && !(p->tpl = rd_kafka_conf_dup(conf))) {
    rd_kafka_conf_destroy(conf);
    free(p);
    return BT_ENOMEM;
  }
  int rc = bt_kafka_client_create(&p->c, app, "producer", cfg->name, RD_KAFKA_PRODUCER, conf,
                                  cfg->properties, errstr);
  if (rc == 0) {
    rc = bt_kafka_client_bridge(&p->c, rd_kafka_queue_get_main(p->c.rk), serve, p);
    if (rc != 0) {
      snprintf(errstr, 256, "kafka producer: %s", bt_strerror(rc));
      bt_kafka_client_destroy(&p->c);
    }
  }
  if (rc != 0) {
    if (p->tpl)
      rd_kafka_conf_destroy(p->tpl);
    free(p);
    return rc;
  }
  p->state = PRODUCER_RUNNING;
  bt_fsm_enter(&producer_fsm, p->state);
  bt_app_add_dependency(app, p->c.name, ready, p);
  bt_app_on_shutdown(app, on_drain, on_close, p);
  *out = p;
  return 0;
}

int bt_kafka_producer_produce(bt_kafka_producer_t *p, const bt_kafka_record_t *rec,
                              bt_kafka_delivery_cb cb, void *opaque) {
  if (p->state == PRODUCER_CLOSING)
    return BT_ECANCELED;
  if (p->c.fatal)
    return BT_EIO;
  delivery_t *d = malloc(sizeof *d);
  if (!d)
    return BT_ENOMEM;
  *d = (delivery_t){.cb = cb, .opaque = opaque, .bytes = rec->key_len + rec->value_len};

  rd_kafka_vu_t vu[7];
  size_t n = 0;
  vu[n].vtype = RD_KAFKA_VTYPE_TOPIC;
  vu[n++].u.cstr = rec->topic;
  vu[n].vtype = RD_KAFKA_VTYPE_PARTITION;
  vu[n++].u.i32 = rec->partition;
  /* Copy: callers' buffers are borrowed and may be gone long before the report. */
  vu[n].vtype = RD_KAFKA_VTYPE_MSGFLAGS;
  vu[n++].u.i = RD_KAFKA_MSG_F_COPY;
  vu[n].vtype = RD_KAFKA_VTYPE_KEY;
  vu[n].u.mem.ptr = (void *)rec->key;
  vu[n++].u.mem.size = rec->key ? rec->key_len : 0;
  vu[n].vtype = RD_KAFKA_VTYPE_VALUE;
  vu[n].u.mem.ptr = (void *)rec->value;
  vu[n++].u.mem.size = rec->value_len;
  vu[n].vtype = RD_KAFKA_VTYPE_OPAQUE;
  vu[n++].u.ptr = d;
  rd_kafka_headers_t *hdrs = NULL;
  if (rec->nheaders > 0) {
    hdrs = rd_kafka_headers_new(rec->nheaders);
    for (size_t i = 0; i < rec->nheaders; i++)
      rd_kafka_header_add(hdrs, rec->headers[i].name, -1, rec->headers[i].value,
                          (ssize_t)rec->headers[i].len);
    vu[n].vtype = RD_KAFKA_VTYPE_HEADERS;
    vu[n++].u.headers = hdrs;
  }

  rd_kafka_error_t *error = rd_kafka_produceva(p->c.rk, vu, n);
  if (error) {
    rd_kafka_resp_err_t err = rd_kafka_error_code(error);
    rd_kafka_error_destroy(error);
    if (hdrs) /* only taken over on success; librdkafka 2.0 crashes on NULL here */
      rd_kafka_headers_destroy(hdrs);
    free(d);
    if (err == RD_KAFKA_RESP_ERR__QUEUE_FULL)
      bt_counter_inc(&p->stats.queue_full);
    int rc = bt_kafka_err(err);
    /* Transport-class codes cannot come from an enqueue; anything unexpected is an EIO. */
    return rc == BT_EAGAIN || rc == BT_ENOENT || rc == BT_ERANGE || rc == BT_EINVAL ? rc : BT_EIO;
  }
  bt_gauge_add(&p->stats.in_flight_msgs, 1);
  bt_gauge_add(&p->stats.in_flight_bytes, (double)d->bytes);
  update_hold(p);
  return 0;
}

bool bt_kafka_producer_ready(bt_kafka_producer_t *p) { return bt_kafka_client_ready(&p->c); }

bool bt_kafka_producer_fatal(bt_kafka_producer_t *p) {
  /* The error event reaches the loop after librdkafka has set the state: ask it directly. */
  return p->c.fatal || rd_kafka_fatal_error(p->c.rk, NULL, 0) != RD_KAFKA_RESP_ERR_NO_ERROR;
}

int bt_kafka_producer_renew(bt_kafka_producer_t *p, char *errstr) {
  if (!p->tpl || p->state == PRODUCER_CLOSING) {
    snprintf(errstr, 256, "kafka producer %s cannot be renewed", p->c.name);
    return BT_EINVAL;
  }
  if (p->stats.in_flight_msgs.value > 0)
    return BT_EAGAIN;
  rd_kafka_conf_t *conf = rd_kafka_conf_dup(p->tpl);
  if (!conf)
    return BT_ENOMEM;
  uint64_t t0 = uv_hrtime();
  int rc = bt_kafka_client_renew(&p->c, RD_KAFKA_PRODUCER, conf, errstr);
  if (rc == 0)
    bt_log_warn("kafka producer renewed after a fatal error", "{s:s, s:f}", "name", p->c.name,
                "ms", (double)(uv_hrtime() - t0) / 1e6);
  return rc;
}

const bt_kafka_producer_stats_t *bt_kafka_producer_stats(const bt_kafka_producer_t *p) {
  return &p->stats;
}

void bt_kafka_producer_register_metrics(bt_kafka_producer_t *p) {
  bt_fsm_register(&producer_fsm, "baton_kafka_producers",
                  "Kafka producers by lifecycle state.");
  bt_metrics_gauge(&p->stats.in_flight_msgs, "baton_kafka_producer_in_flight_messages",
                   "Messages accepted by the producer whose delivery report is pending.");
  bt_metrics_gauge(&p->stats.in_flight_bytes, "baton_kafka_producer_in_flight_bytes",
                   "Key and value bytes of the in-flight messages.");
  bt_metrics_counter(&p->stats.delivered, "baton_kafka_producer_delivered_total",
                     "Messages acknowledged by Kafka (acks=all).");
  bt_metrics_counter(&p->stats.failed, "baton_kafka_producer_failed_total",
                     "Messages whose delivery report carried an error.");
  bt_metrics_counter(&p->stats.queue_full, "baton_kafka_producer_queue_full_total",
                     "Produce calls refused because the local queue was full.");
}
