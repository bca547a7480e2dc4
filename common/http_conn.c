/* One HTTP/1.1 connection: reads bytes, parses them with http_parser, enforces the limits,
 * hands complete requests to the server one at a time (so pipelined requests are answered in
 * order), and writes responses, whole or streamed. Handlers never touch the socket.
 *
 * Output backpressure follows h2o's http1.c: the next pipelined request is parsed only while
 * the output queued for this client is below a small high-water mark, and reading stops
 * meanwhile, so a client that pipelines and never reads fills its own kernel buffers, not our
 * memory. Queued output that makes no progress for write_timeout_ms resets the connection. */
#include "http_conn.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fsm.h"
#include "log.h"

/* Stop reading while this much input waits behind a dispatched request: a pipelining client
 * can then only fill the kernel's socket buffer, not our memory. */
#define PIPELINE_INPUT_HIGH_WATER (64 * 1024)
/* Parse the next pipelined request (or ask a streaming handler for more) only while less than
 * this much output is queued for the client. */
#define OUTPUT_HIGH_WATER (64 * 1024)
/* Bytes asked of each read. */
#define READ_SIZE 16384
#define MAX_INPUT_BUFFER (2 * PIPELINE_INPUT_HIGH_WATER)
/* After the last answer of a connection whose client may still be sending (a refused body),
 * input is discarded for at most this long before the socket is closed. */
#define LINGER_MS 2000

static bt_fsm_def_t conn_fsm;

static void process_input(bt_http_conn_t *c);
static void update_reading(bt_http_conn_t *c);
static void close_conn(bt_http_conn_t *c, const char *reason);

static void set_state(bt_http_conn_t *c, bt_http_conn_state_t next) {
  bt_fsm_move(&conn_fsm, c->state, next, NULL);
  c->state = next;
}

static size_t unparsed(const bt_http_conn_t *c) { return c->in.len - c->in_off; }

/* ---- closing ------------------------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h) {
  bt_http_conn_t *c = h->data;
  if (--c->open_handles > 0)
    return;
  bt__http_buf_release(&c->in);
  bt__http_req_free(c->req);
  bt__http_req_free(c->spare);
  bt_fsm_leave(&conn_fsm, c->state);
  bt__http_server_conn_closed(c->srv, c);
}

/* Takes the current request away from the connection. A request a handler never saw is freed.
 * A dispatched one is orphaned: its abort callback runs and it is freed, or, without one, the
 * handler's later answer finds it orphaned, drops the answer and frees it. */
static void detach_request(bt_http_conn_t *c, const char *why) {
  bt_http_req_t *r = c->req;
  if (!r)
    return;
  bool with_handler = r->conn != NULL; /* set at dispatch */
  c->req = NULL;
  r->conn = NULL;
  if (!with_handler) {
    bt__http_req_free(r);
    return;
  }
  bt__http_server_count(c->srv, "aborted");
  bt_log_debug("http request aborted", "{s:s, s:s, s:s}", "method", r->method, "path", r->path,
               "reason", why);
  if (r->on_abort) {
    r->on_abort(r, r->abort_arg);
    bt__http_req_free(r);
  }
}

static void close_handles(bt_http_conn_t *c, bool reset) {
  set_state(c, BT_HTTP_CONN_CLOSING);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  uv_close((uv_handle_t *)&c->wtimer, on_handle_closed);
  /* RST is not allowed once a shutdown was issued (libuv refuses to mix them). */
  if (!reset || c->shut || uv_tcp_close_reset(&c->tcp, on_handle_closed) != 0)
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* An orderly close: the request in hand (if any) is aborted. */
static void close_conn(bt_http_conn_t *c, const char *reason) {
  if (c->state == BT_HTTP_CONN_CLOSING)
    return;
  bt_log_debug("http connection closed", "{s:s, s:i}", "reason", reason, "served", (int)c->nserved);
  detach_request(c, reason);
  close_handles(c, false);
}

/* The client is gone (reset, write error or no write progress): abort the request in hand and
 * reset the connection, which frees the kernel's queued output at once. */
static void peer_gone(bt_http_conn_t *c, const char *reason) {
  if (c->state == BT_HTTP_CONN_CLOSING || c->state == BT_HTTP_CONN_PEER_GONE)
    return;
  bt_log_debug("http peer gone", "{s:s, s:i}", "reason", reason, "served", (int)c->nserved);
  set_state(c, BT_HTTP_CONN_PEER_GONE);
  detach_request(c, reason);
  close_handles(c, true);
}

/* Closes from the next loop iteration: for failures found while a handler is on the stack,
 * whose abort callback must not run inside its own call. */
static void on_deferred_close(uv_timer_t *t) {
  bt_http_conn_t *c = t->data;
  peer_gone(c, c->defer_reason);
}

static void defer_close(bt_http_conn_t *c, const char *reason) {
  c->defer_reason = reason;
  uv_timer_start(&c->wtimer, on_deferred_close, 0, 0);
}

/* ---- writing ------------------------------------------------------------------------------ */

typedef struct {
  uv_write_t req;
  bt_http_conn_t *conn;
  size_t len;
  char data[];
} write_req_t;

static void on_write_timer(uv_timer_t *t) {
  bt_http_conn_t *c = t->data;
  if (c->out_bytes == 0) {
    uv_timer_stop(t);
    return;
  }
  /* Progress is a completed write or a shorter kernel-bound queue since the last tick. */
  size_t q = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
  if (c->writes_done != c->wt_done || q < c->wt_queue) {
    c->wt_done = c->writes_done;
    c->wt_queue = q;
    return;
  }
  bt__http_server_count(c->srv, "write_timeout");
  bt_log_info("http write timeout: the client stopped reading", "{s:i}", "queued",
              (int)c->out_bytes);
  peer_gone(c, "write timeout");
}

static void maybe_close_after_write(bt_http_conn_t *c);

static void on_write(uv_write_t *w, int status) {
  write_req_t *wr = (write_req_t *)w;
  bt_http_conn_t *c = wr->conn;
  c->out_bytes -= wr->len;
  bt__http_budget_output(-(long)wr->len);
  c->writes_done++;
  free(wr);
  if (c->out_bytes == 0)
    uv_timer_stop(&c->wtimer);
  if (status < 0) {
    peer_gone(c, uv_strerror(status));
    return;
  }
  switch (c->state) {
  case BT_HTTP_CONN_READING:
    /* Output went below the mark: parse what the client pipelined meanwhile. */
    if (c->out_bytes <= OUTPUT_HIGH_WATER)
      process_input(c);
    break;
  case BT_HTTP_CONN_STREAMING:
    if (c->out_bytes <= OUTPUT_HIGH_WATER / 2 && c->req && c->req->on_writable) {
      bt_http_writable_fn fn = c->req->on_writable;
      c->req->on_writable = NULL;
      fn(c->req, c->req->writable_arg);
    }
    break;
  case BT_HTTP_CONN_CLOSE_AFTER_WRITE:
    maybe_close_after_write(c);
    break;
  case BT_HTTP_CONN_DISPATCHED:
  case BT_HTTP_CONN_LINGERING:
  case BT_HTTP_CONN_PEER_GONE:
  case BT_HTTP_CONN_CLOSING:
    break;
  default:
    bt_fatal("http conn: write completed in unknown state %d", (int)c->state);
  }
}

/* Allocates a write request for len bytes, counted as queued output. */
static write_req_t *out_alloc(bt_http_conn_t *c, size_t len) {
  write_req_t *wr = malloc(sizeof *wr + len);
  if (!wr)
    return NULL;
  wr->conn = c;
  wr->len = len;
  return wr;
}

/* Queues wr; libuv writes at once what the socket takes and keeps the rest. */
static void out_send(bt_http_conn_t *c, write_req_t *wr) {
  uv_buf_t b = uv_buf_init(wr->data, (unsigned)wr->len);
  int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (rc < 0) {
    free(wr);
    defer_close(c, uv_strerror(rc));
    return;
  }
  c->out_bytes += wr->len;
  bt__http_budget_output((long)wr->len);
  /* Arm the progress timer only when the kernel did not take everything at once. */
  size_t queued = uv_stream_get_write_queue_size((uv_stream_t *)&c->tcp);
  if (queued > 0 && !uv_is_active((uv_handle_t *)&c->wtimer)) {
    uint64_t ms = bt__http_server_limits(c->srv)->write_timeout_ms;
    c->wt_done = c->writes_done;
    c->wt_queue = queued;
    uv_timer_start(&c->wtimer, on_write_timer, ms, ms);
  }
}

static void write_raw(bt_http_conn_t *c, const char *data, size_t len) {
  write_req_t *wr = out_alloc(c, len);
  if (!wr) {
    defer_close(c, "out of memory for a response");
    return;
  }
  memcpy(wr->data, data, len);
  out_send(c, wr);
}

/* Formats the status line and headers into head (or a larger allocation when they do not fit)
 * and returns their length, or -1. *big is set to the allocation to free. */
static int format_head(char *head, size_t headsz, char **big, int status, const char *ctype,
                       const char *framing, bool close_after, const bt_buf_t *extra) {
  const char *fmt = "HTTP/1.1 %d %s\r\nContent-Type: %s\r\n%s%s%.*s\r\n";
  int elen = extra ? (int)extra->len : 0;
  const char *edata = extra && extra->data ? extra->data : "";
  const char *conn = close_after ? "Connection: close\r\n" : "";
  *big = NULL;
  int n = snprintf(head, headsz, fmt, status, bt_http_status_text(status), ctype, framing, conn,
                   elen, edata);
  if (n < 0)
    return -1;
  if ((size_t)n < headsz)
    return n;
  /* A long content type or many extra headers: format again into a buffer that fits. */
  *big = malloc((size_t)n + 1);
  if (!*big)
    return -1;
  int m = snprintf(*big, (size_t)n + 1, fmt, status, bt_http_status_text(status), ctype, framing,
                   conn, elen, edata);
  return m == n ? n : -1;
}

/* Writes a whole response: head and body in one write. A HEAD request gets the head only. */
static void write_response(bt_http_conn_t *c, const bt_http_req_t *req, int status,
                           const char *ctype, const char *body, size_t len, bool close_after,
                           const char *extra_line) {
  char framing[64];
  snprintf(framing, sizeof framing, "Content-Length: %zu\r\n%s", len,
           extra_line ? extra_line : "");
  char head[512], *big;
  int n = format_head(head, sizeof head, &big, status, ctype, framing, close_after,
                      req ? &req->extra_headers : NULL);
  if (n < 0) {
    defer_close(c, "out of memory for a response");
    return;
  }
  size_t blen = req && req->head_only ? 0 : len;
  write_req_t *wr = out_alloc(c, (size_t)n + blen);
  if (!wr) {
    free(big);
    defer_close(c, "out of memory for a response");
    return;
  }
  memcpy(wr->data, big ? big : head, (size_t)n);
  if (blen)
    memcpy(wr->data + n, body, blen);
  free(big);
  out_send(c, wr);
}

/* ---- timers ------------------------------------------------------------------------------- */

static void on_timer(uv_timer_t *t);

static void arm_timer(bt_http_conn_t *c, uint64_t ms) {
  uv_timer_start(&c->timer, on_timer, ms, 0);
}

/* ---- ending a request --------------------------------------------------------------------- */

static void on_shutdown(uv_shutdown_t *req, int status) {
  (void)req; /* the linger timer or the client's EOF ends the connection */
  (void)status;
}

/* Once the last answer is flushed: close at once if the client has closed its side, else shut
 * ours down and linger, discarding input, so the client reads the answer before any reset. */
static void maybe_close_after_write(bt_http_conn_t *c) {
  if (c->state != BT_HTTP_CONN_CLOSE_AFTER_WRITE || c->out_bytes > 0)
    return;
  if (c->eof) {
    close_conn(c, "answered; the client had closed its side");
    return;
  }
  if (uv_shutdown(&c->shutdown, (uv_stream_t *)&c->tcp, on_shutdown) != 0) {
    close_conn(c, "answered; shutdown failed");
    return;
  }
  c->shut = true;
  set_state(c, BT_HTTP_CONN_LINGERING);
  c->in.len = c->in_off = 0;
  arm_timer(c, LINGER_MS);
  update_reading(c);
}

/* The current request is answered: close after the answer, or go on with the next one. */
static void next_request(bt_http_conn_t *c, bool close_after) {
  c->nserved++;
  if (close_after || bt__http_server_draining(c->srv)) {
    set_state(c, BT_HTTP_CONN_CLOSE_AFTER_WRITE);
    c->in.len = c->in_off = 0; /* pipelined requests behind a close are not answered */
    update_reading(c);
    maybe_close_after_write(c);
    return;
  }
  set_state(c, BT_HTTP_CONN_READING);
  arm_timer(c, bt__http_server_limits(c->srv)->idle_timeout_ms);
  process_input(c);
}

/* The handler's request is answered: recycle it and go on with the connection. */
static void finish_request(bt_http_conn_t *c, bool close_after) {
  bt_http_req_t *r = c->req;
  c->req = NULL;
  if (c->spare) {
    bt__http_req_free(r);
  } else {
    bt__http_req_recycle(r);
    c->spare = r;
  }
  next_request(c, close_after);
}

/* An error found before any handler saw the request: answer it and close. */
static void fail_request(bt_http_conn_t *c, int status, const char *code, const char *detail,
                         const char *extra_line) {
  BT_ASSERT(c->state == BT_HTTP_CONN_READING);
  json_t *j = json_pack("{s:s, s:s}", "error", code, "detail", detail);
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  bt_log_info("http request rejected", "{s:i, s:s, s:s}", "status", status, "error", code,
              "detail", detail);
  uv_timer_stop(&c->timer);
  write_response(c, NULL, status, "application/json", text ? text : "{}",
                 text ? strlen(text) : 2, true, extra_line);
  free(text);
  bt__http_server_responded(c->srv, NULL, status);
  if (c->state != BT_HTTP_CONN_READING)
    return; /* the write failed and closed the connection */
  bt__http_req_free(c->req);
  c->req = NULL;
  c->in.len = c->in_off = 0; /* nothing more is parsed from this connection */
  set_state(c, BT_HTTP_CONN_CLOSE_AFTER_WRITE);
  update_reading(c);
  maybe_close_after_write(c);
}

static void on_timer(uv_timer_t *t) {
  bt_http_conn_t *c = t->data;
  switch (c->state) {
  case BT_HTTP_CONN_READING:
    if (!c->message_begun && c->out_bytes > 0) {
      /* Idle only because its answers are still queued: the write timer governs. */
      arm_timer(c, bt__http_server_limits(c->srv)->idle_timeout_ms);
      return;
    }
    fail_request(c, 408, "request_timeout",
                 c->message_begun ? "the request did not arrive in time"
                                  : "the connection was idle too long",
                 NULL);
    return;
  case BT_HTTP_CONN_DISPATCHED: {
    /* The handler missed its deadline: answer for it; its late answer finds the request
     * orphaned and is dropped. */
    bt_http_req_t *r = c->req;
    bt__http_server_count(c->srv, "deadline");
    bool close_after = !r->keep_alive;
    static const char body[] = "{\"error\":\"deadline_exceeded\","
                               "\"detail\":\"the request was not answered in time\"}";
    int status = r->deadline_status;
    bt_buf_reset(&r->extra_headers);
    write_response(c, r, status, "application/json", body, sizeof body - 1, close_after,
                   status == 503 ? "Retry-After: 1\r\n" : NULL);
    bt__http_server_responded(c->srv, r, status);
    if (c->state != BT_HTTP_CONN_DISPATCHED)
      return; /* the write failed: the request was aborted with the connection */
    c->req = NULL;
    r->conn = NULL;
    if (r->on_abort) {
      r->on_abort(r, r->abort_arg);
      bt__http_req_free(r);
    }
    next_request(c, close_after);
    return;
  }
  case BT_HTTP_CONN_LINGERING:
    close_conn(c, "answered; lingering ended");
    return;
  case BT_HTTP_CONN_STREAMING:
  case BT_HTTP_CONN_CLOSE_AFTER_WRITE:
  case BT_HTTP_CONN_PEER_GONE:
  case BT_HTTP_CONN_CLOSING:
    return;
  default:
    bt_fatal("http conn: timer in unknown state %d", (int)c->state);
  }
}

/* ---- parsing ------------------------------------------------------------------------------ */

static bt_http_conn_t *conn_of(http_parser *p) { return p->data; }

static void reset_parser(bt_http_conn_t *c) {
  c->nhdr = 0;
  c->in_value = false;
  c->message_begun = false;
  c->message_done = false;
  c->error_status = 0;
  c->error_detail = NULL;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
}

static int head_append(bt_http_conn_t *c, const char *at, size_t len) {
  bt_buf_t *h = &c->req->head;
  int rc = bt__http_buf_reserve(h, len, bt__http_server_limits(c->srv)->max_header_bytes);
  if (rc != 0) {
    c->error_status = rc == BT_ERANGE ? 431 : 503;
    return -1;
  }
  memcpy(h->data + h->len, at, len);
  h->len += len;
  return 0;
}

static int on_message_begin(http_parser *p) {
  bt_http_conn_t *c = conn_of(p);
  c->message_begun = true;
  if (!c->req) {
    c->req = c->spare ? c->spare : bt__http_req_new();
    c->spare = NULL;
    if (!c->req) {
      c->error_status = 503;
      return -1;
    }
  }
  arm_timer(c, bt__http_server_limits(c->srv)->header_timeout_ms);
  return 0;
}

static int on_url(http_parser *p, const char *at, size_t len) {
  return head_append(conn_of(p), at, len);
}

/* Header names and values may arrive in pieces; a field after a value starts a new header.
 * Each piece is appended to `head`, and a NUL ends the previous piece's string. */
static int on_header_field(http_parser *p, const char *at, size_t len) {
  bt_http_conn_t *c = conn_of(p);
  if (c->nhdr == 0 || c->in_value) {
    if (c->nhdr == BT_HTTP_MAX_HEADERS) {
      c->error_status = 431;
      return -1;
    }
    if (head_append(c, "", 1)) /* ends the url or the previous value */
      return -1;
    c->hdr_off[c->nhdr][0] = c->req->head.len;
    c->hdr_off[c->nhdr][1] = 0;
    c->nhdr++;
    c->in_value = false;
  }
  return head_append(c, at, len);
}

static int on_header_value(http_parser *p, const char *at, size_t len) {
  bt_http_conn_t *c = conn_of(p);
  if (!c->in_value) {
    if (head_append(c, "", 1))
      return -1;
    c->hdr_off[c->nhdr - 1][1] = c->req->head.len;
    c->in_value = true;
  }
  return head_append(c, at, len);
}

/* Fills the request from its head: method, decoded path, query and headers. Pointers go into
 * `head` and `scratch`, which do not grow again before the answer. */
static int build_request(bt_http_conn_t *c) {
  bt_http_req_t *r = c->req;
  const char *url = r->head.data;
  size_t url_len = strlen(url);
  const char *q = memchr(url, '?', url_len);
  size_t path_len = q ? (size_t)(q - url) : url_len;
  /* Room for the decoded path and every parameter value, each no longer than the raw path. */
  bt_buf_reset(&r->scratch);
  if (bt_buf_reserve(&r->scratch, 2 * path_len + BT_HTTP_MAX_PARAMS + 2) != 0)
    return 503;
  int dlen = bt_http_pct_decode(r->scratch.data, url, path_len, false);
  if (dlen < 0)
    return 400;
  r->scratch.len = (size_t)dlen + 1;
  r->method = http_method_str((enum http_method)c->parser.method);
  r->head_only = c->parser.method == HTTP_HEAD;
  r->http10 = c->parser.http_minor == 0;
  r->path = r->scratch.data;
  r->query = q ? q + 1 : "";
  r->nheaders = c->nhdr;
  for (unsigned i = 0; i < c->nhdr; i++) {
    char *name = r->head.data + c->hdr_off[i][0];
    for (char *s = name; *s; s++)
      if (*s >= 'A' && *s <= 'Z')
        *s = (char)(*s - 'A' + 'a');
    r->headers[i].name = name;
    r->headers[i].value = c->hdr_off[i][1] ? r->head.data + c->hdr_off[i][1] : "";
  }
  r->body = "";
  r->body_len = 0;
  r->nparams = 0;
  return 0;
}

static int on_headers_complete(http_parser *p) {
  bt_http_conn_t *c = conn_of(p);
  if (head_append(c, "", 1))
    return -1;
  if (p->http_major != 1) {
    c->error_status = 505;
    return -1;
  }
  int rc = build_request(c);
  if (rc != 0) {
    c->error_status = rc;
    c->error_detail = "the request path is not valid percent-encoding";
    return -1;
  }
  /* Route and authenticate now, before a byte of the body is buffered. */
  rc = bt__http_server_admit(c->srv, c->req, &c->error_detail);
  if (rc != 0) {
    c->error_status = rc;
    return -1;
  }
  const bt_http_limits_t *lim = bt__http_server_limits(c->srv);
  /* A declared length over the limit is refused before the body is read; one within it is
   * reserved at once, so the budget refuses it now rather than half-way. */
  if (p->content_length != ULLONG_MAX && p->content_length > 0) {
    if (p->content_length > lim->max_body_bytes) {
      c->error_status = 413;
      return -1;
    }
    if (bt__http_buf_resize(&c->req->body_buf, (size_t)p->content_length + 1) != 0) {
      c->error_status = 503;
      return -1;
    }
  }
  /* curl and others wait for 100 Continue before sending a large body. */
  const char *expect = bt_http_req_header(c->req, "expect");
  if (expect && strcasecmp(expect, "100-continue") == 0)
    write_raw(c, "HTTP/1.1 100 Continue\r\n\r\n", 25);
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  bt_http_conn_t *c = conn_of(p);
  bt_buf_t *b = &c->req->body_buf;
  int rc = bt__http_buf_reserve(b, len, bt__http_server_limits(c->srv)->max_body_bytes);
  if (rc != 0) {
    c->error_status = rc == BT_ERANGE ? 413 : 503;
    return -1;
  }
  memcpy(b->data + b->len, at, len);
  b->len += len;
  return 0;
}

static int on_message_complete(http_parser *p) {
  bt_http_conn_t *c = conn_of(p);
  bt_http_req_t *r = c->req;
  c->message_done = true;
  r->keep_alive = http_should_keep_alive(p) != 0;
  if (r->body_buf.data) {
    r->body_buf.data[r->body_buf.len] = '\0';
    r->body = r->body_buf.data;
  }
  r->body_len = r->body_buf.len;
  /* Pause so that execute() returns here; the rest of the input waits for the response. */
  http_parser_pause(p, 1);
  return 0;
}

static const http_parser_settings parser_settings = {
    .on_message_begin = on_message_begin,
    .on_url = on_url,
    .on_header_field = on_header_field,
    .on_header_value = on_header_value,
    .on_headers_complete = on_headers_complete,
    .on_body = on_body,
    .on_message_complete = on_message_complete,
};

static void fail_parse(bt_http_conn_t *c) {
  switch (c->error_status) {
  case 400:
    fail_request(c, 400, "bad_request", c->error_detail, NULL);
    return;
  case 401:
    fail_request(c, 401, "unauthorized", c->error_detail ? c->error_detail : "not authorized",
                 "WWW-Authenticate: Bearer\r\n");
    return;
  case 413:
    fail_request(c, 413, "body_too_large", "the request body exceeds the configured limit", NULL);
    return;
  case 431:
    fail_request(c, 431, "headers_too_large", "the request headers exceed the configured limit",
                 NULL);
    return;
  case 503:
    bt__http_server_count(c->srv, "overloaded");
    fail_request(c, 503, "overloaded", "the server's buffer budget is spent; retry later",
                 "Retry-After: 1\r\n");
    return;
  case 505:
    fail_request(c, 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served",
                 NULL);
    return;
  default:
    fail_request(c, 400, "bad_request", http_errno_description(HTTP_PARSER_ERRNO(&c->parser)),
                 NULL);
  }
}

/* Hands the complete request to its handler, which may answer before this returns. */
static void dispatch(bt_http_conn_t *c) {
  uv_timer_stop(&c->timer);
  bt_http_req_t *r = c->req;
  r->conn = c;
  r->started_ms = uv_now(bt__http_server_loop(c->srv));
  reset_parser(c);
  set_state(c, BT_HTTP_CONN_DISPATCHED);
  bt__http_server_dispatch(c->srv, r);
}

/* Parses buffered input until a request is dispatched, the input runs out or the queued output
 * is above the high-water mark. Re-entered after every answer; the in_process flag stops
 * synchronous answers (given inside the dispatch below) from recursing. */
static void process_input(bt_http_conn_t *c) {
  if (c->in_process)
    return;
  c->in_process = true;
  while (c->state == BT_HTTP_CONN_READING && unparsed(c) > 0 &&
         c->out_bytes <= OUTPUT_HIGH_WATER) {
    size_t n = http_parser_execute(&c->parser, &parser_settings, c->in.data + c->in_off,
                                   unparsed(c));
    enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
    if (err != HPE_OK && err != HPE_PAUSED) {
      fail_parse(c);
      break;
    }
    c->in_off += n;
    if (!c->message_done)
      break; /* need more bytes */
    dispatch(c);
  }
  if (c->in_off == c->in.len)
    c->in.len = c->in_off = 0;
  /* The client half-closed and every request it sent is answered (or it stopped mid-request):
   * close once the answers are flushed. */
  if (c->state == BT_HTTP_CONN_READING && c->eof && unparsed(c) == 0) {
    if (c->out_bytes == 0) {
      close_conn(c, c->message_begun ? "peer closed mid-request" : "peer closed");
    } else {
      set_state(c, BT_HTTP_CONN_CLOSE_AFTER_WRITE);
      uv_timer_stop(&c->timer);
    }
  }
  if (c->state != BT_HTTP_CONN_CLOSING)
    update_reading(c);
  c->in_process = false;
}

/* ---- reading ------------------------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  bt_http_conn_t *c = h->data;
  (void)suggested;
  /* Read straight into the input buffer, so parsing needs no extra copy. Parsed bytes are
   * dropped here, once per read, rather than by a memmove per pipelined request. */
  if (c->in_off > 0 && c->in.cap - c->in.len < READ_SIZE / 4) {
    memmove(c->in.data, c->in.data + c->in_off, unparsed(c));
    c->in.len -= c->in_off;
    c->in_off = 0;
  }
  if (c->in.cap - c->in.len < READ_SIZE / 4) {
    /* Reading stops at PIPELINE_INPUT_HIGH_WATER unparsed bytes, so this bound is not met. */
    size_t cap = c->in.cap ? c->in.cap * 2 : READ_SIZE;
    if (cap > MAX_INPUT_BUFFER || bt__http_buf_resize(&c->in, cap) != 0) {
      buf->base = NULL; /* libuv reports UV_ENOBUFS to on_read */
      buf->len = 0;
      return;
    }
  }
  buf->base = c->in.data + c->in.len;
  buf->len = c->in.cap - c->in.len;
}

static void on_eof(bt_http_conn_t *c) {
  c->eof = true;
  switch (c->state) {
  case BT_HTTP_CONN_READING:
    process_input(c); /* answers what is buffered, then closes */
    return;
  case BT_HTTP_CONN_DISPATCHED:
  case BT_HTTP_CONN_STREAMING:
    /* A handler that registered an abort callback (a long poll) wants to know now; any other
     * request is answered to the half-closed client. */
    if (c->req->on_abort)
      close_conn(c, "peer closed");
    else
      update_reading(c);
    return;
  case BT_HTTP_CONN_CLOSE_AFTER_WRITE:
    update_reading(c);
    return;
  case BT_HTTP_CONN_LINGERING:
    close_conn(c, "answered; the client closed");
    return;
  case BT_HTTP_CONN_PEER_GONE:
  case BT_HTTP_CONN_CLOSING:
    return;
  default:
    bt_fatal("http conn: EOF in unknown state %d", (int)c->state);
  }
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  bt_http_conn_t *c = s->data;
  if (nread == UV_ENOBUFS) {
    /* The buffer budget is spent. Between requests or in one, refuse with 503; behind a
     * dispatched request stop reading, as for a pipelining backlog, until it is answered. */
    if (c->state == BT_HTTP_CONN_READING) {
      bt__http_server_count(c->srv, "overloaded");
      fail_request(c, 503, "overloaded", "the server's buffer budget is spent; retry later",
                   "Retry-After: 1\r\n");
    } else {
      uv_read_stop(s);
      c->reading = false;
    }
    return;
  }
  if (nread == UV_EOF) {
    on_eof(c);
    return;
  }
  if (nread < 0) {
    peer_gone(c, uv_strerror((int)nread));
    return;
  }
  c->in.len += (size_t)nread;
  switch (c->state) {
  case BT_HTTP_CONN_READING:
    process_input(c);
    break;
  case BT_HTTP_CONN_LINGERING:
    c->in.len = c->in_off = 0; /* discarded: the client is told to go away */
    break;
  default:
    update_reading(c);
  }
  /* A short read (or none) means the socket is drained for now. An input buffer with nothing
   * unparsed then goes back to the allocator and the budget: an idle connection holds no
   * input memory. */
  if (c->state != BT_HTTP_CONN_CLOSING && (size_t)nread < buf->len && unparsed(c) == 0) {
    bt__http_buf_release(&c->in);
    c->in_off = 0;
  }
}

/* Reads while the state wants input: requests while READING and the output is below its
 * mark; a bounded backlog behind a dispatched request (which also shows a reset at once);
 * anything while LINGERING, to discard it. */
static void update_reading(bt_http_conn_t *c) {
  bool want;
  switch (c->state) {
  case BT_HTTP_CONN_READING:
    want = !c->eof && c->out_bytes <= OUTPUT_HIGH_WATER && unparsed(c) < PIPELINE_INPUT_HIGH_WATER;
    break;
  case BT_HTTP_CONN_DISPATCHED:
  case BT_HTTP_CONN_STREAMING:
    want = !c->eof && unparsed(c) < PIPELINE_INPUT_HIGH_WATER;
    break;
  case BT_HTTP_CONN_LINGERING:
    want = !c->eof;
    break;
  default:
    want = false;
  }
  if (want && !c->reading) {
    if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
      c->reading = true;
  } else if (!want && c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
  }
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static const char *const conn_state_names[BT_HTTP_CONN_NSTATES] = {
    "reading", "dispatched", "streaming", "close_after_write", "lingering", "peer_gone", "closing"};

#define B(s) BT_FSM_BIT(BT_HTTP_CONN_##s)
static const uint32_t conn_legal[BT_HTTP_CONN_NSTATES] = {
    [BT_HTTP_CONN_READING] = B(DISPATCHED) | B(CLOSE_AFTER_WRITE) | B(PEER_GONE) | B(CLOSING),
    [BT_HTTP_CONN_DISPATCHED] =
        B(READING) | B(STREAMING) | B(CLOSE_AFTER_WRITE) | B(PEER_GONE) | B(CLOSING),
    [BT_HTTP_CONN_STREAMING] = B(READING) | B(CLOSE_AFTER_WRITE) | B(PEER_GONE) | B(CLOSING),
    [BT_HTTP_CONN_CLOSE_AFTER_WRITE] = B(LINGERING) | B(PEER_GONE) | B(CLOSING),
    [BT_HTTP_CONN_LINGERING] = B(PEER_GONE) | B(CLOSING),
    [BT_HTTP_CONN_PEER_GONE] = B(CLOSING),
    [BT_HTTP_CONN_CLOSING] = 0,
};
#undef B

static bt_fsm_def_t conn_fsm = {"http conn", BT_HTTP_CONN_NSTATES, conn_state_names, conn_legal,
                                {{0}}};

void bt__http_conn_register_metrics(void) {
  bt_fsm_register(&conn_fsm, "baton_http_connections", "HTTP connections by state.");
}

bt_http_conn_t *bt__http_conn_accept(bt_http_server_t *srv, uv_stream_t *listener) {
  bt_http_conn_t *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  uv_loop_t *loop = bt__http_server_loop(srv);
  c->srv = srv;
  c->state = BT_HTTP_CONN_READING;
  bt_fsm_enter(&conn_fsm, c->state);
  uv_tcp_init(loop, &c->tcp);
  uv_timer_init(loop, &c->timer);
  uv_timer_init(loop, &c->wtimer);
  c->tcp.data = c->timer.data = c->wtimer.data = c;
  c->open_handles = 3;
  /* Counted before the accept: a failed accept closes the connection, and the close path
   * uncounts it, so the count cannot wrap. */
  bt__http_server_conn_opened(srv, c);
  int rc = uv_accept(listener, (uv_stream_t *)&c->tcp);
  if (rc != 0) {
    bt_log_warn("http accept failed", "{s:s}", "error", uv_strerror(rc));
    close_conn(c, "accept failed");
    return NULL;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  reset_parser(c);
  arm_timer(c, bt__http_server_limits(srv)->idle_timeout_ms);
  update_reading(c);
  return c;
}

void bt__http_conn_drain(bt_http_conn_t *c) {
  /* A dispatched request is answered first, with Connection: close. A connection between
   * requests, or with a request only partly received, is closed now (after its queued answers):
   * the client has no answer pending and may retry elsewhere. */
  if (c->state != BT_HTTP_CONN_READING)
    return;
  if (c->message_begun || c->out_bytes == 0) {
    close_conn(c, "server draining");
    return;
  }
  uv_timer_stop(&c->timer);
  c->in.len = c->in_off = 0;
  set_state(c, BT_HTTP_CONN_CLOSE_AFTER_WRITE);
  update_reading(c);
}

/* ---- the handler's side: answers, deadlines, aborts, streams ------------------------------ */

/* An answer for a request whose connection went on without it (client gone, deadline answered)
 * is dropped; the request is freed. Returns true when that happened. */
static bool drop_if_orphaned(bt_http_req_t *req, const char *what) {
  if (req->conn)
    return false;
  bt_log_debug("late http answer dropped", "{s:s, s:s, s:s}", "method", req->method, "path",
               req->path, "answer", what);
  bt__http_req_free(req);
  return true;
}

void bt_http_respond(bt_http_req_t *req, int status, const char *content_type, const char *body,
                     size_t len) {
  if (drop_if_orphaned(req, "respond"))
    return;
  bt_http_conn_t *c = req->conn;
  BT_ASSERT(c->state == BT_HTTP_CONN_DISPATCHED && c->req == req);
  uv_timer_stop(&c->timer); /* the deadline, if any */
  bt__http_server_responded(c->srv, req, status);
  bool close_after = !req->keep_alive || bt__http_server_draining(c->srv);
  write_response(c, req, status, content_type, body, len, close_after, NULL);
  if (c->state != BT_HTTP_CONN_DISPATCHED)
    return; /* the write failed and the request went with the connection */
  finish_request(c, close_after);
}

void bt_http_req_on_abort(bt_http_req_t *req, bt_http_abort_fn fn, void *arg) {
  req->on_abort = fn;
  req->abort_arg = arg;
  /* The client may have half-closed before the handler registered: tell it on the next tick. */
  if (fn && req->conn && req->conn->eof)
    defer_close(req->conn, "peer closed");
}

void bt_http_req_set_deadline(bt_http_req_t *req, uint64_t ms, int status) {
  bt_http_conn_t *c = req->conn;
  if (!c || c->state != BT_HTTP_CONN_DISPATCHED)
    return;
  req->deadline_status = status == 503 ? 503 : 504;
  arm_timer(c, ms);
}

void bt_http_stream_begin(bt_http_req_t *req, int status, const char *content_type) {
  req->streaming = true;
  bt_http_conn_t *c = req->conn;
  if (!c)
    return; /* orphaned: writes are dropped and end frees it */
  BT_ASSERT(c->state == BT_HTTP_CONN_DISPATCHED && c->req == req);
  uv_timer_stop(&c->timer); /* a deadline covers the wait for the first byte, not the stream */
  bt__http_server_responded(c->srv, req, status);
  /* HTTP/1.0 has no chunked encoding: the raw bytes follow and the close ends them. */
  req->stream_close = !req->keep_alive || req->http10 || bt__http_server_draining(c->srv);
  char head[512], *big;
  int n = format_head(head, sizeof head, &big, status, content_type,
                      req->http10 ? "" : "Transfer-Encoding: chunked\r\n", req->stream_close,
                      &req->extra_headers);
  if (n < 0) {
    defer_close(c, "out of memory for a response");
    return;
  }
  write_raw(c, big ? big : head, (size_t)n);
  free(big);
  if (c->state == BT_HTTP_CONN_DISPATCHED)
    set_state(c, BT_HTTP_CONN_STREAMING);
}

int bt_http_stream_write(bt_http_req_t *req, const void *data, size_t len) {
  bt_http_conn_t *c = req->conn;
  if (!c)
    return BT_ECONNRESET;
  BT_ASSERT(c->state == BT_HTTP_CONN_STREAMING && req->streaming);
  if (len > 0 && !req->head_only) {
    char size[24];
    int n = req->http10 ? 0 : snprintf(size, sizeof size, "%zx\r\n", len);
    size_t total = (size_t)n + len + (req->http10 ? 0 : 2);
    write_req_t *wr = out_alloc(c, total);
    if (!wr) {
      defer_close(c, "out of memory for a response");
      return BT_ECONNRESET;
    }
    memcpy(wr->data, size, (size_t)n);
    memcpy(wr->data + n, data, len);
    if (!req->http10)
      memcpy(wr->data + (size_t)n + len, "\r\n", 2);
    out_send(c, wr);
  }
  return c->out_bytes <= OUTPUT_HIGH_WATER ? 1 : 0;
}

void bt_http_stream_on_writable(bt_http_req_t *req, bt_http_writable_fn fn, void *arg) {
  req->on_writable = fn;
  req->writable_arg = arg;
}

void bt_http_stream_end(bt_http_req_t *req) {
  if (drop_if_orphaned(req, "stream"))
    return;
  bt_http_conn_t *c = req->conn;
  BT_ASSERT(c->state == BT_HTTP_CONN_STREAMING && c->req == req);
  if (!req->http10 && !req->head_only)
    write_raw(c, "0\r\n\r\n", 5);
  if (c->state != BT_HTTP_CONN_STREAMING)
    return;
  finish_request(c, req->stream_close);
}
