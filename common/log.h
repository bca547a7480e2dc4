/* JSON-lines logging on stdout: one object per line with ts, level, msg, svc and fields.
 * Once attached to a loop, lines written on the loop thread are buffered and flushed on a
 * short timer, at a size, at exit, before bt_fatal() and at the shutdown deadline. */
#ifndef BT_LOG_H
#define BT_LOG_H

#include <stddef.h>
#include <stdint.h>
#include <uv.h>

typedef enum { BT_LOG_DEBUG, BT_LOG_INFO, BT_LOG_WARN, BT_LOG_ERROR, BT_LOG_FATAL } bt_log_level_t;

/* Sets the service name stamped on every line and the minimum level. Call once at start. */
void bt_log_init(const char *svc, bt_log_level_t min_level);

/* Parses "debug|info|warn|error"; returns 0 and sets *out, or BT_EINVAL. */
int bt_log_level_parse(const char *s, bt_log_level_t *out);

/* Writes one line. `fields` is a jansson json_pack() format for an object, such as
 * "{s:s, s:i}", followed by its arguments; NULL for no extra fields. Never fails loudly:
 * a bad format drops the fields, not the line. Pass JSON values with "O" (borrowed), never
 * "o": a line below the minimum level is dropped before packing, so a stolen reference would
 * leak. Safe from any thread; lines from one thread keep their order. */
void bt_log(bt_log_level_t level, const char *msg, const char *fields, ...);

#define bt_log_info(msg, ...) bt_log(BT_LOG_INFO, msg, __VA_ARGS__)
#define bt_log_warn(msg, ...) bt_log(BT_LOG_WARN, msg, __VA_ARGS__)
#define bt_log_error(msg, ...) bt_log(BT_LOG_ERROR, msg, __VA_ARGS__)
#define bt_log_debug(msg, ...) bt_log(BT_LOG_DEBUG, msg, __VA_ARGS__)

/* Buffer limits: at most max_bytes wait in memory (a line that does not fit is dropped and
 * counted in baton_log_dropped_lines_total), a flush starts once flush_bytes are buffered or
 * flush_ms after the first buffered line. Defaults (0): 1 MiB, 64 KiB, 50 ms. May be called
 * at any time; BATON_LOG_BUFFER sets max_bytes. */
void bt_log_set_buffer(size_t max_bytes, size_t flush_bytes, uint64_t flush_ms);
/* Buffers the lines written on the calling thread (the loop's) from now on, flushed by an
 * unreferenced timer on `loop`; other threads write through at once. Returns 0 or a libuv
 * error. bt_app_init() calls it. */
int bt_log_attach(uv_loop_t *loop);
/* Flushes, then closes the timer (the loop must run once more to finish closing it) and
 * writes every later line at once. bt_app_run() calls it when the loop ends. */
void bt_log_detach(void);
/* Writes out every buffered line now. Called at exit (atexit), by bt_fatal() and before
 * _exit() on the shutdown deadline. */
void bt_log_flush(void);
/* Lines dropped because the buffer was full or stdout failed (also a metric). */
uint64_t bt_log_dropped(void);

#endif
