/* JSON-lines logging on stdout: one object per line with ts, level, msg, svc and fields. */
#ifndef BT_LOG_H
#define BT_LOG_H

typedef enum { BT_LOG_DEBUG, BT_LOG_INFO, BT_LOG_WARN, BT_LOG_ERROR, BT_LOG_FATAL } bt_log_level_t;

/* Sets the service name stamped on every line and the minimum level. Call once at start. */
void bt_log_init(const char *svc, bt_log_level_t min_level);

/* Parses "debug|info|warn|error"; returns 0 and sets *out, or BT_EINVAL. */
int bt_log_level_parse(const char *s, bt_log_level_t *out);

/* Writes one line. `fields` is a jansson json_pack() format for an object, such as
 * "{s:s, s:i}", followed by its arguments; NULL for no extra fields. Never fails loudly:
 * a bad format drops the fields, not the line. Pass JSON values with "O" (borrowed), never
 * "o": a line below the minimum level is dropped before packing, so a stolen reference would
 * leak. */
void bt_log(bt_log_level_t level, const char *msg, const char *fields, ...);

#define bt_log_info(msg, ...) bt_log(BT_LOG_INFO, msg, __VA_ARGS__)
#define bt_log_warn(msg, ...) bt_log(BT_LOG_WARN, msg, __VA_ARGS__)
#define bt_log_error(msg, ...) bt_log(BT_LOG_ERROR, msg, __VA_ARGS__)
#define bt_log_debug(msg, ...) bt_log(BT_LOG_DEBUG, msg, __VA_ARGS__)

#endif
