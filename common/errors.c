/* bt_strerror and bt_fatal: the runtime's error vocabulary. */
#include "errors.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

const char *bt_strerror(int err) {
  switch (err) {
  case BT_OK: return "ok";
  case BT_ECONFLICT: return "conflict";
  case BT_EAGAIN: return "resource temporarily unavailable (limit reached)";
  default: return strerror(-err);
  }
}

void bt_fatal(const char *fmt, ...) {
  char buf[1024];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(buf, sizeof buf, fmt, ap);
  va_end(ap);
  bt_log(BT_LOG_FATAL, buf, NULL);
  bt_log_flush(); /* abort() runs no atexit handlers */
  fflush(stdout);
  abort();
}
