/* bt_http_server_t: HTTP/1.1 on libuv TCP with http_parser, keep-alive, pipelining (answered
 * in order, one request at a time per connection), a router with {param} segments, and hard
 * limits (body 413, headers 431, slow or idle clients 408, malformed 400, max connections,
 * a process-wide budget of buffered bytes: 503), output backpressure and write timeouts.
 * Every server also answers /healthz, /readyz and /metrics for its bt_app_t. Handlers see
 * only the request API of http_req.h. */
#ifndef BT_HTTP_SERVER_H
#define BT_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "app.h"
#include "http_req.h"

typedef struct bt_http_server bt_http_server_t;

typedef struct bt_http_limits {
  size_t max_body_bytes;        /* larger bodies answer 413 */
  size_t max_header_bytes;      /* request line plus headers; larger answer 431 */
  uint64_t header_timeout_ms;   /* a request must arrive completely within this: else 408 */
  uint64_t idle_timeout_ms;     /* keep-alive connections idle this long are closed */
  uint64_t write_timeout_ms;    /* queued output making no progress this long: reset */
  unsigned max_connections;     /* further connections are accepted and closed at once */
  size_t max_buffered_bytes;    /* process-wide input, body and output bytes; past it, 503 */
} bt_http_limits_t;

/* Defaults: 1 MiB body, 16 KiB headers, 10 s header timeout, 60 s idle, 5 s write progress,
 * 4096 conns, 128 MiB buffered. */
void bt_http_limits_default(bt_http_limits_t *l);

/* A route handler. It must answer exactly once (bt_http_respond*, or bt_http_stream_begin ...
 * bt_http_stream_end), now or later from another callback (e.g. after a Kafka delivery
 * report), unless its abort callback ran first. */
typedef void (*bt_http_handler_fn)(bt_http_req_t *req, void *arg);
/* Authenticates a request from its method, path and headers, before its body is read. Returns
 * NULL when the request may proceed, else the detail of the 401 answer (a static string). */
typedef const char *(*bt_http_auth_fn)(const bt_http_req_t *req, void *arg);

/* Creates a server bound to host:port and registers its drain/close hooks on app.
 * port 0 picks a free port (see bt_http_server_port). Returns 0 or a BT_E* code; errstr
 * (if non-NULL, 256 bytes) receives a message. */
int bt_http_server_start(bt_http_server_t **out, bt_app_t *app, const char *host, int port,
                         const bt_http_limits_t *limits, char *errstr) BT_MUSTCHECK;
int bt_http_server_port(const bt_http_server_t *s);

/* Adds a route. `pattern` segments in braces are parameters: "/v1/topics/{topic}/events".
 * Pattern strings are borrowed. Routes are matched in registration order. */
void bt_http_server_route(bt_http_server_t *s, const char *method, const char *pattern,
                          bt_http_handler_fn fn, void *arg);

/* Adds a route that needs authentication: the server's auth hook runs when the headers are
 * complete, so an unauthenticated client is answered 401 (and the connection closed) before
 * any of its body is buffered. Without a hook (bt_http_server_set_auth) it acts as _route. */
void bt_http_server_route_auth(bt_http_server_t *s, const char *method, const char *pattern,
                               bt_http_handler_fn fn, void *arg);
/* Sets the auth hook for routes added with bt_http_server_route_auth (arg is borrowed). */
void bt_http_server_set_auth(bt_http_server_t *s, bt_http_auth_fn fn, void *arg);

/* Open connections (for metrics and tests). */
unsigned bt_http_server_connections(const bt_http_server_t *s);

#endif
