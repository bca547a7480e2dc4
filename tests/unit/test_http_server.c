/* HTTP server tests over real sockets: a forked child runs a bt_http_server with test routes,
 * the parent talks raw HTTP/1.1 to it. Covers split input at every byte, pipelining, the
 * limits (413, 431, 400, 408), 1,000 concurrent connections and a graceful drain. */
#include <jansson.h>

#include "http_test_util.h"

/* ---- the server under test (child process) ------------------------------------------------ */

static void route_echo(bt_http_req_t *req, void *arg) {
  json_t *hdrs = json_object();
  for (unsigned i = 0; i < req->nheaders; i++)
    json_object_set_new(hdrs, req->headers[i].name, json_string(req->headers[i].value));
  bt_http_respond_json(req, 200,
                       json_pack("{s:s, s:s, s:s, s:s%, s:o}", "method", req->method, "path",
                                 req->path, "query", req->query, "body", req->body,
                                 req->body_len, "headers", hdrs));
}

static void route_params(bt_http_req_t *req, void *arg) {
  char v[64] = "";
  bt_http_req_query(req, "v", v, sizeof v);
  bt_http_respond_json(req, 200,
                       json_pack("{s:s, s:s, s:s}", "a", bt_http_req_param(req, "a"), "b",
                                 bt_http_req_param(req, "b"), "v", v));
}

typedef struct {
  uv_timer_t timer;
  bt_http_req_t *req;
  bt_app_t *app;
} slow_t;

static void slow_closed(uv_handle_t *h) { free(h->data); }

static void slow_fire(uv_timer_t *t) {
  slow_t *s = t->data;
  bt_http_respond(s->req, 200, "text/plain", "slow", 4);
  bt_app_release(s->app);
  uv_close((uv_handle_t *)&s->timer, slow_closed);
}

/* Answers after 300 ms, holding the drain meanwhile as a real component would. */
static void route_slow(bt_http_req_t *req, void *arg) {
  bt_app_t *app = arg;
  slow_t *s = calloc(1, sizeof *s);
  s->req = req;
  s->app = app;
  uv_timer_init(app->loop, &s->timer);
  s->timer.data = s;
  bt_app_hold(app);
  uv_timer_start(&s->timer, slow_fire, 300, 0);
}

static void default_routes(bt_http_server_t *srv, bt_app_t *app) {
  bt_http_server_route(srv, "GET", "/echo", route_echo, NULL);
  bt_http_server_route(srv, "POST", "/echo", route_echo, NULL);
  bt_http_server_route(srv, "GET", "/p/{a}/x/{b}", route_params, NULL);
  bt_http_server_route(srv, "GET", "/slow", route_slow, app);
}

static pid_t start_server(const bt_http_limits_t *limits, int *port) {
  return http_test_start(limits, default_routes, port);
}

static int stop_server(pid_t pid) { return http_test_stop(pid); }

static int test_port;
static pid_t test_pid;

static int setup_default(void **state) {
  bt_http_limits_t l;
  bt_http_limits_default(&l);
  l.max_body_bytes = 4096;
  l.max_header_bytes = 2048;
  l.header_timeout_ms = 400;
  l.idle_timeout_ms = 400;
  test_pid = start_server(&l, &test_port);
  return 0;
}

static int teardown_default(void **state) {
  assert_int_equal(stop_server(test_pid), 0);
  return 0;
}

static int client(void) { return http_test_client(test_port); }

static resp_t roundtrip(const char *req) { return http_test_roundtrip(test_port, req); }

/* ---- tests -------------------------------------------------------------------------------- */

static const char post_req[] = "POST /echo?a=1&b=two HTTP/1.1\r\n"
                               "Host: localhost\r\n"
                               "X-Trace-Id: abc123\r\n"
                               "Content-Type: application/json\r\n"
                               "Content-Length: 27\r\n"
                               "\r\n"
                               "{\"hello\":\"world\",\"n\":12345}";

static void check_echo(const resp_t *r) {
  assert_int_equal(r->status, 200);
  json_t *j = json_loadb(r->body, r->body_len, 0, NULL);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "method")), "POST");
  assert_string_equal(json_string_value(json_object_get(j, "path")), "/echo");
  assert_string_equal(json_string_value(json_object_get(j, "query")), "a=1&b=two");
  assert_string_equal(json_string_value(json_object_get(j, "body")), "{\"hello\":\"world\",\"n\":12345}");
  json_t *h = json_object_get(j, "headers");
  assert_string_equal(json_string_value(json_object_get(h, "x-trace-id")), "abc123");
  assert_string_equal(json_string_value(json_object_get(h, "content-type")), "application/json");
  json_decref(j);
}

static void test_split_at_every_byte(void **state) {
  size_t len = strlen(post_req);
  for (size_t cut = 1; cut < len; cut++) {
    int fd = client();
    send_all(fd, post_req, cut);
    usleep(2000); /* let the first part arrive on its own */
    send_all(fd, post_req + cut, len - cut);
    resp_t r;
    char carry[16384];
    size_t cl = 0;
    assert_int_equal(read_response(fd, &r, carry, &cl), 0);
    check_echo(&r);
    close(fd);
  }
  /* And one byte per write. */
  int fd = client();
  for (size_t i = 0; i < len; i++) {
    send_all(fd, post_req + i, 1);
    usleep(200);
  }
  resp_t r;
  char carry[16384];
  size_t cl = 0;
  assert_int_equal(read_response(fd, &r, carry, &cl), 0);
  check_echo(&r);
  close(fd);
}

static void test_chunked_body(void **state) {
  resp_t r = roundtrip("POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n"
                       "5\r\nhello\r\n6\r\n world\r\n0\r\n\r\n");
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.body, "\"body\":\"hello world\""));
}

static void test_pipelined_100_in_order(void **state) {
  int fd = client();
  char all[100 * 64];
  size_t n = 0;
  for (int i = 0; i < 100; i++)
    n += (size_t)snprintf(all + n, sizeof all - n, "GET /echo?i=%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
  send_all(fd, all, n); /* every request in as few segments as the kernel likes */
  char carry[16384];
  size_t cl = 0;
  for (int i = 0; i < 100; i++) {
    resp_t r;
    assert_int_equal(read_response(fd, &r, carry, &cl), 0);
    assert_int_equal(r.status, 200);
    char want[32];
    snprintf(want, sizeof want, "\"query\":\"i=%d\"", i);
    assert_non_null(strstr(r.body, want));
  }
  close(fd);
}

static void test_pipelined_async_in_order(void **state) {
  /* A slow (asynchronous) answer must not be overtaken by the fast one behind it. */
  int fd = client();
  const char *two = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\nGET /echo?after HTTP/1.1\r\nHost: x\r\n\r\n";
  send_all(fd, two, strlen(two));
  char carry[16384];
  size_t cl = 0;
  resp_t r;
  assert_int_equal(read_response(fd, &r, carry, &cl), 0);
  assert_string_equal(r.body, "slow");
  assert_int_equal(read_response(fd, &r, carry, &cl), 0);
  assert_non_null(strstr(r.body, "\"query\":\"after\""));
  close(fd);
}

static void test_router_params_and_errors(void **state) {
  resp_t r = roundtrip("GET /p/one%2Fslash/x/two?v=a%20b+c HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.body, "\"a\":\"one/slash\""));
  assert_non_null(strstr(r.body, "\"b\":\"two\""));
  assert_non_null(strstr(r.body, "\"v\":\"a b c\""));
  r = roundtrip("GET /nothing HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(r.status, 404);
  assert_non_null(strstr(r.body, "\"error\":\"not_found\""));
  r = roundtrip("DELETE /echo HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(r.status, 405);
  r = roundtrip("GET /p/%zz/x/b HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(r.status, 400);
}

static void test_oversized_headers_431(void **state) {
  char req[8192];
  int n = snprintf(req, sizeof req, "GET /echo HTTP/1.1\r\nHost: x\r\nX-Big: ");
  memset(req + n, 'a', 4000);
  strcpy(req + n + 4000, "\r\n\r\n");
  int fd = client();
  send_all(fd, req, strlen(req));
  resp_t r;
  char carry[16384];
  size_t cl = 0;
  assert_int_equal(read_response(fd, &r, carry, &cl), 0);
  assert_int_equal(r.status, 431);
  assert_non_null(strstr(r.body, "\"error\":\"headers_too_large\""));
  assert_true(peer_closes(fd));
  close(fd);
}

static void test_oversized_body_413(void **state) {
  /* Declared too large: refused before the body is sent. */
  resp_t r = roundtrip("POST /echo HTTP/1.1\r\nHost: x\r\nContent-Length: 100000\r\n\r\n");
  assert_int_equal(r.status, 413);
  assert_non_null(strstr(r.body, "\"error\":\"body_too_large\""));
  /* Chunked, growing past the limit while it streams. */
  int fd = client();
  const char *head = "POST /echo HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n";
  send_all(fd, head, strlen(head));
  char chunk[1100];
  int n = snprintf(chunk, sizeof chunk, "400\r\n");
  memset(chunk + n, 'b', 1024);
  memcpy(chunk + n + 1024, "\r\n", 2);
  resp_t r2;
  char carry[16384];
  size_t cl = 0;
  for (int i = 0; i < 5; i++)
    if (write(fd, chunk, (size_t)n + 1026) < 0)
      break;
  assert_int_equal(read_response(fd, &r2, carry, &cl), 0);
  assert_int_equal(r2.status, 413);
  close(fd);
}

static void test_garbage_400_and_close(void **state) {
  static const char *const garbage[] = {
      "GARBAGE\r\n\r\n", "GET /echo HTTP/1.1 extra\r\n\r\n", "\x01\x02\x03\x04\r\n\r\n",
      "POST /echo HTTP/1.1\r\nContent-Length: abc\r\n\r\n",
      "GET /echo HTTP/1.1\r\nBad Header\r\n\r\n"};
  for (size_t i = 0; i < BT_ARRAY_LEN(garbage); i++) {
    int fd = client();
    send_all(fd, garbage[i], strlen(garbage[i]));
    resp_t r;
    char carry[16384];
    size_t cl = 0;
    assert_int_equal(read_response(fd, &r, carry, &cl), 0);
    assert_int_equal(r.status, 400);
    assert_non_null(strstr(r.body, "\"error\":\"bad_request\""));
    assert_true(peer_closes(fd));
    close(fd);
  }
  resp_t r = roundtrip("GET /echo HTTP/2.0\r\nHost: x\r\n\r\n");
  assert_int_equal(r.status, 505);
  /* The server is still healthy afterwards. */
  r = roundtrip("GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(r.status, 200);
}

static void test_slow_loris_408(void **state) {
  int fd = client();
  const char *part = "GET /echo HTTP/1.1\r\nHost: x\r\n";
  send_all(fd, part, strlen(part));
  /* Keep trickling header bytes: the timeout runs from the first byte, not the last. */
  for (int i = 0; i < 4; i++) {
    usleep(150 * 1000);
    if (write(fd, "X-A: b\r\n", 8) < 0)
      break;
  }
  resp_t r;
  char carry[16384];
  size_t cl = 0;
  assert_int_equal(read_response(fd, &r, carry, &cl), 0);
  assert_int_equal(r.status, 408);
  assert_true(peer_closes(fd));
  close(fd);
  /* An idle connection that never sends gets the same. */
  fd = client();
  assert_int_equal(read_response(fd, &r, carry, &cl), 0);
  assert_int_equal(r.status, 408);
  close(fd);
}

static void test_keepalive_and_connection_close(void **state) {
  int fd = client();
  char carry[16384];
  size_t cl = 0;
  resp_t r;
  for (int i = 0; i < 3; i++) {
    const char *q = "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, q, strlen(q));
    assert_int_equal(read_response(fd, &r, carry, &cl), 0);
    assert_int_equal(r.status, 200);
  }
  const char *last = "GET /healthz HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  send_all(fd, last, strlen(last));
  assert_int_equal(read_response(fd, &r, carry, &cl), 0);
  assert_non_null(strcasestr(r.head, "Connection: close"));
  assert_true(peer_closes(fd));
  close(fd);
}

/* Its own server: opening 1,000 connections one by one can take longer (under ASan, on a
 * loaded machine) than the 400 ms idle timeout of the default test server. */
static int setup_patient(void **state) {
  bt_http_limits_t l;
  bt_http_limits_default(&l);
  l.idle_timeout_ms = 30000;
  test_pid = start_server(&l, &test_port);
  return 0;
}

static void test_1000_concurrent_connections(void **state) {
  raise_nofile();
  enum { N = 1000 };
  static int fds[N];
  for (int i = 0; i < N; i++)
    fds[i] = client();
  char q[96];
  for (int i = 0; i < N; i++) {
    int n = snprintf(q, sizeof q, "GET /echo?c=%d HTTP/1.1\r\nHost: x\r\n\r\n", i);
    send_all(fds[i], q, (size_t)n);
  }
  for (int i = 0; i < N; i++) {
    resp_t r;
    char carry[16384];
    size_t cl = 0;
    assert_int_equal(read_response(fds[i], &r, carry, &cl), 0);
    assert_int_equal(r.status, 200);
    char want[32];
    snprintf(want, sizeof want, "\"query\":\"c=%d\"", i);
    assert_non_null(strstr(r.body, want));
  }
  for (int i = 0; i < N; i++)
    close(fds[i]);
}

static void test_max_connections_refused(void **state) {
  bt_http_limits_t l;
  bt_http_limits_default(&l);
  l.max_connections = 5;
  int port;
  pid_t pid = start_server(&l, &port);
  int fds[6];
  for (int i = 0; i < 6; i++) {
    fds[i] = bt_test_connect("127.0.0.1", port);
    assert_true(fds[i] >= 0);
    usleep(20000);
  }
  assert_true(peer_closes(fds[5])); /* the sixth is closed at once */
  for (int i = 0; i < 6; i++)
    close(fds[i]);
  assert_int_equal(stop_server(pid), 0);
}

/* SIGTERM while 200 requests are in flight: every one is answered and the exit code is 0. */
static void test_graceful_drain_200_in_flight(void **state) {
  raise_nofile();
  bt_http_limits_t l;
  bt_http_limits_default(&l);
  int port;
  pid_t pid = start_server(&l, &port);
  enum { N = 200 };
  int fds[N];
  const char *q = "GET /slow HTTP/1.1\r\nHost: x\r\n\r\n";
  for (int i = 0; i < N; i++) {
    fds[i] = bt_test_connect("127.0.0.1", port);
    assert_true(fds[i] >= 0);
    send_all(fds[i], q, strlen(q));
  }
  usleep(100 * 1000); /* all dispatched, none answered yet (they take 300 ms) */
  kill(pid, SIGTERM);
  /* New connections are refused once the listener is closed (soon: the drain closes it first,
   * but a loaded machine may take a while to deliver the signal). */
  int late = 0;
  for (int i = 0; i < 150 && late >= 0; i++) {
    usleep(20 * 1000);
    late = bt_test_connect("127.0.0.1", port);
    if (late >= 0)
      close(late);
  }
  assert_true(late < 0);
  for (int i = 0; i < N; i++) {
    resp_t r;
    char carry[16384];
    size_t cl = 0;
    assert_int_equal(read_response(fds[i], &r, carry, &cl), 0);
    assert_int_equal(r.status, 200);
    assert_string_equal(r.body, "slow");
    assert_non_null(strcasestr(r.head, "Connection: close"));
    close(fds[i]);
  }
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_split_at_every_byte, setup_default, teardown_default),
      cmocka_unit_test_setup_teardown(test_chunked_body, setup_default, teardown_default),
      cmocka_unit_test_setup_teardown(test_pipelined_100_in_order, setup_default, teardown_default),
      cmocka_unit_test_setup_teardown(test_pipelined_async_in_order, setup_default, teardown_default),
      cmocka_unit_test_setup_teardown(test_router_params_and_errors, setup_default, teardown_default),
      cmocka_unit_test_setup_teardown(test_oversized_headers_431, setup_default, teardown_default),
      cmocka_unit_test_setup_teardown(test_oversized_body_413, setup_default, teardown_default),
      cmocka_unit_test_setup_teardown(test_garbage_400_and_close, setup_default, teardown_default),
      cmocka_unit_test_setup_teardown(test_slow_loris_408, setup_default, teardown_default),
      cmocka_unit_test_setup_teardown(test_keepalive_and_connection_close, setup_default,
                                      teardown_default),
      cmocka_unit_test_setup_teardown(test_1000_concurrent_connections, setup_patient,
                                      teardown_default),
      cmocka_unit_test(test_max_connections_refused),
      cmocka_unit_test(test_graceful_drain_200_in_flight),
  };
  return cmocka_run_group_tests_name("http_server", tests, NULL, NULL);
}
