/* HTTP limits under hostile clients, over real sockets against a forked server: a client that
 * pipelines 100k requests and never reads (output backpressure), a client that stops reading
 * (write timeout, and a drain that still ends cleanly), 1,000 slow 1 MiB bodies (the process
 * budget of buffered bytes) and unauthenticated 1 MiB bodies (auth before the body). Memory is
 * the child's VmHWM from /proc, compared with its VmRSS before the attack. */
#include <jansson.h>
#include <sys/time.h>

#include "http_test_util.h"

/* See test_http_req.c: keeps ASan's quarantine out of the memory figures. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "quarantine_size_mb=4"; }

#define MiB (1024 * 1024)

static char big_body[MiB];

/* GET /big: a 1 MiB answer. */
static void route_big(bt_http_req_t *req, void *arg) {
  (void)arg;
  bt_http_respond(req, 200, "application/octet-stream", big_body, sizeof big_body);
}

/* POST /len: the body's length; it also checks the token itself, as a broker handler does, so
 * that with the auth hook disabled the answer is still 401 (after the body was read). */
static void route_len(bt_http_req_t *req, void *arg) {
  (void)arg;
  const char *h = bt_http_req_header(req, "authorization");
  if (!h || strcmp(h, "Bearer good") != 0) {
    bt_http_req_add_header(req, "WWW-Authenticate", "Bearer");
    bt_http_respond_error(req, 401, "unauthorized", "handler check");
    return;
  }
  bt_http_respond_json(req, 200, json_pack("{s:I}", "len", (json_int_t)req->body_len));
}

static const char *auth_hook(const bt_http_req_t *req, void *arg) {
  (void)arg;
  const char *h = bt_http_req_header(req, "authorization");
  return h && strcmp(h, "Bearer good") == 0 ? NULL : "missing or wrong token";
}

static void routes(bt_http_server_t *srv, bt_app_t *app) {
  (void)app;
  memset(big_body, 'x', sizeof big_body);
  bt_http_server_route(srv, "GET", "/big", route_big, NULL);
  bt_http_server_route_auth(srv, "POST", "/len", route_len, NULL);
  bt_http_server_set_auth(srv, auth_hook, NULL);
}

static uint64_t now_ms(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

/* The value of a counter in /metrics, or -1. */
static long metric(int port, const char *name) {
  int fd = http_test_client(port);
  const char *q = "GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n";
  send_all(fd, q, strlen(q));
  static char buf[1 << 20];
  size_t len = 0;
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5000) <= 0)
      break;
    ssize_t n = read(fd, buf + len, sizeof buf - 1 - len);
    if (n <= 0)
      break;
    len += (size_t)n;
  }
  close(fd);
  buf[len] = '\0';
  char key[128];
  snprintf(key, sizeof key, "\n%s ", name);
  const char *at = strstr(buf, key);
  return at ? strtol(at + strlen(key), NULL, 10) : -1;
}

/* ---- output backpressure ------------------------------------------------------------------ */

/* 100k pipelined GET /metrics from a client that never reads. Without backpressure every answer
 * is queued in the server (hundreds of MB); with it the server stops reading once its output
 * to this client is above the mark, so its memory stays flat, and others are still served. */
static void test_pipelined_never_reads_memory_bounded(void **state) {
  (void)state;
  bt_http_limits_t l;
  bt_http_limits_default(&l);
  l.write_timeout_ms = 60000; /* this test is about memory, not the timeout */
  int port;
  pid_t pid = http_test_start(&l, routes, &port);
  usleep(100 * 1000);
  long base_kb = proc_kb(pid, "VmRSS");
  enum { N = 100000 };
  static const char one[] = "GET /metrics HTTP/1.1\r\nHost: x\r\n\r\n";
  size_t total = N * (sizeof one - 1);
  char *all = malloc(total);
  for (size_t i = 0; i < N; i++)
    memcpy(all + i * (sizeof one - 1), one, sizeof one - 1);
  int fd = http_test_client(port);
  int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  set_nonblocking(fd);
  size_t sent = 0;
  while (sent < total) {
    struct pollfd p = {fd, POLLOUT, 0};
    if (poll(&p, 1, 2000) <= 0)
      break; /* the server stopped reading: backpressure reached us */
    ssize_t w = write(fd, all + sent, total - sent);
    if (w < 0 && errno != EAGAIN)
      break;
    if (w > 0)
      sent += (size_t)w;
  }
  /* Another client is served meanwhile. */
  resp_t r = http_test_roundtrip(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(r.status, 200);
  long hwm_kb = proc_kb(pid, "VmHWM");
  print_message("pipelined %zu of %zu bytes; server RSS %ld kB before, peak %ld kB\n", sent, total,
                base_kb, hwm_kb);
  /* Stated bound: 16 MiB over the idle RSS (the kernel's socket buffers are not ours). */
  assert_true(hwm_kb - base_kb < 16 * 1024);
  close(fd);
  free(all);
  assert_int_equal(http_test_stop(pid), 0);
}

/* ---- write timeout ------------------------------------------------------------------------ */

/* Sends 16 GET /big (16 MiB of answers) on a connection that never reads. */
static int stuck_client(int port) {
  int fd = http_test_client(port);
  int small = 4096;
  setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof small);
  for (int i = 0; i < 16; i++) {
    const char *q = "GET /big HTTP/1.1\r\nHost: x\r\n\r\n";
    send_all(fd, q, strlen(q));
  }
  return fd;
}

/* True when fd is reset (or closed) within ms, without reading its data. */
static bool reset_within(int fd, int ms) {
  uint64_t end = now_ms() + (uint64_t)ms;
  while (now_ms() < end) {
    struct pollfd p = {fd, 0, 0}; /* POLLERR and POLLHUP are always reported */
    if (poll(&p, 1, 100) > 0 && (p.revents & (POLLERR | POLLHUP)))
      return true;
  }
  return false;
}

static void test_write_timeout_resets_stuck_client(void **state) {
  (void)state;
  bt_http_limits_t l;
  bt_http_limits_default(&l);
  l.write_timeout_ms = 300;
  int port;
  pid_t pid = http_test_start(&l, routes, &port);
  int fd = stuck_client(port);
  uint64_t t0 = now_ms();
  assert_true(reset_within(fd, 8000));
  print_message("stuck client reset after %llu ms (write timeout 300 ms)\n",
                (unsigned long long)(now_ms() - t0));
  close(fd);
  assert_int_equal(metric(port, "baton_http_write_timeouts_total"), 1);
  assert_int_equal(http_test_stop(pid), 0);
}

/* SIGTERM while a client holds undelivered answers: the write timeout ends the connection, so
 * the drain completes (exit 0) instead of running into the 5 s deadline (exit 1). */
static void test_drain_with_stuck_client_exits_0(void **state) {
  (void)state;
  bt_http_limits_t l;
  bt_http_limits_default(&l);
  l.write_timeout_ms = 1000;
  int port;
  pid_t pid = http_test_start(&l, routes, &port);
  int fd = stuck_client(port);
  usleep(300 * 1000);
  uint64_t t0 = now_ms();
  assert_int_equal(http_test_stop(pid), 0);
  print_message("drained in %llu ms with a stuck client\n", (unsigned long long)(now_ms() - t0));
  close(fd);
}

/* ---- the process budget ------------------------------------------------------------------- */

/* 1,000 connections each announce and trickle a 1 MiB body against a 32 MiB budget. Those that
 * fit are answered 200, the rest 503 with Retry-After; the server's peak memory stays under the
 * budget plus a constant, and it keeps serving. Without the budget it buffers 1,000 MiB. */
static void test_budget_1000_slow_bodies(void **state) {
  (void)state;
  raise_nofile();
  bt_http_limits_t l;
  bt_http_limits_default(&l);
  l.max_body_bytes = 2 * MiB;
  l.max_buffered_bytes = 32 * MiB;
  l.header_timeout_ms = 120000;
  l.idle_timeout_ms = 120000;
  int port;
  pid_t pid = http_test_start(&l, routes, &port);
  usleep(100 * 1000);
  long base_kb = proc_kb(pid, "VmRSS");
  enum { N = 1000, PIECE = 32 * 1024 };
  static int fds[N], status[N];
  static size_t sent[N];
  static char piece[PIECE];
  memset(piece, 'a', sizeof piece);
  const char *head = "POST /len HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\n"
                     "Content-Length: 1048576\r\n\r\n";
  for (int i = 0; i < N; i++) {
    fds[i] = http_test_client(port);
    send_all(fds[i], head, strlen(head));
    set_nonblocking(fds[i]);
  }
  int open = N, n200 = 0, n503 = 0, nreset = 0;
  uint64_t deadline = now_ms() + 120000;
  while (open > 0 && now_ms() < deadline) {
    for (int i = 0; i < N; i++) {
      if (fds[i] < 0)
        continue;
      if (sent[i] < MiB) {
        size_t want = MiB - sent[i] < PIECE ? MiB - sent[i] : PIECE;
        ssize_t w = write(fds[i], piece, want);
        if (w > 0)
          sent[i] += (size_t)w;
      }
      char buf[256];
      ssize_t n = read(fds[i], buf, sizeof buf - 1);
      if (n > 0 || (n < 0 && errno != EAGAIN) || n == 0) {
        if (n > 12) {
          buf[n] = '\0';
          status[i] = atoi(buf + 9);
          if (status[i] == 503)
            assert_non_null(strcasestr(buf, "Retry-After:"));
        }
        n200 += status[i] == 200;
        n503 += status[i] == 503;
        nreset += status[i] == 0;
        close(fds[i]);
        fds[i] = -1;
        open--;
      }
    }
    usleep(5000); /* slowly: a piece per connection every few milliseconds */
  }
  long hwm_kb = proc_kb(pid, "VmHWM");
  print_message("200: %d, 503: %d, closed without answer: %d; server RSS %ld kB before, peak "
                "%ld kB, budget 32 MiB\n",
                n200, n503, nreset, base_kb, hwm_kb);
  assert_int_equal(open, 0);
  assert_true(n200 > 0);
  assert_true(n503 > 0);
  assert_int_equal(n200 + n503 + nreset, N);
  /* Stated bound: the budget plus 24 MiB (allocator slack, 1,000 connection objects). */
  assert_true(hwm_kb - base_kb < 32 * 1024 + 24 * 1024);
  resp_t r = http_test_roundtrip(port, "GET /healthz HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(r.status, 200);
  assert_int_equal(http_test_stop(pid), 0);
}

/* ---- authentication before the body ------------------------------------------------------- */

/* 50 concurrent unauthenticated clients each send a 1 MiB body: each gets 401 with
 * WWW-Authenticate and a close, and the server's memory does not grow by the bodies. An
 * authenticated client is served. Without the check at headers-complete the handler's own
 * check still answers 401, but only after buffering 50 MiB. */
static void test_auth_before_body(void **state) {
  (void)state;
  raise_nofile();
  bt_http_limits_t l;
  bt_http_limits_default(&l);
  l.max_body_bytes = 2 * MiB;
  int port;
  pid_t pid = http_test_start(&l, routes, &port);
  usleep(100 * 1000);
  long base_kb = proc_kb(pid, "VmRSS");
  enum { N = 50, PIECE = 64 * 1024 };
  int fds[N];
  size_t sent[N];
  static char piece[PIECE];
  memset(piece, 'a', sizeof piece);
  const char *head = "POST /len HTTP/1.1\r\nHost: x\r\nContent-Length: 1048576\r\n\r\n";
  for (int i = 0; i < N; i++) {
    fds[i] = http_test_client(port);
    send_all(fds[i], head, strlen(head));
    set_nonblocking(fds[i]);
    sent[i] = 0;
  }
  /* Round-robin, so that every body would be in the server at the same time. */
  for (int round = 0; round < MiB / PIECE + 8; round++) {
    for (int i = 0; i < N; i++) {
      if (sent[i] >= MiB)
        continue;
      ssize_t w = write(fds[i], piece, MiB - sent[i] < PIECE ? MiB - sent[i] : PIECE);
      if (w > 0)
        sent[i] += (size_t)w;
      else if (errno != EAGAIN)
        sent[i] = MiB; /* refused: the server closed after answering */
    }
    usleep(2000);
  }
  static resp_t resps[N];
  bool closed[N];
  for (int i = 0; i < N; i++) {
    int fl = fcntl(fds[i], F_GETFL);
    fcntl(fds[i], F_SETFL, fl & ~O_NONBLOCK);
    char carry[16384];
    size_t cl = 0;
    assert_int_equal(read_response(fds[i], &resps[i], carry, &cl), 0);
    closed[i] = peer_closes(fds[i]);
    close(fds[i]);
  }
  long hwm_kb = proc_kb(pid, "VmHWM");
  print_message("50 unauthenticated 1 MiB bodies: server RSS %ld kB before, peak %ld kB\n",
                base_kb, hwm_kb);
  assert_true(hwm_kb - base_kb < 16 * 1024);
  for (int i = 0; i < N; i++) {
    assert_int_equal(resps[i].status, 401);
    assert_non_null(strcasestr(resps[i].head, "WWW-Authenticate: Bearer"));
    assert_non_null(strcasestr(resps[i].head, "Connection: close"));
    assert_true(closed[i]);
  }
  /* With the token, the same request is read and served. */
  int fd = http_test_client(port);
  const char *ok = "POST /len HTTP/1.1\r\nHost: x\r\nAuthorization: Bearer good\r\n"
                   "Content-Length: 1048576\r\n\r\n";
  send_all(fd, ok, strlen(ok));
  char *body = malloc(MiB);
  memset(body, 'b', MiB);
  send_all(fd, body, MiB);
  free(body);
  resp_t r;
  char carry[16384];
  size_t cl = 0;
  assert_int_equal(read_response(fd, &r, carry, &cl), 0);
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.body, "\"len\":1048576"));
  close(fd);
  assert_int_equal(http_test_stop(pid), 0);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  if (getenv("BT_TEST_FILTER")) /* e.g. BT_TEST_FILTER='*drain*' while iterating */
    cmocka_set_test_filter(getenv("BT_TEST_FILTER"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_pipelined_never_reads_memory_bounded),
      cmocka_unit_test(test_write_timeout_resets_stuck_client),
      cmocka_unit_test(test_drain_with_stuck_client_exits_0),
      cmocka_unit_test(test_budget_1000_slow_bodies),
      cmocka_unit_test(test_auth_before_body),
  };
  return cmocka_run_group_tests_name("http_limits", tests, NULL, NULL);
}
