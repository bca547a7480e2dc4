/* A keep-alive HTTP/1.1 test client and a parallel request driver, for tests that send
 * thousands of requests (fresh connections per request would exhaust ephemeral ports). */
#ifndef BT_KEEPALIVE_H
#define BT_KEEPALIVE_H

#include <stddef.h>

typedef struct bt_test_ka {
  int fd;
  int port;
  char in[1 << 16];
  size_t in_len;
} bt_test_ka_t;

int bt_test_ka_open(bt_test_ka_t *c, int port);
/* Sends one request and reads its response (reconnecting once if the server closed the
 * connection). body_out (may be NULL) receives the NUL-terminated body, truncated to
 * body_sz-1. Returns the status, or -1 on a transport failure. */
int bt_test_ka_request(bt_test_ka_t *c, const char *method, const char *path,
                       const char *headers, const char *body, size_t body_len, char *body_out,
                       size_t body_sz);
void bt_test_ka_close(bt_test_ka_t *c);

/* Builds request i into the given buffers; returns the body length. */
typedef size_t (*bt_test_req_fn)(size_t i, char *path, size_t path_sz, char *headers,
                                 size_t headers_sz, char *body, size_t body_sz, void *arg);

/* Sends requests 0..n-1 over `threads` keep-alive connections to 127.0.0.1:port, all POST.
 * Counts answers by status into counts[status/100] (size 6; [0] = transport failures) and
 * returns the number that answered `want_status`. */
size_t bt_test_ka_drive(int port, size_t n, unsigned threads, bt_test_req_fn fn, void *arg,
                        int want_status, size_t counts[6]);

#endif
