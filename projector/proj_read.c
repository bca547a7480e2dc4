/* The read API. Every answer comes from one run of READ_LUA, which resolves the live version
 * and reads the document (index page, total) and the applied offsets together, so what a
 * client gets is a state the sink really committed, never a document from one batch with
 * offsets from another, and a version switch between two commands cannot split an answer.
 * Reads with ?after= park as waiters until the offset shows up in the off hash: re-read per
 * projection on a short poll or when a sink calls proj_read_applied(). */
#include "proj_read.h"

#include <errno.h>
#include <inttypes.h>
#include <stdlib.h>
#include <string.h>

#include "log.h"
#include "metrics.h"
#include "proj_layout.h"
#include "redis_script.h"
#include "timers.h"

/* KEYS[1] = bt:proj:{P}:current. ARGV: 1 key prefix "bt:proj:{P}:", 2 mode (doc|idx|agg|pos),
 * 3 the off field ?after= waits for ("" for none), 4 its offset, then per mode: doc: 5 key;
 * agg: 5 aggregate, 6 group; idx: 5 index, 6 value, 7 ZRANGEBYLEX start, 8 limit.
 * Returns {0} while no version is live, {version, off as HGETALL, 0} while ?after= is not yet
 * met (and for pos), else {version, off, 1, payload...}.
 * Only `current` is passed in KEYS: every other key's name holds the live version, which is
 * what the script reads from KEYS[1] (the caller cannot know it without a second round trip,
 * and a version it guessed could be switched and dropped before the script ran), and an index
 * read's doc keys come from the zset's members. Building them inside is safe: they all start
 * with bt:proj:{P}: (proj_layout.h), so the {P} hash tag puts them in KEYS[1]'s slot, on the
 * node Redis Cluster routes the script to, and the script only reads them. */
static const char READ_LUA[] =
    "local v = redis.call('GET', KEYS[1])\n"
    "if not v then return {0} end\n"
    "local base = ARGV[1] .. 'v' .. v .. ':'\n"
    "local offs = redis.call('HGETALL', base .. 'off')\n"
    "if ARGV[3] ~= '' then\n"
    "  local o = redis.call('HGET', base .. 'off', ARGV[3])\n"
    "  if not o or tonumber(o) <= tonumber(ARGV[4]) then return {tonumber(v), offs, 0} end\n"
    "end\n"
    "local mode = ARGV[2]\n"
    "if mode == 'pos' then return {tonumber(v), offs, 0} end\n"
    "if mode == 'doc' then\n"
    "  return {tonumber(v), offs, 1, redis.call('GET', base .. 'doc:' .. ARGV[5])}\n"
    "elseif mode == 'agg' then\n"
    "  return {tonumber(v), offs, 1, redis.call('HGET', base .. 'agg:' .. ARGV[5], ARGV[6])}\n"
    "end\n"
    "local limit = tonumber(ARGV[8])\n"
    "local members = redis.call('ZRANGEBYLEX', base .. 'idx:' .. ARGV[5] .. ':' .. ARGV[6],\n"
    "                           ARGV[7], '+', 'LIMIT', 0, limit + 1)\n"
    "local keys = {}\n"
    "for i = 1, math.min(#members, limit) do\n"
    "  local z = string.find(members[i], '\\0', 1, true)\n"
    "  keys[i] = base .. 'doc:' .. (z and string.sub(members[i], z + 1) or members[i])\n"
    "end\n"
    "local docs = #keys > 0 and redis.call('MGET', unpack(keys)) or {}\n"
    "return {tonumber(v), offs, 1, members, docs}\n";

/* Appends a string literal. */
#define PUT(b, lit) bt_buf_append((b), (lit), sizeof(lit) - 1)

#define KEY_MAX 1024 /* longest key, index value, group or cursor accepted */

typedef enum { OP_DOC, OP_INDEX, OP_AGG } op_kind_t;

typedef struct read_op read_op_t;

/* Per projection: its waiters and whether a position check is in flight. */
typedef struct view {
  proj_read_t *r;
  const proj_def_t *def;
  char prefix[300];            /* bt:proj:{P}: */
  char current[320];           /* bt:proj:{P}:current */
  read_op_t *waiters;          /* doubly linked */
  unsigned nwaiters;
  bool pos_in_flight;
  bool recheck;                /* a sink applied a batch while the check was in flight */
} view_t;

struct proj_read {
  bt_app_t *app;
  bt_redis_t *redis;
  proj_read_config_t cfg;
  bt_redis_script_t *script;
  view_t *views;
  size_t nviews;
  bt_timers_t wheel;           /* ?wait= deadlines and the poll tick */
  bt_timer_t poll;
  unsigned nwaiters;
  unsigned inflight;           /* script runs whose replies have not arrived */
  bool draining, closed;
};

/* One request. Its strings are copies: an op may outlive its request (the client goes away
 * while its script runs, and the reply frees the op). */
struct read_op {
  proj_read_t *r;
  view_t *view;
  bt_http_req_t *req;          /* NULL once the client went away */
  op_kind_t kind;
  char a[KEY_MAX + 1];         /* key | index | aggregate */
  char b[KEY_MAX + 1];         /* value | group */
  char start[2 * KEY_MAX + 4]; /* ZRANGEBYLEX start: "-" or "(" member (holds a NUL) */
  size_t start_len;
  int64_t limit;
  char after_field[320];       /* "" or topic:partition */
  char after[320];             /* as given, for answers */
  int64_t after_offset;
  bool waiting, in_flight, timed_out;
  bt_timer_t deadline;
  read_op_t *prev, *next;
};

static struct {
  bool registered;
  bt_counter_t requests, waits, wait_timeouts, refused, errors;
  bt_gauge_t waiters;
} stats;

static void run_op(read_op_t *op);

/* ---- small helpers ------------------------------------------------------------------------ */

static const char B64[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_";

/* base64url without padding: a cursor is a raw index member, which holds a NUL. */
static int b64url_encode(bt_buf_t *out, const char *s, size_t n) {
  for (size_t i = 0; i < n; i += 3) {
    uint32_t v = (uint32_t)(unsigned char)s[i] << 16;
    if (i + 1 < n) v |= (uint32_t)(unsigned char)s[i + 1] << 8;
    if (i + 2 < n) v |= (unsigned char)s[i + 2];
    char q[4] = {B64[v >> 18], B64[(v >> 12) & 63], B64[(v >> 6) & 63], B64[v & 63]};
    size_t k = n - i >= 3 ? 4 : n - i + 1;
    if (bt_buf_append(out, q, k))
      return BT_ENOMEM;
  }
  return 0;
}

/* Returns the decoded length or -1 when s is not base64url or does not fit. */
static long b64url_decode(const char *s, char *out, size_t outsz) {
  size_t n = strlen(s), o = 0;
  uint32_t acc = 0;
  int bits = 0;
  for (size_t i = 0; i < n; i++) {
    const char *p = strchr(B64, s[i]);
    if (!p || !s[i])
      return -1;
    acc = acc << 6 | (uint32_t)(p - B64);
    bits += 6;
    if (bits >= 8) {
      bits -= 8;
      if (o >= outsz)
        return -1;
      out[o++] = (char)((acc >> bits) & 0xff);
    }
  }
  return n % 4 == 1 ? -1 : (long)o;
}

static bool parse_i64(const char *s, int64_t min, int64_t max, int64_t *out) {
  char *end;
  if (!*s || *s == '+' || *s == ' ')
    return false;
  errno = 0;
  long long v = strtoll(s, &end, 10);
  if (*end || errno == ERANGE || v < min || v > max)
    return false;
  *out = v;
  return true;
}

/* {"topic:partition": next offset, ...} from HGETALL's flat array. */
static int append_offsets(bt_buf_t *b, const redisReply *offs) {
  int rc = PUT(b, "{");
  for (size_t i = 0; rc == 0 && offs && offs->type == REDIS_REPLY_ARRAY && i + 1 < offs->elements;
       i += 2) {
    const redisReply *f = offs->element[i], *v = offs->element[i + 1];
    int64_t n;
    if (f->type != REDIS_REPLY_STRING || v->type != REDIS_REPLY_STRING ||
        !parse_i64(v->str, 0, INT64_MAX, &n))
      continue; /* not ours to interpret: the sink writes only decimal offsets */
    rc = (i ? PUT(b, ",") : 0) || bt_buf_append_json_string(b, f->str) ||
         bt_buf_appendf(b, ":%" PRId64, n);
  }
  return rc || PUT(b, "}");
}

static int append_head(bt_buf_t *b, const read_op_t *op, long long version) {
  return PUT(b, "{\"projection\":") ||
         bt_buf_append_json_string(b, op->view->def->name) ||
         bt_buf_appendf(b, ",\"version\":%lld", version);
}

static void respond_buf(read_op_t *op, int status, bt_buf_t *b, int rc) {
  if (rc) {
    bt_http_respond_error(op->req, 500, "out_of_memory", "the answer did not fit in memory");
  } else {
    bt_http_respond(op->req, status, "application/json", b->data, b->len);
  }
  bt_buf_free(b);
}

/* ---- waiters ------------------------------------------------------------------------------ */

static void waiter_unlink(read_op_t *op) {
  if (!op->waiting)
    return;
  view_t *v = op->view;
  if (op->prev)
    op->prev->next = op->next;
  else
    v->waiters = op->next;
  if (op->next)
    op->next->prev = op->prev;
  op->prev = op->next = NULL;
  op->waiting = false;
  v->nwaiters--;
  op->r->nwaiters--;
  bt_gauge_set(&stats.waiters, op->r->nwaiters);
}

static void maybe_free_reader(proj_read_t *r);

static void op_free(read_op_t *op) {
  proj_read_t *r = op->r;
  waiter_unlink(op);
  /* The deadline is armed from the start of a read with ?after=, parked or not. */
  bt_timer_stop(&r->wheel, &op->deadline);
  free(op);
  maybe_free_reader(r);
}

/* The client went away: a parked waiter is freed now, one whose script runs when it ends. */
static void on_abort(bt_http_req_t *req, void *arg) {
  (void)req;
  read_op_t *op = arg;
  op->req = NULL;
  if (!op->in_flight)
    op_free(op);
}

static void answer_timeout(read_op_t *op, long long version, const redisReply *offs) {
  bt_counter_inc(&stats.wait_timeouts);
  bt_buf_t b;
  bt_buf_init(&b, 0);
  int rc = PUT(&b, "{\"error\":\"not_yet_applied\",\"detail\":") ||
           bt_buf_appendf(&b, "\"offset %" PRId64 " of %s is not applied yet\"", op->after_offset,
                          op->after_field) ||
           PUT(&b, ",\"projection\":") ||
           bt_buf_append_json_string(&b, op->view->def->name) ||
           bt_buf_appendf(&b, ",\"version\":%lld,\"after\":", version) ||
           bt_buf_append_json_string(&b, op->after) ||
           PUT(&b, ",\"offsets\":") || append_offsets(&b, offs) ||
           PUT(&b, "}");
  respond_buf(op, 504, &b, rc);
}

static void start_poll(proj_read_t *r) {
  if (!bt_timer_active(&r->poll) && !r->closed)
    bt_timer_start(&r->wheel, &r->poll, (uint64_t)r->cfg.poll_ms);
}

/* ---- position checks: one script run per projection for all its waiters ------------------- */

static bool offset_met(const redisReply *offs, const read_op_t *op) {
  for (size_t i = 0; offs && offs->type == REDIS_REPLY_ARRAY && i + 1 < offs->elements; i += 2) {
    const redisReply *f = offs->element[i], *v = offs->element[i + 1];
    int64_t n;
    if (f->type == REDIS_REPLY_STRING && strcmp(f->str, op->after_field) == 0)
      return v->type == REDIS_REPLY_STRING && parse_i64(v->str, 0, INT64_MAX, &n) &&
             n > op->after_offset;
  }
  return false;
}

static void check_view(proj_read_t *r, view_t *v);

static void on_pos(bt_redis_t *redis, int err, const redisReply *reply, void *arg) {
  (void)redis;
  view_t *v = arg;
  proj_read_t *r = v->r;
  v->pos_in_flight = false;
  /* r->inflight still counts this reply, so nothing below can free r under the loop. */
  if (err == 0 && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 2 &&
      reply->element[1]->type == REDIS_REPLY_ARRAY) {
    /* Satisfied waiters run their read (which checks ?after= again, atomically with it). */
    for (read_op_t *op = v->waiters, *next; op; op = next) {
      next = op->next;
      if (!op->in_flight && offset_met(reply->element[1], op))
        run_op(op);
    }
  }
  if (v->recheck) {
    v->recheck = false;
    check_view(r, v);
  }
  r->inflight--;
  maybe_free_reader(r);
}

static void check_view(proj_read_t *r, view_t *v) {
  if (v->pos_in_flight || !v->waiters || r->closed)
    return;
  const char *argv[] = {v->current, v->prefix, "pos", "", "0"};
  if (bt_redis_script_run(r->script, r->redis, on_pos, v, 1, 5, argv, NULL) == 0) {
    v->pos_in_flight = true;
    r->inflight++;
  }
}

static void on_poll(bt_timers_t *w, bt_timer_t *t) {
  proj_read_t *r = BT_CONTAINER_OF(t, proj_read_t, poll);
  (void)w;
  for (size_t i = 0; i < r->nviews; i++)
    check_view(r, &r->views[i]);
  if (r->nwaiters)
    start_poll(r);
}

void proj_read_applied(proj_read_t *r, const char *name) {
  if (!r || r->nwaiters == 0)
    return;
  for (size_t i = 0; i < r->nviews; i++) {
    view_t *v = &r->views[i];
    if (strcmp(v->def->name, name) != 0)
      continue;
    if (v->pos_in_flight)
      v->recheck = true;
    else
      check_view(r, v);
  }
}

static void on_deadline(bt_timers_t *w, bt_timer_t *t) {
  read_op_t *op = BT_CONTAINER_OF(t, read_op_t, deadline);
  (void)w;
  /* One last read decides, atomically: the answer if the offset made it, else a 504 with
   * the position of that same instant. A read already in flight is that last read. */
  op->timed_out = true;
  if (!op->in_flight)
    run_op(op);
}

/* ---- answers ------------------------------------------------------------------------------ */

static void answer(read_op_t *op, const redisReply *reply) {
  long long version = reply->element[0]->integer;
  const redisReply *offs = reply->element[1];
  const redisReply *payload = reply->elements > 3 ? reply->element[3] : NULL;
  bt_buf_t b;
  bt_buf_init(&b, 0);
  int rc = 0, status = 200;
  switch (op->kind) {
  case OP_DOC:
    if (!payload || payload->type != REDIS_REPLY_STRING) {
      status = 404;
      rc = PUT(&b, "{\"error\":\"key_not_found\",\"detail\":") ||
           bt_buf_appendf(&b, "\"projection %s has no document with this key\",\"key\":",
                          op->view->def->name) ||
           bt_buf_append_json_string(&b, op->a) ||
           bt_buf_appendf(&b, ",\"projection\":\"%s\",\"version\":%lld", op->view->def->name,
                          version);
    } else {
      rc = append_head(&b, op, version) || PUT(&b, ",\"key\":") ||
           bt_buf_append_json_string(&b, op->a) || PUT(&b, ",\"doc\":") ||
           bt_buf_append(&b, payload->str, payload->len);
    }
    break;
  case OP_AGG: {
    int64_t total = 0;
    if (payload && payload->type == REDIS_REPLY_STRING &&
        !parse_i64(payload->str, INT64_MIN, INT64_MAX, &total)) {
      bt_buf_free(&b);
      bt_counter_inc(&stats.errors);
      bt_http_respond_error(op->req, 500, "corrupt_aggregate", "aggregate %s group holds \"%.40s\"",
                            op->a, payload->str);
      return;
    }
    rc = append_head(&b, op, version) || PUT(&b, ",\"aggregate\":") ||
         bt_buf_append_json_string(&b, op->a) || PUT(&b, ",\"group\":") ||
         bt_buf_append_json_string(&b, op->b) || bt_buf_appendf(&b, ",\"value\":%" PRId64, total);
    break;
  }
  case OP_INDEX: {
    const redisReply *docs = reply->elements > 4 ? reply->element[4] : NULL;
    size_t n = docs && docs->type == REDIS_REPLY_ARRAY ? docs->elements : 0;
    rc = append_head(&b, op, version) || PUT(&b, ",\"index\":") ||
         bt_buf_append_json_string(&b, op->a) || PUT(&b, ",\"value\":") ||
         bt_buf_append_json_string(&b, op->b) || PUT(&b, ",\"items\":[");
    size_t shown = 0;
    for (size_t i = 0; rc == 0 && i < n; i++) {
      const redisReply *m = payload->element[i], *d = docs->element[i];
      /* A member whose document is gone would be a sink bug; it is skipped, not invented. */
      if (m->type != REDIS_REPLY_STRING || d->type != REDIS_REPLY_STRING)
        continue;
      const char *z = memchr(m->str, '\0', m->len);
      const char *key = z ? z + 1 : m->str;
      rc = (shown++ ? PUT(&b, ",") : 0) || PUT(&b, "{\"key\":") ||
           bt_buf_append_json_string(&b, key) || PUT(&b, ",\"doc\":") ||
           bt_buf_append(&b, d->str, d->len) || PUT(&b, "}");
    }
    rc = rc || bt_buf_appendf(&b, "],\"count\":%zu,\"next_cursor\":", shown);
    /* One member more than the page means there is a next page; it starts after the last
     * member shown, whatever a concurrent write inserts before it. */
    if (rc == 0 && payload && payload->elements > n && n > 0) {
      const redisReply *last = payload->element[n - 1];
      rc = PUT(&b, "\"") || b64url_encode(&b, last->str, last->len) ||
           PUT(&b, "\"");
    } else if (rc == 0) {
      rc = PUT(&b, "null");
    }
    break;
  }
  }
  rc = rc || PUT(&b, ",\"offsets\":") || append_offsets(&b, offs) ||
       PUT(&b, "}");
  respond_buf(op, status, &b, rc);
}

static void on_read(bt_redis_t *redis, int err, const redisReply *reply, void *arg) {
  (void)redis;
  read_op_t *op = arg;
  proj_read_t *r = op->r;
  op->in_flight = false;
  r->inflight--;
  if (!op->req) { /* the client left while the script ran */
    op_free(op);
    return;
  }
  if (err) {
    waiter_unlink(op);
    bt_counter_inc(&stats.errors);
    bt_http_req_add_header(op->req, "Retry-After", "1");
    bt_http_respond_error(op->req, 503, "redis_unavailable", "reading %s failed: %s",
                          op->view->def->name, bt_strerror(err));
    op_free(op);
    return;
  }
  if (reply->type == REDIS_REPLY_ERROR || reply->type != REDIS_REPLY_ARRAY ||
      reply->elements < 1 || reply->element[0]->type != REDIS_REPLY_INTEGER) {
    waiter_unlink(op);
    bt_counter_inc(&stats.errors);
    bt_log_error("read script failed", "{s:s, s:s}", "projection", op->view->def->name, "error",
                 reply->type == REDIS_REPLY_ERROR ? reply->str : "unexpected reply");
    bt_http_respond_error(op->req, 500, "redis_error", "reading %s failed", op->view->def->name);
    op_free(op);
    return;
  }
  bool waits = op->after_field[0] && !op->timed_out && !r->draining;
  if (reply->element[0]->integer == 0 && waits)
    goto park; /* not built yet: a read-your-writes read waits for the first batch too */
  if (reply->element[0]->integer == 0) {
    waiter_unlink(op);
    bt_http_req_add_header(op->req, "Retry-After", "1");
    bt_http_respond_error(op->req, 503, "projection_not_ready",
                          "projection %s has no live version yet (its first build is running)",
                          op->view->def->name);
    op_free(op);
    return;
  }
  bool met = reply->elements >= 3 && reply->element[2]->integer == 1;
  if (met) {
    waiter_unlink(op);
    answer(op, reply);
    op_free(op);
    return;
  }
  /* ?after= not met yet: past the deadline (or wait=0, or draining) that is the answer;
   * otherwise the read parks until a position check finds the offset applied. */
  if (!waits) {
    waiter_unlink(op);
    answer_timeout(op, reply->element[0]->integer, reply->element[1]);
    op_free(op);
    return;
  }
park:
  if (!op->waiting) {
    view_t *v = op->view;
    op->waiting = true;
    op->next = v->waiters;
    if (v->waiters)
      v->waiters->prev = op;
    v->waiters = op;
    v->nwaiters++;
    r->nwaiters++;
    bt_gauge_set(&stats.waiters, r->nwaiters);
  }
  start_poll(r);
}

static void run_op(read_op_t *op) {
  proj_read_t *r = op->r;
  char limit[24], off[24];
  snprintf(limit, sizeof limit, "%" PRId64, op->limit);
  snprintf(off, sizeof off, "%" PRId64, op->after_offset);
  const char *mode = op->kind == OP_DOC ? "doc" : op->kind == OP_AGG ? "agg" : "idx";
  const char *argv[9] = {op->view->current, op->view->prefix, mode, op->after_field, off,
                         op->a, op->b, op->start, limit};
  size_t lens[9];
  for (int i = 0; i < 9; i++)
    lens[i] = strlen(argv[i]);
  lens[7] = op->start_len; /* "(" + a raw member, which holds a NUL */
  int argc = op->kind == OP_DOC ? 6 : op->kind == OP_AGG ? 7 : 9;
  int rc = bt_redis_script_run(r->script, r->redis, on_read, op, 1, argc, argv, lens);
  if (rc == 0) {
    op->in_flight = true;
    r->inflight++;
    return;
  }
  waiter_unlink(op);
  if (op->req) {
    bt_counter_inc(&stats.errors);
    bt_http_req_add_header(op->req, "Retry-After", "1");
    bt_http_respond_error(op->req, 503, rc == BT_EAGAIN ? "overloaded" : "redis_unavailable",
                          "the read model's Redis is %s",
                          rc == BT_EAGAIN ? "busy" : "not connected");
  }
  op_free(op);
}

/* ---- request parsing ---------------------------------------------------------------------- */

static view_t *find_view(proj_read_t *r, bt_http_req_t *req) {
  const char *name = bt_http_req_param(req, "name");
  for (size_t i = 0; name && i < r->nviews; i++) {
    if (strcmp(r->views[i].def->name, name) != 0)
      continue;
    if (r->views[i].def->sinks & PROJ_SINK_REDIS)
      return &r->views[i];
    bt_http_respond_error(req, 404, "not_served",
                          "projection %s is kept in Postgres only (sinks without redis); query "
                          "its table there", name);
    return NULL;
  }
  bt_http_respond_error(req, 404, "unknown_projection", "no projection is named \"%.100s\"",
                        name ? name : "");
  return NULL;
}

/* Copies a path parameter or query value; false (answered 400) when missing or too long. */
static bool text_arg(bt_http_req_t *req, const char *what, const char *v, char *out) {
  if (!v || !*v || strlen(v) > KEY_MAX) {
    bt_http_respond_error(req, 400, "invalid_parameter", "%s must be 1..%d bytes", what, KEY_MAX);
    return false;
  }
  memcpy(out, v, strlen(v) + 1);
  return true;
}

/* Like bt_http_req_query, but tells a missing parameter (-1) from one that is present and
 * unusable (-2: longer than out, or a malformed escape), so an oversized cursor or after= is
 * refused instead of being read as absent. */
static int query_arg(const bt_http_req_t *req, const char *name, char *out, size_t outsz) {
  int n = bt_http_req_query(req, name, out, outsz);
  if (n >= 0)
    return n;
  size_t len = strlen(name);
  for (const char *p = req->query; p && *p; p = strchr(p, '&') ? strchr(p, '&') + 1 : NULL)
    if (strncmp(p, name, len) == 0 && (p[len] == '=' || p[len] == '&' || p[len] == '\0'))
      return -2;
  return -1;
}

static bool bad_arg(bt_http_req_t *req, const char *name) {
  bt_http_respond_error(req, 400, "invalid_parameter", "%s is malformed or too long", name);
  return false;
}

/* ?after= and ?wait=. Returns false after answering 400. */
static bool parse_after(proj_read_t *r, bt_http_req_t *req, read_op_t *op, uint64_t *wait_ms) {
  char after[300], wait[32];
  int n = query_arg(req, "after", after, sizeof after);
  *wait_ms = 0;
  if (n == -2)
    return bad_arg(req, "after");
  if (n < 0) {
    if (query_arg(req, "wait", wait, sizeof wait) != -1) {
      bt_http_respond_error(req, 400, "invalid_parameter", "wait is only meaningful with after");
      return false;
    }
    return true;
  }
  /* topic:partition:offset; a topic name has no ':' (Kafka's alphabet). */
  char *c2 = strrchr(after, ':');
  char *c1 = c2 ? memrchr(after, ':', (size_t)(c2 - after)) : NULL;
  int64_t part, off;
  if (!c1 || c1 == after) {
    bt_http_respond_error(req, 400, "invalid_parameter", "after must be <topic>:<partition>:<offset>");
    return false;
  }
  *c1 = *c2 = '\0';
  if (!parse_i64(c1 + 1, 0, INT32_MAX, &part) || !parse_i64(c2 + 1, 0, INT64_MAX - 1, &off)) {
    bt_http_respond_error(req, 400, "invalid_parameter",
                          "after: partition and offset must be non-negative integers");
    return false;
  }
  bool known = false;
  for (size_t i = 0; i < op->view->def->ntopics; i++)
    known = known || strcmp(op->view->def->topics[i], after) == 0;
  if (!known) {
    bt_http_respond_error(req, 400, "invalid_parameter",
                          "after: topic %s is not a source of projection %s", after,
                          op->view->def->name);
    return false;
  }
  snprintf(op->after_field, sizeof op->after_field, "%.249s:%" PRId64, after, part);
  snprintf(op->after, sizeof op->after, "%.249s:%" PRId64 ":%" PRId64, after, part, off);
  op->after_offset = off;
  int64_t w = r->cfg.wait_default_ms;
  n = query_arg(req, "wait", wait, sizeof wait);
  if (n == -2)
    return bad_arg(req, "wait");
  if (n >= 0) {
    char err[200];
    bt_config_var_t var = {"wait", BT_CFG_DURATION, NULL, 0, 0, 0, NULL, NULL, &w};
    if (bt_config_parse_value(&var, wait, err, sizeof err) != 0 || w < 0) {
      bt_http_respond_error(req, 400, "invalid_parameter",
                            "wait must be a duration such as 500ms, 2s or a number of ms");
      return false;
    }
  }
  *wait_ms = (uint64_t)(w < r->cfg.wait_max_ms ? w : r->cfg.wait_max_ms);
  return true;
}

/* Common start of the three handlers: the projection, then ?after=. Returns the op, or NULL
 * after answering. */
static read_op_t *op_new(proj_read_t *r, bt_http_req_t *req, op_kind_t kind, uint64_t *wait_ms) {
  bt_counter_inc(&stats.requests);
  view_t *v = find_view(r, req);
  if (!v)
    return NULL;
  read_op_t *op = calloc(1, sizeof *op);
  if (!op) {
    bt_http_respond_error(req, 503, "out_of_memory", "no memory for the read");
    return NULL;
  }
  op->r = r;
  op->view = v;
  op->req = req;
  op->kind = kind;
  op->start[0] = '-';
  op->start_len = 1;
  bt_timer_init(&op->deadline, on_deadline);
  if (!parse_after(r, req, op, wait_ms)) {
    free(op);
    return NULL;
  }
  return op;
}

/* Sends the read; a read with ?after= may wait, within the waiter budget. */
static void op_go(read_op_t *op, uint64_t wait_ms) {
  proj_read_t *r = op->r;
  if (op->after_field[0]) {
    if (r->nwaiters >= (uint64_t)r->cfg.max_waiters || r->draining) {
      bt_counter_inc(&stats.refused);
      bt_http_req_add_header(op->req, "Retry-After", "1");
      bt_http_respond_error(op->req, 503, r->draining ? "shutting_down" : "too_many_waiters",
                            "%s", r->draining ? "the projector is shutting down"
                                              : "too many reads are waiting on ?after=");
      free(op);
      return;
    }
    bt_counter_inc(&stats.waits);
    bt_http_req_on_abort(op->req, on_abort, op);
    if (wait_ms > 0)
      bt_timer_start(&r->wheel, &op->deadline, wait_ms);
    else
      op->timed_out = true; /* wait=0: answer now, 504 if not applied */
  }
  run_op(op);
}

static void handle_doc(bt_http_req_t *req, void *arg) {
  uint64_t wait_ms;
  read_op_t *op = op_new(arg, req, OP_DOC, &wait_ms);
  if (!op)
    return;
  if (!text_arg(req, "key", bt_http_req_param(req, "key"), op->a)) {
    free(op);
    return;
  }
  op_go(op, wait_ms);
}

static void handle_agg(bt_http_req_t *req, void *arg) {
  uint64_t wait_ms;
  read_op_t *op = op_new(arg, req, OP_AGG, &wait_ms);
  if (!op)
    return;
  const proj_def_t *d = op->view->def;
  const char *agg = bt_http_req_param(req, "agg");
  bool known = false;
  for (size_t i = 0; agg && i < d->naggregates; i++)
    known = known || strcmp(d->aggregates[i].name, agg) == 0;
  if (!known) {
    bt_http_respond_error(req, 404, "unknown_aggregate", "projection %s has no aggregate \"%.100s\"",
                          d->name, agg ? agg : "");
    free(op);
    return;
  }
  if (!text_arg(req, "aggregate", agg, op->a) ||
      !text_arg(req, "group", bt_http_req_param(req, "group"), op->b)) {
    free(op);
    return;
  }
  op_go(op, wait_ms);
}

static void handle_index(bt_http_req_t *req, void *arg) {
  proj_read_t *r = arg;
  uint64_t wait_ms;
  read_op_t *op = op_new(r, req, OP_INDEX, &wait_ms);
  if (!op)
    return;
  const proj_def_t *d = op->view->def;
  char index[KEY_MAX + 1], value[KEY_MAX + 1], buf[2 * KEY_MAX + 8];
  if (bt_http_req_query(req, "index", index, sizeof index) <= 0) {
    bt_http_respond_error(req, 400, "invalid_parameter", "index is required (one of the "
                          "projection's indexes)");
    goto fail;
  }
  bool known = false;
  for (size_t i = 0; i < d->nindexes; i++)
    known = known || strcmp(d->indexes[i].name, index) == 0;
  if (!known) {
    bt_http_respond_error(req, 404, "unknown_index", "projection %s has no index \"%.100s\"",
                          d->name, index);
    goto fail;
  }
  if (bt_http_req_query(req, "value", value, sizeof value) <= 0) {
    bt_http_respond_error(req, 400, "invalid_parameter", "value is required (1..%d bytes)", KEY_MAX);
    goto fail;
  }
  memcpy(op->a, index, strlen(index) + 1);
  memcpy(op->b, value, strlen(value) + 1);
  op->limit = r->cfg.limit_default;
  int n = query_arg(req, "limit", buf, sizeof buf);
  if (n == -2 || (n >= 0 && !parse_i64(buf, 1, r->cfg.limit_max, &op->limit))) {
    bt_http_respond_error(req, 400, "invalid_parameter", "limit must be an integer in 1..%" PRId64,
                          r->cfg.limit_max);
    goto fail;
  }
  n = query_arg(req, "cursor", buf, sizeof buf);
  if (n != -1) {
    long m = n < 0 ? -1 : b64url_decode(buf, op->start + 1, sizeof op->start - 2);
    if (m <= 0 || !memchr(op->start + 1, '\0', (size_t)m)) {
      bt_http_respond_error(req, 400, "invalid_parameter", "cursor is not one this API returned");
      goto fail;
    }
    op->start[0] = '(';
    op->start[1 + m] = '\0';
    op->start_len = 1 + (size_t)m;
  }
  op_go(op, wait_ms);
  return;
fail:
  free(op);
}

/* ---- lifecycle ---------------------------------------------------------------------------- */

static void maybe_free_reader(proj_read_t *r) {
  if (r->closed && r->inflight == 0 && r->nwaiters == 0 && r->wheel.loop == NULL) {
    bt_redis_script_free(r->script);
    free(r->views);
    free(r);
  }
}

/* The drain: parked waiters are answered now with what is applied (200 or 504), so the
 * HTTP server's drain is not held by long polls. */
static void on_drain(bt_app_t *app, void *arg) {
  (void)app;
  proj_read_t *r = arg;
  r->draining = true;
  for (size_t i = 0; i < r->nviews; i++)
    for (read_op_t *op = r->views[i].waiters, *next; op; op = next) {
      next = op->next;
      op->timed_out = true;
      if (!op->in_flight)
        run_op(op);
    }
}

static void on_wheel_closed(bt_timers_t *w) {
  proj_read_t *r = BT_CONTAINER_OF(w, proj_read_t, wheel);
  w->loop = NULL;
  maybe_free_reader(r);
}

static void on_close(bt_app_t *app, void *arg) {
  (void)app;
  proj_read_t *r = arg;
  r->closed = true;
  bt_timers_close(&r->wheel, on_wheel_closed);
}

int proj_read_start(proj_read_t **out, bt_app_t *app, bt_http_server_t *http, bt_redis_t *redis,
                    const proj_def_set_t *defs, const proj_read_config_t *cfg) {
  proj_read_t *r = calloc(1, sizeof *r);
  if (!r)
    return BT_ENOMEM;
  r->app = app;
  r->redis = redis;
  r->cfg = *cfg;
  r->nviews = defs->ndefs;
  r->views = calloc(r->nviews ? r->nviews : 1, sizeof *r->views);
  if (!r->views || bt_redis_script_new(&r->script, READ_LUA, sizeof READ_LUA - 1) != 0) {
    free(r->views);
    free(r);
    return BT_ENOMEM;
  }
  for (size_t i = 0; i < r->nviews; i++) {
    view_t *v = &r->views[i];
    v->r = r;
    v->def = &defs->defs[i];
    proj_layout_projection_prefix(v->prefix, sizeof v->prefix, v->def->name);
    snprintf(v->current, sizeof v->current, "%scurrent", v->prefix);
  }
  int rc = bt_timers_init(&r->wheel, app->loop);
  if (rc) {
    bt_redis_script_free(r->script);
    free(r->views);
    free(r);
    return BT_ENOMEM;
  }
  bt_timer_init(&r->poll, on_poll);
  if (!stats.registered) {
    stats.registered = true;
    bt_metrics_counter(&stats.requests, "baton_projector_read_requests_total",
                       "Read API requests (documents, index pages, aggregates).");
    bt_metrics_counter(&stats.waits, "baton_projector_read_waits_total",
                       "Reads that waited on ?after= for an offset to be applied.");
    bt_metrics_counter(&stats.wait_timeouts, "baton_projector_read_wait_timeouts_total",
                       "Reads answered 504 because ?after= was not applied within ?wait=.");
    bt_metrics_counter(&stats.refused, "baton_projector_read_waiters_refused_total",
                       "Reads with ?after= refused (503) past BATON_PROJECTOR_READ_MAX_WAITERS.");
    bt_metrics_counter(&stats.errors, "baton_projector_read_errors_total",
                       "Reads that failed on Redis (503 or 500).");
    bt_metrics_gauge(&stats.waiters, "baton_projector_read_waiters",
                     "Reads waiting on ?after= now.");
  }
  bt_app_on_shutdown(app, on_drain, on_close, r);
  /* Registration order matters: the aggregates route first, so a document key named
   * "aggregates" is still reachable by its own route only when it has fewer segments. */
  bt_http_server_route_auth(http, "GET", "/v1/projections/{name}/aggregates/{agg}/{group}",
                            handle_agg, r);
  bt_http_server_route_auth(http, "GET", "/v1/projections/{name}/{key}", handle_doc, r);
  bt_http_server_route_auth(http, "GET", "/v1/projections/{name}", handle_index, r);
  *out = r;
  return 0;
}
