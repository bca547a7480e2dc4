/* Idempotent producer bridged into the loop. Delivery reports arrive on librdkafka's main
 * queue, which is served from the loop, so every caller callback runs on the loop thread.
 * Each accepted message carries a small heap record naming its callback; the report frees
 * it, which is what makes completion exactly-once. */
#include "kafka_producer.h"

#include <stdio.h>
#include <stdlib.h>

#include "kafka_client.h"
#include "log.h"

struct bt_kafka_producer {
  bt_kafka_client_t c; /* first: librdkafka's opaque points here */
  bool draining;
  bool holding; /* we hold the app: draining with messages in flight */
  bool closing;
  bt_kafka_producer_stats_t stats;
};

typedef struct delivery {
  bt_kafka_delivery_cb cb;
  void *opaque;
  size_t bytes;
} delivery_t;

/* Holds the drain open exactly while it runs and messages are in flight. */
static void update_hold(bt_kafka_producer_t *p) {
  bool want = p->draining && p->stats.in_flight_msgs.value > 0;
  if (want == p->holding)
    return;
  p->holding = want;
  if (want)
    bt_app_hold(p->c.app);
  else
    bt_app_release(p->c.app);
}

static void on_delivery(rd_kafka_t *rk, const rd_kafka_message_t *m, void *opaque) {
  bt_kafka_producer_t *p = opaque;
  delivery_t *d = m->_private;
  bt_kafka_delivery_t out = {
      .err = bt_kafka_err(m->err),
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
  bt_kafka_producer_t *p = arg;
  p->draining = true;
  update_hold(p);
}

static void on_queue_closed(bt_kafka_queue_t *q) {
  bt_kafka_producer_t *p = BT_CONTAINER_OF(q, bt_kafka_producer_t, c.queue);
  bt_kafka_client_destroy(&p->c);
  free(p);
}

static void on_close(bt_app_t *app, void *arg) {
  bt_kafka_producer_t *p = arg;
  p->closing = true;
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
  rd_kafka_conf_t *conf = bt_kafka_client_conf(&p->c, cfg->brokers, cfg->stats_interval_ms,
                                               errstr);
  if (!conf) {
    free(p);
    return BT_EINVAL;
  }
  char timeout[16], maxmsgs[16], maxkb[16], linger[16];
  snprintf(timeout, sizeof timeout, "%u",
           cfg->delivery_timeout_ms ? cfg->delivery_timeout_ms : 30000);
  snprintf(maxmsgs, sizeof maxmsgs, "%u",
           cfg->queue_max_messages ? cfg->queue_max_messages : 100000);
  snprintf(maxkb, sizeof maxkb, "%u", cfg->queue_max_kbytes ? cfg->queue_max_kbytes : 65536);
  snprintf(linger, sizeof linger, "%u", cfg->linger_ms);
  /* Idempotence keeps per-partition order and drops broker-side duplicates from retries;
   * with acks=all an ack means every in-sync replica has the record. */
  if (bt_kafka_conf_set(conf, "enable.idempotence", "true", errstr) != 0 ||
      bt_kafka_conf_set(conf, "acks", "all", errstr) != 0 ||
      bt_kafka_conf_set(conf, "message.timeout.ms", timeout, errstr) != 0 ||
      bt_kafka_conf_set(conf, "queue.buffering.max.messages", maxmsgs, errstr) != 0 ||
      bt_kafka_conf_set(conf, "queue.buffering.max.kbytes", maxkb, errstr) != 0 ||
      bt_kafka_conf_set(conf, "linger.ms", linger, errstr) != 0) {
    rd_kafka_conf_destroy(conf);
    free(p);
    return BT_EINVAL;
  }
  rd_kafka_conf_set_dr_msg_cb(conf, on_delivery);
  int rc = bt_kafka_client_create(&p->c, app, "producer", RD_KAFKA_PRODUCER, conf, errstr);
  if (rc == 0) {
    rc = bt_kafka_client_bridge(&p->c, rd_kafka_queue_get_main(p->c.rk), serve, p);
    if (rc != 0) {
      snprintf(errstr, 256, "kafka producer: %s", bt_strerror(rc));
      bt_kafka_client_destroy(&p->c);
    }
  }
  if (rc != 0) {
    free(p);
    return rc;
  }
  bt_app_add_dependency(app, "kafka_producer", ready, p);
  bt_app_on_shutdown(app, on_drain, on_close, p);
  *out = p;
  return 0;
}

int bt_kafka_producer_produce(bt_kafka_producer_t *p, const bt_kafka_record_t *rec,
                              bt_kafka_delivery_cb cb, void *opaque) {
  if (p->closing)
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
    rd_kafka_headers_destroy(hdrs); /* only taken over on success; NULL is a no-op */
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

const bt_kafka_producer_stats_t *bt_kafka_producer_stats(const bt_kafka_producer_t *p) {
  return &p->stats;
}

void bt_kafka_producer_register_metrics(bt_kafka_producer_t *p) {
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
