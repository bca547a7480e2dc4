/* JSON-lines logger. A line is formatted whole before it is stored or written, so lines from
 * concurrent writers (librdkafka's threads log through us too) never interleave. On the loop
 * thread lines go to a bounded buffer that an unreferenced timer flushes, so the loop does not
 * make a write system call per line; every other thread flushes the buffer and writes its own
 * line at once, under the same lock, which keeps the output in the order lines were made. */
#include "log.h"

#include <errno.h>
#include <jansson.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#include "buf.h"
#include "errors.h"
#include "metrics.h"

#define LOG_DEFAULT_MAX ((size_t)1 << 20)
#define LOG_DEFAULT_FLUSH_BYTES ((size_t)64 << 10)
#define LOG_DEFAULT_FLUSH_MS 50

static pthread_mutex_t log_mu = PTHREAD_MUTEX_INITIALIZER;
static bt_buf_t log_buf = {NULL, 0, 0, LOG_DEFAULT_MAX};
static size_t log_buf_lines; /* lines in log_buf, counted as dropped if stdout fails */
static size_t log_flush_bytes = LOG_DEFAULT_FLUSH_BYTES;
static uint64_t log_flush_ms = LOG_DEFAULT_FLUSH_MS;
static bool log_attached, log_timer_armed;
static uv_timer_t log_timer;
static pthread_t log_loop_thread;
static bt_counter_t log_dropped;
static bool log_once_done;

static const char *log_svc = "baton";
static bt_log_level_t log_min = BT_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error", "fatal"};

/* fork() copies the buffer: the child must not write the parent's lines a second time, and
 * the loop's timer belongs to the parent's loop. The lock is taken around fork so that the
 * child never inherits it held by a thread that does not exist there. */
static void before_fork(void) { pthread_mutex_lock(&log_mu); }
static void after_fork_parent(void) { pthread_mutex_unlock(&log_mu); }
static void after_fork_child(void) {
  log_buf.len = 0;
  log_buf_lines = 0;
  log_attached = log_timer_armed = false;
  pthread_mutex_unlock(&log_mu);
}

static void log_once(void) {
  if (!log_once_done) {
    log_once_done = true;
    pthread_atfork(before_fork, after_fork_parent, after_fork_child);
    atexit(bt_log_flush);
    bt_metrics_counter(&log_dropped, "baton_log_dropped_lines_total",
                       "Log lines dropped because the log buffer was full or stdout failed.");
  }
}

void bt_log_init(const char *svc, bt_log_level_t min_level) {
  log_svc = svc;
  log_min = min_level;
  log_once();
}

/* Writes the buffer to stdout. Stops early, keeping the rest, when stdout is non-blocking and
 * full; drops the rest (counted) when stdout fails for good. Called with log_mu held. */
static void flush_locked(void) {
  size_t off = 0;
  while (off < log_buf.len) {
    ssize_t w = write(STDOUT_FILENO, log_buf.data + off, log_buf.len - off);
    if (w > 0) {
      off += (size_t)w;
      continue;
    }
    if (w < 0 && errno == EINTR)
      continue;
    if (w < 0 && (errno == EAGAIN || errno == EWOULDBLOCK))
      break;
    bt_counter_add(&log_dropped, log_buf_lines);
    log_buf.len = 0;
    log_buf_lines = 0;
    return;
  }
  if (off == 0)
    return;
  /* Lines fully written leave the count; a partly written line stays counted. */
  for (size_t i = 0; i < off; i++)
    if (log_buf.data[i] == '\n')
      log_buf_lines--;
  bt_buf_consume(&log_buf, off);
}

void bt_log_flush(void) {
  pthread_mutex_lock(&log_mu);
  flush_locked();
  pthread_mutex_unlock(&log_mu);
}

uint64_t bt_log_dropped(void) {
  pthread_mutex_lock(&log_mu);
  uint64_t n = log_dropped.value;
  pthread_mutex_unlock(&log_mu);
  return n;
}

void bt_log_set_buffer(size_t max_bytes, size_t flush_bytes, uint64_t flush_ms) {
  pthread_mutex_lock(&log_mu);
  log_buf.max = max_bytes ? max_bytes : LOG_DEFAULT_MAX;
  if (!flush_bytes)
    flush_bytes = LOG_DEFAULT_FLUSH_BYTES;
  log_flush_bytes = flush_bytes < log_buf.max ? flush_bytes : log_buf.max / 2;
  log_flush_ms = flush_ms ? flush_ms : LOG_DEFAULT_FLUSH_MS;
  pthread_mutex_unlock(&log_mu);
}

static void on_flush_timer(uv_timer_t *t) {
  BT_UNUSED(t);
  pthread_mutex_lock(&log_mu);
  log_timer_armed = false;
  flush_locked();
  /* A full non-blocking stdout: try again a little later rather than spin. */
  if (log_buf.len > 0 && uv_timer_start(&log_timer, on_flush_timer, log_flush_ms, 0) == 0)
    log_timer_armed = true;
  pthread_mutex_unlock(&log_mu);
}

int bt_log_attach(uv_loop_t *loop) {
  log_once();
  pthread_mutex_lock(&log_mu);
  int rc = 0;
  if (!log_attached) {
    rc = uv_timer_init(loop, &log_timer);
    if (rc == 0) {
      /* The timer must never be what keeps a finished loop from returning. */
      uv_unref((uv_handle_t *)&log_timer);
      log_attached = true;
      log_timer_armed = false;
      log_loop_thread = pthread_self();
    }
  }
  pthread_mutex_unlock(&log_mu);
  return rc;
}

void bt_log_detach(void) {
  pthread_mutex_lock(&log_mu);
  flush_locked();
  if (log_attached) {
    uv_timer_stop(&log_timer);
    uv_close((uv_handle_t *)&log_timer, NULL);
    log_attached = log_timer_armed = false;
  }
  pthread_mutex_unlock(&log_mu);
}

/* Stores one line (text of len bytes, ending in a newline) and decides whether to write now.
 * Called with log_mu held. */
static void put_locked(const char *text, size_t len) {
  bool buffered = log_attached && pthread_equal(pthread_self(), log_loop_thread);
  if (log_buf.len + len > log_buf.max)
    flush_locked();
  if (bt_buf_append(&log_buf, text, len) != 0) {
    bt_counter_inc(&log_dropped);
    return;
  }
  log_buf_lines++;
  if (!buffered || log_buf.len >= log_flush_bytes) {
    flush_locked();
    return;
  }
  if (!log_timer_armed && uv_timer_start(&log_timer, on_flush_timer, log_flush_ms, 0) == 0)
    log_timer_armed = true;
  if (!log_timer_armed)
    flush_locked(); /* no timer, no delay */
}

int bt_log_level_parse(const char *s, bt_log_level_t *out) {
  for (int i = 0; i <= BT_LOG_ERROR; i++) {
    if (strcasecmp(s, level_names[i]) == 0) {
      *out = (bt_log_level_t)i;
      return 0;
    }
  }
  return BT_EINVAL;
}

void bt_log(bt_log_level_t level, const char *msg, const char *fields, ...) {
  if (level < log_min)
    return;
  struct timeval tv;
  gettimeofday(&tv, NULL);
  struct tm tm;
  gmtime_r(&tv.tv_sec, &tm);
  char ts[40];
  size_t n = strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%S", &tm);
  snprintf(ts + n, sizeof ts - n, ".%03ldZ", (long)(tv.tv_usec / 1000));

  json_t *obj = NULL;
  if (fields) {
    va_list ap;
    va_start(ap, fields);
    json_error_t err;
    obj = json_vpack_ex(&err, 0, fields, ap);
    va_end(ap);
  }
  if (!obj || !json_is_object(obj)) {
    json_decref(obj);
    obj = json_object();
  }
  /* Fixed keys go first in the output for readability; jansson keeps insertion order. */
  json_t *line = json_pack("{s:s, s:s, s:s, s:s}", "ts", ts, "level", level_names[level], "msg",
                           msg ? msg : "", "svc", log_svc);
  if (!line) {
    json_decref(obj);
    return;
  }
  json_object_update(line, obj);
  json_decref(obj);
  char *text = json_dumps(line, JSON_COMPACT | JSON_PRESERVE_ORDER);
  json_decref(line);
  if (!text)
    return;
  size_t len = strlen(text);
  text[len] = '\n'; /* overwrite the terminator; the length is explicit from here on */
  pthread_mutex_lock(&log_mu);
  put_locked(text, len + 1);
  pthread_mutex_unlock(&log_mu);
  free(text);
}
