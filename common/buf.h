/* bt_buf_t: a growable byte buffer with a hard cap, used for responses and rendering. */
#ifndef BT_BUF_H
#define BT_BUF_H

#include <stddef.h>

#include "errors.h"

typedef struct bt_buf {
  char *data;
  size_t len;
  size_t cap;
  size_t max; /* appends past this fail with BT_ENOMEM; 0 means 64 MiB */
} bt_buf_t;

void bt_buf_init(bt_buf_t *b, size_t max);
void bt_buf_free(bt_buf_t *b);
void bt_buf_reset(bt_buf_t *b);
int bt_buf_reserve(bt_buf_t *b, size_t extra) BT_MUSTCHECK;
int bt_buf_append(bt_buf_t *b, const void *p, size_t n) BT_MUSTCHECK;
int bt_buf_appendf(bt_buf_t *b, const char *fmt, ...) BT_PRINTF(2, 3) BT_MUSTCHECK;
/* Appends s as a quoted JSON string, escaping quotes, backslashes and control characters.
 * (For hot paths that write JSON directly instead of building a jansson tree.) */
int bt_buf_append_json_string(bt_buf_t *b, const char *s) BT_MUSTCHECK;
/* Drops the first n bytes (n <= len). */
void bt_buf_consume(bt_buf_t *b, size_t n);

#endif
