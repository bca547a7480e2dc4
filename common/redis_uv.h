/* bt_redis_uv_attach(): runs a hiredis async context on a libuv loop. Our own binding rather
 * than hiredis/adapters/libuv.h, which ignores a poll error: libuv reports a socket error (a
 * refused connect, a reset) as exactly that, an error status with the poll stopped, so a
 * refused address would wait for the connect timeout instead of failing at once. */
#ifndef BT_REDIS_UV_H
#define BT_REDIS_UV_H

#include <hiredis/async.h>
#include <uv.h>

#include "errors.h"

/* Attaches ac (not yet attached) to loop; its poll handle is closed and freed when hiredis
 * frees ac. Returns 0, BT_ENOMEM or BT_EIO. */
int bt_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop) BT_MUSTCHECK;

#endif
