/* The request API over real sockets against a forked server: abort callbacks (client closes or
 * resets during a long poll), per-request deadlines (the runtime answers, the late answer is
 * dropped), streamed chunked answers with backpressure, the request arena, and edge cases:
 * HEAD has no body, a half-closed client gets its answers, a long content type. */
#include <jansson.h>
#include <sys/time.h>

#include "http_test_util.h"

/* Under ASan freed memory sits in a quarantine (256 MiB by default) and would count in the
 * memory figures; a small one keeps them meaningful and still catches a use after free of
 * what was just freed, which is where a late answer would strike. */
const char *__asan_default_options(void);
const char *__asan_default_options(void) { return "quarantine_size_mb=4"; }

/* ---- the server under test (child process) ------------------------------------------------ */

static struct {
  int aborted;      /* abort callbacks run */
  int pauses;       /* stream writes that said "wait" */
  int late_answers; /* answers given after the deadline */
} counts;
static bt_app_t *the_app;

static void on_abort_count(bt_http_req_t *req, void *arg) {
  (void)req;
  (void)arg;
  counts.aborted++;
}

/* GET /wait: a long poll that is never answered; only its client's departure ends it. */
static void route_wait(bt_http_req_t *req, void *arg) {
  (void)arg;
  bt_http_req_on_abort(req, on_abort_count, NULL);
}

static void route_stats(bt_http_req_t *req, void *arg) {
  (void)arg;
  bt_http_respond_json(req, 200,
                       json_pack("{s:i, s:i, s:i}", "aborted", counts.aborted, "pauses",
                                 counts.pauses, "late", counts.late_answers));
}

/* GET /deadline: a 200 ms deadline (504), then an answer at 600 ms that must be dropped. */
typedef struct {
  uv_timer_t timer;
  bt_http_req_t *req;
} late_t;

static void late_closed(uv_handle_t *h) { free(h->data); }

static void late_fire(uv_timer_t *t) {
  late_t *l = t->data;
  counts.late_answers++;
  bt_http_respond(l->req, 200, "text/plain", "late", 4);
  bt_app_release(the_app);
  uv_close((uv_handle_t *)&l->timer, late_closed);
}

static void route_deadline(bt_http_req_t *req, void *arg) {
  (void)arg;
  bt_http_req_set_deadline(req, 200, 504);
  late_t *l = calloc(1, sizeof *l);
  l->req = req;
  uv_timer_init(the_app->loop, &l->timer);
  l->timer.data = l;
  bt_app_hold(the_app);
  uv_timer_start(&l->timer, late_fire, 600, 0);
}

/* GET /later: answers "later" after 100 ms. */
static void later_fire(uv_timer_t *t) {
  late_t *l = t->data;
  bt_http_respond(l->req, 200, "text/plain", "later", 5);
  bt_app_release(the_app);
  uv_close((uv_handle_t *)&l->timer, late_closed);
}

static void route_later(bt_http_req_t *req, void *arg) {
  (void)arg;
  late_t *l = calloc(1, sizeof *l);
  l->req = req;
  uv_timer_init(the_app->loop, &l->timer);
  l->timer.data = l;
  bt_app_hold(the_app);
  uv_timer_start(&l->timer, later_fire, 100, 0);
}

/* GET /deadline503: a deadline with an abort callback: the runtime answers 503 and tells us. */
static void route_deadline503(bt_http_req_t *req, void *arg) {
  (void)arg;
  bt_http_req_on_abort(req, on_abort_count, NULL);
  bt_http_req_set_deadline(req, 150, 503);
}

/* GET /stream?n=&size=: n chunks of size bytes ('a' + chunk index % 26), written while the
 * connection takes them and resumed from the writable callback. State lives in the arena. */
typedef struct {
  int i, n;
  size_t size;
  char *chunk;
} stream_t;

static void stream_more(bt_http_req_t *req, void *arg) {
  stream_t *s = arg;
  while (s->i < s->n) {
    memset(s->chunk, 'a' + s->i % 26, s->size);
    int rc = bt_http_stream_write(req, s->chunk, s->size);
    s->i++;
    if (rc < 0)
      break;
    if (rc == 0) {
      counts.pauses++;
      bt_http_stream_on_writable(req, stream_more, s);
      return;
    }
  }
  bt_http_stream_end(req);
}

static void route_stream(bt_http_req_t *req, void *arg) {
  (void)arg;
  char v[32];
  stream_t *s = bt_arena_alloc(&req->arena, sizeof *s);
  s->i = 0;
  s->n = bt_http_req_query(req, "n", v, sizeof v) > 0 ? atoi(v) : 10;
  s->size = bt_http_req_query(req, "size", v, sizeof v) > 0 ? (size_t)atoi(v) : 100;
  s->chunk = bt_arena_alloc(&req->arena, s->size);
  bt_http_req_on_abort(req, on_abort_count, NULL); /* frees nothing: the arena goes with req */
  bt_http_stream_begin(req, 200, "text/plain");
  stream_more(req, s);
}

/* GET /arena: an answer assembled from arena strings. */
static void route_arena(bt_http_req_t *req, void *arg) {
  (void)arg;
  char *parts[3];
  parts[0] = bt_arena_strdup(&req->arena, "from");
  parts[1] = bt_arena_strdup(&req->arena, "the");
  parts[2] = bt_arena_strndup(&req->arena, "arena!!!", 5);
  char *big = bt_arena_alloc(&req->arena, 100000); /* a dedicated chunk */
  snprintf(big, 100000, "%s %s %s", parts[0], parts[1], parts[2]);
  bt_http_respond(req, 200, "text/plain", big, strlen(big));
}

static void route_hello(bt_http_req_t *req, void *arg) {
  (void)arg;
  bt_http_respond(req, 200, "text/plain", "hello world", 11);
}

/* GET /longtype: a content type longer than the 512-byte head buffer. */
static void route_longtype(bt_http_req_t *req, void *arg) {
  (void)arg;
  char ctype[1200];
  memset(ctype, 'z', sizeof ctype);
  memcpy(ctype, "text/x-", 7);
  ctype[sizeof ctype - 1] = '\0';
  bt_http_req_add_header(req, "X-After", "present");
  bt_http_respond(req, 200, ctype, "ok", 2);
}

static void routes(bt_http_server_t *srv, bt_app_t *app) {
  the_app = app;
  bt_http_server_route(srv, "GET", "/wait", route_wait, NULL);
  bt_http_server_route(srv, "GET", "/stats", route_stats, NULL);
  bt_http_server_route(srv, "GET", "/deadline", route_deadline, NULL);
  bt_http_server_route(srv, "GET", "/deadline503", route_deadline503, NULL);
  bt_http_server_route(srv, "GET", "/stream", route_stream, NULL);
  bt_http_server_route(srv, "GET", "/arena", route_arena, NULL);
  bt_http_server_route(srv, "GET", "/hello", route_hello, NULL);
  bt_http_server_route(srv, "GET", "/later", route_later, NULL);
  bt_http_server_route(srv, "GET", "/longtype", route_longtype, NULL);
}

/* ---- the client side ---------------------------------------------------------------------- */

static int port;
static pid_t pid;

static int setup(void **state) {
  (void)state;
  memset(&counts, 0, sizeof counts);
  bt_http_limits_t l;
  bt_http_limits_default(&l);
  pid = http_test_start(&l, routes, &port);
  return 0;
}

static int teardown(void **state) {
  (void)state;
  assert_int_equal(http_test_stop(pid), 0);
  return 0;
}

static uint64_t now_ms(void) {
  struct timeval tv;
  gettimeofday(&tv, NULL);
  return (uint64_t)tv.tv_sec * 1000 + (uint64_t)tv.tv_usec / 1000;
}

static json_int_t get_stat(const char *name) {
  resp_t r = http_test_roundtrip(port, "GET /stats HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(r.status, 200);
  json_t *j = json_loadb(r.body, r.body_len, 0, NULL);
  assert_non_null(j);
  json_int_t v = json_integer_value(json_object_get(j, name));
  json_decref(j);
  return v;
}

/* Waits up to 3 s for a statistic to reach want. */
static bool stat_reaches(const char *name, json_int_t want) {
  uint64_t end = now_ms() + 3000;
  while (now_ms() < end) {
    if (get_stat(name) >= want)
      return true;
    usleep(20 * 1000);
  }
  return false;
}

/* Reads until EOF (or 5 s of silence) into buf; returns the length. */
static size_t read_all(int fd, char *buf, size_t cap) {
  size_t len = 0;
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5000) <= 0)
      break;
    ssize_t n = read(fd, buf + len, cap - 1 - len);
    if (n <= 0)
      break;
    len += (size_t)n;
  }
  buf[len] = '\0';
  return len;
}

/* ---- tests -------------------------------------------------------------------------------- */

/* A long-poll client that closes (FIN), and one that resets (RST): each handler learns it. */
static void test_abort_when_client_leaves(void **state) {
  (void)state;
  const char *q = "GET /wait HTTP/1.1\r\nHost: x\r\n\r\n";
  int fd = http_test_client(port);
  send_all(fd, q, strlen(q));
  usleep(100 * 1000);
  assert_int_equal(get_stat("aborted"), 0);
  close(fd);
  assert_true(stat_reaches("aborted", 1));
  fd = http_test_client(port);
  send_all(fd, q, strlen(q));
  usleep(100 * 1000);
  struct linger lg = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd); /* RST */
  assert_true(stat_reaches("aborted", 2));
}

/* The deadline answers 504 for a silent handler; the connection goes on serving, and the
 * handler's late answer is dropped (it never reaches the client). */
static void test_deadline_answers_and_drops_late(void **state) {
  (void)state;
  int fd = http_test_client(port);
  const char *q = "GET /deadline HTTP/1.1\r\nHost: x\r\n\r\n";
  send_all(fd, q, strlen(q));
  resp_t r;
  char carry[16384];
  size_t cl = 0;
  uint64_t t0 = now_ms();
  assert_int_equal(read_response(fd, &r, carry, &cl), 0);
  assert_int_equal(r.status, 504);
  assert_non_null(strstr(r.body, "deadline_exceeded"));
  assert_true(now_ms() - t0 < 550); /* before the late answer */
  const char *h = "GET /hello HTTP/1.1\r\nHost: x\r\n\r\n";
  send_all(fd, h, strlen(h));
  assert_int_equal(read_response(fd, &r, carry, &cl), 0);
  assert_string_equal(r.body, "hello world");
  /* The late answer happens at 600 ms; afterwards the connection still carries only ours. */
  assert_true(stat_reaches("late", 1));
  send_all(fd, h, strlen(h));
  assert_int_equal(read_response(fd, &r, carry, &cl), 0);
  assert_string_equal(r.body, "hello world");
  assert_int_equal(cl, 0);
  close(fd);
  /* With an abort callback: 503 with Retry-After, and the handler is told. */
  r = http_test_roundtrip(port, "GET /deadline503 HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(r.status, 503);
  assert_non_null(strcasestr(r.head, "Retry-After:"));
  assert_true(stat_reaches("aborted", 1));
}

/* Decodes a chunked body from raw (after the head); returns its length or -1. */
static long dechunk(const char *raw, size_t len, char *out, size_t cap) {
  size_t o = 0, i = 0;
  for (;;) {
    char *end;
    unsigned long n = strtoul(raw + i, &end, 16);
    const char *crlf = memmem(raw + i, len - i, "\r\n", 2);
    if (!crlf || end != crlf)
      return -1;
    i = (size_t)(crlf - raw) + 2;
    if (n == 0)
      return i + 2 == len && memcmp(raw + i, "\r\n", 2) == 0 ? (long)o : -1;
    if (i + n + 2 > len || o + n > cap)
      return -1;
    memcpy(out + o, raw + i, n);
    o += n;
    i += n;
    if (memcmp(raw + i, "\r\n", 2) != 0)
      return -1;
    i += 2;
  }
}

/* 16 MiB streamed in 8 KiB chunks to a client that starts reading late: the handler is paused
 * by backpressure (write returns 0, the writable callback resumes it), the server's memory stays
 * flat, and the body arrives complete and in order. */
static void test_stream_with_backpressure(void **state) {
  (void)state;
  enum { N = 2048, SIZE = 8192 };
  long base_kb = proc_kb(pid, "VmRSS");
  int fd = http_test_client(port);
  char q[128];
  snprintf(q, sizeof q, "GET /stream?n=%d&size=%d HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n",
           N, SIZE);
  send_all(fd, q, strlen(q));
  usleep(300 * 1000); /* not reading yet: the kernel buffers fill and the stream must pause */
  size_t cap = (size_t)N * (SIZE + 16) + 4096;
  char *raw = malloc(cap);
  size_t len = read_all(fd, raw, cap);
  close(fd);
  long hwm_kb = proc_kb(pid, "VmHWM");
  char *end = memmem(raw, len, "\r\n\r\n", 4);
  assert_non_null(end);
  assert_int_equal(atoi(raw + 9), 200);
  assert_non_null(strcasestr(raw, "Transfer-Encoding: chunked"));
  size_t hl = (size_t)(end - raw) + 4;
  char *body = malloc((size_t)N * SIZE);
  long blen = dechunk(raw + hl, len - hl, body, (size_t)N * SIZE);
  assert_int_equal(blen, (long)N * SIZE);
  for (int i = 0; i < N; i++)
    assert_int_equal(body[(size_t)i * SIZE + SIZE - 1], 'a' + i % 26);
  free(body);
  free(raw);
  print_message("streamed %d x %d bytes; server RSS %ld kB before, peak %ld kB\n", N, SIZE,
                base_kb, hwm_kb);
  assert_true(get_stat("pauses") > 0);
  assert_true(hwm_kb - base_kb < 8 * 1024);
  /* A client that resets mid-stream: the handler hears of it through its abort callback. */
  fd = http_test_client(port);
  send_all(fd, q, strlen(q));
  usleep(200 * 1000);
  struct linger lg = {1, 0};
  setsockopt(fd, SOL_SOCKET, SO_LINGER, &lg, sizeof lg);
  close(fd);
  assert_true(stat_reaches("aborted", 1));
}

/* HTTP/1.0 gets the raw bytes, ended by the close. */
static void test_stream_http10(void **state) {
  (void)state;
  int fd = http_test_client(port);
  const char *q = "GET /stream?n=3&size=4 HTTP/1.0\r\n\r\n";
  send_all(fd, q, strlen(q));
  char buf[4096];
  size_t len = read_all(fd, buf, sizeof buf);
  close(fd);
  char *end = memmem(buf, len, "\r\n\r\n", 4);
  assert_non_null(end);
  assert_null(strcasestr(buf, "chunked"));
  assert_string_equal(end + 4, "aaaabbbbcccc");
}

static void test_arena(void **state) {
  (void)state;
  resp_t r = http_test_roundtrip(port, "GET /arena HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "from the arena");
}

/* HEAD is served by the GET route, with the GET's headers and no body: the next pipelined
 * answer follows the head directly. */
static void test_head_has_no_body(void **state) {
  (void)state;
  int fd = http_test_client(port);
  const char *q = "HEAD /hello HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n"
                  "Connection: close\r\n\r\n";
  send_all(fd, q, strlen(q));
  char buf[4096];
  size_t len = read_all(fd, buf, sizeof buf);
  close(fd);
  char *end = memmem(buf, len, "\r\n\r\n", 4);
  assert_non_null(end);
  assert_int_equal(atoi(buf + 9), 200);
  assert_non_null(strcasestr(buf, "Content-Length: 11"));
  assert_memory_equal(end + 4, "HTTP/1.1 200", 12);
  assert_non_null(strstr(end + 4, "\r\n\r\nhello world"));
}

/* A client that sends three requests and then shuts down its sending side still gets all
 * three answers (two of them given after its EOF arrived), in order, then the server closes. */
static void test_half_closed_client_answered(void **state) {
  (void)state;
  int fd = http_test_client(port);
  const char *q = "GET /later HTTP/1.1\r\nHost: x\r\n\r\nGET /hello HTTP/1.1\r\nHost: x\r\n\r\n"
                  "GET /later HTTP/1.1\r\nHost: x\r\n\r\n";
  send_all(fd, q, strlen(q));
  shutdown(fd, SHUT_WR);
  char buf[8192];
  size_t len = read_all(fd, buf, sizeof buf);
  close(fd);
  const char *a = strstr(buf, "\r\n\r\nlater");
  assert_non_null(a);
  const char *b = strstr(a + 1, "\r\n\r\nhello world");
  assert_non_null(b);
  assert_non_null(strstr(b + 1, "\r\n\r\nlater"));
  assert_true(len > 0);
}

static void test_long_content_type(void **state) {
  (void)state;
  resp_t r = http_test_roundtrip(port, "GET /longtype HTTP/1.1\r\nHost: x\r\n\r\n");
  assert_int_equal(r.status, 200);
  assert_string_equal(r.body, "ok");
  assert_non_null(strstr(r.head, "Content-Type: text/x-zzzz"));
  assert_non_null(strstr(r.head, "X-After: present\r\n"));
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  if (getenv("BT_TEST_FILTER")) /* e.g. BT_TEST_FILTER='*drain*' while iterating */
    cmocka_set_test_filter(getenv("BT_TEST_FILTER"));
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_setup_teardown(test_abort_when_client_leaves, setup, teardown),
      cmocka_unit_test_setup_teardown(test_deadline_answers_and_drops_late, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_with_backpressure, setup, teardown),
      cmocka_unit_test_setup_teardown(test_stream_http10, setup, teardown),
      cmocka_unit_test_setup_teardown(test_arena, setup, teardown),
      cmocka_unit_test_setup_teardown(test_head_has_no_body, setup, teardown),
      cmocka_unit_test_setup_teardown(test_half_closed_client_answered, setup, teardown),
      cmocka_unit_test_setup_teardown(test_long_content_type, setup, teardown),
  };
  return cmocka_run_group_tests_name("http_req", tests, NULL, NULL);
}
