/* The HTTP server: listens, accepts connections up to a limit, routes complete requests to
 * handlers, serves /healthz, /readyz and /metrics, and takes part in the app's drain. */
#include "http_server.h"

#include <jansson.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "fsm.h"
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
  bool auth; /* the server's auth hook runs at headers-complete */
} route_t;

/* LISTENING: accepting. DRAINING: the listener is closing and connections finish their answers;
 * the app's drain is held. DRAINED: the listener and every connection have closed and the hold
 * is released. */
typedef enum { SRV_LISTENING, SRV_DRAINING, SRV_DRAINED, SRV_NSTATES } srv_state_t;

static const char *const srv_state_names[SRV_NSTATES] = {"listening", "draining", "drained"};
static const uint32_t srv_legal[SRV_NSTATES] = {
    [SRV_LISTENING] = BT_FSM_BIT(SRV_DRAINING),
    [SRV_DRAINING] = BT_FSM_BIT(SRV_DRAINED),
    [SRV_DRAINED] = 0,
};
static bt_fsm_def_t srv_fsm = {"http server", SRV_NSTATES, srv_state_names, srv_legal, {{0}}};

struct bt_http_server {
  bt_app_t *app;
  uv_tcp_t listener;
  bt_http_limits_t limits;
  route_t routes[MAX_ROUTES];
  unsigned nroutes;
  bt_http_auth_fn auth;
  void *auth_arg;
  bt_http_conn_t *conns; /* open connections, for draining */
  unsigned nconns;
  srv_state_t state;
  bool listener_closed; /* the listener's close callback ran */
  int port;
};

/* Process-wide HTTP statistics; a process normally runs one server. */
static struct {
  bool registered;
  bt_counter_t requests;
  bt_counter_t by_class[5]; /* 1xx..5xx */
  bt_counter_t rejected_conns;
  bt_counter_t write_timeouts, deadlines, aborted, overloaded;
  bt_histogram_t latency;
  bt_gauge_t conns;
} stats;

static double buffered_bytes(void *arg) {
  (void)arg;
  return (double)bt__http_budget_used();
}

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
  bt_metrics_counter(&stats.write_timeouts, "baton_http_write_timeouts_total",
                     "Connections reset because queued output made no progress in time.");
  bt_metrics_counter(&stats.deadlines, "baton_http_deadline_answers_total",
                     "Requests the runtime answered because the handler missed its deadline.");
  bt_metrics_counter(&stats.aborted, "baton_http_aborted_requests_total",
                     "Requests whose client went away before the answer.");
  bt_metrics_counter(&stats.overloaded, "baton_http_overloaded_total",
                     "Requests refused with 503 because the buffer budget was spent.");
  bt_metrics_gauge_fn("baton_http_buffered_bytes",
                      "Bytes of HTTP input, bodies and output buffered in this process.",
                      buffered_bytes, NULL);
  bt__http_conn_register_metrics();
  bt_fsm_register(&srv_fsm, "baton_http_servers", "HTTP servers by state.");
  bt_metrics_histogram(&stats.latency, "baton_http_request_duration_seconds",
                       "Time from a complete request to its response.", NULL, 0);
}

void bt_http_limits_default(bt_http_limits_t *l) {
  l->max_body_bytes = 1 << 20;
  l->max_header_bytes = 16 << 10;
  l->header_timeout_ms = 10000;
  l->idle_timeout_ms = 60000;
  l->write_timeout_ms = 5000;
  l->max_connections = 4096;
  l->max_buffered_bytes = (size_t)128 << 20;
}

/* ---- the connection's contract ------------------------------------------------------------ */

const bt_http_limits_t *bt__http_server_limits(bt_http_server_t *srv) { return &srv->limits; }
uv_loop_t *bt__http_server_loop(bt_http_server_t *srv) { return srv->app->loop; }

bool bt__http_server_draining(bt_http_server_t *srv) { return srv->state != SRV_LISTENING; }

void bt__http_server_count(bt_http_server_t *srv, const char *what) {
  (void)srv;
  if (strcmp(what, "write_timeout") == 0)
    bt_counter_inc(&stats.write_timeouts);
  else if (strcmp(what, "deadline") == 0)
    bt_counter_inc(&stats.deadlines);
  else if (strcmp(what, "aborted") == 0)
    bt_counter_inc(&stats.aborted);
  else if (strcmp(what, "overloaded") == 0)
    bt_counter_inc(&stats.overloaded);
}

void bt__http_server_responded(bt_http_server_t *srv, const bt_http_req_t *req, int status) {
  bt_counter_inc(&stats.requests);
  if (status >= 100 && status < 600)
    bt_counter_inc(&stats.by_class[status / 100 - 1]);
  if (req)
    bt_histogram_observe(&stats.latency,
                         (double)(uv_now(srv->app->loop) - req->started_ms) / 1000.0);
}

static void set_state(bt_http_server_t *srv, srv_state_t next) {
  bt_fsm_move(&srv_fsm, srv->state, next, NULL);
  srv->state = next;
}

static void maybe_finish_drain(bt_http_server_t *srv) {
  if (srv->state == SRV_DRAINING && srv->nconns == 0 && srv->listener_closed) {
    set_state(srv, SRV_DRAINED);
    bt_app_release(srv->app);
  }
}

void bt__http_server_conn_opened(bt_http_server_t *srv, bt_http_conn_t *c) {
  c->next = srv->conns;
  if (srv->conns)
    srv->conns->prev = c;
  srv->conns = c;
  srv->nconns++;
  bt_gauge_set(&stats.conns, srv->nconns);
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
  s->routes[s->nroutes++] = (route_t){method, pattern, fn, arg, false};
}

void bt_http_server_route_auth(bt_http_server_t *s, const char *method, const char *pattern,
                               bt_http_handler_fn fn, void *arg) {
  BT_ASSERT(s->nroutes < MAX_ROUTES);
  s->routes[s->nroutes++] = (route_t){method, pattern, fn, arg, true};
}

void bt_http_server_set_auth(bt_http_server_t *s, bt_http_auth_fn fn, void *arg) {
  s->auth = fn;
  s->auth_arg = arg;
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

/* Answers a probe: 200 or 503 with the JSON detail the app wrote. */
static void respond_probe(bt_http_req_t *req, bool ok, bt_buf_t *detail) {
  bt_http_respond(req, ok ? 200 : 503, "application/json", detail->data ? detail->data : "{}",
                  detail->data ? detail->len : 2);
  bt_buf_free(detail);
}

static void handle_healthz(bt_http_req_t *req, void *arg) {
  bt_http_server_t *srv = arg;
  bt_buf_t detail;
  bt_buf_init(&detail, 0);
  respond_probe(req, bt_app_live(srv->app, &detail), &detail);
}

static void handle_readyz(bt_http_req_t *req, void *arg) {
  bt_http_server_t *srv = arg;
  bt_buf_t detail;
  bt_buf_init(&detail, 0);
  respond_probe(req, bt_app_ready(srv->app, &detail), &detail);
}

static void handle_metrics(bt_http_req_t *req, void *arg) {
  BT_UNUSED(arg);
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

/* A HEAD request is served by the GET route of its path (with no body in the answer). */
static bool method_matches(const route_t *rt, const bt_http_req_t *req) {
  return strcmp(rt->method, req->method) == 0 ||
         (req->head_only && strcmp(rt->method, "GET") == 0);
}

int bt__http_server_admit(bt_http_server_t *srv, bt_http_req_t *req, const char **detail) {
  const char *url = req->head.data;
  size_t raw_len = strcspn(url, "?");
  size_t decoded_path_len = req->scratch.len; /* the decoded path and its NUL */
  bool path_matched = false;
  req->route = NULL;
  for (unsigned i = 0; i < srv->nroutes; i++) {
    route_t *rt = &srv->routes[i];
    /* A route that matched the path but not the method left its parameters in scratch. */
    req->scratch.len = decoded_path_len;
    if (!match_route(rt, req, url, raw_len, &req->scratch))
      continue;
    path_matched = true;
    if (!method_matches(rt, req))
      continue;
    req->route = rt;
    if (rt->auth && srv->auth && (*detail = srv->auth(req, srv->auth_arg)) != NULL)
      return 401;
    return 0;
  }
  req->route_status = path_matched ? 405 : 404;
  return 0;
}

void bt__http_server_dispatch(bt_http_server_t *srv, bt_http_req_t *req) {
  (void)srv;
  const route_t *rt = req->route;
  if (rt)
    rt->fn(req, rt->arg);
  else if (req->route_status == 405)
    bt_http_respond_error(req, 405, "method_not_allowed", "%s is not allowed on %s", req->method,
                          req->path);
  else
    bt_http_respond_error(req, 404, "not_found", "no route for %s", req->path);
}

/* ---- accessors ---------------------------------------------------------------------------- */

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
  /* The connection counts itself before its accept (and uncounts itself if that fails). */
  (void)bt__http_conn_accept(srv, listener);
}

static void on_listener_closed(uv_handle_t *h) {
  bt_http_server_t *srv = h->data;
  srv->listener_closed = true;
  maybe_finish_drain(srv);
}

static void on_drain(bt_app_t *app, void *arg) {
  bt_http_server_t *srv = arg;
  if (srv->state != SRV_LISTENING)
    return;
  set_state(srv, SRV_DRAINING);
  bt_app_hold(app);
  uv_close((uv_handle_t *)&srv->listener, on_listener_closed);
  for (bt_http_conn_t *c = srv->conns, *next; c; c = next) {
    next = c->next; /* closing may unlink c later, never now: frees happen in callbacks */
    bt__http_conn_drain(c);
  }
}

/* Runs after a completed drain, when the listener and every connection have closed (a drain
 * that misses its deadline ends the process instead; see app.c). */
static void on_close(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  bt_http_server_t *srv = arg;
  BT_ASSERT(srv->state == SRV_DRAINED && srv->nconns == 0);
  bt_fsm_leave(&srv_fsm, srv->state);
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
  /* One process-wide budget: the last server started sets it (a process runs one server). */
  bt__http_budget_set(srv->limits.max_buffered_bytes);
  struct sockaddr_storage addr;
  bool handle_open = false;
  int rc = uv_ip4_addr(host, port, (struct sockaddr_in *)&addr);
  if (rc != 0)
    rc = uv_ip6_addr(host, port, (struct sockaddr_in6 *)&addr);
  if (rc == 0) {
    uv_tcp_init(app->loop, &srv->listener);
    srv->listener.data = srv;
    handle_open = true;
    rc = uv_tcp_bind(&srv->listener, (struct sockaddr *)&addr, 0);
    if (rc == 0)
      rc = uv_listen((uv_stream_t *)&srv->listener, 1024, on_connection);
  }
  struct sockaddr_storage bound;
  int len = sizeof bound;
  if (rc == 0)
    rc = uv_tcp_getsockname(&srv->listener, (struct sockaddr *)&bound, &len);
  if (rc != 0) {
    if (errstr)
      snprintf(errstr, 256, "cannot listen on %s:%d: %s", host, port, uv_strerror(rc));
    if (handle_open) {
      uv_close((uv_handle_t *)&srv->listener, (uv_close_cb)NULL);
      /* srv stays allocated until the process exits: the handle is still being closed. */
    } else {
      free(srv);
    }
    return BT_EINVAL;
  }
  srv->state = SRV_LISTENING;
  bt_fsm_enter(&srv_fsm, srv->state);
  srv->port = ntohs(bound.ss_family == AF_INET6 ? ((struct sockaddr_in6 *)&bound)->sin6_port
                                                : ((struct sockaddr_in *)&bound)->sin_port);
  bt_http_server_route(srv, "GET", "/healthz", handle_healthz, srv);
  bt_http_server_route(srv, "GET", "/readyz", handle_readyz, srv);
  bt_http_server_route(srv, "GET", "/metrics", handle_metrics, srv);
  bt_app_on_shutdown(app, on_drain, on_close, srv);
  *out = srv;
  return 0;
}
