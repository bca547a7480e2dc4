/* Shared by the HTTP unit tests: a forked child runs a bt_http_server with the test's routes,
 * the parent talks raw HTTP/1.1 to it over real sockets and reads the child's memory figures
 * from /proc. Header-only (static functions) because each test is one executable. */
#ifndef HTTP_TEST_UTIL_H
#define HTTP_TEST_UTIL_H

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include "app.h"
#include "http_server.h"
#include "log.h"
#include "testsupport.h"

/* Adds the test's routes to the child's server. */
typedef void (*http_test_routes_fn)(bt_http_server_t *srv, bt_app_t *app);

static inline void raise_nofile(void) {
  struct rlimit rl;
  getrlimit(RLIMIT_NOFILE, &rl);
  rl.rlim_cur = rl.rlim_max;
  setrlimit(RLIMIT_NOFILE, &rl);
}

/* Forks a server with the given limits and routes; returns its pid and stores the port. The
 * child drains on SIGTERM within 5 s and exits with bt_app_run's code. */
static inline pid_t http_test_start(const bt_http_limits_t *limits, http_test_routes_fn routes,
                             int *port) {
  int pfd[2];
  assert_int_equal(pipe(pfd), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    /* A failed assertion skips the test's stop: the server must not outlive the test. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    close(pfd[0]);
    raise_nofile();
    bt_log_init("test-http", BT_LOG_WARN);
    static bt_app_t app;
    bt_app_init(&app, "test-http", 5000);
    bt_http_server_t *srv;
    char err[256];
    if (bt_http_server_start(&srv, &app, "127.0.0.1", 0, limits, err) != 0)
      _exit(3);
    routes(srv, &app);
    int p = bt_http_server_port(srv);
    if (write(pfd[1], &p, sizeof p) != sizeof p)
      _exit(4);
    close(pfd[1]);
    _exit(bt_app_run(&app));
  }
  close(pfd[1]);
  assert_int_equal(read(pfd[0], port, sizeof *port), (ssize_t)sizeof *port);
  close(pfd[0]);
  return pid;
}

static inline int http_test_stop(pid_t pid) {
  kill(pid, SIGTERM);
  int st = 0;
  waitpid(pid, &st, 0);
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

static inline int http_test_client(int port) {
  int fd = bt_test_connect("127.0.0.1", port);
  assert_true(fd >= 0);
  int one = 1;
  setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  return fd;
}

static inline void send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    assert_true(w > 0);
    p += w;
    n -= (size_t)w;
  }
}

typedef struct {
  int status;
  char head[2048];
  char body[8192];
  size_t body_len;
} resp_t;

/* Reads exactly one response (Content-Length framed) from fd, with a timeout per read. */
static inline int read_response(int fd, resp_t *r, char *carry, size_t *carry_len) {
  char buf[16384];
  size_t len = *carry_len;
  memcpy(buf, carry, len);
  for (;;) {
    char *end = memmem(buf, len, "\r\n\r\n", 4);
    if (end) {
      size_t hl = (size_t)(end - buf) + 4;
      const char *cl = strcasestr(buf, "content-length:");
      size_t blen = cl && cl < end ? strtoul(cl + 15, NULL, 10) : 0;
      if (len >= hl + blen) {
        memset(r, 0, sizeof *r);
        r->status = atoi(buf + 9);
        memcpy(r->head, buf, hl < sizeof r->head ? hl : sizeof r->head - 1);
        memcpy(r->body, buf + hl, blen < sizeof r->body ? blen : sizeof r->body - 1);
        r->body_len = blen;
        *carry_len = len - hl - blen;
        memmove(carry, buf + hl + blen, *carry_len);
        return 0;
      }
    }
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 5000) <= 0)
      return -1;
    ssize_t n = read(fd, buf + len, sizeof buf - len);
    if (n <= 0)
      return -1;
    len += (size_t)n;
  }
}

/* True when the peer closes (FIN or RST) the connection within 2 s; data is discarded. */
static inline bool peer_closes(int fd) {
  char b[4096];
  for (;;) {
    struct pollfd p = {fd, POLLIN, 0};
    if (poll(&p, 1, 2000) <= 0)
      return false;
    ssize_t n = read(fd, b, sizeof b);
    if (n == 0 || (n < 0 && errno == ECONNRESET))
      return true;
    if (n < 0)
      return false;
  }
}

/* One round trip on a fresh connection. */
static inline resp_t http_test_roundtrip(int port, const char *req) {
  int fd = http_test_client(port);
  send_all(fd, req, strlen(req));
  resp_t r;
  char carry[16384];
  size_t cl = 0;
  assert_int_equal(read_response(fd, &r, carry, &cl), 0);
  close(fd);
  return r;
}

/* A "VmRSS" or "VmHWM" figure of pid, in kB, or -1. */
static inline long proc_kb(pid_t pid, const char *field) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  if (!f)
    return -1;
  long kb = -1;
  size_t fl = strlen(field);
  while (fgets(line, sizeof line, f))
    if (strncmp(line, field, fl) == 0 && line[fl] == ':')
      kb = strtol(line + fl + 1, NULL, 10);
  fclose(f);
  return kb;
}

static inline void set_nonblocking(int fd) { fcntl(fd, F_SETFL, fcntl(fd, F_GETFL) | O_NONBLOCK); }

#endif
