/* JSON-lines logger. Lines are written with one fwrite so that concurrent writers
 * (librdkafka's threads log through us too) never interleave within a line. */
#include "log.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/time.h>
#include <time.h>

#include "errors.h"

static const char *log_svc = "baton";
static bt_log_level_t log_min = BT_LOG_INFO;
static const char *const level_names[] = {"debug", "info", "warn", "error", "fatal"};

void bt_log_init(const char *svc, bt_log_level_t min_level) {
  log_svc = svc;
  log_min = min_level;
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
  text[len] = '\n'; /* overwrite the terminator; fwrite takes the explicit length */
  fwrite(text, 1, len + 1, stdout);
  fflush(stdout);
  free(text);
}
