/* Control endpoint handlers. Each validates its whole input before touching the cluster, so
 * a 400 never leaves a partial change behind. */
#include "control.h"

#include <jansson.h>
#include <stdlib.h>
#include <string.h>

#define MAX_ERRORS 10000
#define MAX_PARTITIONS 1000
#define MAX_RTT_MS 600000

static json_t *body_object(bt_http_req_t *req) {
  json_error_t e;
  json_t *body = json_loadb(req->body ? req->body : "", req->body_len, 0, &e);
  if (!json_is_object(body)) {
    bt_http_respond_error(req, 400, "invalid_json", "body must be a JSON object%s%s",
                          body ? "" : ": ", body ? "" : e.text);
    json_decref(body);
    return NULL;
  }
  return body;
}

static bool int_field(bt_http_req_t *req, json_t *obj, const char *field, json_int_t min,
                      json_int_t max, json_int_t *out) {
  json_t *v = json_object_get(obj, field);
  if (!json_is_integer(v) || json_integer_value(v) < min || json_integer_value(v) > max) {
    bt_http_respond_error(req, 400, "invalid_field", "\"%s\" must be an integer in %lld..%lld",
                          field, (long long)min, (long long)max);
    return false;
  }
  *out = json_integer_value(v);
  return true;
}

/* Parses a path parameter holding an integer in min..max. */
static bool int_param(bt_http_req_t *req, const char *name, long min, long max, long *out) {
  const char *s = bt_http_req_param(req, name);
  char *end;
  long v = s ? strtol(s, &end, 10) : 0;
  if (!s || !*s || *end || v < min || v > max) {
    bt_http_respond_error(req, 400, "invalid_field",
                          "path segment {%s} must be an integer in %ld..%ld", name, min, max);
    return false;
  }
  *out = v;
  return true;
}

/* {id} is a broker id or "all". */
static bool broker_param(bt_http_req_t *req, int32_t *id) {
  const char *s = bt_http_req_param(req, "id");
  if (s && strcmp(s, "all") == 0) {
    *id = DK_ALL_BROKERS;
    return true;
  }
  long v;
  if (!int_param(req, "id", 1, DK_MAX_BROKERS, &v))
    return false;
  *id = (int32_t)v;
  return true;
}

static void respond_result(bt_http_req_t *req, dk_cluster_t *c, int rc, json_t *ok) {
  if (rc == 0) {
    bt_http_respond_json(req, 200, ok);
    return;
  }
  json_decref(ok);
  if (rc == BT_ENOENT)
    bt_http_respond_error(req, 404, "unknown_broker", "broker ids are 1..%d (or \"all\")",
                          c->nbrokers);
  else if (rc == BT_ECONFLICT)
    bt_http_respond_error(req, 409, "topic_exists", "the topic already exists");
  else
    bt_http_respond_error(req, 500, "mock_error", "the mock cluster refused: %s", bt_strerror(rc));
}

static void handle_status(bt_http_req_t *req, void *arg) {
  dk_control_t *ctl = arg;
  json_t *brokers = json_array();
  for (int id = 1; id <= ctl->cluster->nbrokers; id++)
    json_array_append_new(brokers, json_pack("{s:i, s:b, s:s}", "id", id, "up",
                                             ctl->cluster->up[id], "address",
                                             ctl->cluster->addr[id]));
  bt_http_respond_json(req, 200, json_pack("{s:s, s:o}", "bootstrap", ctl->bootstrap, "brokers",
                                           brokers));
}

static void set_broker(bt_http_req_t *req, dk_control_t *ctl, bool up) {
  int32_t id;
  if (!broker_param(req, &id))
    return;
  int rc = dk_cluster_broker_set_up(ctl->cluster, id, up);
  respond_result(req, ctl->cluster, rc, json_pack("{s:i, s:b}", "id", id, "up", up));
}

static void handle_broker_down(bt_http_req_t *req, void *arg) { set_broker(req, arg, false); }
static void handle_broker_up(bt_http_req_t *req, void *arg) { set_broker(req, arg, true); }

static void handle_broker_rtt(bt_http_req_t *req, void *arg) {
  dk_control_t *ctl = arg;
  int32_t id;
  json_int_t ms;
  json_t *body;
  if (!broker_param(req, &id) || !(body = body_object(req)))
    return;
  bool ok = int_field(req, body, "ms", 0, MAX_RTT_MS, &ms);
  json_decref(body);
  if (!ok)
    return;
  int rc = dk_cluster_broker_set_rtt(ctl->cluster, id, (int)ms);
  respond_result(req, ctl->cluster, rc, json_pack("{s:i, s:I}", "id", id, "rtt_ms", ms));
}

static void handle_push_errors(bt_http_req_t *req, void *arg) {
  dk_control_t *ctl = arg;
  json_int_t api_key;
  json_t *body = body_object(req);
  if (!body)
    return;
  if (!int_field(req, body, "api_key", 0, INT16_MAX, &api_key)) {
    json_decref(body);
    return;
  }
  json_t *list = json_object_get(body, "errors");
  size_t n = json_array_size(list);
  rd_kafka_resp_err_t errs[MAX_ERRORS];
  bool ok = n >= 1 && n <= MAX_ERRORS;
  for (size_t i = 0; ok && i < n; i++) {
    json_t *e = json_array_get(list, i);
    ok = json_is_integer(e) && json_integer_value(e) >= -200 && json_integer_value(e) <= 1000;
    errs[i] = (rd_kafka_resp_err_t)(ok ? json_integer_value(e) : 0);
  }
  json_decref(body);
  if (!ok) {
    bt_http_respond_error(req, 400, "invalid_field",
                          "\"errors\" must be an array of 1..%d Kafka error codes (integers)",
                          MAX_ERRORS);
    return;
  }
  dk_cluster_push_errors(ctl->cluster, (int16_t)api_key, n, errs);
  bt_http_respond_json(req, 200, json_pack("{s:I, s:i}", "api_key", api_key, "pushed", (int)n));
}

static void handle_clear_errors(bt_http_req_t *req, void *arg) {
  dk_control_t *ctl = arg;
  long api_key;
  if (!int_param(req, "api_key", 0, INT16_MAX, &api_key))
    return;
  dk_cluster_clear_errors(ctl->cluster, (int16_t)api_key);
  bt_http_respond_json(req, 200, json_pack("{s:i, s:b}", "api_key", (int)api_key, "cleared", 1));
}

/* Kafka's own rule for topic names. */
static bool valid_topic(const char *s) {
  size_t n = s ? strlen(s) : 0;
  if (n == 0 || n > 249 || strcmp(s, ".") == 0 || strcmp(s, "..") == 0)
    return false;
  return strspn(s, "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-") == n;
}

static void handle_create_topic(bt_http_req_t *req, void *arg) {
  dk_control_t *ctl = arg;
  json_int_t partitions;
  json_t *body = body_object(req);
  if (!body)
    return;
  const char *name = json_string_value(json_object_get(body, "name"));
  if (!valid_topic(name)) {
    json_decref(body);
    bt_http_respond_error(req, 400, "invalid_field",
                          "\"name\" must be a topic name of 1..249 characters [a-zA-Z0-9._-]");
    return;
  }
  if (!int_field(req, body, "partitions", 1, MAX_PARTITIONS, &partitions)) {
    json_decref(body);
    return;
  }
  int rc = dk_cluster_topic_create(ctl->cluster, name, (int)partitions);
  respond_result(req, ctl->cluster, rc,
                 json_pack("{s:s, s:I}", "name", name, "partitions", partitions));
  json_decref(body);
}

static void handle_set_leader(bt_http_req_t *req, void *arg) {
  dk_control_t *ctl = arg;
  const char *topic = bt_http_req_param(req, "topic");
  long partition;
  json_int_t id;
  json_t *body;
  if (!valid_topic(topic)) {
    bt_http_respond_error(req, 400, "invalid_field", "path segment {topic} is not a topic name");
    return;
  }
  if (!int_param(req, "partition", 0, MAX_PARTITIONS - 1, &partition) ||
      !(body = body_object(req)))
    return;
  bool ok = int_field(req, body, "id", 1, ctl->cluster->nbrokers, &id);
  json_decref(body);
  if (!ok)
    return;
  int rc = dk_cluster_set_leader(ctl->cluster, topic, (int32_t)partition, (int32_t)id);
  respond_result(req, ctl->cluster, rc,
                 json_pack("{s:s, s:i, s:I}", "topic", topic, "partition", (int)partition,
                           "leader", id));
}

void dk_control_register(dk_control_t *ctl, bt_http_server_t *srv) {
  bt_http_server_route(srv, "GET", "/status", handle_status, ctl);
  bt_http_server_route(srv, "POST", "/brokers/{id}/down", handle_broker_down, ctl);
  bt_http_server_route(srv, "POST", "/brokers/{id}/up", handle_broker_up, ctl);
  bt_http_server_route(srv, "POST", "/brokers/{id}/rtt", handle_broker_rtt, ctl);
  bt_http_server_route(srv, "POST", "/errors", handle_push_errors, ctl);
  bt_http_server_route(srv, "DELETE", "/errors/{api_key}", handle_clear_errors, ctl);
  bt_http_server_route(srv, "POST", "/topics", handle_create_topic, ctl);
  bt_http_server_route(srv, "POST", "/topics/{topic}/partitions/{partition}/leader",
                       handle_set_leader, ctl);
}
