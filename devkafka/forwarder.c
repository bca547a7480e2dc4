/* Bootstrap-port forwarder: each accepted connection gets an upstream connection, and bytes
 * are relayed both ways. A side stops reading while its peer's write queue is long, so a
 * slow reader bounds the memory a relay holds. Either side closing closes both. */
#include "forwarder.h"

#include <stdbool.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"

#define HIGH_WATER (1u << 20) /* bytes queued towards a side before its peer stops reading */

typedef struct relay relay_t;

typedef struct side {
  uv_tcp_t tcp;
  relay_t *relay;
  struct side *peer;
} side_t;

struct relay {
  dk_forwarder_t *f;
  side_t client, upstream;
  uv_connect_t connect;
  int open_handles;
  bool closing;
  relay_t *prev, *next;
};

struct dk_forwarder {
  uv_loop_t *loop;
  uv_tcp_t listener;
  struct sockaddr_in upstream;
  bool has_upstream;
  relay_t *relays;
  bool listener_open;
};

typedef struct write_req {
  uv_write_t req;
  side_t *to;
  char *base;
} write_req_t;

static void maybe_free_forwarder(dk_forwarder_t *f) {
  if (!f->listener_open && !f->relays)
    free(f);
}

static void on_side_closed(uv_handle_t *h) {
  relay_t *r = ((side_t *)h->data)->relay;
  if (--r->open_handles > 0)
    return;
  dk_forwarder_t *f = r->f;
  if (r->prev)
    r->prev->next = r->next;
  else
    f->relays = r->next;
  if (r->next)
    r->next->prev = r->prev;
  free(r);
  if (!f->listener_open)
    maybe_free_forwarder(f);
}

static void relay_close(relay_t *r) {
  if (r->closing)
    return;
  r->closing = true;
  uv_close((uv_handle_t *)&r->client.tcp, on_side_closed);
  uv_close((uv_handle_t *)&r->upstream.tcp, on_side_closed);
}

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  BT_UNUSED(h);
  buf->base = malloc(suggested);
  buf->len = buf->base ? suggested : 0;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf);

static void on_written(uv_write_t *req, int status) {
  write_req_t *w = (write_req_t *)req;
  side_t *to = w->to;
  free(w->base);
  free(w);
  relay_t *r = to->relay;
  if (status != 0) {
    relay_close(r);
    return;
  }
  /* Resume the side that was feeding `to` once the queue has drained to half. */
  if (!r->closing && to->tcp.write_queue_size < HIGH_WATER / 2 &&
      !uv_is_active((uv_handle_t *)&to->peer->tcp))
    uv_read_start((uv_stream_t *)&to->peer->tcp, on_alloc, on_read);
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  side_t *from = s->data;
  relay_t *r = from->relay;
  if (nread <= 0) {
    free(buf->base);
    if (nread < 0) /* EOF or error: Kafka clients never half-close, so close both */
      relay_close(r);
    return;
  }
  write_req_t *w = malloc(sizeof *w);
  if (!w) {
    free(buf->base);
    relay_close(r);
    return;
  }
  w->to = from->peer;
  w->base = buf->base;
  uv_buf_t out = uv_buf_init(buf->base, (unsigned)nread);
  if (uv_write(&w->req, (uv_stream_t *)&w->to->tcp, &out, 1, on_written) != 0) {
    free(w->base);
    free(w);
    relay_close(r);
    return;
  }
  if (w->to->tcp.write_queue_size > HIGH_WATER)
    uv_read_stop(s);
}

static void on_upstream_connected(uv_connect_t *req, int status) {
  relay_t *r = req->data;
  if (r->closing)
    return;
  if (status != 0) {
    bt_log_warn("forwarder upstream connect failed", "{s:s}", "error", uv_strerror(status));
    relay_close(r);
    return;
  }
  uv_read_start((uv_stream_t *)&r->client.tcp, on_alloc, on_read);
  uv_read_start((uv_stream_t *)&r->upstream.tcp, on_alloc, on_read);
}

static void on_connection(uv_stream_t *listener, int status) {
  dk_forwarder_t *f = listener->data;
  if (status != 0)
    return;
  relay_t *r = calloc(1, sizeof *r);
  if (!r)
    return; /* the pending connection stays in the backlog until memory returns */
  r->f = f;
  r->client = (side_t){.relay = r, .peer = &r->upstream};
  r->upstream = (side_t){.relay = r, .peer = &r->client};
  uv_tcp_init(f->loop, &r->client.tcp);
  uv_tcp_init(f->loop, &r->upstream.tcp);
  r->client.tcp.data = &r->client;
  r->upstream.tcp.data = &r->upstream;
  r->open_handles = 2;
  r->next = f->relays;
  if (f->relays)
    f->relays->prev = r;
  f->relays = r;
  r->connect.data = r;
  if (uv_accept(listener, (uv_stream_t *)&r->client.tcp) != 0 || !f->has_upstream ||
      uv_tcp_connect(&r->connect, &r->upstream.tcp, (const struct sockaddr *)&f->upstream,
                     on_upstream_connected) != 0)
    relay_close(r);
}

int dk_forwarder_set_upstream(dk_forwarder_t *f, const char *upstream) {
  const char *colon = strrchr(upstream, ':');
  if (!colon || colon - upstream >= 64)
    return BT_EINVAL;
  char host[64];
  memcpy(host, upstream, (size_t)(colon - upstream));
  host[colon - upstream] = '\0';
  if (uv_ip4_addr(host, atoi(colon + 1), &f->upstream) != 0)
    return BT_EINVAL;
  f->has_upstream = true;
  return 0;
}

int dk_forwarder_start(dk_forwarder_t **out, uv_loop_t *loop, int port) {
  dk_forwarder_t *f = calloc(1, sizeof *f);
  if (!f)
    return BT_ENOMEM;
  f->loop = loop;
  struct sockaddr_in addr;
  int rc = uv_ip4_addr("127.0.0.1", port, &addr);
  if (rc != 0) {
    free(f);
    return rc;
  }
  uv_tcp_init(loop, &f->listener);
  f->listener.data = f;
  f->listener_open = true;
  rc = uv_tcp_bind(&f->listener, (const struct sockaddr *)&addr, 0);
  if (rc == 0)
    rc = uv_listen((uv_stream_t *)&f->listener, 128, on_connection);
  if (rc != 0) {
    dk_forwarder_close(f);
    return rc;
  }
  *out = f;
  return 0;
}

static void on_listener_closed(uv_handle_t *h) {
  dk_forwarder_t *f = h->data;
  f->listener_open = false;
  maybe_free_forwarder(f);
}

void dk_forwarder_close(dk_forwarder_t *f) {
  uv_close((uv_handle_t *)&f->listener, on_listener_closed);
  for (relay_t *r = f->relays; r; r = r->next)
    relay_close(r);
}
