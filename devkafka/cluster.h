/* dk_cluster_t: librdkafka's mock cluster (real Kafka protocol on loopback, in memory) plus
 * the broker state the mock API does not report back, for baton-devkafka's control
 * endpoint. Mock calls hand work to the mock's own thread and wait for it briefly. */
#ifndef DK_CLUSTER_H
#define DK_CLUSTER_H

#include <librdkafka/rdkafka.h>
#include <librdkafka/rdkafka_mock.h>
#include <stdbool.h>
#include <stdint.h>

#include "errors.h"

#define DK_MAX_BROKERS 16
#define DK_ALL_BROKERS (-1)

typedef struct dk_cluster {
  rd_kafka_t *rk; /* a producer handle that only hosts the mock cluster */
  rd_kafka_mock_cluster_t *mc;
  int nbrokers;
  bool up[DK_MAX_BROKERS + 1];               /* by broker id, from 1 */
  char addr[DK_MAX_BROKERS + 1][64];         /* "127.0.0.1:port" by broker id */
} dk_cluster_t;

/* Starts nbrokers (1..DK_MAX_BROKERS) mock brokers, ids 1..n. errstr: 256 bytes. */
int dk_cluster_start(dk_cluster_t *c, int nbrokers, char *errstr) BT_MUSTCHECK;
void dk_cluster_stop(dk_cluster_t *c);

/* Creates a topic with a replication factor of min(brokers, 3). BT_ECONFLICT if it exists. */
int dk_cluster_topic_create(dk_cluster_t *c, const char *name, int partitions) BT_MUSTCHECK;
/* Makes broker id lead one partition (the mock never moves leaders by itself). */
int dk_cluster_set_leader(dk_cluster_t *c, const char *topic, int32_t partition,
                          int32_t id) BT_MUSTCHECK;
/* id is a broker id or DK_ALL_BROKERS. BT_ENOENT for an unknown id. */
int dk_cluster_broker_set_up(dk_cluster_t *c, int32_t id, bool up) BT_MUSTCHECK;
int dk_cluster_broker_set_rtt(dk_cluster_t *c, int32_t id, int rtt_ms) BT_MUSTCHECK;
/* The next n requests with api_key fail with errs[i] in turn (cluster-wide). */
void dk_cluster_push_errors(dk_cluster_t *c, int16_t api_key, size_t n,
                            const rd_kafka_resp_err_t *errs);
void dk_cluster_clear_errors(dk_cluster_t *c, int16_t api_key);

#endif
