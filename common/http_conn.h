/* bt_http_conn_t: one accepted HTTP/1.1 connection. Internal to the HTTP server: the server
 * creates connections, the connection parses requests with http_parser and hands each complete
 * request to the server's dispatcher; handlers only ever see bt_http_req_t (http_req.h). */
#ifndef BT_HTTP_CONN_H
#define BT_HTTP_CONN_H

#include <http_parser.h>
#include <stdbool.h>
#include <uv.h>

#include "buf.h"
#include "http_req.h"
#include "http_server.h"

/* The connection's lifecycle (the legal moves are the table in http_conn.c):
 * READING: waiting for or receiving a request; the header or idle timer runs. Parsing pauses
 *   while the output queued for the client is above the high-water mark (backpressure).
 * DISPATCHED: a complete request is with its handler; input is buffered, not parsed; the
 *   request's deadline timer runs if it set one.
 * STREAMING: the handler began a chunked answer and writes it piece by piece.
 * CLOSE_AFTER_WRITE: the last answer is queued (Connection: close, an error, a drain, or the
 *   client's end of input); the connection closes once it is flushed.
 * LINGERING: our side is shut down after the last answer; input is read and discarded until
 *   the client closes or a short timer ends, so unread input (a refused body) does not turn
 *   into a reset that destroys the answer before the client reads it.
 * PEER_GONE: the client reset the connection, a write failed or made no progress in time;
 *   the current request is aborted and the socket is closed with RST.
 * CLOSING: uv_close has been called; freed when every handle has closed. */
typedef enum {
  BT_HTTP_CONN_READING,
  BT_HTTP_CONN_DISPATCHED,
  BT_HTTP_CONN_STREAMING,
  BT_HTTP_CONN_CLOSE_AFTER_WRITE,
  BT_HTTP_CONN_LINGERING,
  BT_HTTP_CONN_PEER_GONE,
  BT_HTTP_CONN_CLOSING,
  BT_HTTP_CONN_NSTATES
} bt_http_conn_state_t;

struct bt_http_conn {
  uv_tcp_t tcp;
  uv_timer_t timer;  /* per state: header/idle (READING), deadline (DISPATCHED), linger */
  uv_timer_t wtimer; /* write progress, while output is queued */
  uv_shutdown_t shutdown;
  bt_http_server_t *srv;
  bt_http_conn_state_t state;
  http_parser parser;
  bt_buf_t in;       /* received bytes; those before in_off are parsed */
  size_t in_off;
  bt_http_req_t *req;   /* the request being received or handled; NULL between requests */
  bt_http_req_t *spare; /* a finished request kept for reuse, its buffers shrunk */
  size_t hdr_off[BT_HTTP_MAX_HEADERS][2]; /* offsets of name and value in req->head */
  unsigned nhdr;
  int error_status;        /* a limit was hit while parsing: 401, 413, 431, 503, 505 */
  const char *error_detail;
  const char *defer_reason; /* why a deferred close (defer_close) closes */
  size_t out_bytes;        /* bytes in uv_write requests not yet completed */
  size_t wt_queue;         /* write queue size at the last write-timer tick */
  unsigned wt_done;        /* writes completed at the last write-timer tick */
  unsigned writes_done;
  unsigned open_handles;
  unsigned nserved;
  bool in_value;      /* the last header callback was a value */
  bool message_begun; /* bytes of a request have arrived */
  bool message_done;  /* on_message_complete fired for the current request */
  bool eof;           /* the client half-closed: nothing more will arrive */
  bool in_process;    /* inside process_input: a synchronous answer must not recurse */
  bool reading;       /* uv_read_start is active */
  bool shut;          /* uv_shutdown was issued (RST is then not allowed) */
  struct bt_http_conn *prev, *next; /* the server's list of open connections */
};

/* Registers the per-state gauges (once per process). */
void bt__http_conn_register_metrics(void);
/* Creates a connection for an accepted client and starts reading. The connection is counted
 * (bt__http_server_conn_opened) before the accept, so a failed accept, which closes it, is
 * uncounted symmetrically. Returns NULL on failure. */
bt_http_conn_t *bt__http_conn_accept(bt_http_server_t *srv, uv_stream_t *listener);
/* The server started draining: close if idle, else close after the current response. */
void bt__http_conn_drain(bt_http_conn_t *c);

/* The process-wide budget of buffered bytes (http_req.c). Input buffers, request heads and
 * bodies and queued output count; growth past the maximum is refused. */
void bt__http_budget_set(size_t max);
size_t bt__http_budget_used(void);
/* Grows b to hold extra more bytes plus a NUL, doubling up to max+1; BT_EAGAIN when the budget
 * refuses, BT_ERANGE past max, BT_ENOMEM. */
int bt__http_buf_reserve(bt_buf_t *b, size_t extra, size_t max) BT_MUSTCHECK;
/* Sets b's capacity to exactly cap (>= len+1), within the budget. */
int bt__http_buf_resize(bt_buf_t *b, size_t cap) BT_MUSTCHECK;
/* Frees b's memory and returns it to the budget. */
void bt__http_buf_release(bt_buf_t *b);
/* Counts n bytes of queued output in (or out of, with negative n) the budget. */
void bt__http_budget_output(long n);

/* Request objects (http_req.c). new returns NULL when out of memory. recycle empties a finished
 * request for reuse and shrinks its buffers; free releases it. */
bt_http_req_t *bt__http_req_new(void);
void bt__http_req_recycle(bt_http_req_t *r);
void bt__http_req_free(bt_http_req_t *r);

/* The connection's contract with its server (implemented in http_server.c). */
const bt_http_limits_t *bt__http_server_limits(bt_http_server_t *srv);
uv_loop_t *bt__http_server_loop(bt_http_server_t *srv);
bool bt__http_server_draining(bt_http_server_t *srv);
/* The headers of req are complete (the body is not read yet): match the route and run its
 * auth hook. Returns 0 to go on, or 401 with *detail set. */
int bt__http_server_admit(bt_http_server_t *srv, bt_http_req_t *req, const char **detail);
/* A complete request: run its route's handler, or answer 404/405. */
void bt__http_server_dispatch(bt_http_server_t *srv, bt_http_req_t *req);
/* A response was written (req NULL for errors found while parsing): count it by status. */
void bt__http_server_responded(bt_http_server_t *srv, const bt_http_req_t *req, int status);
/* Counts an event for /metrics: "write_timeout", "deadline", "aborted", "overloaded". */
void bt__http_server_count(bt_http_server_t *srv, const char *what);
/* The connection exists and is linked (called before the accept). */
void bt__http_server_conn_opened(bt_http_server_t *srv, bt_http_conn_t *c);
/* Every handle of the connection has closed; the server unlinks it and frees it. */
void bt__http_server_conn_closed(bt_http_server_t *srv, bt_http_conn_t *c);

#endif
