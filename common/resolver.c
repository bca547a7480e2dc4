/* Asynchronous name resolution with cancellation that never leaves a dangling owner. */
#include "resolver.h"

#include <arpa/inet.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

struct bt_resolve_req {
  uv_getaddrinfo_t gai;
  uv_timer_t numeric; /* a numeric host is answered from this zero-delay timer */
  bool is_numeric;
  bt_resolve_cb cb;   /* NULL once cancelled */
  void *arg;
  char host[];
};

int bt_addr_is_numeric(const char *s) {
  unsigned char tmp[sizeof(struct in6_addr)];
  return inet_pton(AF_INET, s, tmp) == 1 || inet_pton(AF_INET6, s, tmp) == 1;
}

static void deliver(bt_resolve_req_t *q, int status, const char *errstr,
                    const bt_addr_list_t *addrs) {
  if (q->cb)
    q->cb(status, errstr, addrs, q->arg);
}

static void on_numeric_closed(uv_handle_t *h) { free(h->data); }

static void on_numeric(uv_timer_t *t) {
  bt_resolve_req_t *q = t->data;
  bt_addr_list_t list = {.n = 1};
  snprintf(list.addr[0], sizeof list.addr[0], "%s", q->host);
  deliver(q, 0, "", &list);
  uv_close((uv_handle_t *)&q->numeric, on_numeric_closed);
}

static void on_resolved(uv_getaddrinfo_t *req, int status, struct addrinfo *res) {
  bt_resolve_req_t *q = req->data;
  bt_addr_list_t list = {0};
  for (struct addrinfo *ai = status == 0 ? res : NULL; ai && list.n < BT_RESOLVE_MAX_ADDRS;
       ai = ai->ai_next) {
    char ip[INET6_ADDRSTRLEN] = "";
    if (ai->ai_family == AF_INET)
      uv_ip4_name((struct sockaddr_in *)ai->ai_addr, ip, sizeof ip);
    else if (ai->ai_family == AF_INET6)
      uv_ip6_name((struct sockaddr_in6 *)ai->ai_addr, ip, sizeof ip);
    bool seen = !*ip;
    for (size_t i = 0; i < list.n && !seen; i++) /* one entry per socket type: keep one */
      seen = strcmp(list.addr[i], ip) == 0;
    if (!seen)
      memcpy(list.addr[list.n++], ip, sizeof ip);
  }
  uv_freeaddrinfo(res);
  if (status == 0 && list.n == 0)
    status = UV_EAI_NODATA;
  deliver(q, status, status ? uv_strerror(status) : "", &list);
  free(q);
}

int bt_resolve(uv_loop_t *loop, const char *host, bt_resolve_cb cb, void *arg,
               bt_resolve_req_t **out) {
  size_t len = strlen(host);
  if (len == 0 || !cb)
    return BT_EINVAL;
  bt_resolve_req_t *q = calloc(1, sizeof *q + len + 1);
  if (!q)
    return BT_ENOMEM;
  memcpy(q->host, host, len + 1);
  q->cb = cb;
  q->arg = arg;
  if (bt_addr_is_numeric(host)) {
    q->is_numeric = true;
    uv_timer_init(loop, &q->numeric);
    q->numeric.data = q;
    uv_timer_start(&q->numeric, on_numeric, 0, 0);
  } else {
    struct addrinfo hints = {.ai_family = AF_UNSPEC, .ai_socktype = SOCK_STREAM};
    q->gai.data = q;
    int rc = uv_getaddrinfo(loop, &q->gai, on_resolved, q->host, NULL, &hints);
    if (rc != 0) {
      free(q);
      return rc == UV_ENOMEM ? BT_ENOMEM : BT_EIO;
    }
  }
  *out = q;
  return 0;
}

void bt_resolve_cancel(bt_resolve_req_t *q) {
  if (!q)
    return;
  q->cb = NULL;
  if (q->is_numeric) {
    /* The timer may already have fired and be closing; closing twice is a bug, so only an
     * active timer is closed here. */
    if (uv_is_active((uv_handle_t *)&q->numeric)) {
      uv_timer_stop(&q->numeric);
      uv_close((uv_handle_t *)&q->numeric, on_numeric_closed);
    }
  } else {
    uv_cancel((uv_req_t *)&q->gai); /* on success on_resolved runs with UV_ECANCELED */
  }
}
