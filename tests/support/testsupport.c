/* Test helpers for the integration suite: the dev stack's env file, child processes of our
 * binaries, a small blocking HTTP/1.1 client and shell commands run against the stack.
 * Everything here blocks and fails the running cmocka test on setup errors. */
#include "testsupport.h"

#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <netdb.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/time.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

/* Generous: a test that waits this long on one response has failed anyway, and a hung
 * server must not hang the suite until ctest's own timeout. */
#define BT_TEST_HTTP_TIMEOUT_MS 30000
#define BT_TEST_HTTP_MAX (64u << 20)

static int env_loaded;

static void sleep_ms(unsigned ms) {
  struct timespec ts = {.tv_sec = ms / 1000, .tv_nsec = (long)(ms % 1000) * 1000000L};
  while (nanosleep(&ts, &ts) != 0 && errno == EINTR) {
  }
}

uint64_t bt_test_now_ms(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return (uint64_t)ts.tv_sec * 1000u + (uint64_t)ts.tv_nsec / 1000000u;
}

int bt_test_write_file(const char *dir, const char *file, const char *text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, file);
  FILE *f = fopen(path, "w");
  if (!f)
    return -1;
  int rc = fputs(text, f) < 0 ? -1 : 0;
  return fclose(f) != 0 ? -1 : rc;
}

/* ---- environment ------------------------------------------------------------------- */

static char *trim(char *s) {
  while (*s == ' ' || *s == '\t') s++;
  char *e = s + strlen(s);
  while (e > s && (e[-1] == ' ' || e[-1] == '\t' || e[-1] == '\r' || e[-1] == '\n')) *--e = '\0';
  return s;
}

/* Loads KEY=VALUE lines; tolerates comments, blank lines, `export ` and quoted values so
 * the file stays a plain shell file. Returns 0, or -1 when the file cannot be opened. */
static int env_load_file(const char *path) {
  FILE *f = fopen(path, "r");
  if (f == NULL) return -1;
  char line[4096];
  while (fgets(line, sizeof line, f) != NULL) {
    char *s = trim(line);
    if (*s == '\0' || *s == '#') continue;
    if (strncmp(s, "export ", 7) == 0) s = trim(s + 7);
    char *eq = strchr(s, '=');
    if (eq == NULL || eq == s) continue;
    *eq = '\0';
    char *val = eq + 1;
    size_t n = strlen(val);
    if (n >= 2 && (val[0] == '"' || val[0] == '\'') && val[n - 1] == val[0]) {
      val[n - 1] = '\0';
      val++;
    }
    setenv(trim(s), val, 1);
  }
  fclose(f);
  return 0;
}

void bt_test_env_load(void) {
  const char *path = getenv("BATON_TEST_ENV");
  if (path == NULL || *path == '\0') {
    fail_msg("BATON_TEST_ENV is not set: run the suite through ctest (./dev test), whose "
             "stack_up fixture starts the stack and names its env file");
  }
  if (env_load_file(path) != 0) {
    fail_msg("cannot read the stack env file %s (%s): the stack_up fixture did not start "
             "the stack; see its output in ctest's log",
             path, strerror(errno));
  }
  env_loaded = 1;
}

const char *bt_test_env(const char *name) {
  const char *v = getenv(name);
  if (v == NULL) fail_msg("environment variable %s is not set", name);
  return v;
}

/* The source dir: $BATON_SOURCE_DIR, else derived from this file's path at build time. */
static const char *source_dir(void) {
  const char *v = getenv("BATON_SOURCE_DIR");
  if (v != NULL && *v != '\0') return v;
  static char buf[4096];
  const char *suffix = "/tests/support/testsupport.c";
  size_t n = strlen(__FILE__), sn = strlen(suffix);
  if (n > sn && n - sn < sizeof buf && strcmp(__FILE__ + n - sn, suffix) == 0) {
    memcpy(buf, __FILE__, n - sn);
    buf[n - sn] = '\0';
    return buf;
  }
  return ".";
}

const char *bt_test_bin(const char *name) {
  static const struct {
    const char *name, *rel;
  } bins[] = {
      {"baton-broker", "broker/baton-broker"},
      {"baton-devkafka", "devkafka/baton-devkafka"},
      {"baton-saga", "saga/baton-saga"},
      {"baton-projector", "projector/baton-projector"},
      {"billing-generator", "examples/billing-generator/billing-generator"},
      {"baton-inventory", "examples/participants/baton-inventory"},
      {"baton-payment", "examples/participants/baton-payment"},
      {"baton-shipping", "examples/participants/baton-shipping"},
  };
  static char path[4096];
  const char *rel = NULL;
  for (size_t i = 0; i < sizeof bins / sizeof bins[0]; i++) {
    if (strcmp(bins[i].name, name) == 0) rel = bins[i].rel;
  }
  if (rel == NULL) fail_msg("bt_test_bin: unknown binary '%s'", name);
  const char *build = getenv("BATON_BUILD_DIR");
  if (build == NULL || *build == '\0') {
    snprintf(path, sizeof path, "%s/build/%s", source_dir(), rel);
  } else if (build[0] == '/') {
    snprintf(path, sizeof path, "%s/%s", build, rel);
  } else {
    snprintf(path, sizeof path, "%s/%s/%s", source_dir(), build, rel);
  }
  if (access(path, X_OK) != 0) fail_msg("%s is not built: %s is missing", name, path);
  return path;
}

/* ---- processes ----------------------------------------------------------------------- */

pid_t bt_test_spawn(const char *const argv[], const char *const extra_env[], const char *logfile) {
  pid_t parent = getpid();
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) fail_msg("fork: %s", strerror(errno));
  if (pid == 0) {
    /* A test that crashes or fails must not leave its servers behind. */
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (getppid() != parent) _exit(127);
    signal(SIGPIPE, SIG_DFL);
    int in = open("/dev/null", O_RDONLY);
    if (in >= 0) {
      dup2(in, 0);
      if (in > 2) close(in);
    }
    if (logfile != NULL) {
      int fd = open(logfile, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0644);
      if (fd < 0) {
        fprintf(stderr, "bt_test_spawn: cannot open %s: %s\n", logfile, strerror(errno));
        _exit(127);
      }
      dup2(fd, 1);
      dup2(fd, 2);
    }
    for (size_t i = 0; extra_env != NULL && extra_env[i] != NULL; i++) {
      putenv((char *)extra_env[i]); /* the child execs right away; the strings outlive it */
    }
    execvp(argv[0], (char *const *)argv);
    fprintf(stderr, "bt_test_spawn: exec %s: %s\n", argv[0], strerror(errno));
    _exit(127);
  }
  return pid;
}

int bt_test_stop(pid_t pid, int sig, int timeout_ms) {
  int status;
  if (pid <= 0) return -1;
  kill(pid, sig);
  uint64_t deadline = bt_test_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
  for (;;) {
    pid_t r = waitpid(pid, &status, WNOHANG);
    if (r == pid) return status;
    if (r < 0 && errno != EINTR) return -1; /* not our child, or already reaped */
    if (bt_test_now_ms() >= deadline) break;
    sleep_ms(5);
  }
  kill(pid, SIGKILL);
  while (waitpid(pid, &status, 0) < 0 && errno == EINTR) {
  }
  return -1;
}

int bt_test_free_port(void) {
  int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  if (fd < 0) fail_msg("socket: %s", strerror(errno));
  struct sockaddr_in sa = {.sin_family = AF_INET, .sin_addr.s_addr = htonl(INADDR_LOOPBACK)};
  socklen_t len = sizeof sa;
  if (bind(fd, (struct sockaddr *)&sa, sizeof sa) != 0 ||
      getsockname(fd, (struct sockaddr *)&sa, &len) != 0) {
    int e = errno;
    close(fd);
    fail_msg("bt_test_free_port: %s", strerror(e));
  }
  close(fd);
  return ntohs(sa.sin_port);
}

int bt_test_sh(const char *fmt, ...) {
  char *cmd = NULL;
  va_list ap;
  va_start(ap, fmt);
  int n = vasprintf(&cmd, fmt, ap);
  va_end(ap);
  if (n < 0) return -1;
  /* The stack env is loaded when a stack runs; unit tests may use this without one. */
  if (!env_loaded) {
    const char *path = getenv("BATON_TEST_ENV");
    if (path != NULL && env_load_file(path) == 0) env_loaded = 1;
  }
  const char *dir = source_dir();
  fflush(NULL);
  pid_t pid = fork();
  if (pid < 0) {
    free(cmd);
    return -1;
  }
  if (pid == 0) {
    if (chdir(dir) != 0) {
      fprintf(stderr, "bt_test_sh: chdir %s: %s\n", dir, strerror(errno));
      _exit(127);
    }
    signal(SIGPIPE, SIG_DFL);
    execl("/bin/sh", "sh", "-c", cmd, (char *)NULL);
    _exit(127);
  }
  free(cmd);
  int status;
  while (waitpid(pid, &status, 0) < 0) {
    if (errno != EINTR) return -1;
  }
  if (WIFEXITED(status)) return WEXITSTATUS(status);
  if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
  return -1;
}

/* ---- HTTP client ----------------------------------------------------------------------- */

int bt_test_connect(const char *host, int port) {
  char portstr[16];
  snprintf(portstr, sizeof portstr, "%d", port);
  struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM}, *res = NULL;
  if (getaddrinfo(host, portstr, &hints, &res) != 0) return -1;
  int fd = -1;
  for (struct addrinfo *ai = res; ai != NULL; ai = ai->ai_next) {
    fd = socket(ai->ai_family, ai->ai_socktype | SOCK_CLOEXEC, ai->ai_protocol);
    if (fd < 0) continue;
    int r;
    do {
      r = connect(fd, ai->ai_addr, ai->ai_addrlen);
    } while (r != 0 && errno == EINTR);
    if (r == 0) break;
    close(fd);
    fd = -1;
  }
  freeaddrinfo(res);
  if (fd >= 0) {
    /* Tests write requests a byte at a time; each write should leave as its own segment. */
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
  }
  return fd;
}

typedef struct {
  char *p;
  size_t len, cap;
} sbuf_t;

static int sbuf_add(sbuf_t *b, const void *data, size_t n) {
  if (b->len + n + 1 > b->cap) {
    size_t cap = b->cap ? b->cap : 4096;
    while (cap < b->len + n + 1) cap *= 2;
    char *p = realloc(b->p, cap);
    if (p == NULL) return -1;
    b->p = p;
    b->cap = cap;
  }
  memcpy(b->p + b->len, data, n);
  b->len += n;
  b->p[b->len] = '\0';
  return 0;
}

static int send_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = send(fd, p, n, MSG_NOSIGNAL);
    if (w < 0) {
      if (errno == EINTR) continue;
      return -1;
    }
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

/* Parses "http://host[:port][/path]"; host may be [v6]. */
static int parse_url(const char *url, char *host, size_t hostsz, int *port, const char **path) {
  if (strncmp(url, "http://", 7) != 0) return -1;
  const char *h = url + 7, *end = h + strcspn(h, "/?");
  const char *colon = NULL;
  if (*h == '[') {
    const char *rb = memchr(h, ']', (size_t)(end - h));
    if (rb == NULL) return -1;
    if ((size_t)(rb - h - 1) >= hostsz) return -1;
    memcpy(host, h + 1, (size_t)(rb - h - 1));
    host[rb - h - 1] = '\0';
    if (rb + 1 < end && rb[1] == ':') colon = rb + 1;
  } else {
    colon = memchr(h, ':', (size_t)(end - h));
    const char *hend = colon ? colon : end;
    if ((size_t)(hend - h) >= hostsz || hend == h) return -1;
    memcpy(host, h, (size_t)(hend - h));
    host[hend - h] = '\0';
  }
  *port = colon ? atoi(colon + 1) : 80;
  if (*port <= 0 || *port > 65535) return -1;
  *path = *end ? end : "/";
  return 0;
}

/* Finds a header's value in a raw header block (status line first). */
static int find_header(const char *hdrs, size_t hlen, const char *name, const char **val,
                       size_t *vlen) {
  size_t nlen = strlen(name);
  const char *p = memchr(hdrs, '\n', hlen);
  const char *end = hdrs + hlen;
  while (p != NULL && ++p < end) {
    const char *eol = memchr(p, '\n', (size_t)(end - p));
    const char *le = eol ? eol : end;
    if ((size_t)(le - p) > nlen && p[nlen] == ':' && strncasecmp(p, name, nlen) == 0) {
      const char *v = p + nlen + 1, *ve = le;
      while (v < ve && (*v == ' ' || *v == '\t')) v++;
      while (ve > v && (ve[-1] == '\r' || ve[-1] == ' ' || ve[-1] == '\t')) ve--;
      *val = v;
      *vlen = (size_t)(ve - v);
      return 0;
    }
    p = eol;
  }
  return -1;
}

/* Decodes a chunked body into out. Returns 1 when complete, 0 when more input is needed,
 * -1 when malformed. */
static int dechunk(const char *in, size_t inlen, sbuf_t *out) {
  size_t pos = 0;
  out->len = 0;
  for (;;) {
    const char *eol = memchr(in + pos, '\n', inlen - pos);
    if (eol == NULL) return 0;
    char *endp;
    unsigned long sz = strtoul(in + pos, &endp, 16);
    if (endp == in + pos) return -1;
    pos = (size_t)(eol - in) + 1;
    if (sz == 0) {
      /* Trailers end with an empty line. */
      for (;;) {
        const char *e2 = memchr(in + pos, '\n', inlen - pos);
        if (e2 == NULL) return 0;
        size_t l = (size_t)(e2 - (in + pos));
        pos = (size_t)(e2 - in) + 1;
        if (l == 0 || (l == 1 && in[pos - 2] == '\r')) return 1;
      }
    }
    if (inlen - pos < sz + 2) return 0;
    if (sbuf_add(out, in + pos, sz) != 0) return -1;
    pos += sz;
    if (in[pos] == '\r') pos++;
    if (pos >= inlen) return 0;
    if (in[pos] != '\n') return -1;
    pos++;
  }
}

/* Tries to complete a response from what has been read. Returns 1 when done, 0 when more
 * is needed; at eof a partial body is accepted when the length was not declared. */
static int try_parse(sbuf_t *raw, int eof, const char *method, bt_test_http_resp_t *resp) {
  size_t start = 0;
  for (;;) {
    char *p = raw->p ? raw->p + start : NULL;
    size_t avail = raw->len - start;
    char *hend = p ? memmem(p, avail, "\r\n\r\n", 4) : NULL;
    size_t sep = 4;
    if (hend == NULL && p != NULL) {
      hend = memmem(p, avail, "\n\n", 2);
      sep = 2;
    }
    if (hend == NULL) return eof ? -1 : 0;
    size_t hlen = (size_t)(hend - p);
    int status = 0;
    if (sscanf(p, "HTTP/%*d.%*d %d", &status) != 1) return -1;
    size_t body_off = start + hlen + sep;
    if (status >= 100 && status < 200 && status != 101) {
      start = body_off; /* skip an interim response such as 100 Continue */
      continue;
    }
    const char *v;
    size_t vlen;
    size_t body_have = raw->len - body_off;
    int no_body = strcasecmp(method, "HEAD") == 0 || status == 204 || status == 304;
    sbuf_t body = {0};
    int done;
    if (no_body) {
      done = 1;
    } else if (find_header(p, hlen, "Transfer-Encoding", &v, &vlen) == 0 &&
               vlen >= 7 && strncasecmp(v + vlen - 7, "chunked", 7) == 0) {
      int r = dechunk(raw->p + body_off, body_have, &body);
      if (r < 0) {
        free(body.p);
        return -1;
      }
      done = r == 1 || eof;
    } else if (find_header(p, hlen, "Content-Length", &v, &vlen) == 0) {
      size_t cl = (size_t)strtoull(v, NULL, 10);
      done = body_have >= cl || eof;
      if (done) sbuf_add(&body, raw->p + body_off, body_have < cl ? body_have : cl);
    } else {
      done = eof;
      if (done) sbuf_add(&body, raw->p + body_off, body_have);
    }
    if (!done) {
      free(body.p);
      return 0;
    }
    resp->status = status;
    resp->headers = strndup(p, hlen);
    resp->body = body.p ? body.p : strdup("");
    resp->body_len = body.len;
    return 1;
  }
}

static int http_do(const char *method, const char *url, const char *headers, const char *body,
                   size_t body_len, bt_test_http_resp_t *resp, int timeout_ms) {
  memset(resp, 0, sizeof *resp);
  char host[256];
  int port;
  const char *path;
  int rc = -1;
  sbuf_t req = {0}, raw = {0};
  if (parse_url(url, host, sizeof host, &port, &path) != 0) {
    print_error("bt_test_http: bad url '%s'\n", url);
    goto out;
  }
  int fd = bt_test_connect(host, port);
  if (fd < 0) goto out;
  struct timeval tv = {.tv_sec = timeout_ms / 1000, .tv_usec = (timeout_ms % 1000) * 1000};
  setsockopt(fd, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
  setsockopt(fd, SOL_SOCKET, SO_SNDTIMEO, &tv, sizeof tv);

  /* The path goes in as is: a long query string must not be cut (nor read past) here. */
  char line[1024];
  sbuf_add(&req, method, strlen(method));
  sbuf_add(&req, " ", 1);
  sbuf_add(&req, path, strlen(path));
  int n = snprintf(line, sizeof line, " HTTP/1.1\r\nHost: %s:%d\r\nConnection: close\r\n", host,
                   port);
  sbuf_add(&req, line, (size_t)n);
  if (headers != NULL) sbuf_add(&req, headers, strlen(headers));
  if (body != NULL) {
    n = snprintf(line, sizeof line, "Content-Length: %zu\r\n", body_len);
    sbuf_add(&req, line, (size_t)n);
  }
  sbuf_add(&req, "\r\n", 2);
  if (body != NULL && body_len > 0) sbuf_add(&req, body, body_len);
  /* A server may answer early (413) and close; what it sent is still worth reading. */
  (void)send_all(fd, req.p, req.len);

  char chunk[16384];
  for (;;) {
    ssize_t r = recv(fd, chunk, sizeof chunk, 0);
    if (r < 0 && errno == EINTR) continue;
    int eof = r <= 0; /* error (reset, timeout) ends the read like EOF */
    if (r > 0 && sbuf_add(&raw, chunk, (size_t)r) != 0) break;
    int done = try_parse(&raw, eof, method, resp);
    if (done == 1) {
      rc = 0;
      break;
    }
    if (done < 0 || eof || raw.len > BT_TEST_HTTP_MAX) break;
  }
  close(fd);
out:
  free(req.p);
  free(raw.p);
  if (rc != 0) {
    free(resp->body);
    free(resp->headers);
    memset(resp, 0, sizeof *resp);
  }
  /* Never NULL, so a failed request reads as an empty response in assertions. */
  if (resp->body == NULL) resp->body = strdup("");
  if (resp->headers == NULL) resp->headers = strdup("");
  return rc;
}

int bt_test_http(const char *method, const char *url, const char *headers, const char *body,
                 size_t body_len, bt_test_http_resp_t *resp) {
  return http_do(method, url, headers, body, body_len, resp, BT_TEST_HTTP_TIMEOUT_MS);
}

void bt_test_http_free(bt_test_http_resp_t *resp) {
  if (resp == NULL) return;
  free(resp->body);
  free(resp->headers);
  memset(resp, 0, sizeof *resp);
}

int bt_test_http_header(const bt_test_http_resp_t *resp, const char *name, char *out,
                        size_t outsz) {
  const char *v;
  size_t vlen;
  if (resp->headers == NULL || outsz == 0) return -1;
  if (find_header(resp->headers, strlen(resp->headers), name, &v, &vlen) != 0) return -1;
  if (vlen >= outsz) vlen = outsz - 1;
  memcpy(out, v, vlen);
  out[vlen] = '\0';
  return 0;
}

int bt_test_wait_status(const char *url, int status, int timeout_ms) {
  uint64_t deadline = bt_test_now_ms() + (uint64_t)(timeout_ms > 0 ? timeout_ms : 0);
  for (;;) {
    bt_test_http_resp_t r;
    /* Each probe is bounded by what is left of the wait, so a hung server cannot stretch it. */
    uint64_t now = bt_test_now_ms();
    int left = now < deadline ? (int)(deadline - now) : 0;
    int got = http_do("GET", url, NULL, NULL, 0, &r, left < 200 ? 200 : left) == 0 ? r.status : 0;
    bt_test_http_free(&r);
    if (got == status) return 0;
    if (bt_test_now_ms() >= deadline) return -1;
    sleep_ms(20);
  }
}
