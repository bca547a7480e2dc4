/* dk_forwarder_t: a loopback TCP port that relays each connection to one fixed upstream
 * address. librdkafka 2.0.2's mock brokers listen on random ports, so this gives broker 1 a
 * stable bootstrap port: clients use the bootstrap only for their first metadata request and
 * then connect to the brokers' real (advertised) addresses. */
#ifndef DK_FORWARDER_H
#define DK_FORWARDER_H

#include <uv.h>

#include "errors.h"

typedef struct dk_forwarder dk_forwarder_t;

/* Listens on 127.0.0.1:port. Connections are refused (closed) until an upstream is set.
 * Returns 0 or a BT_E* / UV error code. */
int dk_forwarder_start(dk_forwarder_t **out, uv_loop_t *loop, int port) BT_MUSTCHECK;

/* Relays each later connection to upstream ("host:port", numeric IPv4). Returns 0 or
 * BT_EINVAL. */
int dk_forwarder_set_upstream(dk_forwarder_t *f, const char *upstream) BT_MUSTCHECK;

/* Closes the listener and every relayed connection; frees the forwarder once all handles
 * are closed. */
void dk_forwarder_close(dk_forwarder_t *f);

#endif
