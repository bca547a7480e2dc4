/* Serial executor of blocking librdkafka consumer calls on libuv's thread pool. The job list
 * is touched only on the loop thread; a worker thread sees only the job it was handed. */
#include "kafka_ctl.h"

#include <stdlib.h>
#include <unistd.h>

#include "log.h"

struct bt_kafka_ctl_job {
  bt_kafka_ctl_op_t op;
  rd_kafka_topic_partition_list_t *parts; /* owned copy, or NULL */
  rd_kafka_resp_err_t err;                /* set by the worker */
  unsigned retries;                       /* a resume whose seek timed out runs again */
  bt_kafka_ctl_job_t *next;
};

/* A resume is retried when its seek timed out (a loaded broker or machine): dropping it would
 * leave the partitions paused for good, since the consumer already counts them as fetching,
 * and resuming without the seek would skip the prefetched messages the pause discarded. */
#define RESUME_MAX_RETRIES 50
#define RESUME_RETRY_PAUSE_US 200000

static const char *op_name(bt_kafka_ctl_op_t op) {
  switch (op) {
  case BT_KAFKA_CTL_ASSIGN: return "assign";
  case BT_KAFKA_CTL_INCR_ASSIGN: return "incremental assign";
  case BT_KAFKA_CTL_INCR_UNASSIGN: return "incremental unassign";
  case BT_KAFKA_CTL_PAUSE: return "pause";
  case BT_KAFKA_CTL_RESUME: return "resume";
  }
  return "?";
}

static rd_kafka_resp_err_t error_code(rd_kafka_error_t *error) {
  rd_kafka_resp_err_t err = error ? rd_kafka_error_code(error) : 0;
  if (error)
    rd_kafka_error_destroy(error);
  return err;
}

/* Seeks every partition with a known offset; librdkafka waits for each broker thread. */
static rd_kafka_resp_err_t seek_known(rd_kafka_t *rk, rd_kafka_topic_partition_list_t *parts) {
  rd_kafka_topic_partition_list_t *seek = rd_kafka_topic_partition_list_new(parts->cnt);
  for (int i = 0; i < parts->cnt; i++)
    if (parts->elems[i].offset >= 0)
      rd_kafka_topic_partition_list_add(seek, parts->elems[i].topic, parts->elems[i].partition)
          ->offset = parts->elems[i].offset;
  rd_kafka_resp_err_t err = 0;
  if (seek->cnt > 0)
    err = error_code(rd_kafka_seek_partitions(rk, seek, 10000));
  rd_kafka_topic_partition_list_destroy(seek);
  return err;
}

/* Worker thread: one blocking call, no access to anything but the job and rk. */
static void run_job(uv_work_t *w) {
  bt_kafka_ctl_t *ctl = w->data;
  bt_kafka_ctl_job_t *j = ctl->head;
  rd_kafka_t *rk = ctl->rk;
  switch (j->op) {
  case BT_KAFKA_CTL_ASSIGN: j->err = rd_kafka_assign(rk, j->parts); break;
  case BT_KAFKA_CTL_INCR_ASSIGN:
    j->err = error_code(rd_kafka_incremental_assign(rk, j->parts));
    break;
  case BT_KAFKA_CTL_INCR_UNASSIGN:
    j->err = error_code(rd_kafka_incremental_unassign(rk, j->parts));
    break;
  case BT_KAFKA_CTL_PAUSE: j->err = rd_kafka_pause_partitions(rk, j->parts); break;
  case BT_KAFKA_CTL_RESUME:
    if (j->retries > 0)
      usleep(RESUME_RETRY_PAUSE_US); /* a worker thread: waiting here never blocks the loop */
    j->err = seek_known(rk, j->parts);
    if (!j->err)
      j->err = rd_kafka_resume_partitions(rk, j->parts);
    break;
  }
}

static void job_free(bt_kafka_ctl_job_t *j) {
  if (j->parts)
    rd_kafka_topic_partition_list_destroy(j->parts);
  free(j);
}

static void start_next(bt_kafka_ctl_t *ctl);

static void after_job(uv_work_t *w, int status) {
  BT_UNUSED(status);
  bt_kafka_ctl_t *ctl = w->data;
  bt_kafka_ctl_job_t *j = ctl->head;
  ctl->head = j->next;
  if (!ctl->head)
    ctl->tail = NULL;
  ctl->running = false;
  if (j->op == BT_KAFKA_CTL_RESUME && j->err == RD_KAFKA_RESP_ERR__TIMED_OUT &&
      j->retries < RESUME_MAX_RETRIES) {
    bt_log_warn("kafka consumer resume timed out; retrying", "{s:s, s:i}", "consumer", ctl->who,
                "retry", (int)j->retries + 1);
    j->retries++;
    j->err = 0;
    j->next = NULL;
    if (ctl->head) /* behind whatever was queued meanwhile (an unassign, say) */
      ctl->tail->next = j;
    else
      ctl->head = j;
    ctl->tail = j;
    start_next(ctl);
    return;
  }
  if (j->err)
    bt_log_error("kafka consumer control call failed", "{s:s, s:s, s:s}", "consumer", ctl->who,
                 "call", op_name(j->op), "error", rd_kafka_err2name(j->err));
  job_free(j);
  start_next(ctl);
}

static void start_next(bt_kafka_ctl_t *ctl) {
  if (ctl->running)
    return;
  if (!ctl->head) {
    if (ctl->on_idle)
      ctl->on_idle(ctl);
    return;
  }
  ctl->running = true;
  ctl->work.data = ctl;
  int rc = uv_queue_work(ctl->loop, &ctl->work, run_job, after_job);
  BT_ASSERT(rc == 0); /* only fails for a NULL work callback */
}

void bt_kafka_ctl_init(bt_kafka_ctl_t *ctl, uv_loop_t *loop, rd_kafka_t *rk, const char *who) {
  *ctl = (bt_kafka_ctl_t){.loop = loop, .rk = rk, .who = who};
}

int bt_kafka_ctl_push(bt_kafka_ctl_t *ctl, bt_kafka_ctl_op_t op,
                      const rd_kafka_topic_partition_list_t *parts) {
  bt_kafka_ctl_job_t *j = calloc(1, sizeof *j);
  if (!j)
    return BT_ENOMEM;
  j->op = op;
  j->parts = parts ? rd_kafka_topic_partition_list_copy(parts) : NULL;
  if (ctl->tail)
    ctl->tail->next = j;
  else
    ctl->head = j;
  ctl->tail = j;
  start_next(ctl);
  return 0;
}

bool bt_kafka_ctl_idle(const bt_kafka_ctl_t *ctl) { return ctl->head == NULL; }
