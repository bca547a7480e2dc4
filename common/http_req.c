/* The request object: its accessors, its memory (arena and buffers, recycled per connection),
 * the JSON answer helpers, and the process-wide budget that every buffered HTTP byte counts
 * against. Answering and streaming drive the connection and live in http_conn.c. */
#include "http_req.h"

#include <jansson.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_conn.h"
#include "log.h"

/* A recycled request keeps buffers up to this size; larger ones go back to the allocator (and
 * the budget), so an idle connection holds little whatever its last request was. */
#define KEEP_BYTES 4096

/* ---- the budget --------------------------------------------------------------------------- */

/* One budget for the process: the loop is single-threaded, so plain counters suffice. */
static struct {
  size_t used, max;
} budget = {0, (size_t)128 << 20};

void bt__http_budget_set(size_t max) { budget.max = max; }
size_t bt__http_budget_used(void) { return budget.used; }

void bt__http_budget_output(long n) {
  if (n < 0)
    budget.used -= (size_t)-n;
  else
    budget.used += (size_t)n;
}

/* Input buffers of the usual read size are released after every burst of reads (an idle
 * connection holds none) and wanted again at the next request: a few freed ones are kept for
 * reuse instead of going through malloc each time. Bounded: at most 64 blocks, 1 MiB. */
#define CACHED_SIZE 16384
static struct {
  char *blocks[64];
  unsigned n;
} cache;

int bt__http_buf_resize(bt_buf_t *b, size_t cap) {
  BT_ASSERT(cap > b->len);
  if (cap > b->cap && budget.used + (cap - b->cap) > budget.max)
    return BT_EAGAIN;
  if (b->cap == 0 && cap == CACHED_SIZE && cache.n > 0) {
    b->data = cache.blocks[--cache.n];
    b->cap = cap;
    budget.used += cap;
    return 0;
  }
  char *p = realloc(b->data, cap);
  if (!p)
    return BT_ENOMEM;
  budget.used = budget.used - b->cap + cap;
  b->data = p;
  b->cap = cap;
  return 0;
}

int bt__http_buf_reserve(bt_buf_t *b, size_t extra, size_t max) {
  size_t need = b->len + extra + 1;
  if (need <= b->cap)
    return 0;
  if (need > max + 1)
    return BT_ERANGE;
  size_t cap = b->cap ? b->cap * 2 : 1024;
  while (cap < need)
    cap *= 2;
  if (cap > max + 1)
    cap = max + 1;
  return bt__http_buf_resize(b, cap);
}

void bt__http_buf_release(bt_buf_t *b) {
  budget.used -= b->cap;
  if (b->cap == CACHED_SIZE && cache.n < BT_ARRAY_LEN(cache.blocks))
    cache.blocks[cache.n++] = b->data;
  else
    free(b->data);
  b->data = NULL;
  b->len = b->cap = 0;
}

/* ---- request memory ----------------------------------------------------------------------- */

bt_http_req_t *bt__http_req_new(void) {
  bt_http_req_t *r = calloc(1, sizeof *r);
  if (!r)
    return NULL;
  bt_arena_init(&r->arena, 0);
  bt_buf_init(&r->scratch, 0);
  bt_buf_init(&r->extra_headers, 8192);
  return r;
}

static void shrink(bt_buf_t *b) {
  if (b->cap > KEEP_BYTES)
    bt__http_buf_release(b);
  b->len = 0;
}

void bt__http_req_recycle(bt_http_req_t *r) {
  shrink(&r->head);
  shrink(&r->body_buf);
  if (r->scratch.cap > KEEP_BYTES)
    bt_buf_free(&r->scratch);
  if (r->extra_headers.cap > KEEP_BYTES)
    bt_buf_free(&r->extra_headers);
  bt_buf_reset(&r->scratch);
  bt_buf_reset(&r->extra_headers);
  bt_arena_reset(&r->arena);
  /* Everything else is set afresh for the next request; clear what it might not set. */
  r->conn = NULL;
  r->route = NULL;
  r->route_status = 0;
  r->on_abort = NULL;
  r->on_writable = NULL;
  r->streaming = r->stream_close = r->head_only = false;
  r->nheaders = r->nparams = 0;
  r->body = "";
  r->body_len = 0;
}

void bt__http_req_free(bt_http_req_t *r) {
  if (!r)
    return;
  bt__http_buf_release(&r->head);
  bt__http_buf_release(&r->body_buf);
  bt_buf_free(&r->scratch);
  bt_buf_free(&r->extra_headers);
  bt_arena_reset(&r->arena);
  free(r);
}

/* ---- accessors ---------------------------------------------------------------------------- */

const char *bt_http_req_header(const bt_http_req_t *req, const char *name) {
  for (unsigned i = 0; i < req->nheaders; i++)
    if (strcasecmp(req->headers[i].name, name) == 0)
      return req->headers[i].value;
  return NULL;
}

const char *bt_http_req_param(const bt_http_req_t *req, const char *name) {
  size_t n = strlen(name);
  for (unsigned i = 0; i < req->nparams; i++)
    if (strncmp(req->params[i].name, name, n) == 0 && req->params[i].name[n] == '}')
      return req->params[i].value;
  return NULL;
}

int bt_http_req_query(const bt_http_req_t *req, const char *name, char *out, size_t outsz) {
  size_t nlen = strlen(name);
  const char *q = req->query;
  while (*q) {
    const char *amp = strchr(q, '&');
    size_t len = amp ? (size_t)(amp - q) : strlen(q);
    if (len > nlen && strncmp(q, name, nlen) == 0 && q[nlen] == '=') {
      size_t vlen = len - nlen - 1;
      if (vlen >= outsz)
        return -1;
      return bt_http_pct_decode(out, q + nlen + 1, vlen, true);
    }
    if (len == nlen && strncmp(q, name, nlen) == 0) {
      if (outsz == 0)
        return -1;
      out[0] = '\0';
      return 0;
    }
    q += len + (amp ? 1 : 0);
  }
  return -1;
}

void bt_http_req_add_header(bt_http_req_t *req, const char *name, const char *value) {
  if (bt_buf_appendf(&req->extra_headers, "%s: %s\r\n", name, value) != 0)
    bt_log_warn("response header dropped: too many headers", "{s:s}", "header", name);
}

/* ---- answers built on bt_http_respond ----------------------------------------------------- */

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

/* ---- text helpers ------------------------------------------------------------------------- */

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

const char *bt_http_status_text(int status) {
  switch (status) {
  case 100: return "Continue";
  case 200: return "OK";
  case 201: return "Created";
  case 202: return "Accepted";
  case 204: return "No Content";
  case 400: return "Bad Request";
  case 401: return "Unauthorized";
  case 403: return "Forbidden";
  case 404: return "Not Found";
  case 405: return "Method Not Allowed";
  case 408: return "Request Timeout";
  case 409: return "Conflict";
  case 413: return "Payload Too Large";
  case 415: return "Unsupported Media Type";
  case 422: return "Unprocessable Entity";
  case 429: return "Too Many Requests";
  case 431: return "Request Header Fields Too Large";
  case 500: return "Internal Server Error";
  case 502: return "Bad Gateway";
  case 503: return "Service Unavailable";
  case 504: return "Gateway Timeout";
  case 505: return "HTTP Version Not Supported";
  default: return "Unknown";
  }
}
