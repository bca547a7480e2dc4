/* bt_http_req_t: one HTTP request as a handler sees it, and the only API a handler needs: read
 * the request, allocate from its arena, answer it (whole or streamed), set a deadline, and
 * learn when its client went away. The connection and server stay behind this header. */
#ifndef BT_HTTP_REQ_H
#define BT_HTTP_REQ_H

#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "arena.h"
#include "buf.h"
#include "errors.h"

#define BT_HTTP_MAX_HEADERS 64
#define BT_HTTP_MAX_PARAMS 8

typedef struct bt_http_conn bt_http_conn_t; /* opaque to handlers */
typedef struct bt_http_req bt_http_req_t;

typedef struct bt_http_header {
  const char *name; /* lower-cased */
  const char *value;
} bt_http_header_t;

/* Called when a request ends without the handler's answer reaching the client: the client went
 * away (reset, write failure or timeout, or end of input: see bt_http_req_on_abort), or the
 * request's deadline passed and the runtime answered for the handler. The request is freed
 * when the callback returns; the handler must drop every reference to it. */
typedef void (*bt_http_abort_fn)(bt_http_req_t *req, void *arg);
/* Called once when a streamed response that was above the high-water mark has drained. */
typedef void (*bt_http_writable_fn)(bt_http_req_t *req, void *arg);

/* One parsed request. Borrowed by the handler from dispatch until it answers (bt_http_respond*
 * or bt_http_stream_end), or until its abort callback returns. The fields are read-only. */
struct bt_http_req {
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
  /* Per-request memory, released as a whole when the request ends (h2o's pool). */
  bt_arena_t arena;

  /* ---- runtime-private below: handlers use the functions of this header ---- */
  bt_http_conn_t *conn; /* NULL once orphaned: the client is gone or the deadline answered */
  bt_buf_t head;        /* url and header names/values, NUL-separated */
  bt_buf_t body_buf;
  bt_buf_t scratch;     /* decoded path and parameter values */
  bt_buf_t extra_headers; /* response headers added with bt_http_req_add_header */
  const void *route;    /* the route matched at headers-complete, or NULL */
  int route_status;     /* without a route: 404 or 405 */
  int deadline_status;  /* the runtime's answer when the deadline passes */
  bt_http_abort_fn on_abort;
  void *abort_arg;
  bt_http_writable_fn on_writable;
  void *writable_arg;
  bool head_only;       /* a HEAD request: the answer has no body */
  bool keep_alive;
  bool http10;          /* HTTP/1.0: no chunked encoding */
  bool streaming;       /* bt_http_stream_begin was called */
  bool stream_close;    /* the streamed answer announced Connection: close */
};

/* Request accessors. Names are case-insensitive; results are borrowed. NULL if absent. */
const char *bt_http_req_header(const bt_http_req_t *req, const char *name);
const char *bt_http_req_param(const bt_http_req_t *req, const char *name);
/* Copies the percent-decoded value of query parameter `name` into out; returns its length
 * or -1 if absent or longer than outsz-1. */
int bt_http_req_query(const bt_http_req_t *req, const char *name, char *out, size_t outsz);
/* Adds a response header (e.g. Retry-After). Call before responding. */
void bt_http_req_add_header(bt_http_req_t *req, const char *name, const char *value);

/* Registers the abort callback (see bt_http_abort_fn). Registering one also says that an answer
 * is worthless once the client stops sending: end of input (EOF) then counts as going away, so
 * a long-poll waiter is freed as soon as its client closes. Without a callback, a half-closed
 * client still gets its answer, and an answer given after the client left is dropped. */
void bt_http_req_on_abort(bt_http_req_t *req, bt_http_abort_fn fn, void *arg);
/* Arms a deadline ms from now: if the handler has not answered (or begun streaming) by then,
 * the runtime answers `status` (503 or 504) with {"error":"deadline_exceeded"}, calls the abort
 * callback if any, and drops the handler's late answer safely. Replaces an earlier deadline. */
void bt_http_req_set_deadline(bt_http_req_t *req, uint64_t ms, int status);

/* Sends the whole response. Copies body; the request is finished afterwards and must not be
 * used. A HEAD request gets the headers only. Answering an orphaned request frees it. */
void bt_http_respond(bt_http_req_t *req, int status, const char *content_type, const char *body,
                     size_t len);
/* Sends a JSON response and takes ownership of obj (a jansson json_t *). */
void bt_http_respond_json(bt_http_req_t *req, int status, void *obj);
/* Sends {"error": code, "detail": "..."}. */
void bt_http_respond_error(bt_http_req_t *req, int status, const char *code, const char *fmt, ...)
    BT_PRINTF(4, 5);

/* Streamed responses (Transfer-Encoding: chunked; HTTP/1.0 clients get the raw bytes and a
 * close). begin sends the status line and headers; write queues one chunk (copied) and returns
 * 1 when more may be written now, 0 when the connection's output is above its high-water mark
 * (wait for the callback set with bt_http_stream_on_writable), or BT_ECONNRESET when the
 * client is gone (keep calling nothing but bt_http_stream_end). end finishes the request. */
void bt_http_stream_begin(bt_http_req_t *req, int status, const char *content_type);
int bt_http_stream_write(bt_http_req_t *req, const void *data, size_t len) BT_MUSTCHECK;
void bt_http_stream_on_writable(bt_http_req_t *req, bt_http_writable_fn fn, void *arg);
void bt_http_stream_end(bt_http_req_t *req);

/* Percent-decodes src[0..len) into dst, which has room for len+1 bytes, and NUL-terminates it.
 * Returns the decoded length, or -1 on a malformed escape or an encoded NUL. */
int bt_http_pct_decode(char *dst, const char *src, size_t len, bool plus_is_space);
/* The status text for a code ("Not Found"). */
const char *bt_http_status_text(int status);

#endif
