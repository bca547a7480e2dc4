/* Mock cluster wrapper. The mock API reports no state back (which broker is down), so the
 * wrapper keeps it; broker addresses come from the bootstrap list, which the mock writes in
 * broker-id order. */
#include "cluster.h"

#include <stdio.h>
#include <string.h>

#include "log.h"

static void on_log(const rd_kafka_t *rk, int level, const char *fac, const char *buf) {
  BT_UNUSED(rk);
  /* The host handle has no bootstrap servers and says so once; nothing else it logs is
   * about the mock's clients, so only warnings and worse are worth a line. */
  if (level <= 4)
    bt_log(level <= 3 ? BT_LOG_ERROR : BT_LOG_WARN, "librdkafka", "{s:s, s:s}", "facility",
           fac, "detail", buf);
}

int dk_cluster_start(dk_cluster_t *c, int nbrokers, char *errstr) {
  memset(c, 0, sizeof *c);
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  rd_kafka_conf_set_log_cb(conf, on_log);
  char why[200];
  c->rk = rd_kafka_new(RD_KAFKA_PRODUCER, conf, why, sizeof why);
  if (!c->rk) {
    rd_kafka_conf_destroy(conf);
    snprintf(errstr, 256, "mock host handle: %s", why);
    return BT_EIO;
  }
  c->mc = rd_kafka_mock_cluster_new(c->rk, nbrokers);
  if (!c->mc) {
    rd_kafka_destroy(c->rk);
    snprintf(errstr, 256, "mock cluster with %d brokers could not start", nbrokers);
    return BT_EIO;
  }
  c->nbrokers = nbrokers;
  const char *p = rd_kafka_mock_cluster_bootstraps(c->mc);
  for (int id = 1; id <= nbrokers; id++) {
    size_t n = strcspn(p, ",");
    snprintf(c->addr[id], sizeof c->addr[id], "%.*s", (int)n, p);
    p += n + (p[n] == ',');
    c->up[id] = true;
  }
  return 0;
}

void dk_cluster_stop(dk_cluster_t *c) {
  rd_kafka_mock_cluster_destroy(c->mc);
  rd_kafka_destroy(c->rk);
}

int dk_cluster_topic_create(dk_cluster_t *c, const char *name, int partitions) {
  int rf = c->nbrokers < 3 ? c->nbrokers : 3;
  rd_kafka_resp_err_t err = rd_kafka_mock_topic_create(c->mc, name, partitions, rf);
  if (err == RD_KAFKA_RESP_ERR_TOPIC_ALREADY_EXISTS)
    return BT_ECONFLICT;
  return err ? BT_EINVAL : 0;
}

static bool known(const dk_cluster_t *c, int32_t id, bool allow_all) {
  return (id >= 1 && id <= c->nbrokers) || (allow_all && id == DK_ALL_BROKERS);
}

int dk_cluster_set_leader(dk_cluster_t *c, const char *topic, int32_t partition, int32_t id) {
  if (!known(c, id, false))
    return BT_ENOENT;
  return rd_kafka_mock_partition_set_leader(c->mc, topic, partition, id) ? BT_EINVAL : 0;
}

int dk_cluster_broker_set_up(dk_cluster_t *c, int32_t id, bool up) {
  if (!known(c, id, true))
    return BT_ENOENT;
  rd_kafka_resp_err_t err = up ? rd_kafka_mock_broker_set_up(c->mc, id)
                               : rd_kafka_mock_broker_set_down(c->mc, id);
  if (err)
    return BT_EIO;
  for (int32_t i = 1; i <= c->nbrokers; i++)
    if (id == DK_ALL_BROKERS || id == i)
      c->up[i] = up;
  bt_log_info(up ? "broker up" : "broker down", "{s:i}", "id", (int)id);
  return 0;
}

int dk_cluster_broker_set_rtt(dk_cluster_t *c, int32_t id, int rtt_ms) {
  if (!known(c, id, true))
    return BT_ENOENT;
  return rd_kafka_mock_broker_set_rtt(c->mc, id, rtt_ms) ? BT_EIO : 0;
}

void dk_cluster_push_errors(dk_cluster_t *c, int16_t api_key, size_t n,
                            const rd_kafka_resp_err_t *errs) {
  rd_kafka_mock_push_request_errors_array(c->mc, api_key, n, errs);
}

void dk_cluster_clear_errors(dk_cluster_t *c, int16_t api_key) {
  rd_kafka_mock_clear_request_errors(c->mc, api_key);
}
