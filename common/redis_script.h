/* bt_redis_script_t: a Lua script run by its SHA-1 (EVALSHA), so that each run sends only
 * the 40-byte name. When the server does not have it (NOSCRIPT: after a restart, a failover
 * or SCRIPT FLUSH) the run is sent again as EVAL with the source, which runs the script and
 * caches it; the caller sees one reply either way. A NOSCRIPT reply means the script did not
 * run, so the second send never runs it twice. */
#ifndef BT_REDIS_SCRIPT_H
#define BT_REDIS_SCRIPT_H

#include <stddef.h>

#include "redis_client.h"
#include "sha1.h"

typedef struct bt_redis_script bt_redis_script_t;

/* Makes a script from source[0..len) (copied) and computes its SHA-1. Returns 0, BT_EINVAL
 * (empty source) or BT_ENOMEM. The script is not bound to a client: one script may run on
 * several. */
int bt_redis_script_new(bt_redis_script_t **out, const char *source, size_t len) BT_MUSTCHECK;
void bt_redis_script_free(bt_redis_script_t *s);
/* The SHA-1 as 40 lower-case hex digits, as SCRIPT LOAD returns it. Borrowed. */
const char *bt_redis_script_sha1(const bt_redis_script_t *s);

/* Runs the script on r with nkeys keys followed by the other arguments: argv[0..argc) with
 * lengths argvlen (NULL: NUL-terminated), all copied. Returns 0, after which cb (may be NULL)
 * runs exactly once, later, with the script's reply (or a Redis error reply from it), or
 * the errors of bt_redis_command_argv. Pending runs hold the EVAL form of the command, which
 * counts against r's byte budget. If the cache was flushed while the connection stayed up,
 * the EVAL is sent after commands issued after this one, so they may run first. */
int bt_redis_script_run(bt_redis_script_t *s, bt_redis_t *r, bt_redis_reply_cb cb, void *arg,
                        int nkeys, int argc, const char *const *argv,
                        const size_t *argvlen) BT_MUSTCHECK;

/* Adds a run of the script to batch b; its reply is the batch's reply at that index. The
 * same NOSCRIPT handling applies; the EVAL of a script missing from the cache runs after
 * the rest of the batch. */
int bt_redis_batch_add_script(bt_redis_batch_t *b, const bt_redis_script_t *s, int nkeys,
                              int argc, const char *const *argv,
                              const size_t *argvlen) BT_MUSTCHECK;

#endif
