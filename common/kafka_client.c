/* Shared librdkafka plumbing: configuration, callbacks into our logs, broker health and the
 * loop bridge. Error and statistics callbacks are served from the bridged queue, so they run
 * on the loop thread; only the log callback runs on librdkafka's own threads, which bt_log
 * tolerates (one write per line). */
#include "kafka_client.h"

#include <jansson.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kafka_props.h"
#include "log.h"

int bt_kafka_conf_set(rd_kafka_conf_t *conf, const char *name, const char *value,
                      char *errstr) {
  char why[200];
  if (rd_kafka_conf_set(conf, name, value, why, sizeof why) == RD_KAFKA_CONF_OK)
    return 0;
  snprintf(errstr, 256, "kafka setting %s=%s: %s", name, value, why);
  return BT_EINVAL;
}

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  const bt_kafka_client_t *c = rd_kafka_opaque(rk);
  /* librdkafka uses syslog levels. */
  bt_log_level_t lvl = level <= 3 ? BT_LOG_ERROR : level == 4 ? BT_LOG_WARN
                     : level <= 6 ? BT_LOG_INFO : BT_LOG_DEBUG;
  bt_log(lvl, "librdkafka", "{s:s, s:s, s:s}", "client", c->kind, "facility", fac, "detail", buf);
}

static void set_up(bt_kafka_client_t *c, bool up, const char *why) {
  if (c->up != up)
    bt_log(up ? BT_LOG_INFO : BT_LOG_WARN, up ? "kafka connected" : "kafka unreachable",
           "{s:s, s:s}", "client", c->kind, "reason", why);
  c->up = up;
}

static void on_error(rd_kafka_t *rk, int err, const char *reason, void *opaque) {
  bt_kafka_client_t *c = opaque;
  if (err == RD_KAFKA_RESP_ERR__FATAL) {
    char detail[256];
    rd_kafka_resp_err_t orig = rd_kafka_fatal_error(rk, detail, sizeof detail);
    bt_log_error("kafka fatal error", "{s:s, s:s, s:s}", "client", c->kind, "error",
                 rd_kafka_err2name(orig), "detail", detail);
    c->fatal = true;
    if (c->renewable)
      return; /* the owner replaces the handle once nothing of it is in flight */
    /* The handle can never produce again (librdkafka fails every later message), so living
     * on would only keep a broken process in service: crash-only, restart with a new one. */
    char why[320];
    snprintf(why, sizeof why, "kafka %s fatal error %s: %s", c->kind, rd_kafka_err2name(orig),
             detail);
    bt_app_fail(c->app, BT_KAFKA_FATAL_EXIT, why);
    return;
  }
  if (err == RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN) {
    /* From now on only statistics or real traffic can prove a connection again. */
    c->stats_seen = true;
    set_up(c, false, reason);
    return;
  }
  /* Other errors are transient: librdkafka retries them. Connection failures are already
   * in librdkafka's own log (facility FAIL); one line per failure is enough. */
  if (err == RD_KAFKA_RESP_ERR__TRANSPORT || err == RD_KAFKA_RESP_ERR__RESOLVE)
    return;
  bt_log_warn("kafka error", "{s:s, s:s, s:s}", "client", c->kind, "error",
              rd_kafka_err2name((rd_kafka_resp_err_t)err), "detail", reason);
}

/* Statistics list every broker with its connection state; one in state UP means requests
 * can flow. Bootstrap entries count too: they are real connections.
 *
 * The report arrives on the loop every stats interval and grows with the number of
 * partitions (its "topics" part carries per-partition counters). Only the top-level
 * "brokers" object is parsed: librdkafka writes it as one JSON value, and
 * JSON_DISABLE_EOF_CHECK stops jansson at its end, so the rest of the text is never read. */
static json_t *stats_brokers(const char *json, size_t len) {
  static const char key[] = "\"brokers\":";
  const char *end = json + len;
  for (const char *p = json; (p = memmem(p, (size_t)(end - p), key, sizeof key - 1));
       p += sizeof key - 1) {
    const char *v = p + sizeof key - 1;
    while (v < end && (*v == ' ' || *v == '\n'))
      v++;
    if (v < end && *v == '{')
      return json_loadb(v, (size_t)(end - v), JSON_DISABLE_EOF_CHECK, NULL);
  }
  return NULL;
}

/* The top-level "rxmsgs" is written after "brokers" and "topics" (whose partitions carry
 * their own), so it is the last occurrence in the report. */
static int64_t stats_rxmsgs(const char *json, size_t len) {
  static const char key[] = "\"rxmsgs\":";
  const char *end = json + len, *last = NULL;
  for (const char *p = json; (p = memmem(p, (size_t)(end - p), key, sizeof key - 1));
       p += sizeof key - 1)
    last = p + sizeof key - 1;
  return last ? strtoll(last, NULL, 10) : -1;
}

static int on_stats(rd_kafka_t *rk, char *json, size_t len, void *opaque) {
  BT_UNUSED(rk);
  bt_kafka_client_t *c = opaque;
  json_t *brokers = stats_brokers(json, len);
  if (json_is_object(brokers)) {
    bool any_up = false;
    const char *name;
    json_t *b;
    json_object_foreach(brokers, name, b) {
      const char *state = json_string_value(json_object_get(b, "state"));
      any_up = any_up || (state && strcmp(state, "UP") == 0);
    }
    c->stats_seen = true;
    set_up(c, any_up, "statistics");
  }
  json_decref(brokers);
  c->rx_messages = stats_rxmsgs(json, len);
  if (c->on_stats)
    c->on_stats(c);
  return 0; /* librdkafka frees json */
}

rd_kafka_conf_t *bt_kafka_client_conf(bt_kafka_client_t *c, const char *brokers,
                                      const char *properties, uint32_t stats_interval_ms,
                                      char *errstr) {
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  char interval[16];
  snprintf(interval, sizeof interval, "%u", stats_interval_ms ? stats_interval_ms : 1000);
  /* A broker thread notices expired messages only when it wakes up to reconnect, so the
   * default 10 s reconnect backoff ceiling would stretch delivery timeouts (and recovery
   * after an outage) by up to 10 s. One second keeps both close to what was configured. */
  if (bt_kafka_conf_set(conf, "bootstrap.servers", brokers, errstr) != 0 ||
      bt_kafka_conf_set(conf, "reconnect.backoff.max.ms", "1000", errstr) != 0 ||
      bt_kafka_conf_set(conf, "statistics.interval.ms", interval, errstr) != 0 ||
      bt_kafka_props_apply(conf, properties, errstr) != 0) {
    rd_kafka_conf_destroy(conf);
    return NULL;
  }
  rd_kafka_conf_set_opaque(conf, c);
  rd_kafka_conf_set_log_cb(conf, on_log);
  rd_kafka_conf_set_error_cb(conf, on_error);
  rd_kafka_conf_set_stats_cb(conf, on_stats);
  return conf;
}

int bt_kafka_client_create(bt_kafka_client_t *c, bt_app_t *app, const char *kind,
                           const char *name, rd_kafka_type_t type, rd_kafka_conf_t *conf,
                           const char *properties, char *errstr) {
  c->app = app;
  c->kind = kind;
  c->name = name ? name : type == RD_KAFKA_PRODUCER ? "kafka_producer" : "kafka_consumer";
  c->rkq = NULL;
  c->up = c->stats_seen = c->fatal = false;
  c->rx_messages = -1;
  char why[200];
  c->rk = rd_kafka_new(type, conf, why, sizeof why);
  if (!c->rk) {
    rd_kafka_conf_destroy(conf); /* rd_kafka_new only takes it on success */
    snprintf(errstr, 256, "kafka %s: %s", kind, why);
    return BT_EINVAL;
  }
  char shown[1024];
  bt_kafka_props_mask(properties, shown, sizeof shown);
  bt_log_info("kafka client created", "{s:s, s:s, s:s}", "client", c->kind, "name", c->name,
              "properties", shown);
  return 0;
}

int bt_kafka_client_bridge(bt_kafka_client_t *c, rd_kafka_queue_t *rkq,
                           bt_kafka_queue_serve_fn serve, void *arg) {
  c->rkq = rkq;
  return bt_kafka_queue_init(&c->queue, c->app->loop, rkq, serve, arg);
}

bool bt_kafka_client_ready(bt_kafka_client_t *c) {
  /* Before the first statistics report, a cached controller id (timeout 0: no wait) shows
   * that a metadata response arrived, i.e. a broker answered. */
  if (!c->up && !c->stats_seen && rd_kafka_controllerid(c->rk, 0) >= 0)
    set_up(c, true, "metadata");
  return c->up && (!c->fatal || c->renewable);
}

void bt_kafka_client_note_up(bt_kafka_client_t *c) {
  if (!c->up)
    set_up(c, true, "traffic");
}

void bt_kafka_client_close(bt_kafka_client_t *c, bt_kafka_queue_closed_fn closed) {
  bt_kafka_queue_close(&c->queue, closed);
}

/* Runs in signal context: only async-signal-safe calls (write, _exit). */
static void on_destroy_alarm(int sig) {
  static const char line[] =
      "{\"level\":\"fatal\",\"msg\":\"kafka handle destroy blocked past the shutdown "
      "deadline: exiting\"}\n";
  ssize_t n = write(STDOUT_FILENO, line, sizeof line - 1);
  BT_UNUSED(n);
  BT_UNUSED(sig);
  _exit(1);
}

/* Seconds left before the app's shutdown deadline (at least 1): the deadline timer is a uv
 * timer, which cannot fire while rd_kafka_destroy() blocks the loop. */
static unsigned destroy_budget_s(bt_app_t *app) {
  uint64_t ms = uv_is_active((uv_handle_t *)&app->deadline)
                    ? uv_timer_get_due_in(&app->deadline)
                    : app->shutdown_timeout_ms;
  uint64_t s = (ms + 999) / 1000;
  return s < 1 ? 1 : s > 3600 ? 3600 : (unsigned)s;
}

static void destroy_handle(bt_kafka_client_t *c, rd_kafka_t *rk);

int bt_kafka_client_renew(bt_kafka_client_t *c, rd_kafka_type_t type, rd_kafka_conf_t *conf,
                          char *errstr) {
  char why[200];
  rd_kafka_t *rk = rd_kafka_new(type, conf, why, sizeof why);
  if (!rk) {
    rd_kafka_conf_destroy(conf);
    snprintf(errstr, 256, "kafka %s: %s", c->kind, why);
    return BT_EINVAL;
  }
  rd_kafka_queue_t *rkq = rd_kafka_queue_get_main(rk);
  bt_kafka_queue_rebind(&c->queue, rkq);
  rd_kafka_queue_destroy(c->rkq);
  destroy_handle(c, c->rk);
  c->rk = rk;
  c->rkq = rkq;
  c->fatal = false;
  c->stats_seen = false; /* `up` stands until the new handle's first statistics */
  return 0;
}

void bt_kafka_client_destroy(bt_kafka_client_t *c) {
  /* Our queue reference must go before the handle it belongs to. */
  if (c->rkq)
    rd_kafka_queue_destroy(c->rkq);
  c->rkq = NULL;
  destroy_handle(c, c->rk);
  c->rk = NULL;
}

static void destroy_handle(bt_kafka_client_t *c, rd_kafka_t *rk) {
  /* rd_kafka_destroy() joins librdkafka's threads; a broker thread stuck in a blocking call
   * (a hung SASL/OIDC callback, a resolver) would hang the process past any deadline, and
   * only a signal can end that. The previous alarm, if any, is restored afterwards. */
  unsigned budget = destroy_budget_s(c->app);
  bt_log_info("destroying kafka handle", "{s:s, s:i}", "client", c->kind, "backstop_s",
              (int)budget);
  struct sigaction sa = {.sa_handler = on_destroy_alarm}, old;
  sigemptyset(&sa.sa_mask);
  sigaction(SIGALRM, &sa, &old);
  unsigned prev = alarm(budget);
  rd_kafka_destroy(rk);
  alarm(prev);
  sigaction(SIGALRM, &old, NULL);
}

int bt_kafka_err(rd_kafka_resp_err_t err) {
  switch (err) {
  case RD_KAFKA_RESP_ERR_NO_ERROR: return 0;
  case RD_KAFKA_RESP_ERR__QUEUE_FULL: return BT_EAGAIN;
  case RD_KAFKA_RESP_ERR__MSG_TIMED_OUT:
  case RD_KAFKA_RESP_ERR__TIMED_OUT:
  case RD_KAFKA_RESP_ERR_REQUEST_TIMED_OUT: return BT_ETIMEDOUT;
  case RD_KAFKA_RESP_ERR__PURGE_QUEUE:
  case RD_KAFKA_RESP_ERR__PURGE_INFLIGHT:
  case RD_KAFKA_RESP_ERR__DESTROY: return BT_ECANCELED;
  case RD_KAFKA_RESP_ERR__UNKNOWN_TOPIC:
  case RD_KAFKA_RESP_ERR__UNKNOWN_PARTITION:
  case RD_KAFKA_RESP_ERR_UNKNOWN_TOPIC_OR_PART: return BT_ENOENT;
  case RD_KAFKA_RESP_ERR__INVALID_ARG: return BT_EINVAL;
  case RD_KAFKA_RESP_ERR_MSG_SIZE_TOO_LARGE: return BT_ERANGE;
  case RD_KAFKA_RESP_ERR__TRANSPORT:
  case RD_KAFKA_RESP_ERR__ALL_BROKERS_DOWN: return BT_ENOTCONN;
  default: return BT_EIO;
  }
}
