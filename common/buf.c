/* bt_buf_t implementation: doubling growth, bounded by b->max. */
#include "buf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#define BT_BUF_DEFAULT_MAX ((size_t)64 << 20)

void bt_buf_init(bt_buf_t *b, size_t max) {
  memset(b, 0, sizeof *b);
  b->max = max ? max : BT_BUF_DEFAULT_MAX;
}

void bt_buf_free(bt_buf_t *b) {
  free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

void bt_buf_reset(bt_buf_t *b) { b->len = 0; }

int bt_buf_reserve(bt_buf_t *b, size_t extra) {
  if (b->len + extra + 1 <= b->cap)
    return 0;
  if (b->len + extra > b->max)
    return BT_ENOMEM;
  size_t cap = b->cap ? b->cap : 256;
  while (cap < b->len + extra + 1)
    cap *= 2;
  char *p = realloc(b->data, cap);
  if (!p)
    return BT_ENOMEM;
  b->data = p;
  b->cap = cap;
  return 0;
}

int bt_buf_append(bt_buf_t *b, const void *p, size_t n) {
  int rc = bt_buf_reserve(b, n);
  if (rc)
    return rc;
  if (n)
    memcpy(b->data + b->len, p, n);
  b->len += n;
  b->data[b->len] = '\0'; /* keep text buffers printable; reserve left room */
  return 0;
}

int bt_buf_appendf(bt_buf_t *b, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  int n = vsnprintf(NULL, 0, fmt, ap);
  va_end(ap);
  if (n < 0)
    return BT_EINVAL;
  int rc = bt_buf_reserve(b, (size_t)n);
  if (rc)
    return rc;
  va_start(ap, fmt);
  vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap);
  va_end(ap);
  b->len += (size_t)n;
  return 0;
}

void bt_buf_consume(bt_buf_t *b, size_t n) {
  if (n >= b->len) {
    b->len = 0;
    return;
  }
  memmove(b->data, b->data + n, b->len - n);
  b->len -= n;
}

int bt_buf_append_json_string(bt_buf_t *b, const char *s) {
  int rc = bt_buf_append(b, "\"", 1);
  const char *run = s;
  for (const char *p = s; rc == 0; p++) {
    unsigned char c = (unsigned char)*p;
    if (c >= 0x20 && c != '"' && c != '\\')
      continue;
    rc = bt_buf_append(b, run, (size_t)(p - run));
    if (rc || c == '\0')
      break;
    rc = c == '"' ? bt_buf_append(b, "\\\"", 2)
         : c == '\\' ? bt_buf_append(b, "\\\\", 2)
                    : bt_buf_appendf(b, "\\u%04x", c);
    run = p + 1;
  }
  return rc ? rc : bt_buf_append(b, "\"", 1);
}
