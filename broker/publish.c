/* POST /v1/topics/{topic}/events: validated CloudEvents into Kafka through the idempotent
 * producer (acks=all), answered only after every record's delivery report. Admission is all
 * or nothing per request: the request is admitted whole against our in-flight budget, or
 * refused (429) before any record is handed to the producer. Should the producer still refuse
 * a record (its queue is shared with the relay), the records after it are not sent, and the
 * answer is a 5xx that names each record, never a 4xx that would hide the records already
 * handed over. */
#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "arena.h"
#include "broker.h"
#include "cloudevent.h"
#include "log.h"
#include "metrics.h"
#include "publish.h"

struct broker_publish {
  broker_t *b;
  uint64_t inflight_msgs; /* records of admitted requests not yet reported */
  uint64_t inflight_bytes;
  struct {
    bt_counter_t requests, events, failed_records;
    bt_counter_t rejected_busy, rejected_invalid, rejected_forbidden;
    bt_gauge_t inflight_msgs, inflight_bytes;
  } stats;
};

/* One publish request in flight. Lives in its own arena with its events and headers. */
typedef struct publish_req {
  broker_publish_t *pub;
  bt_http_req_t *req;
  bt_arena_t arena;
  broker_event_t *events;
  size_t n, pending, bytes;
  size_t handed; /* records the producer accepted */
  struct {
    int err;
    int32_t partition;
    int64_t offset;
    const char *errstr; /* copied into the arena */
  } *results;
} publish_req_t;

/* ---- topic rules -------------------------------------------------------------------------- */

bool broker_topic_name_valid(const char *t) {
  size_t n = strlen(t);
  if (n == 0 || n > 249 || strcmp(t, ".") == 0 || strcmp(t, "..") == 0)
    return false;
  for (size_t i = 0; i < n; i++) {
    char c = t[i];
    if (!((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') || c == '.' ||
          c == '_' || c == '-'))
      return false;
  }
  return true;
}

bool broker_topic_allowed(const char *allow, const char *topic) {
  if (!allow || !*allow)
    return true;
  size_t tlen = strlen(topic);
  for (const char *p = allow; *p;) {
    while (*p == ' ' || *p == ',')
      p++;
    size_t len = strcspn(p, ",");
    size_t l = len;
    while (l > 0 && p[l - 1] == ' ')
      l--;
    if (l > 0 && p[l - 1] == '*') {
      if (tlen >= l - 1 && strncmp(topic, p, l - 1) == 0)
        return true;
    } else if (l == tlen && strncmp(topic, p, l) == 0) {
      return true;
    }
    p += len;
  }
  return false;
}

/* ---- CloudEvents Kafka binding ------------------------------------------------------------ */

size_t broker_event_headers(const broker_event_t *ev, bt_arena_t *arena, bt_kafka_header_t *out,
                            size_t max) {
  size_t n = 0;
#define HDR(nm, val)                                                                          \
  do {                                                                                        \
    if ((val) && n < max)                                                                     \
      out[n++] = (bt_kafka_header_t){(nm), (val), strlen(val)};                               \
  } while (0)
  HDR("ce_specversion", ev->specversion);
  HDR("ce_id", ev->id);
  HDR("ce_source", ev->source);
  HDR("ce_type", ev->type);
  HDR("ce_time", ev->time);
  HDR("ce_subject", ev->subject);
  HDR("ce_dataschema", ev->dataschema);
  HDR("content-type", ev->datacontenttype);
  for (unsigned i = 0; i < ev->next; i++) {
    /* W3C trace context travels under its own header name so that tracers that know nothing
     * of CloudEvents still find it. */
    if (strcmp(ev->ext[i].name, "traceparent") == 0 || strcmp(ev->ext[i].name, "tracestate") == 0) {
      HDR(ev->ext[i].name, ev->ext[i].value);
      continue;
    }
    size_t len = strlen(ev->ext[i].name);
    char *name = bt_arena_alloc(arena, len + 4);
    if (!name)
      break;
    memcpy(name, "ce_", 3);
    memcpy(name + 3, ev->ext[i].name, len + 1);
    HDR(name, ev->ext[i].value);
  }
#undef HDR
  return n;
}

size_t broker_event_record_bytes(const broker_event_t *ev, const char *key) {
  /* librdkafka compares key + value + headers plus the record format's overhead with
   * message.max.bytes. Each header costs its name, its value and a few varints; names are at
   * most 16 bytes but for extensions ("ce_" + the name). */
  enum { RECORD_OVERHEAD = 128, HEADER_OVERHEAD = 16 + 12 };
  size_t n = RECORD_OVERHEAD + ev->data_len + (key ? strlen(key) : 0);
  const char *attrs[] = {ev->specversion, ev->id,   ev->source,          ev->type,
                         ev->time,        ev->subject, ev->dataschema, ev->datacontenttype};
  for (size_t i = 0; i < BT_ARRAY_LEN(attrs); i++)
    if (attrs[i])
      n += HEADER_OVERHEAD + strlen(attrs[i]);
  for (unsigned i = 0; i < ev->next; i++)
    n += HEADER_OVERHEAD + strlen(ev->ext[i].name) + strlen(ev->ext[i].value);
  return n;
}

/* ---- answering ---------------------------------------------------------------------------- */

/* The success answer is the hot path: written straight into a buffer, one line per record,
 * instead of building a jansson tree per record. */
static int write_success(const publish_req_t *pr, bt_buf_t *out) {
  int rc = bt_buf_append(out, "{\"results\":[", 12);
  for (size_t i = 0; i < pr->n && rc == 0; i++) {
    rc = bt_buf_append(out, i ? ",{\"id\":" : "{\"id\":", i ? 7 : 6);
    if (rc == 0)
      rc = bt_buf_append_json_string(out, pr->events[i].id);
    if (rc == 0)
      rc = bt_buf_appendf(out, ",\"partition\":%d,\"offset\":%lld}", (int)pr->results[i].partition,
                          (long long)pr->results[i].offset);
  }
  return rc ? rc : bt_buf_append(out, "]}", 2);
}

/* The status of an answer with failed records: an unavailable Kafka or a record not sent
 * (503) over a full local queue (429) over a record Kafka refused (502). 429 is only for a
 * request of which no record was handed to the producer: a 4xx says "nothing happened". */
static int failure_status(const publish_req_t *pr) {
  int status = 200;
  for (size_t i = 0; i < pr->n; i++) {
    int err = pr->results[i].err;
    if (err == 0)
      continue;
    int st = err == BT_EAGAIN && pr->handed == 0              ? 429
             : (err == BT_ERANGE || err == BT_ENOENT) ? 502
                                                              : 503;
    if (status == 200 || st == 503 || (st == 429 && status == 502))
      status = st;
  }
  return status;
}

/* Some records failed: name each one, with the status of failure_status(). */
static void respond_failure(publish_req_t *pr, size_t failed) {
  json_t *results = json_array();
  int status = failure_status(pr);
  for (size_t i = 0; i < pr->n; i++) {
    int err = pr->results[i].err;
    if (err == 0) {
      json_array_append_new(results, json_pack("{s:s, s:i, s:I}", "id", pr->events[i].id,
                                               "partition", (int)pr->results[i].partition,
                                               "offset", (json_int_t)pr->results[i].offset));
      continue;
    }
    json_array_append_new(results, json_pack("{s:s, s:s, s:s}", "id", pr->events[i].id, "error",
                                             bt_strerror(err), "detail",
                                             pr->results[i].errstr ? pr->results[i].errstr : ""));
  }
  char detail[128];
  snprintf(detail, sizeof detail, "%zu of %zu records were not acknowledged by Kafka", failed, pr->n);
  if (status != 502)
    broker_retry_after(pr->pub->b, pr->req);
  bt_http_respond_json(pr->req, status,
                       json_pack("{s:s, s:s, s:o}", "error", "delivery_failed", "detail", detail,
                                 "results", results));
}

static void finish(publish_req_t *pr) {
  size_t failed = 0;
  for (size_t i = 0; i < pr->n; i++)
    failed += pr->results[i].err != 0;
  bt_counter_add(&pr->pub->stats.failed_records, failed);
  if (failed) {
    respond_failure(pr, failed);
  } else {
    bt_buf_t out;
    bt_buf_init(&out, 0);
    if (write_success(pr, &out) == 0)
      bt_http_respond(pr->req, 200, "application/json", out.data, out.len);
    else
      bt_http_respond_error(pr->req, 503, "overloaded", "out of memory for the answer");
    bt_buf_free(&out);
  }
  bt_arena_reset(&pr->arena);
  free(pr);
}

/* Each record's delivery opaque: which request, which record. */
typedef struct {
  publish_req_t *pr;
  size_t index;
  size_t bytes;
} record_ref_t;

static void record_done(publish_req_t *pr, size_t bytes) {
  broker_publish_t *pub = pr->pub;
  pub->inflight_msgs--;
  pub->inflight_bytes -= bytes;
  bt_gauge_set(&pub->stats.inflight_msgs, (double)pub->inflight_msgs);
  bt_gauge_set(&pub->stats.inflight_bytes, (double)pub->inflight_bytes);
  if (--pr->pending == 0)
    finish(pr);
}

static void on_delivery(const bt_kafka_delivery_t *d, void *opaque) {
  record_ref_t *ref = opaque;
  publish_req_t *pr = ref->pr;
  pr->results[ref->index].err = d->err;
  pr->results[ref->index].partition = d->partition;
  pr->results[ref->index].offset = d->offset;
  if (d->err)
    pr->results[ref->index].errstr = bt_arena_strdup(&pr->arena, d->errstr ? d->errstr : "");
  record_done(pr, ref->bytes);
}

/* ---- the handler -------------------------------------------------------------------------- */

static void handle_publish(bt_http_req_t *req, void *arg) {
  broker_publish_t *pub = arg;
  broker_t *b = pub->b;
  if (!bt_auth_check(b->auth, req))
    return;
  bt_counter_inc(&pub->stats.requests);
  const char *topic = bt_http_req_param(req, "topic");
  if (!broker_topic_name_valid(topic)) {
    bt_counter_inc(&pub->stats.rejected_invalid);
    bt_http_respond_error(req, 400, "invalid_topic",
                          "topic '%.64s' is not a valid Kafka topic name (1-249 of [a-zA-Z0-9._-])",
                          topic);
    return;
  }
  if (!broker_topic_allowed(b->cfg.topics, topic)) {
    bt_counter_inc(&pub->stats.rejected_forbidden);
    bt_http_respond_error(req, 403, "topic_not_allowed",
                          "topic '%.64s' is not in BATON_BROKER_TOPICS", topic);
    return;
  }
  publish_req_t *pr = calloc(1, sizeof *pr);
  if (!pr) {
    bt_http_respond_error(req, 503, "overloaded", "out of memory");
    return;
  }
  pr->pub = pub;
  pr->req = req;
  /* The arena holds copies of the events; bounding it by a few times the body bounds the
   * memory a request can take whatever its format. */
  bt_arena_init(&pr->arena, 4 * req->body_len + 65536);
  broker_parse_error_t perr;
  if (broker_events_parse(req, &pr->arena, (size_t)b->cfg.max_batch, &pr->events, &pr->n, &perr) != 0) {
    bt_counter_inc(&pub->stats.rejected_invalid);
    json_t *e = json_pack("{s:s, s:s}", "error", perr.code, "detail", perr.detail);
    if (perr.index >= 0) {
      json_object_set_new(e, "index", json_integer(perr.index));
      json_object_set_new(e, "attribute", json_string(perr.attribute));
    }
    bt_http_respond_json(req, perr.status, e);
    goto free_req;
  }
  /* Size every record, then admit the request as a whole or not at all. A record over
   * message.max.bytes would be refused by the producer half-way through the request. */
  size_t bytes = 0;
  for (size_t i = 0; i < pr->n; i++) {
    const char *key = broker_event_key(&pr->events[i], NULL);
    bytes += pr->events[i].data_len + (key ? strlen(key) : 0);
    size_t record = broker_event_record_bytes(&pr->events[i], key) + 128; /* traceparent */
    if (record > (uint64_t)b->cfg.kafka_message_max) {
      bt_counter_inc(&pub->stats.rejected_invalid);
      json_t *e = json_pack("{s:s, s:s, s:i, s:s}", "error", "event_too_large", "detail", "",
                            "index", (int)i, "attribute", "data");
      char detail[160];
      snprintf(detail, sizeof detail,
               "event %zu: its Kafka record would take about %zu bytes, over "
               "BATON_KAFKA_MESSAGE_MAX_BYTES (%lld)",
               i, record, (long long)b->cfg.kafka_message_max);
      json_object_set_new(e, "detail", json_string(detail));
      bt_http_respond_json(req, 413, e);
      goto free_req;
    }
  }
  if (pub->inflight_msgs + pr->n > (uint64_t)b->cfg.max_inflight_msgs ||
      pub->inflight_bytes + bytes > (uint64_t)b->cfg.max_inflight_bytes) {
    bt_counter_inc(&pub->stats.rejected_busy);
    broker_retry_after(b, req);
    bt_http_respond_error(req, 429, "too_many_in_flight",
                          "%llu records (%llu bytes) await Kafka's acknowledgement; retry later",
                          (unsigned long long)pub->inflight_msgs,
                          (unsigned long long)pub->inflight_bytes);
    goto free_req;
  }
  pr->results = bt_arena_alloc(&pr->arena, pr->n * sizeof *pr->results);
  record_ref_t *refs = bt_arena_alloc(&pr->arena, pr->n * sizeof *refs);
  bt_kafka_header_t *hdrs = bt_arena_alloc(&pr->arena, (8 + BROKER_MAX_EXTENSIONS) * sizeof *hdrs);
  if (!pr->results || !refs || !hdrs) {
    bt_http_respond_error(req, 413, "too_large", "the request needs more memory than allowed");
    goto free_req;
  }
  bt_counter_add(&pub->stats.events, pr->n);
  const char *http_trace = bt_http_req_header(req, "traceparent");
  pr->pending = pr->n + 1; /* +1 until the loop below has run, so finish() waits for it */
  for (size_t i = 0; i < pr->n; i++) {
    broker_event_t *ev = &pr->events[i];
    if (http_trace && !broker_event_ext(ev, "traceparent") && ev->next < BROKER_MAX_EXTENSIONS)
      ev->ext[ev->next++] = (broker_ext_t){"traceparent", http_trace};
    const char *key = broker_event_key(ev, NULL);
    size_t nh = broker_event_headers(ev, &pr->arena, hdrs, 8 + BROKER_MAX_EXTENSIONS);
    bt_kafka_record_t rec = {topic, BT_KAFKA_PARTITION_ANY, key, key ? strlen(key) : 0,
                             ev->data, ev->data_len, hdrs, nh};
    refs[i] = (record_ref_t){pr, i, ev->data_len + (key ? strlen(key) : 0)};
    pub->inflight_msgs++;
    pub->inflight_bytes += refs[i].bytes;
    int rc = bt_kafka_producer_produce(b->producer, &rec, on_delivery, &refs[i]);
    if (rc == 0) {
      pr->handed++;
      continue;
    }
    /* The producer refused this record (local queue full, fatal error). It and every record
     * after it are reported as not sent (sending the later ones would put them before it in
     * their partition); records already handed over still complete normally. */
    pub->inflight_msgs--;
    pub->inflight_bytes -= refs[i].bytes;
    for (size_t k = i; k < pr->n; k++) {
      pr->results[k].err = rc;
      pr->results[k].errstr = k > i                ? "not sent: an earlier record was refused"
                              : rc == BT_EAGAIN ? "the producer's local queue is full"
                                                : bt_strerror(rc);
      pr->pending--;
    }
    break;
  }
  bt_gauge_set(&pub->stats.inflight_msgs, (double)pub->inflight_msgs);
  bt_gauge_set(&pub->stats.inflight_bytes, (double)pub->inflight_bytes);
  if (--pr->pending == 0)
    finish(pr);
  return;
free_req:
  bt_arena_reset(&pr->arena);
  free(pr);
}

static void publish_close(bt_app_t *app, void *arg) { BT_UNUSED(app); free(arg); }

void broker_retry_after(broker_t *b, bt_http_req_t *req) {
  char v[24];
  snprintf(v, sizeof v, "%lld", (long long)b->cfg.retry_after_s);
  bt_http_req_add_header(req, "Retry-After", v);
}

int broker_publish_start(broker_t *b) {
  broker_publish_t *pub = calloc(1, sizeof *pub);
  if (!pub)
    return BT_ENOMEM;
  pub->b = b;
  b->publish = pub;
  bt_metrics_counter(&pub->stats.requests, "baton_broker_publish_requests_total",
                     "Publish requests received.");
  bt_metrics_counter(&pub->stats.events, "baton_broker_publish_events_total",
                     "Events admitted for publishing.");
  bt_metrics_counter(&pub->stats.failed_records, "baton_broker_publish_failed_records_total",
                     "Admitted records that Kafka did not acknowledge.");
  bt_metrics_counter(&pub->stats.rejected_busy, "baton_broker_publish_rejected_total{reason=\"busy\"}",
                     "Publish requests refused before any record was produced.");
  bt_metrics_counter(&pub->stats.rejected_invalid,
                     "baton_broker_publish_rejected_total{reason=\"invalid\"}", "");
  bt_metrics_counter(&pub->stats.rejected_forbidden,
                     "baton_broker_publish_rejected_total{reason=\"forbidden\"}", "");
  bt_metrics_gauge(&pub->stats.inflight_msgs, "baton_broker_publish_inflight_messages",
                   "Records awaiting Kafka's acknowledgement.");
  bt_metrics_gauge(&pub->stats.inflight_bytes, "baton_broker_publish_inflight_bytes",
                   "Bytes of records awaiting Kafka's acknowledgement.");
  bt_http_server_route_auth(b->http, "POST", "/v1/topics/{topic}/events", handle_publish, pub);
  bt_app_on_shutdown(&b->app, NULL, publish_close, pub);
  return 0;
}
