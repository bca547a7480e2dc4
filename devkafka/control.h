/* dk_control_t: baton-devkafka's HTTP control endpoint for fault tests. It answers JSON and
 * turns each request into one mock-cluster call (brokers down/up, RTT, request errors,
 * topics, partition leaders). Bad input answers 400 naming the field. */
#ifndef DK_CONTROL_H
#define DK_CONTROL_H

#include "cluster.h"
#include "http_server.h"

typedef struct dk_control {
  dk_cluster_t *cluster; /* borrowed */
  const char *bootstrap; /* borrowed: what clients should use */
} dk_control_t;

/* Registers every control route on srv. ctl must outlive the server. */
void dk_control_register(dk_control_t *ctl, bt_http_server_t *srv);

#endif
