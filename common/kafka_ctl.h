/* bt_kafka_ctl_t: runs a consumer's blocking librdkafka calls off the loop, one at a time and
 * in the order they were asked for. rd_kafka_assign/incremental_assign, pause/resume and seek
 * wait for librdkafka's own threads (the group thread, each partition's broker thread); on
 * the loop that wait would stall HTTP and timers behind a busy broker thread. Here they run
 * on libuv's thread pool, serially, so "assign, then pause the new partitions" keeps its
 * order. Owned by bt_kafka_consumer_t. */
#ifndef BT_KAFKA_CTL_H
#define BT_KAFKA_CTL_H

#include <librdkafka/rdkafka.h>
#include <stdbool.h>
#include <uv.h>

#include "errors.h"

typedef enum {
  BT_KAFKA_CTL_ASSIGN,        /* eager: replace the assignment (parts NULL = unassign all) */
  BT_KAFKA_CTL_INCR_ASSIGN,   /* cooperative: add parts */
  BT_KAFKA_CTL_INCR_UNASSIGN, /* cooperative: remove parts */
  BT_KAFKA_CTL_PAUSE,         /* pause parts */
  BT_KAFKA_CTL_RESUME,        /* seek every part whose offset is >= 0 there, then resume all */
} bt_kafka_ctl_op_t;

typedef struct bt_kafka_ctl_job bt_kafka_ctl_job_t;
typedef struct bt_kafka_ctl bt_kafka_ctl_t;
/* Called on the loop when the last queued job has finished. */
typedef void (*bt_kafka_ctl_idle_fn)(bt_kafka_ctl_t *ctl);

struct bt_kafka_ctl {
  uv_loop_t *loop;
  rd_kafka_t *rk;  /* borrowed: must outlive every job (destroy only when idle) */
  const char *who; /* for logs (borrowed) */
  uv_work_t work;
  bt_kafka_ctl_job_t *head, *tail; /* head runs (if running), the rest wait */
  bool running;
  bt_kafka_ctl_idle_fn on_idle;
};

void bt_kafka_ctl_init(bt_kafka_ctl_t *ctl, uv_loop_t *loop, rd_kafka_t *rk, const char *who);
/* Queues op on a copy of parts (NULL allowed for ASSIGN only). Never blocks. Returns 0 or
 * BT_ENOMEM. */
int bt_kafka_ctl_push(bt_kafka_ctl_t *ctl, bt_kafka_ctl_op_t op,
                      const rd_kafka_topic_partition_list_t *parts) BT_MUSTCHECK;
/* Whether no job is queued or running. */
bool bt_kafka_ctl_idle(const bt_kafka_ctl_t *ctl);

#endif
