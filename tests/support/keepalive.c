/* Keep-alive HTTP client for tests: Content-Length framed responses only (which is all the
 * baton services send). */
#include "keepalive.h"

#include <poll.h>
#include <stdbool.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <unistd.h>

#include "testsupport.h"

int bt_test_ka_open(bt_test_ka_t *c, int port) {
  c->port = port;
  c->in_len = 0;
  c->fd = bt_test_connect("127.0.0.1", port);
  return c->fd >= 0 ? 0 : -1;
}

void bt_test_ka_close(bt_test_ka_t *c) {
  if (c->fd >= 0)
    close(c->fd);
  c->fd = -1;
}

static int write_all(int fd, const char *p, size_t n) {
  while (n > 0) {
    ssize_t w = write(fd, p, n);
    if (w <= 0)
      return -1;
    p += w;
    n -= (size_t)w;
  }
  return 0;
}

static int read_one(bt_test_ka_t *c, char *body_out, size_t body_sz) {
  for (;;) {
    char *end = memmem(c->in, c->in_len, "\r\n\r\n", 4);
    if (end) {
      size_t hl = (size_t)(end - c->in) + 4;
      *end = '\0';
      const char *cl = strcasestr(c->in, "\r\ncontent-length:");
      size_t blen = cl ? strtoul(cl + 17, NULL, 10) : 0;
      bool close_after = strcasestr(c->in, "\r\nconnection: close") != NULL;
      *end = '\r';
      if (hl + blen > sizeof c->in)
        return -1;
      if (c->in_len >= hl + blen) {
        int status = atoi(c->in + 9);
        if (body_out && body_sz) {
          size_t k = blen < body_sz - 1 ? blen : body_sz - 1;
          memcpy(body_out, c->in + hl, k);
          body_out[k] = '\0';
        }
        memmove(c->in, c->in + hl + blen, c->in_len - hl - blen);
        c->in_len -= hl + blen;
        if (close_after)
          bt_test_ka_close(c);
        return status;
      }
    }
    if (c->in_len == sizeof c->in)
      return -1;
    struct pollfd p = {c->fd, POLLIN, 0};
    if (poll(&p, 1, 60000) <= 0)
      return -1;
    ssize_t n = read(c->fd, c->in + c->in_len, sizeof c->in - c->in_len);
    if (n <= 0)
      return -1;
    c->in_len += (size_t)n;
  }
}

int bt_test_ka_request(bt_test_ka_t *c, const char *method, const char *path,
                       const char *headers, const char *body, size_t body_len, char *body_out,
                       size_t body_sz) {
  char head[4096];
  int hn = snprintf(head, sizeof head, "%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: %zu\r\n%s\r\n",
                    method, path, body_len, headers ? headers : "");
  for (int attempt = 0; attempt < 2; attempt++) {
    if (c->fd < 0 && bt_test_ka_open(c, c->port) != 0)
      return -1;
    if (write_all(c->fd, head, (size_t)hn) == 0 && write_all(c->fd, body, body_len) == 0)
      return read_one(c, body_out, body_sz);
    bt_test_ka_close(c); /* the server closed an idle connection: reconnect once */
  }
  return -1;
}

typedef struct {
  int port;
  size_t n, next;
  bt_test_req_fn fn;
  void *arg;
  int want;
  size_t ok;
  size_t counts[6];
  pthread_mutex_t mu;
} drive_t;

static void *drive_thread(void *p) {
  drive_t *d = p;
  bt_test_ka_t *c = malloc(sizeof *c);
  char *path = malloc(1024), *hdrs = malloc(8192), *body = malloc(1 << 20), resp[512];
  bt_test_ka_open(c, d->port);
  for (;;) {
    pthread_mutex_lock(&d->mu);
    size_t i = d->next < d->n ? d->next++ : d->n;
    pthread_mutex_unlock(&d->mu);
    if (i >= d->n)
      break;
    hdrs[0] = '\0';
    size_t blen = d->fn(i, path, 1024, hdrs, 8192, body, 1 << 20, d->arg);
    int st = bt_test_ka_request(c, "POST", path, hdrs, body, blen, resp, sizeof resp);
    pthread_mutex_lock(&d->mu);
    d->counts[st > 0 && st < 600 ? st / 100 : 0]++;
    if (st == d->want)
      d->ok++;
    else if (d->counts[st > 0 ? st / 100 : 0] <= 3)
      fprintf(stderr, "request %zu answered %d: %s\n", i, st, resp);
    pthread_mutex_unlock(&d->mu);
  }
  bt_test_ka_close(c);
  free(c);
  free(path);
  free(hdrs);
  free(body);
  return NULL;
}

size_t bt_test_ka_drive(int port, size_t n, unsigned threads, bt_test_req_fn fn, void *arg,
                        int want_status, size_t counts[6]) {
  drive_t d = {.port = port, .n = n, .fn = fn, .arg = arg, .want = want_status};
  pthread_mutex_init(&d.mu, NULL);
  pthread_t *t = calloc(threads, sizeof *t);
  for (unsigned i = 0; i < threads; i++)
    pthread_create(&t[i], NULL, drive_thread, &d);
  for (unsigned i = 0; i < threads; i++)
    pthread_join(t[i], NULL);
  free(t);
  pthread_mutex_destroy(&d.mu);
  if (counts)
    memcpy(counts, d.counts, sizeof d.counts);
  return d.ok;
}
