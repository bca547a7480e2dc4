/* bt_resolve(): host names resolved off the loop (uv_getaddrinfo in libuv's thread pool),
 * delivered as numeric addresses. libpq and hiredis would otherwise call a blocking
 * getaddrinfo() on the loop at every reconnect. A lookup may be cancelled at any time; its
 * memory is the runtime's, so the owner may be freed right after cancelling. */
#ifndef BT_RESOLVER_H
#define BT_RESOLVER_H

#include <netinet/in.h>
#include <stddef.h>
#include <uv.h>

#include "errors.h"

#define BT_RESOLVE_MAX_ADDRS 16

typedef struct bt_addr_list {
  size_t n;                                         /* distinct addresses, in resolver order */
  char addr[BT_RESOLVE_MAX_ADDRS][INET6_ADDRSTRLEN]; /* numeric, "10.0.0.1" or "::1" */
} bt_addr_list_t;

typedef struct bt_resolve_req bt_resolve_req_t;

/* status is 0 with at least one address, or a negative libuv error (UV_EAI_NONAME, ...);
 * errstr names the cause when status != 0. addrs is borrowed for the callback. */
typedef void (*bt_resolve_cb)(int status, const char *errstr, const bt_addr_list_t *addrs,
                              void *arg);

/* Starts resolving host (copied) for TCP. A numeric address is answered without a lookup,
 * but still from a later callback, never from inside this call. Returns 0 and *out (the
 * handle for bt_resolve_cancel), or a BT_E* code and cb never runs. */
int bt_resolve(uv_loop_t *loop, const char *host, bt_resolve_cb cb, void *arg,
               bt_resolve_req_t **out) BT_MUSTCHECK;
/* cb will not run. Call only before cb has run (the request is freed right after it). The lookup itself may still finish in the thread pool (uv_cancel cannot
 * stop one already started); its memory is freed then. */
void bt_resolve_cancel(bt_resolve_req_t *q);
/* Whether s is a numeric IPv4 or IPv6 address. */
int bt_addr_is_numeric(const char *s);

#endif
