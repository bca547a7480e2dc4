/* The HTTP server: listens, accepts connections up to a limit, routes complete requests to
 * handlers, serves /healthz, /readyz and /metrics, and takes part in the app's drain. */
#include "http_server.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "http_conn.h"
#include "log.h"
#include "metrics.h"

#define MAX_ROUTES 64
#define MAX_SEGMENTS 16

typedef struct {
  const char *method;
  const char *pattern;
  bt_http_handler_fn fn;
  void *arg;
} route_t;

struct bt_http_server {
  bt_app_t *app;
  uv_tcp_t listener;
  bt_http_limits_t limits;
  route_t routes[MAX_ROUTES];
  unsigned nroutes;
  bt_http_conn_t *conns; /* open connections, for draining */
  unsigned nconns;
  bool listening;
  bool draining_held; /* holds the app's drain until the last connection closes */
  bool closed;        /* the listener's close callback ran */
  int port;
};

/* Process-wide HTTP statistics; a process normally runs one server. */
static struct {
  bool registered;
  bt_counter_t requests;
  bt_counter_t by_class[5]; /* 1xx..5xx */
  bt_counter_t rejected_conns;
  bt_histogram_t latency;
  bt_gauge_t conns;
} stats;

static void register_stats(void) {
  if (stats.registered)
    return;
  stats.registered = true;
  bt_metrics_counter(&stats.requests, "baton_http_requests_total", "HTTP requests answered.");
  static const char *const names[5] = {
      "baton_http_responses_total{code=\"1xx\"}", "baton_http_responses_total{code=\"2xx\"}",
      "baton_http_responses_total{code=\"3xx\"}", "baton_http_responses_total{code=\"4xx\"}",
      "baton_http_responses_total{code=\"5xx\"}"};
  for (int i = 0; i < 5; i++)
    bt_metrics_counter(&stats.by_class[i], names[i], "HTTP responses by status class.");
  bt_metrics_counter(&stats.rejected_conns, "baton_http_rejected_connections_total",
                     "Connections refused because max_connections was reached.");
  bt_metrics_gauge(&stats.conns, "baton_http_open_connections", "Open HTTP connections.");
  bt_metrics_histogram(&stats.latency, "baton_http_request_duration_seconds",
                       "Time from a complete request to its response.", NULL, 0);
}

void bt_http_limits_default(bt_http_limits_t *l) {
  l->max_body_bytes = 1 << 20;
  l->max_header_bytes = 16 << 10;
  l->header_timeout_ms = 10000;
  l->idle_timeout_ms = 60000;
  l->max_connections = 4096;
  l->max_response_bytes = 16 << 20;
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

/* ---- the connection's contract ------------------------------------------------------------ */

const bt_http_limits_t *bt__http_server_limits(bt_http_server_t *srv) { return &srv->limits; }
uv_loop_t *bt__http_server_loop(bt_http_server_t *srv) { return srv->app->loop; }

void bt__http_server_responded(bt_http_server_t *srv, bt_http_req_t *req, int status) {
  bt_counter_inc(&stats.requests);
  if (status >= 100 && status < 600)
    bt_counter_inc(&stats.by_class[status / 100 - 1]);
  if (req)
    bt_histogram_observe(&stats.latency,
                         (double)(uv_now(srv->app->loop) - req->started_ms) / 1000.0);
}

static void maybe_finish_drain(bt_http_server_t *srv) {
  if (srv->draining_held && srv->nconns == 0 && srv->closed) {
    srv->draining_held = false;
    bt_app_release(srv->app);
  }
}

void bt__http_server_conn_closed(bt_http_server_t *srv, bt_http_conn_t *c) {
  if (c->prev)
    c->prev->next = c->next;
  else if (srv->conns == c)
    srv->conns = c->next;
  if (c->next)
    c->next->prev = c->prev;
  srv->nconns--;
  bt_gauge_set(&stats.conns, srv->nconns);
  free(c);
  maybe_finish_drain(srv);
}

/* ---- routing ------------------------------------------------------------------------------ */

void bt_http_server_route(bt_http_server_t *s, const char *method, const char *pattern,
                          bt_http_handler_fn fn, void *arg) {
  BT_ASSERT(s->nroutes < MAX_ROUTES);
  s->routes[s->nroutes++] = (route_t){method, pattern, fn, arg};
}

/* Matches the raw (still percent-encoded) path against a pattern, segment by segment, so an
 * encoded '/' inside a parameter never splits it. Parameter values are decoded into scratch. */
static bool match_route(const route_t *rt, bt_http_req_t *req, const char *raw, size_t raw_len,
                        bt_buf_t *scratch) {
  const char *p = rt->pattern, *u = raw, *uend = raw + raw_len;
  unsigned np = 0;
  size_t mark = scratch->len;
  while (*p && u < uend) {
    if (*p != '/' || *u != '/')
      return false;
    p++, u++;
    const char *pseg_end = strchr(p, '/');
    size_t plen = pseg_end ? (size_t)(pseg_end - p) : strlen(p);
    const char *useg_end = memchr(u, '/', (size_t)(uend - u));
    size_t ulen = useg_end ? (size_t)(useg_end - u) : (size_t)(uend - u);
    if (plen >= 2 && p[0] == '{' && p[plen - 1] == '}') {
      if (ulen == 0 || np == BT_HTTP_MAX_PARAMS)
        return false;
      /* Decode into the scratch space reserved for this request. */
      char *dst = scratch->data + scratch->len;
      int o = bt_http_pct_decode(dst, u, ulen, false);
      if (o < 0) {
        scratch->len = mark;
        return false;
      }
      /* The name is the pattern text between the braces; patterns are static strings, so we
       * point into them and compare by length at lookup time. */
      req->params[np].name = p + 1;
      req->params[np].value = dst;
      np++;
      scratch->len += (size_t)o + 1;
    } else if (plen != ulen || strncmp(p, u, plen) != 0) {
      scratch->len = mark;
      return false;
    }
    p += plen;
    u += ulen;
  }
  if (*p || u != uend) {
    scratch->len = mark;
    return false;
  }
  req->nparams = np;
  return true;
}

static void handle_healthz(bt_http_req_t *req, void *arg) {
  bt_http_respond(req, 200, "application/json", "{\"status\":\"ok\"}", 15);
}

static void handle_readyz(bt_http_req_t *req, void *arg) {
  bt_http_server_t *srv = arg;
  bt_buf_t detail;
  bt_buf_init(&detail, 0);
  bool ok = bt_app_ready(srv->app, &detail);
  bt_http_respond(req, ok ? 200 : 503, "application/json", detail.data ? detail.data : "{}",
                  detail.data ? detail.len : 2);
  bt_buf_free(&detail);
}

static void handle_metrics(bt_http_req_t *req, void *arg) {
  bt_buf_t out;
  bt_buf_init(&out, 0);
  if (bt_metrics_render(&out) != 0) {
    bt_buf_free(&out);
    bt_http_respond_error(req, 503, "overloaded", "metrics exceed the response limit");
    return;
  }
  bt_http_respond(req, 200, "text/plain; version=0.0.4", out.data ? out.data : "", out.len);
  bt_buf_free(&out);
}

void bt__http_server_dispatch(bt_http_server_t *srv, bt_http_req_t *req) {
  bt_http_conn_t *c = req->conn;
  const char *url = c->head.data;
  size_t raw_len = strcspn(url, "?");
  /* Room for every parameter value: each is no longer than the raw path, plus NULs. */
  size_t decoded_path_len = strlen(req->path) + 1;
  if (bt_buf_reserve(&c->scratch, decoded_path_len + raw_len + BT_HTTP_MAX_PARAMS + 1) != 0) {
    bt_http_respond_error(req, 503, "overloaded", "out of memory for the request");
    return;
  }
  req->path = c->scratch.data; /* reserve may have moved the buffer */
  c->scratch.len = decoded_path_len;
  bool path_matched = false;
  for (unsigned i = 0; i < srv->nroutes; i++) {
    route_t *rt = &srv->routes[i];
    /* A route that matched the path but not the method left its parameters in scratch. */
    c->scratch.len = decoded_path_len;
    if (!match_route(rt, req, url, raw_len, &c->scratch))
      continue;
    path_matched = true;
    if (strcmp(rt->method, req->method) != 0)
      continue;
    rt->fn(req, rt->arg);
    return;
  }
  if (path_matched)
    bt_http_respond_error(req, 405, "method_not_allowed", "%s is not allowed on %s", req->method,
                          req->path);
  else
    bt_http_respond_error(req, 404, "not_found", "no route for %s", req->path);
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

unsigned bt_http_server_connections(const bt_http_server_t *s) { return s->nconns; }
int bt_http_server_port(const bt_http_server_t *s) { return s->port; }

/* ---- accept, drain, close ----------------------------------------------------------------- */

static void on_connection(uv_stream_t *listener, int status) {
  bt_http_server_t *srv = listener->data;
  if (status < 0) {
    bt_log_warn("http accept failed", "{s:s}", "error", uv_strerror(status));
    return;
  }
  if (srv->nconns >= srv->limits.max_connections) {
    /* Accept and close at once, so the client sees a refusal instead of a stuck backlog. */
    uv_tcp_t *t = malloc(sizeof *t);
    if (t) {
      uv_tcp_init(srv->app->loop, t);
      if (uv_accept(listener, (uv_stream_t *)t) == 0)
        bt_counter_inc(&stats.rejected_conns);
      uv_close((uv_handle_t *)t, (uv_close_cb)free);
    }
    return;
  }
  bt_http_conn_t *c = bt__http_conn_accept(srv, listener);
  if (!c)
    return;
  c->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  srv->nconns++;
  bt_gauge_set(&stats.conns, srv->nconns);
}

static void on_listener_closed(uv_handle_t *h) {
  bt_http_server_t *srv = h->data;
  srv->closed = true;
  maybe_finish_drain(srv);
}

static void stop_listening(bt_http_server_t *srv) {
  if (!srv->listening)
    return;
  srv->listening = false;
  uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
}

static void on_drain(bt_app_t *app, void *arg) {
  bt_http_server_t *srv = arg;
  srv->draining_held = true;
  bt_app_hold(app);
  stop_listening(srv);
  for (bt_http_conn_t *c = srv->conns, *next; c; c = next) {
    next = c->next; /* closing may unlink c later, never now: frees happen in callbacks */
    bt__http_conn_drain(c);
  }
}

/* Runs after a completed drain, when the listener and every connection have closed (a drain
 * that misses its deadline ends the process instead; see app.c). */
static void on_close(bt_app_t *app, void *arg) {
  bt_http_server_t *srv = arg;
  BT_ASSERT(srv->nconns == 0 && srv->closed);
  free(srv);
}

int bt_http_server_start(bt_http_server_t **out, bt_app_t *app, const char *host, int port,
                         const bt_http_limits_t *limits, char *errstr) {
  bt_http_server_t *srv = calloc(1, sizeof *srv);
  if (!srv)
    return BT_ENOMEM;
  register_stats();
  srv->app = app;
  if (limits)
    srv->limits = *limits;
  else
    bt_http_limits_default(&srv->limits);
  struct sockaddr_storage addr;
  int rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
  if (rc != 0)
    rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr);
  if (rc == 0) {
    uv_tcp_init(app->loop, &srv->listener);
    srv->listener.data = srv;
    srv->listening = true;
    rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0);
    if (rc == 0)
      rc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
  }
  if (rc != 0) {
    if (errstr)
      snprintf(errstr, 256, "cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
    if (srv->listening) {
      srv->listening = false;
      uv_close((uv_handle_t *)&srv->listener, (uv_close_cb)NULL);
      /* srv stays allocated until the process exits: the handle is still being closed. */
    } else {
      free(srv);
    }
    return BT_EINVAL;
  }
  struct sockaddr_storage bound;
  int len = sizeof bound;
  uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len);
  srv->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
  bt_http_server_route(srv, "GET", "/healthz", handle_healthz, srv);
  bt_http_server_route(srv, "GET", "/readyz", handle_readyz, srv);
  bt_http_server_route(srv, "GET", "/metrics", handle_metrics, srv);
  bt_app_on_shutdown(app, on_drain, on_close, srv);
  *out = srv;
  return 0;
}
