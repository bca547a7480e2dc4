/* bt_kafka_queue_t: bridges one librdkafka queue into the libuv loop. librdkafka writes a
 * byte to a non-blocking pipe when the queue gets work; a uv_poll on the pipe calls the
 * owner's serve function until the queue is empty, so nothing busy-polls. */
#ifndef BT_KAFKA_QUEUE_H
#define BT_KAFKA_QUEUE_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <uv.h>

#include "errors.h"

typedef struct bt_kafka_queue bt_kafka_queue_t;

/* Serves at most one batch of the queue with a zero timeout (e.g. rd_kafka_poll(rk, 0) or
 * rd_kafka_consumer_poll(rk, 0)). Returns false once the queue was found empty. */
typedef bool (*bt_kafka_queue_serve_fn)(void *arg);
typedef void (*bt_kafka_queue_closed_fn)(bt_kafka_queue_t *q);

struct bt_kafka_queue {
  uv_poll_t poll;
  int fds[2]; /* [0] read end watched by poll, [1] write end given to librdkafka */
  rd_kafka_queue_t *rkq; /* borrowed: the owner keeps the queue alive until closed_fn */
  bt_kafka_queue_serve_fn serve;
  void *arg;
  bt_kafka_queue_closed_fn closed;
};

/* Enables IO events on rkq (which must be the final, forwarded-to queue) and starts
 * watching them on loop. Work already queued is served on the next loop iteration.
 * Returns 0 or a BT_E* code. */
int bt_kafka_queue_init(bt_kafka_queue_t *q, uv_loop_t *loop, rd_kafka_queue_t *rkq,
                        bt_kafka_queue_serve_fn serve, void *arg) BT_MUSTCHECK;

/* Schedules a serve pass on the next loop iteration (e.g. after resuming work that stopped
 * serving early). */
void bt_kafka_queue_wake(bt_kafka_queue_t *q);

/* Moves the bridge to another queue (a renewed handle's): events of the old one are no
 * longer signalled, the new one's are, on the same pipe and poll handle. */
void bt_kafka_queue_rebind(bt_kafka_queue_t *q, rd_kafka_queue_t *rkq);

/* Disables IO events and closes the poll handle; closed(q) runs from the loop once the
 * handle is closed, after which q may be freed. The rd_kafka queue is not served again. */
void bt_kafka_queue_close(bt_kafka_queue_t *q, bt_kafka_queue_closed_fn closed);

#endif
