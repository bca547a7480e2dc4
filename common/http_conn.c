/* One HTTP/1.1 connection: reads bytes, parses them with http_parser, enforces the limits,
 * hands complete requests to the server one at a time (so pipelined requests are answered in
 * order), and writes responses. Handlers never touch the socket. */
#include "http_conn.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "log.h"

/* Stop reading while this much input waits behind a dispatched request: a pipelining client
 * can then only fill the kernel's socket buffer, not our memory. */
#define PIPELINE_INPUT_HIGH_WATER (64 * 1024)

static const http_parser_settings parser_settings;
static void start_reading(bt_http_conn_t *c);

static const char *state_name(bt_http_conn_state_t s) {
  switch (s) {
  case BT_HTTP_CONN_READING: return "reading";
  case BT_HTTP_CONN_DISPATCHED: return "dispatched";
  case BT_HTTP_CONN_CLOSING: return "closing";
  }
  return "?";
}

static void set_state(bt_http_conn_t *c, bt_http_conn_state_t next) {
  bool legal;
  switch (c->state) {
  case BT_HTTP_CONN_READING: legal = next != BT_HTTP_CONN_READING; break;
  case BT_HTTP_CONN_DISPATCHED: legal = next != BT_HTTP_CONN_DISPATCHED; break;
  case BT_HTTP_CONN_CLOSING: legal = false; break;
  default: bt_fatal("http_conn: unknown state %d", (int)c->state);
  }
  if (!legal)
    bt_fatal("http_conn: illegal transition %s -> %s", state_name(c->state), state_name(next));
  c->state = next;
}

/* ---- closing ------------------------------------------------------------------------------ */

static void on_handle_closed(uv_handle_t *h) {
  bt_http_conn_t *c = h->data;
  if (--c->open_handles == 0) {
    bt_buf_free(&c->in);
    bt_buf_free(&c->head);
    bt_buf_free(&c->body);
    bt_buf_free(&c->scratch);
    bt_buf_free(&c->req.extra_headers);
    bt__http_server_conn_closed(c->srv, c);
  }
}

void bt__http_conn_close(bt_http_conn_t *c, const char *reason) {
  if (c->state == BT_HTTP_CONN_CLOSING)
    return;
  if (c->state == BT_HTTP_CONN_DISPATCHED) {
    /* The handler still owns c->req and will respond later; close once it has. */
    c->peer_gone = true;
    if (c->reading) {
      uv_read_stop((uv_stream_t *)&c->tcp);
      c->reading = false;
    }
    return;
  }
  bt_log_debug("http connection closed", "{s:s, s:i}", "reason", reason, "served", (int)c->nserved);
  set_state(c, BT_HTTP_CONN_CLOSING);
  uv_close((uv_handle_t *)&c->timer, on_handle_closed);
  uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
}

/* ---- writing ------------------------------------------------------------------------------ */

typedef struct {
  uv_write_t req;
  bt_http_conn_t *conn;
  bool close_after;
  char data[];
} write_req_t;

static void on_write(uv_write_t *w, int status) {
  write_req_t *wr = (write_req_t *)w;
  bt_http_conn_t *c = wr->conn;
  bool close_after = wr->close_after;
  free(wr);
  c->writes_pending--;
  if (status < 0)
    bt__http_conn_close(c, uv_strerror(status));
  else if (close_after)
    bt__http_conn_close(c, "response sent with Connection: close");
  else if (c->drain_close && c->writes_pending == 0 && c->state == BT_HTTP_CONN_READING)
    bt__http_conn_close(c, "server draining");
}

/* Queues bytes for writing; libuv writes at once when the socket allows and keeps the rest. */
static void write_raw(bt_http_conn_t *c, const char *data, size_t len, bool close_after) {
  write_req_t *wr = malloc(sizeof *wr + len);
  if (!wr) {
    bt__http_conn_close(c, "out of memory for a response");
    return;
  }
  memcpy(wr->data, data, len);
  wr->conn = c;
  wr->close_after = close_after;
  uv_buf_t b = uv_buf_init(wr->data, (unsigned)len);
  int rc = uv_write(&wr->req, (uv_stream_t *)&c->tcp, &b, 1, on_write);
  if (rc == 0)
    c->writes_pending++;
  if (rc < 0) {
    free(wr);
    bt__http_conn_close(c, uv_strerror(rc));
  }
}

/* Formats status line, headers and body into one buffer and writes it. */
static void write_response(bt_http_conn_t *c, int status, const char *ctype, const char *body,
                           size_t len, const bt_buf_t *extra, bool close_after) {
  char head[512];
  int n = snprintf(head, sizeof head,
                   "HTTP/1.1 %d %s\r\nContent-Type: %s\r\nContent-Length: %zu\r\n%s", status,
                   bt_http_status_text(status), ctype, len,
                   close_after ? "Connection: close\r\n" : "");
  size_t extra_len = extra ? extra->len : 0;
  size_t total = (size_t)n + extra_len + 2 + len;
  char stackbuf[4096];
  char *out = total <= sizeof stackbuf ? stackbuf : malloc(total);
  if (!out) {
    bt__http_conn_close(c, "out of memory for a response");
    return;
  }
  memcpy(out, head, (size_t)n);
  if (extra_len)
    memcpy(out + n, extra->data, extra_len);
  memcpy(out + (size_t)n + extra_len, "\r\n", 2);
  if (len)
    memcpy(out + (size_t)n + extra_len + 2, body, len);
  write_raw(c, out, total, close_after);
  if (out != stackbuf)
    free(out);
}

/* An error found while parsing, before any handler saw the request: answer and close. */
static void fail_request(bt_http_conn_t *c, int status, const char *code, const char *detail) {
  json_t *j = json_pack("{s:s, s:s}", "error", code, "detail", detail);
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  bt_log_info("http request rejected", "{s:i, s:s, s:s}", "status", status, "error", code,
              "detail", detail);
  write_response(c, status, "application/json", text ? text : "{}", text ? strlen(text) : 2,
                 NULL, true);
  free(text);
  bt__http_server_responded(c->srv, NULL, status);
  /* Nothing more is parsed from this connection; the write callback closes it. */
  if (c->reading) {
    uv_read_stop((uv_stream_t *)&c->tcp);
    c->reading = false;
  }
  c->in.len = 0;
  c->keep_alive = false;
  c->drain_close = true;
}

/* ---- timers ------------------------------------------------------------------------------- */

static void on_timeout(uv_timer_t *t) {
  bt_http_conn_t *c = t->data;
  if (c->state != BT_HTTP_CONN_READING)
    return;
  fail_request(c, 408, "request_timeout",
               c->message_begun ? "the request did not arrive in time"
                                : "the connection was idle too long");
}

static void arm_timer(bt_http_conn_t *c, uint64_t ms) {
  uv_timer_start(&c->timer, on_timeout, ms, 0);
}

/* ---- parsing ------------------------------------------------------------------------------ */

static void reset_request(bt_http_conn_t *c) {
  bt_buf_reset(&c->head);
  bt_buf_reset(&c->body);
  bt_buf_reset(&c->req.extra_headers);
  c->nhdr = 0;
  c->in_value = false;
  c->too_many_headers = false;
  c->message_begun = false;
  c->message_done = false;
  c->error_status = 0;
  http_parser_init(&c->parser, HTTP_REQUEST);
  c->parser.data = c;
}

static bt_http_conn_t *conn_of(http_parser *p) { return p->data; }

static int head_append(bt_http_conn_t *c, const char *at, size_t len) {
  const bt_http_limits_t *lim = bt__http_server_limits(c->srv);
  if (c->head.len + len > lim->max_header_bytes) {
    c->error_status = 431;
    return -1;
  }
  if (bt_buf_append(&c->head, at, len) != 0) {
    c->error_status = 503;
    return -1;
  }
  return 0;
}

static int on_message_begin(http_parser *p) {
  bt_http_conn_t *c = conn_of(p);
  c->message_begun = true;
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
    c->hdr_off[c->nhdr][0] = c->head.len;
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
    c->hdr_off[c->nhdr - 1][1] = c->head.len;
    c->in_value = true;
  }
  return head_append(c, at, len);
}

static int on_headers_complete(http_parser *p) {
  bt_http_conn_t *c = conn_of(p);
  if (head_append(c, "", 1))
    return -1;
  if (p->http_major != 1) {
    c->error_status = 505;
    return -1;
  }
  const bt_http_limits_t *lim = bt__http_server_limits(c->srv);
  /* A declared length over the limit is refused before the body is read. */
  if (p->content_length != ULLONG_MAX && p->content_length > lim->max_body_bytes) {
    c->error_status = 413;
    return -1;
  }
  /* curl and others wait for 100 Continue before sending a large body. */
  for (unsigned i = 0; i < c->nhdr; i++) {
    const char *name = c->head.data + c->hdr_off[i][0];
    if (strcasecmp(name, "expect") == 0 && c->hdr_off[i][1] &&
        strcasecmp(c->head.data + c->hdr_off[i][1], "100-continue") == 0)
      write_raw(c, "HTTP/1.1 100 Continue\r\n\r\n", 25, false);
  }
  return 0;
}

static int on_body(http_parser *p, const char *at, size_t len) {
  bt_http_conn_t *c = conn_of(p);
  if (c->body.len + len > bt__http_server_limits(c->srv)->max_body_bytes) {
    c->error_status = 413;
    return -1;
  }
  if (bt_buf_append(&c->body, at, len) != 0) {
    c->error_status = 503;
    return -1;
  }
  return 0;
}

static int on_message_complete(http_parser *p) {
  bt_http_conn_t *c = conn_of(p);
  c->message_done = true;
  c->keep_alive = http_should_keep_alive(p) != 0;
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

static int hexval(char ch) {
  if (ch >= '0' && ch <= '9')
    return ch - '0';
  if (ch >= 'a' && ch <= 'f')
    return ch - 'a' + 10;
  if (ch >= 'A' && ch <= 'F')
    return ch - 'A' + 10;
  return -1;
}

int bt_http_pct_decode(char *dst, const char *src, size_t len, bool plus_is_space) {
  size_t o = 0;
  for (size_t i = 0; i < len; i++) {
    if (src[i] == '%') {
      if (i + 2 >= len) /* fewer than two characters follow the percent sign */
        return -1;
      int hi = hexval(src[i + 1]), lo = hexval(src[i + 2]);
      if (hi < 0 || lo < 0 || (hi == 0 && lo == 0))
        return -1;
      dst[o++] = (char)(hi * 16 + lo);
      i += 2;
    } else {
      dst[o++] = plus_is_space && src[i] == '+' ? ' ' : src[i];
    }
  }
  dst[o] = '\0';
  return (int)o;
}

/* Fills c->req from the parsed pieces. Pointers go into `head`, `body` and `scratch`, none of
 * which grows again before the response, so they stay valid while the handler runs. */
static int build_request(bt_http_conn_t *c) {
  bt_http_req_t *r = &c->req;
  const char *url = c->head.data;
  size_t url_len = strlen(url);
  const char *q = memchr(url, '?', url_len);
  size_t path_len = q ? (size_t)(q - url) : url_len;
  bt_buf_reset(&c->scratch);
  if (bt_buf_reserve(&c->scratch, path_len + 1) != 0)
    return -1;
  if (bt_http_pct_decode(c->scratch.data, url, path_len, false) < 0)
    return -1;
  r->conn = c;
  r->method = http_method_str((enum http_method)c->parser.method);
  r->path = c->scratch.data;
  r->query = q ? q + 1 : "";
  r->nheaders = c->nhdr;
  for (unsigned i = 0; i < c->nhdr; i++) {
    char *name = c->head.data + c->hdr_off[i][0];
    for (char *s = name; *s; s++)
      if (*s >= 'A' && *s <= 'Z')
        *s = (char)(*s - 'A' + 'a');
    r->headers[i].name = name;
    r->headers[i].value = c->hdr_off[i][1] ? c->head.data + c->hdr_off[i][1] : "";
  }
  if (bt_buf_append(&c->body, "", 0) != 0) /* ensures a terminating NUL */
    return -1;
  r->body = c->body.data ? c->body.data : "";
  r->body_len = c->body.len;
  r->nparams = 0;
  r->started_ms = uv_now(bt__http_server_loop(c->srv));
  return 0;
}

static void fail_parse(bt_http_conn_t *c) {
  switch (c->error_status) {
  case 413:
    fail_request(c, 413, "body_too_large", "the request body exceeds the configured limit");
    return;
  case 431:
    fail_request(c, 431, "headers_too_large", "the request headers exceed the configured limit");
    return;
  case 503:
    fail_request(c, 503, "overloaded", "out of memory for the request");
    return;
  case 505:
    fail_request(c, 505, "http_version_not_supported", "only HTTP/1.0 and HTTP/1.1 are served");
    return;
  default:
    fail_request(c, 400, "bad_request", http_errno_description(HTTP_PARSER_ERRNO(&c->parser)));
  }
}

/* Parses buffered input until a request is dispatched or the input runs out. Re-entered from
 * bt_http_respond() for asynchronous answers; the in_process flag stops synchronous answers
 * (given inside the dispatch below) from recursing. */
static void process_input(bt_http_conn_t *c) {
  if (c->in_process)
    return;
  c->in_process = true;
  while (c->state == BT_HTTP_CONN_READING && c->in.len > 0 && !c->drain_close) {
    size_t n = http_parser_execute(&c->parser, &parser_settings, c->in.data, c->in.len);
    enum http_errno err = HTTP_PARSER_ERRNO(&c->parser);
    if (err != HPE_OK && err != HPE_PAUSED) {
      fail_parse(c);
      break;
    }
    bt_buf_consume(&c->in, n);
    if (!c->message_done)
      break; /* need more bytes */
    uv_timer_stop(&c->timer);
    if (build_request(c) != 0) {
      fail_request(c, 400, "bad_request", "the request path is not valid percent-encoding");
      break;
    }
    set_state(c, BT_HTTP_CONN_DISPATCHED);
    bt__http_server_dispatch(c->srv, &c->req); /* may respond synchronously */
  }
  /* Resume reading once the pipelined backlog is small again. */
  if (c->state == BT_HTTP_CONN_READING && !c->reading && !c->drain_close &&
      c->in.len < PIPELINE_INPUT_HIGH_WATER) {
    start_reading(c);
  }
  c->in_process = false;
}

/* ---- reading ------------------------------------------------------------------------------ */

static void on_alloc(uv_handle_t *h, size_t suggested, uv_buf_t *buf) {
  bt_http_conn_t *c = h->data;
  /* Read straight into the input buffer, so parsing needs no extra copy. */
  if (bt_buf_reserve(&c->in, 16384) != 0) {
    buf->base = NULL;
    buf->len = 0;
    return;
  }
  buf->base = c->in.data + c->in.len;
  buf->len = c->in.cap - c->in.len - 1;
}

static void on_read(uv_stream_t *s, ssize_t nread, const uv_buf_t *buf) {
  bt_http_conn_t *c = s->data;
  if (nread < 0) {
    bt__http_conn_close(c, nread == UV_EOF ? "peer closed" : uv_strerror((int)nread));
    return;
  }
  if (nread == 0) {
    if (!buf->base)
      fail_request(c, 503, "overloaded", "out of memory for the request");
    return;
  }
  c->in.len += (size_t)nread;
  if (c->state == BT_HTTP_CONN_DISPATCHED) {
    if (c->in.len >= PIPELINE_INPUT_HIGH_WATER) {
      uv_read_stop(s);
      c->reading = false;
    }
    return;
  }
  process_input(c);
}

static void start_reading(bt_http_conn_t *c) {
  if (uv_read_start((uv_stream_t *)&c->tcp, on_alloc, on_read) == 0)
    c->reading = true;
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

bt_http_conn_t *bt__http_conn_accept(bt_http_server_t *srv, uv_stream_t *listener) {
  bt_http_conn_t *c = calloc(1, sizeof *c);
  if (!c)
    return NULL;
  uv_loop_t *loop = bt__http_server_loop(srv);
  c->srv = srv;
  c->state = BT_HTTP_CONN_READING;
  const bt_http_limits_t *lim = bt__http_server_limits(srv);
  bt_buf_init(&c->in, lim->max_header_bytes + lim->max_body_bytes + PIPELINE_INPUT_HIGH_WATER + 16384);
  bt_buf_init(&c->head, lim->max_header_bytes + BT_HTTP_MAX_HEADERS * 2 + 2);
  bt_buf_init(&c->body, lim->max_body_bytes + 1);
  bt_buf_init(&c->scratch, 0);
  bt_buf_init(&c->req.extra_headers, 8192);
  uv_tcp_init(loop, &c->tcp);
  uv_timer_init(loop, &c->timer);
  c->tcp.data = c->timer.data = c;
  c->open_handles = 2;
  if (uv_accept(listener, (uv_stream_t *)&c->tcp) != 0) {
    set_state(c, BT_HTTP_CONN_CLOSING);
    uv_close((uv_handle_t *)&c->timer, on_handle_closed);
    uv_close((uv_handle_t *)&c->tcp, on_handle_closed);
    return NULL;
  }
  uv_tcp_nodelay(&c->tcp, 1);
  reset_request(c);
  arm_timer(c, lim->header_timeout_ms);
  start_reading(c);
  return c;
}

void bt__http_conn_drain(bt_http_conn_t *c) {
  c->drain_close = true;
  /* A dispatched request is answered first, with Connection: close. A connection between
   * requests, or with a request only partly received, is closed now: the client has no answer
   * pending and may retry elsewhere. */
  if (c->state == BT_HTTP_CONN_READING && c->writes_pending == 0)
    bt__http_conn_close(c, "server draining");
}

/* ---- responses ---------------------------------------------------------------------------- */

void bt_http_respond(bt_http_req_t *req, int status, const char *content_type, const char *body,
                     size_t len) {
  bt_http_conn_t *c = req->conn;
  BT_ASSERT(c->state == BT_HTTP_CONN_DISPATCHED);
  bt__http_server_responded(c->srv, req, status);
  c->nserved++;
  set_state(c, BT_HTTP_CONN_READING);
  if (c->peer_gone) {
    bt__http_conn_close(c, "peer closed before the response");
    return;
  }
  bool close_after = !c->keep_alive || c->drain_close;
  write_response(c, status, content_type, body, len, &req->extra_headers, close_after);
  reset_request(c);
  if (close_after) {
    if (c->reading) {
      uv_read_stop((uv_stream_t *)&c->tcp);
      c->reading = false;
    }
    return; /* on_write closes */
  }
  arm_timer(c, bt__http_server_limits(c->srv)->idle_timeout_ms);
  process_input(c);
}

void bt_http_respond_json(bt_http_req_t *req, int status, void *obj) {
  json_t *j = obj;
  char *text = j ? json_dumps(j, JSON_COMPACT) : NULL;
  json_decref(j);
  if (!text) {
    bt_http_respond(req, 500, "application/json", "{\"error\":\"internal\"}", 20);
    return;
  }
  bt_http_respond(req, status, "application/json", text, strlen(text));
  free(text);
}

void bt_http_respond_error(bt_http_req_t *req, int status, const char *code, const char *fmt, ...) {
  char detail[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(detail, sizeof detail, fmt, ap);
  va_end(ap);
  bt_http_respond_json(req, status, json_pack("{s:s, s:s}", "error", code, "detail", detail));
}

void bt_http_req_add_header(bt_http_req_t *req, const char *name, const char *value) {
  if (bt_buf_appendf(&req->extra_headers, "%s: %s\r\n", name, value) != 0)
    bt_log_warn("response header dropped: too many headers", "{s:s}", "header", name);
}
