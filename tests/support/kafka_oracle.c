/* Reads topics back with librdkafka's plain consumer API (assign + watermarks), and drives
 * devkafka's control endpoint, for tests that need an oracle of what Kafka holds. */
#include "kafka_oracle.h"

#include <librdkafka/rdkafka.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "testsupport.h"

static char *dupn(const void *p, size_t n) {
  char *s = malloc(n + 1);
  memcpy(s, p, n);
  s[n] = '\0';
  return s;
}

long bt_test_kafka_read_all(const char *brokers, const char *topic, int timeout_ms,
                            bt_test_kmsg_t **out) {
  char err[512];
  rd_kafka_conf_t *conf = rd_kafka_conf_new();
  char group[64];
  snprintf(group, sizeof group, "bt-test-oracle-%d", (int)getpid());
  if (rd_kafka_conf_set(conf, "bootstrap.servers", brokers, err, sizeof err) ||
      rd_kafka_conf_set(conf, "group.id", group, err, sizeof err) ||
      rd_kafka_conf_set(conf, "enable.auto.commit", "false", err, sizeof err) ||
      rd_kafka_conf_set(conf, "enable.partition.eof", "true", err, sizeof err)) {
    rd_kafka_conf_destroy(conf);
    return -1;
  }
  rd_kafka_t *rk = rd_kafka_new(RD_KAFKA_CONSUMER, conf, err, sizeof err);
  if (!rk)
    return -1;
  long count = -1;
  const rd_kafka_metadata_t *md = NULL;
  rd_kafka_topic_t *rkt = rd_kafka_topic_new(rk, topic, NULL);
  if (rd_kafka_metadata(rk, 0, rkt, &md, timeout_ms) != RD_KAFKA_RESP_ERR_NO_ERROR || md->topic_cnt != 1 ||
      md->topics[0].err) {
    fprintf(stderr, "oracle: no metadata for topic %s\n", topic);
    goto done;
  }
  int np = md->topics[0].partition_cnt;
  rd_kafka_topic_partition_list_t *parts = rd_kafka_topic_partition_list_new(np);
  int64_t *high = calloc((size_t)np, sizeof *high);
  int remaining = 0;
  for (int p = 0; p < np; p++) {
    int64_t lo = 0, hi = 0;
    if (rd_kafka_query_watermark_offsets(rk, topic, p, &lo, &hi, timeout_ms)) {
      fprintf(stderr, "oracle: no watermarks for %s[%d]\n", topic, p);
      rd_kafka_topic_partition_list_destroy(parts);
      free(high);
      goto done;
    }
    high[p] = hi;
    if (hi > lo) {
      rd_kafka_topic_partition_list_add(parts, topic, p)->offset = lo;
      remaining++;
    }
  }
  rd_kafka_assign(rk, parts);
  rd_kafka_topic_partition_list_destroy(parts);
  size_t cap = 1024, n = 0;
  bt_test_kmsg_t *msgs = calloc(cap, sizeof *msgs);
  uint64_t deadline = bt_test_now_ms() + (uint64_t)timeout_ms;
  while (remaining > 0 && bt_test_now_ms() < deadline) {
    rd_kafka_message_t *m = rd_kafka_consumer_poll(rk, 200);
    if (!m)
      continue;
    if (m->err) {
      rd_kafka_message_destroy(m);
      continue; /* EOF and transient errors: the watermark check below decides */
    }
    if (m->offset < high[m->partition]) {
      if (n == cap)
        msgs = realloc(msgs, (cap *= 2) * sizeof *msgs);
      bt_test_kmsg_t *o = &msgs[n++];
      memset(o, 0, sizeof *o);
      o->partition = m->partition;
      o->offset = m->offset;
      o->key = m->key ? dupn(m->key, m->key_len) : NULL;
      o->value = m->payload ? dupn(m->payload, m->len) : NULL;
      o->value_len = m->len;
      rd_kafka_headers_t *hdrs = NULL;
      if (rd_kafka_message_headers(m, &hdrs) == RD_KAFKA_RESP_ERR_NO_ERROR) {
        const char *name;
        const void *val;
        size_t vlen;
        for (size_t i = 0; o->nheaders < BT_TEST_KMSG_MAX_HEADERS &&
                           rd_kafka_header_get_all(hdrs, i, &name, &val, &vlen) == 0;
             i++) {
          o->hname[o->nheaders] = strdup(name);
          o->hvalue[o->nheaders++] = val ? dupn(val, vlen) : strdup("");
        }
      }
      if (m->offset + 1 == high[m->partition])
        remaining--;
    }
    rd_kafka_message_destroy(m);
  }
  free(high);
  if (remaining > 0) {
    fprintf(stderr, "oracle: timed out reading %s (%d partitions unfinished)\n", topic, remaining);
    bt_test_kmsgs_free(msgs, (long)n);
    goto done;
  }
  *out = msgs;
  count = (long)n;
done:
  if (md)
    rd_kafka_metadata_destroy(md);
  rd_kafka_topic_destroy(rkt);
  rd_kafka_consumer_close(rk);
  rd_kafka_destroy(rk);
  return count;
}

const char *bt_test_kmsg_header(const bt_test_kmsg_t *m, const char *name) {
  for (unsigned i = 0; i < m->nheaders; i++)
    if (strcmp(m->hname[i], name) == 0)
      return m->hvalue[i];
  return NULL;
}

void bt_test_kmsgs_free(bt_test_kmsg_t *msgs, long n) {
  for (long i = 0; i < n; i++) {
    free(msgs[i].key);
    free(msgs[i].value);
    for (unsigned h = 0; h < msgs[i].nheaders; h++) {
      free(msgs[i].hname[h]);
      free(msgs[i].hvalue[h]);
    }
  }
  free(msgs);
}

int bt_test_kafka_create_topic(const char *topic, int partitions) {
  char url[512], body[300];
  snprintf(url, sizeof url, "%s/topics", bt_test_env("BATON_DEVKAFKA_CONTROL"));
  snprintf(body, sizeof body, "{\"name\":\"%s\",\"partitions\":%d}", topic, partitions);
  bt_test_http_resp_t r;
  int rc = bt_test_http("POST", url, "Content-Type: application/json\r\n", body, strlen(body), &r);
  int ok = rc == 0 && r.status == 200;
  if (rc == 0)
    bt_test_http_free(&r);
  return ok ? 0 : -1;
}

int bt_test_kafka_brokers(int up) {
  char url[512];
  snprintf(url, sizeof url, "%s/brokers/all/%s", bt_test_env("BATON_DEVKAFKA_CONTROL"), up ? "up" : "down");
  bt_test_http_resp_t r;
  int rc = bt_test_http("POST", url, NULL, "", 0, &r);
  int ok = rc == 0 && r.status == 200;
  if (rc == 0)
    bt_test_http_free(&r);
  return ok ? 0 : -1;
}
