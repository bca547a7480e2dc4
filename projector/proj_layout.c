/* proj_layout: see proj_layout.h. */
#include "proj_layout.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

int proj_layout_projection_prefix(char *out, size_t outsz, const char *projection) {
  return snprintf(out, outsz, "bt:proj:{%s}:", projection);
}

int proj_layout_version_prefix(char *out, size_t outsz, const char *projection, int version) {
  return snprintf(out, outsz, "bt:proj:{%s}:v%d:", projection, version);
}

int proj_layout_member(bt_buf_t *out, json_t *order, const char *key) {
  int rc = 0;
  if (json_is_integer(order)) {
    uint64_t u = (uint64_t)json_integer_value(order) ^ 0x8000000000000000ull;
    rc = bt_buf_appendf(out, "n%020" PRIu64, u);
  } else if (json_is_string(order)) {
    rc = bt_buf_append(out, "s", 1);
    if (!rc)
      rc = bt_buf_append(out, json_string_value(order), json_string_length(order));
  } else if (order && !json_is_null(order)) {
    char *text = json_dumps(order, JSON_COMPACT | JSON_ENCODE_ANY);
    if (!text)
      return BT_ENOMEM;
    rc = bt_buf_appendf(out, "s%s", text);
    free(text);
  }
  if (!rc)
    rc = bt_buf_append(out, "", 1); /* the separator: one NUL byte */
  if (!rc)
    rc = bt_buf_append(out, key, strlen(key));
  return rc;
}
