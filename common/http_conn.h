/* bt_http_conn_t: one accepted HTTP/1.1 connection. Internal to the HTTP server: the server
 * creates connections, the connection parses requests with http_parser and hands each complete
 * request to the server's dispatcher; handlers only ever see bt_http_req_t. */
#ifndef BT_HTTP_CONN_H
#define BT_HTTP_CONN_H

#include <http_parser.h>
#include <stdbool.h>
#include <uv.h>

#include "buf.h"
#include "http_server.h"

/* READING: waiting for (more of) a request; the header/idle timer runs.
 * DISPATCHED: a complete request is with its handler; input is buffered, not parsed.
 * CLOSING: uv_close has been called; the object is freed when both handles have closed. */
typedef enum { BT_HTTP_CONN_READING, BT_HTTP_CONN_DISPATCHED, BT_HTTP_CONN_CLOSING } bt_http_conn_state_t;

struct bt_http_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;
  bt_http_server_t *srv;
  bt_http_conn_state_t state;
  http_parser parser;
  bt_buf_t in;      /* received, not yet parsed bytes */
  bt_buf_t head;    /* url and header names/values of the current request, NUL-separated */
  bt_buf_t body;
  bt_buf_t scratch; /* decoded path and parameter values, reserved once per request */
  bt_http_req_t req;
  size_t hdr_off[BT_HTTP_MAX_HEADERS][2]; /* offsets of name and value in head */
  unsigned nhdr;
  bool in_value;        /* the last header callback was a value */
  bool too_many_headers;
  bool message_begun;   /* bytes of a request have arrived */
  bool message_done;    /* on_message_complete fired for the current request */
  bool keep_alive;
  bool peer_gone;       /* EOF or error while a request was dispatched */
  bool drain_close;     /* close after the current response: the server is draining */
  bool in_process;      /* inside process_input: a synchronous respond must not recurse */
  bool reading;         /* uv_read_start is active */
  int error_status;     /* a limit was hit while parsing: 413, 431, 400 */
  unsigned open_handles;
  unsigned writes_pending;  /* uv_write requests not yet completed */
  unsigned nserved;
  struct bt_http_conn *prev, *next; /* the server's list of open connections */
};

/* Creates a connection for an accepted client and starts reading. Returns NULL on failure
 * (the client handle is closed). */
bt_http_conn_t *bt__http_conn_accept(bt_http_server_t *srv, uv_stream_t *listener);
/* Closes the connection; `reason` is logged once at debug level. Safe to call twice. */
void bt__http_conn_close(bt_http_conn_t *c, const char *reason);
/* The server started draining: close if idle, else close after the current response. */
void bt__http_conn_drain(bt_http_conn_t *c);

/* The connection's contract with its server (implemented in http_server.c). */
const bt_http_limits_t *bt__http_server_limits(bt_http_server_t *srv);
uv_loop_t *bt__http_server_loop(bt_http_server_t *srv);
/* A complete request: route it. The handler answers with bt_http_respond*. */
void bt__http_server_dispatch(bt_http_server_t *srv, bt_http_req_t *req);
/* A response was written: count it by status. */
void bt__http_server_responded(bt_http_server_t *srv, bt_http_req_t *req, int status);
/* Both handles of the connection have closed; the server unlinks it and frees it. */
void bt__http_server_conn_closed(bt_http_server_t *srv, bt_http_conn_t *c);

#endif
