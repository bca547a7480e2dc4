/* bt_http_server_t: HTTP/1.1 on libuv TCP with http_parser, keep-alive, pipelining (answered
 * in order, one request at a time per connection), a router with {param} segments, and hard
 * limits (body 413, headers 431, slow or idle clients 408, malformed 400, max connections).
 * Every server also answers /healthz, /readyz and /metrics for its bt_app_t. */
#ifndef BT_HTTP_SERVER_H
#define BT_HTTP_SERVER_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>
#include <uv.h>

#include "app.h"
#include "buf.h"
#include "errors.h"

typedef struct bt_http_server bt_http_server_t;
typedef struct bt_http_conn bt_http_conn_t;

typedef struct bt_http_limits {
  size_t max_body_bytes;        /* larger bodies answer 413 */
  size_t max_header_bytes;      /* request line plus headers; larger answer 431 */
  uint64_t header_timeout_ms;   /* a request must arrive completely within this: else 408 */
  uint64_t idle_timeout_ms;     /* keep-alive connections idle this long are closed */
  unsigned max_connections;     /* further connections are accepted and closed at once */
  size_t max_response_bytes;    /* cap on a buffered response body */
} bt_http_limits_t;

/* Defaults: 1 MiB body, 16 KiB headers, 10 s header timeout, 60 s idle, 4096 conns. */
void bt_http_limits_default(bt_http_limits_t *l);

#define BT_HTTP_MAX_HEADERS 64
#define BT_HTTP_MAX_PARAMS 8

typedef struct bt_http_header {
  const char *name;  /* lower-cased */
  const char *value;
} bt_http_header_t;

/* One parsed request. Borrowed by the handler; valid until bt_http_respond() is called. */
typedef struct bt_http_req {
  bt_http_conn_t *conn;
  const char *method;   /* "GET", "POST", ... */
  const char *path;     /* percent-decoded path, without the query */
  const char *query;    /* raw query string after '?', or "" */
  bt_http_header_t headers[BT_HTTP_MAX_HEADERS];
  unsigned nheaders;
  const char *body;     /* NUL-terminated for convenience; may contain NULs (use body_len) */
  size_t body_len;
  struct { const char *name, *value; } params[BT_HTTP_MAX_PARAMS];
  unsigned nparams;
  uint64_t started_ms;  /* loop time when the request was complete */
  bt_buf_t extra_headers; /* response headers added with bt_http_req_add_header */
} bt_http_req_t;

/* A route handler. It must call one of the bt_http_respond* functions exactly once, now or
 * later from another callback (e.g. after a Kafka delivery report). */
typedef void (*bt_http_handler_fn)(bt_http_req_t *req, void *arg);

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

/* Open connections (for metrics and tests). */
unsigned bt_http_server_connections(const bt_http_server_t *s);

/* Request accessors. Names are case-insensitive; results are borrowed. NULL if absent. */
const char *bt_http_req_header(const bt_http_req_t *req, const char *name);
const char *bt_http_req_param(const bt_http_req_t *req, const char *name);
/* Copies the percent-decoded value of query parameter `name` into out; returns its length
 * or -1 if absent or longer than outsz-1. */
int bt_http_req_query(const bt_http_req_t *req, const char *name, char *out, size_t outsz);
/* Adds a response header (e.g. Retry-After). Call before responding. */
void bt_http_req_add_header(bt_http_req_t *req, const char *name, const char *value);

/* Sends the response. Copies body; the request is finished afterwards and must not be used. */
void bt_http_respond(bt_http_req_t *req, int status, const char *content_type, const char *body,
                     size_t len);
/* Sends a JSON response and takes ownership of obj (a jansson json_t *). */
void bt_http_respond_json(bt_http_req_t *req, int status, void *obj);
/* Sends {"error": code, "detail": "..."}. */
void bt_http_respond_error(bt_http_req_t *req, int status, const char *code, const char *fmt, ...)
    BT_PRINTF(4, 5);

/* Percent-decodes src[0..len) into dst, which has room for len+1 bytes, and NUL-terminates it.
 * Returns the decoded length, or -1 on a malformed escape or an encoded NUL. */
int bt_http_pct_decode(char *dst, const char *src, size_t len, bool plus_is_space);

/* The status text for a code ("Not Found"). */
const char *bt_http_status_text(int status);

#endif
