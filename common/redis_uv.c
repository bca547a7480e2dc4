/* The hiredis event hooks on a uv_poll_t. On an error status, the socket goes to hiredis for
 * whatever it was waiting for, and hiredis finds the error itself (getsockopt(SO_ERROR) for a
 * connect, read() otherwise) and fails the connect or disconnects as usual. */
#include "redis_uv.h"

#include <stdlib.h>

typedef struct uv_events {
  uv_poll_t poll;
  redisAsyncContext *ac; /* NULL once hiredis cleaned up: the context is gone */
  int events;
} uv_events_t;

static void on_poll(uv_poll_t *h, int status, int events) {
  uv_events_t *e = h->data;
  if (status < 0)
    events = e->events;
  if (e->ac && (events & UV_READABLE))
    redisAsyncHandleRead(e->ac);
  if (e->ac && (events & UV_WRITABLE))
    redisAsyncHandleWrite(e->ac);
}

static void ev_update(uv_events_t *e, int add, int del) {
  e->events = (e->events | add) & ~del;
  if (e->events)
    uv_poll_start(&e->poll, e->events, on_poll);
  else
    uv_poll_stop(&e->poll);
}

static void ev_add_read(void *p) { ev_update(p, UV_READABLE, 0); }
static void ev_del_read(void *p) { ev_update(p, 0, UV_READABLE); }
static void ev_add_write(void *p) { ev_update(p, UV_WRITABLE, 0); }
static void ev_del_write(void *p) { ev_update(p, 0, UV_WRITABLE); }
static void ev_closed(uv_handle_t *h) { free(h->data); }

static void ev_cleanup(void *p) {
  uv_events_t *e = p;
  e->ac = NULL;
  uv_close((uv_handle_t *)&e->poll, ev_closed);
}

int bt_redis_uv_attach(redisAsyncContext *ac, uv_loop_t *loop) {
  uv_events_t *e = calloc(1, sizeof *e);
  if (!e)
    return BT_ENOMEM;
  if (uv_poll_init(loop, &e->poll, ac->c.fd) != 0) {
    free(e);
    return BT_EIO;
  }
  e->poll.data = e;
  e->ac = ac;
  ac->ev.data = e;
  ac->ev.addRead = ev_add_read;
  ac->ev.delRead = ev_del_read;
  ac->ev.addWrite = ev_add_write;
  ac->ev.delWrite = ev_del_write;
  ac->ev.cleanup = ev_cleanup;
  return 0;
}
