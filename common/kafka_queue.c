/* librdkafka queue -> libuv bridge. librdkafka signals a queue that turns non-empty by
 * writing to our pipe; we drain the pipe first and the queue second, so a signal raised
 * while we serve is never lost: it leaves a byte that wakes the next poll. */
#include "kafka_queue.h"

#include <fcntl.h>
#include <unistd.h>

/* Items served per wakeup. A busy queue then yields to other handles (HTTP, timers) and
 * continues on the next loop iteration instead of starving them. */
#define SERVE_BUDGET 1024

static void drain_pipe(int fd) {
  char scratch[256];
  while (read(fd, scratch, sizeof scratch) > 0) {
  }
}

static void on_readable(uv_poll_t *h, int status, int events) {
  BT_UNUSED(status); BT_UNUSED(events);
  bt_kafka_queue_t *q = h->data;
  drain_pipe(q->fds[0]);
  for (int i = 0; i < SERVE_BUDGET; i++) {
    /* serve() may close the queue from a callback; stop touching it then. */
    if (!q->serve(q->arg) || uv_is_closing((uv_handle_t *)h))
      return;
  }
  bt_kafka_queue_wake(q);
}

int bt_kafka_queue_init(bt_kafka_queue_t *q, uv_loop_t *loop, rd_kafka_queue_t *rkq,
                        bt_kafka_queue_serve_fn serve, void *arg) {
  q->rkq = rkq;
  q->serve = serve;
  q->arg = arg;
  q->closed = NULL;
  if (pipe2(q->fds, O_NONBLOCK | O_CLOEXEC) != 0)
    return -errno;
  int rc = uv_poll_init(loop, &q->poll, q->fds[0]);
  if (rc != 0) {
    close(q->fds[0]);
    close(q->fds[1]);
    return rc;
  }
  q->poll.data = q;
  /* Only an epoll failure (ENOMEM, a watch limit) can refuse a fresh pipe. The handle is
   * initialised by now and could be freed only from a close callback, which the caller's
   * synchronous error path cannot wait for; queues are made at start-up, so stop there. */
  rc = uv_poll_start(&q->poll, UV_READABLE, on_readable);
  if (rc != 0)
    bt_fatal("kafka queue: cannot watch its wakeup pipe: %s", uv_strerror(rc));
  rd_kafka_queue_io_event_enable(rkq, q->fds[1], "1", 1);
  /* librdkafka only signals a transition to non-empty; work queued before now needs a
   * first wakeup of our own. */
  bt_kafka_queue_wake(q);
  return 0;
}

void bt_kafka_queue_wake(bt_kafka_queue_t *q) {
  /* A full pipe already holds a pending wakeup, so EAGAIN is fine to ignore. */
  ssize_t n = write(q->fds[1], "1", 1);
  BT_UNUSED(n);
}

void bt_kafka_queue_rebind(bt_kafka_queue_t *q, rd_kafka_queue_t *rkq) {
  rd_kafka_queue_io_event_enable(q->rkq, -1, NULL, 0);
  q->rkq = rkq;
  rd_kafka_queue_io_event_enable(rkq, q->fds[1], "1", 1);
  bt_kafka_queue_wake(q);
}

static void on_closed(uv_handle_t *h) {
  bt_kafka_queue_t *q = h->data;
  close(q->fds[0]);
  close(q->fds[1]);
  if (q->closed)
    q->closed(q);
}

void bt_kafka_queue_close(bt_kafka_queue_t *q, bt_kafka_queue_closed_fn closed) {
  rd_kafka_queue_io_event_enable(q->rkq, -1, NULL, 0);
  q->closed = closed;
  uv_close((uv_handle_t *)&q->poll, on_closed);
}
