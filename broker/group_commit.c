/* Group commit for the event store. Appends wait in a FIFO; once per loop iteration (a uv_idle
 * handle) every idle slot takes the appends queued so far and sends them as one
 * call of baton.append_batch() in one transaction. While a slot's transaction is in flight new
 * appends accumulate, so group size follows load: one append alone at low load, hundreds per
 * commit under pressure. The SQL side and the ordering it guarantees are in store_schema.c. */
#include "group_commit.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"

#define MAX_SLOTS 2
#define NPARAMS 15
#define BISECT_DEPTH 64 /* > log2 of any group size: a split stack never grows past it */

static const char APPEND_SQL[] =
    "SELECT status, first_version, last_version, position, current_version, stored "
    "FROM baton.append_batch($1::text[], $2::bigint[], $3::int[], $4::text[], $5::int[], "
    "$6::text[], $7::text[], $8::text[], $9::text[], $10::text[], $11::text[], $12::text[], "
    "$13::text[], $14::text[], $15::jsonb[])";

/* A slot's lifecycle. IDLE: no transaction. IN_FLIGHT: a group's transaction is out. BISECT:
 * that group's transaction failed as a whole, and its appends are being retried in halves,
 * recursively, so that a single bad append fails alone at the cost of about 2*log2(n) more
 * transactions instead of n. */
typedef enum { SLOT_IDLE, SLOT_IN_FLIGHT, SLOT_BISECT } slot_state_t;

typedef struct slot {
  broker_group_commit_t *gc;
  unsigned id;
  slot_state_t state;
  broker_append_t *members; /* FIFO; the first `sent` of them are in the transaction */
  size_t nmembers, sent;
  uint64_t sent_ns;
  /* BISECT: the members still to be tried, as consecutive chunks of the list; the chunk
   * on top (chunks[nchunks - 1]) is the next to send. Splitting the top chunk replaces it by
   * its two halves, so the stack grows by at most one per halving. */
  size_t chunks[BISECT_DEPTH];
  size_t nchunks;
} slot_t;

/* Open-addressing set of 64-bit hashes, emptied in O(1) by bumping the generation. Used while
 * forming a group: a hash collision only defers an append to the next group, never more. */
typedef struct hset {
  struct hslot {
    uint64_t h;
    uint32_t gen;
  } * tab;
  size_t mask;
  uint32_t gen;
} hset_t;

struct broker_group_commit {
  broker_group_commit_config_t cfg;
  broker_append_t *head, *tail; /* the queue */
  size_t nqueued;
  slot_t slots[MAX_SLOTS];
  unsigned busy;  /* slots not IDLE */
  uv_idle_t kick; /* forms groups once the current loop iteration is over */
  bool kick_active, kick_open;
  hset_t ids, streams;
  bt_buf_t params[NPARAMS];
  bt_buf_t scratch;
  bool draining, holding, closing;
};

/* ---- small helpers ------------------------------------------------------------------------- */

static const char *slot_state_name(slot_state_t s) {
  switch (s) {
  case SLOT_IDLE: return "idle";
  case SLOT_IN_FLIGHT: return "in_flight";
  case SLOT_BISECT: return "bisect";
  }
  return "?";
}

static void update_hold(broker_group_commit_t *gc);
static void maybe_free(broker_group_commit_t *gc);

static void slot_set_state(slot_t *s, slot_state_t next) {
  bool legal;
  switch (s->state) {
  case SLOT_IDLE: legal = next == SLOT_IN_FLIGHT; break;
  case SLOT_IN_FLIGHT: legal = next == SLOT_IDLE || next == SLOT_BISECT; break;
  case SLOT_BISECT: legal = next == SLOT_IDLE; break;
  default: legal = false; break;
  }
  if (!legal)
    bt_fatal("group commit slot %u: illegal transition %s -> %s", s->id, slot_state_name(s->state),
             slot_state_name(next));
  if (s->state == SLOT_IDLE)
    s->gc->busy++;
  else if (next == SLOT_IDLE)
    s->gc->busy--;
  s->state = next;
  update_hold(s->gc);
}

static uint64_t fnv1a(uint64_t h, const char *s, size_t n) {
  for (size_t i = 0; i < n; i++) {
    h ^= (unsigned char)s[i];
    h *= 0x100000001b3ULL;
  }
  return h;
}

static uint64_t hash_stream(const char *stream) {
  return fnv1a(0xcbf29ce484222325ULL, stream, strlen(stream));
}

static uint64_t hash_id(uint64_t stream_hash, const char *id) {
  return fnv1a(fnv1a(stream_hash, "\0", 1), id, strlen(id));
}

static int hset_init(hset_t *s, size_t max_entries) {
  size_t cap = 16;
  while (cap < 2 * max_entries)
    cap *= 2;
  s->tab = calloc(cap, sizeof *s->tab);
  s->mask = cap - 1;
  s->gen = 1;
  return s->tab ? 0 : BT_ENOMEM;
}

static void hset_clear(hset_t *s) {
  if (++s->gen == 0) { /* wrapped: entries of generation 0 would look current */
    memset(s->tab, 0, (s->mask + 1) * sizeof *s->tab);
    s->gen = 1;
  }
}

static bool hset_has(const hset_t *s, uint64_t h) {
  for (size_t i = h & s->mask;; i = (i + 1) & s->mask) {
    if (s->tab[i].gen != s->gen)
      return false;
    if (s->tab[i].h == h)
      return true;
  }
}

/* The caller keeps the load under one half (see form_group), so a free slot always exists. */
static void hset_add(hset_t *s, uint64_t h) {
  size_t i = h & s->mask;
  while (s->tab[i].gen == s->gen && s->tab[i].h != h)
    i = (i + 1) & s->mask;
  s->tab[i] = (struct hslot){h, s->gen};
}

/* ---- the queue ------------------------------------------------------------------------------ */

static void set_queued(broker_group_commit_t *gc, size_t n) {
  gc->nqueued = n;
  bt_gauge_set(&gc->cfg.stats->queued, (double)n);
}

static void on_kick(uv_idle_t *h);

/* Whether another group may go out now. A second group while one is in flight is started only
 * when a full group (batch_max appends) is waiting: below that, waiting for the one in flight
 * makes the next group larger, and a larger group costs Postgres less per append (at 64
 * writers, two groups in flight of ~20 appends each cost ~25% more Postgres CPU per append
 * than one of ~32, with no gain in throughput: see bench/append.sh). */
static bool may_start_group(const broker_group_commit_t *gc) {
  if (gc->busy == gc->cfg.concurrency)
    return false;
  return gc->busy == 0 || gc->nqueued >= gc->cfg.batch_max;
}

/* Forms groups at the start of the next loop iteration, after every request read in this one
 * has been queued: sending at the first append would commit it alone and make the rest wait.
 * (An idle handle rather than a check handle: while it is active the loop does not block in
 * poll, so queued work can never stall waiting for unrelated I/O.) */
static void schedule(broker_group_commit_t *gc) {
  if (gc->kick_active || gc->closing || !gc->head || !may_start_group(gc))
    return;
  uv_idle_start(&gc->kick, on_kick);
  gc->kick_active = true;
}

static void complete(broker_append_t *a, const char *errmsg) {
  a->next = NULL;
  a->done(a, errmsg ? errmsg : "");
}

static void fail_append(broker_append_t *a, int err, const char *sqlstate, const char *errmsg) {
  a->status = BROKER_APPEND_FAILED;
  a->err = err;
  snprintf(a->sqlstate, sizeof a->sqlstate, "%s", sqlstate ? sqlstate : "");
  complete(a, errmsg);
}

/* Moves appends from the queue into an idle slot: up to batch_max appends, events_max
 * events and bytes_max encoded bytes (a first append is always taken). An append that shares an event id with one
 * already in the group, on the same stream, waits for the next group, and so does every later
 * append of that stream so that a stream's appends keep their order: inside one transaction
 * the first would not yet be visible to the second's idempotency check. */
static void form_group(broker_group_commit_t *gc, slot_t *s) {
  const size_t scan_max = 2 * gc->cfg.batch_max;
  size_t nevents = 0, nbytes = 0, scanned = 0;
  broker_append_t *prev = NULL, *a = gc->head, *last = NULL;
  hset_clear(&gc->ids);
  hset_clear(&gc->streams);
  s->members = NULL;
  s->nmembers = 0;
  while (a && s->nmembers < gc->cfg.batch_max && scanned++ < scan_max) {
    if (s->nmembers > 0 &&
        (nevents + a->nevents > gc->cfg.events_max || nbytes + a->bytes > gc->cfg.bytes_max))
      break; /* FIFO: nothing overtakes an append that did not fit */
    uint64_t sh = hash_stream(a->stream);
    bool defer = hset_has(&gc->streams, sh);
    for (size_t i = 0; !defer && i < a->nevents; i++)
      defer = hset_has(&gc->ids, hash_id(sh, a->events[i].id));
    if (defer) {
      hset_add(&gc->streams, sh);
      prev = a;
      a = a->next;
      continue;
    }
    for (size_t i = 0; i < a->nevents; i++)
      hset_add(&gc->ids, hash_id(sh, a->events[i].id));
    broker_append_t *next = a->next;
    if (prev)
      prev->next = next;
    else
      gc->head = next;
    if (gc->tail == a)
      gc->tail = prev;
    a->next = NULL;
    if (last)
      last->next = a;
    else
      s->members = a;
    last = a;
    s->nmembers++;
    nevents += a->nevents;
    nbytes += a->bytes;
    a = next;
  }
  set_queued(gc, gc->nqueued - s->nmembers);
}

/* ---- encoding the call ------------------------------------------------------------------------
 * Parameters are Postgres array literals in text form: elements double-quoted with '"' and
 * '\' escaped, NULL unquoted. An allocation failure is remembered in `err` and reported once at
 * the end, which keeps the encoders straight-line. */

typedef struct enc {
  int err;
} enc_t;

static void put(enc_t *e, bt_buf_t *b, const char *p, size_t n) {
  if (!e->err)
    e->err = bt_buf_append(b, p, n);
}

static void sep(enc_t *e, bt_buf_t *b) {
  if (b->len > 1)
    put(e, b, ",", 1);
}

static void put_null(enc_t *e, bt_buf_t *b) {
  sep(e, b);
  put(e, b, "NULL", 4);
}

static void put_int(enc_t *e, bt_buf_t *b, int64_t v) {
  char num[24];
  int n = snprintf(num, sizeof num, "%lld", (long long)v);
  sep(e, b);
  put(e, b, num, (size_t)n);
}

static void put_quoted(enc_t *e, bt_buf_t *b, const char *s, size_t n) {
  if (!e->err)
    e->err = bt_buf_reserve(b, 2 * n + 3);
  if (e->err)
    return;
  char *o = b->data + b->len;
  if (b->len > 1)
    *o++ = ',';
  *o++ = '"';
  for (size_t i = 0; i < n; i++) {
    if (s[i] == '"' || s[i] == '\\')
      *o++ = '\\';
    *o++ = s[i];
  }
  *o++ = '"';
  b->len = (size_t)(o - b->data);
}

static void put_str(enc_t *e, bt_buf_t *b, const char *s) {
  if (s)
    put_quoted(e, b, s, strlen(s));
  else
    put_null(e, b);
}

/* bytea as hex digits (decoded by the function), which need no quoting. */
static void put_hex(enc_t *e, bt_buf_t *b, const char *p, size_t n) {
  static const char digits[] = "0123456789abcdef";
  if (!p) {
    put_null(e, b);
    return;
  }
  if (!e->err)
    e->err = bt_buf_reserve(b, 2 * n + 3);
  if (e->err)
    return;
  char *o = b->data + b->len;
  if (b->len > 1)
    *o++ = ',';
  *o++ = '"';
  for (size_t i = 0; i < n; i++) {
    *o++ = digits[(unsigned char)p[i] >> 4];
    *o++ = digits[(unsigned char)p[i] & 15];
  }
  *o++ = '"';
  b->len = (size_t)(o - b->data);
}

static void put_json_string(enc_t *e, bt_buf_t *b, const char *s) {
  put(e, b, "\"", 1);
  for (const char *p = s; *p; p++) {
    unsigned char c = (unsigned char)*p;
    if (c == '"' || c == '\\') {
      char esc[2] = {'\\', (char)c};
      put(e, b, esc, 2);
    } else if (c < 0x20) {
      char esc[8];
      snprintf(esc, sizeof esc, "\\u%04x", c);
      put(e, b, esc, 6);
    } else {
      put(e, b, p, 1);
    }
  }
  put(e, b, "\"", 1);
}

/* The extensions as a JSON object of strings, or NULL when there are none. */
static void put_extensions(enc_t *e, bt_buf_t *b, bt_buf_t *scratch, const broker_event_t *ev) {
  if (ev->next == 0) {
    put_null(e, b);
    return;
  }
  bt_buf_reset(scratch);
  put(e, scratch, "{", 1);
  for (unsigned i = 0; i < ev->next; i++) {
    if (i > 0)
      put(e, scratch, ",", 1);
    put_json_string(e, scratch, ev->ext[i].name);
    put(e, scratch, ":", 1);
    put_json_string(e, scratch, ev->ext[i].value);
  }
  put(e, scratch, "}", 1);
  if (!e->err)
    put_quoted(e, b, scratch->data, scratch->len);
}

/* Encodes the first n appends of the list into gc->params. */
static int encode(broker_group_commit_t *gc, broker_append_t *list, size_t n) {
  enc_t e = {0};
  bt_buf_t *p = gc->params;
  for (int i = 0; i < NPARAMS; i++) {
    bt_buf_reset(&p[i]);
    put(&e, &p[i], "{", 1);
  }
  size_t k = 0;
  for (broker_append_t *a = list; a && k < n; a = a->next) {
    k++;
    put_str(&e, &p[0], a->stream);
    put_int(&e, &p[1], a->expected);
    put_int(&e, &p[2], (int64_t)a->nevents);
    put_str(&e, &p[3], a->partitionkey);
    for (size_t i = 0; i < a->nevents; i++) {
      const broker_event_t *ev = &a->events[i];
      put_int(&e, &p[4], (int64_t)k);
      put_str(&e, &p[5], ev->id);
      put_str(&e, &p[6], ev->type);
      put_str(&e, &p[7], ev->source);
      put_str(&e, &p[8], ev->specversion);
      put_str(&e, &p[9], ev->subject);
      put_str(&e, &p[10], ev->time);
      put_str(&e, &p[11], ev->datacontenttype);
      put_str(&e, &p[12], ev->dataschema);
      put_hex(&e, &p[13], ev->data, ev->data_len);
      put_extensions(&e, &p[14], &gc->scratch, ev);
    }
  }
  for (int i = 0; i < NPARAMS; i++)
    put(&e, &p[i], "}", 2); /* with the NUL */
  return e.err;
}

/* ---- sending and outcomes ---------------------------------------------------------------------
 */

static void on_result(const bt_pg_result_t *r, void *arg);

/* Sends the first `n` members of the slot. Returns 0, or the error that kept them from being
 * sent (the callback will not run). */
static int send_members(slot_t *s, size_t n) {
  broker_group_commit_t *gc = s->gc;
  int rc = encode(gc, s->members, n);
  if (rc == 0) {
    const char *values[NPARAMS];
    for (int i = 0; i < NPARAMS; i++)
      values[i] = gc->params[i].data;
    /* Prepared once per connection (the pool keeps one handle per text, so asking again is a
     * lookup): Postgres then skips parsing and planning append_batch's call every group. */
    bt_pg_prepared_t *append = NULL;
    rc = bt_pg_pool_prepare(gc->cfg.pg, APPEND_SQL, NPARAMS, NULL, &append);
    bt_pg_query_t q = {.prepared = append, .nparams = NPARAMS, .values = values};
    if (rc == 0)
      rc = bt_pg_pool_submit(gc->cfg.pg, &q, 1, 0, on_result, s);
  }
  if (rc == 0) {
    s->sent = n;
    s->sent_ns = uv_hrtime();
    bt_counter_inc(&gc->cfg.stats->groups);
    bt_histogram_observe(&gc->cfg.stats->group_size, (double)n);
  }
  return rc;
}

/* Detaches the first n members of the slot and returns them. */
static broker_append_t *take(slot_t *s, size_t n) {
  BT_ASSERT(n >= 1 && n <= s->nmembers);
  broker_append_t *first = s->members, *a = first;
  for (size_t i = 1; i < n; i++)
    a = a->next;
  s->members = a->next;
  s->nmembers -= n;
  a->next = NULL;
  return first;
}

static void fail_list(broker_append_t *a, int err, const char *sqlstate, const char *errmsg) {
  while (a) {
    broker_append_t *next = a->next;
    fail_append(a, err, sqlstate, errmsg);
    a = next;
  }
}

/* In BISECT: sends the chunk on top of the stack; a chunk that cannot even be sent fails at
 * once. With the stack empty the slot is idle again. */
static void bisect_next(slot_t *s) {
  while (s->nchunks > 0) {
    size_t k = s->chunks[s->nchunks - 1];
    int rc = s->gc->closing ? BT_ECANCELED : send_members(s, k);
    if (rc == 0)
      return;
    s->nchunks--;
    fail_list(take(s, k), rc, NULL, bt_strerror(rc));
  }
  BT_ASSERT(s->nmembers == 0);
  slot_set_state(s, SLOT_IDLE);
  schedule(s->gc);
}

/* Whether a transaction that Postgres refused is worth retrying in halves: it is when
 * something in its content made it fail (a constraint, a bad value, a serialization
 * failure), and it is not when the server or the connection failed (class 08, connection
 * exception; class 57, operator intervention: shutdown, cancel, terminated backend), where
 * every half would fail again and only multiply the load on a server in trouble. */
static bool worth_splitting(int err, const char *sqlstate) {
  if (err != BT_EIO)
    return false;
  return !sqlstate || (strncmp(sqlstate, "08", 2) != 0 && strncmp(sqlstate, "57", 2) != 0);
}

/* Reads row i of the function's answer into a. */
static void read_row(broker_append_t *a, const PGresult *res, int i) {
  static const broker_append_status_t by_code[] = {BROKER_APPEND_APPENDED, BROKER_APPEND_DUPLICATE,
                                                   BROKER_APPEND_WRONG_VERSION,
                                                   BROKER_APPEND_PARTIAL_DUPLICATE,
                                                   BROKER_APPEND_ID_CONFLICT,
                                                   BROKER_APPEND_PARTITIONKEY_CONFLICT};
  int code = atoi(PQgetvalue(res, i, 0));
  BT_ASSERT(code >= 0 && code < (int)BT_ARRAY_LEN(by_code));
  a->status = by_code[code];
  a->err = 0;
  a->first_version = atoll(PQgetvalue(res, i, 1));
  a->last_version = atoll(PQgetvalue(res, i, 2));
  a->position = atoll(PQgetvalue(res, i, 3));
  a->current_version = atoll(PQgetvalue(res, i, 4));
  a->stored = atoll(PQgetvalue(res, i, 5));
}

static void on_result(const bt_pg_result_t *r, void *arg) {
  slot_t *s = arg;
  broker_group_commit_t *gc = s->gc;
  size_t n = s->sent;
  bt_histogram_observe(&gc->cfg.stats->latency, (double)(uv_hrtime() - s->sent_ns) / 1e9);
  const PGresult *res = r->err == 0 ? r->res[0] : NULL;
  if (res && PQntuples(res) != (int)n)
    bt_fatal("append_batch answered %d rows for %zu appends", PQntuples(res), n);
  const char *sqlstate = r->error ? PQresultErrorField(r->error, PG_DIAG_SQLSTATE) : NULL;

  if (n > 1 && !gc->closing && worth_splitting(r->err, sqlstate)) {
    /* Something in the transaction made Postgres refuse it as a whole: nothing of it was
     * committed, so its two halves can safely be tried again, each on its own. */
    if (s->state == SLOT_IN_FLIGHT) {
      bt_log_warn("group commit failed; retrying its appends in halves", "{s:i, s:s, s:s}",
                  "appends", (int)n, "sqlstate", sqlstate ? sqlstate : "", "error", r->errmsg);
      s->chunks[0] = n;
      s->nchunks = 1;
      slot_set_state(s, SLOT_BISECT);
    }
    BT_ASSERT(s->nchunks > 0 && s->nchunks < BISECT_DEPTH && s->chunks[s->nchunks - 1] == n);
    s->chunks[s->nchunks - 1] = n - n / 2; /* the second half, sent after the first */
    s->chunks[s->nchunks++] = n / 2;
    bt_counter_inc(&gc->cfg.stats->split);
    bisect_next(s);
    return;
  }

  broker_append_t *done = take(s, n);
  if (s->state == SLOT_BISECT)
    s->nchunks--;
  bool wrote = false;
  if (res) {
    int i = 0;
    for (broker_append_t *a = done; a; a = a->next) {
      read_row(a, res, i++);
      wrote |= a->status == BROKER_APPEND_APPENDED;
    }
  } else if (r->err == BT_ECONNRESET) {
    bt_log_warn("group commit outcome unknown: the connection was lost after sending", "{s:i, s:s}",
                "appends", (int)n, "error", r->errmsg);
  }
  /* The slot moves on before any callback runs, so the next group goes out while this one's
   * answers are being written. */
  if (s->state == SLOT_BISECT) {
    bisect_next(s);
  } else {
    slot_set_state(s, SLOT_IDLE);
    schedule(gc);
  }
  if (wrote && gc->cfg.committed)
    gc->cfg.committed(gc->cfg.arg);
  while (done) {
    broker_append_t *next = done->next;
    if (res)
      complete(done, NULL);
    else
      fail_append(done, r->err, sqlstate, r->errmsg);
    done = next;
  }
  if (gc->closing)
    maybe_free(gc);
}

static void on_kick(uv_idle_t *h) {
  broker_group_commit_t *gc = h->data;
  uv_idle_stop(h);
  gc->kick_active = false;
  for (unsigned i = 0; i < gc->cfg.concurrency && gc->head && !gc->closing; i++) {
    slot_t *s = &gc->slots[i];
    if (s->state != SLOT_IDLE)
      continue;
    if (!may_start_group(gc))
      break;
    form_group(gc, s);
    slot_set_state(s, SLOT_IN_FLIGHT);
    int rc = send_members(s, s->nmembers);
    if (rc != 0) {
      /* Not sent (the pool's queue is full, or memory ran out): these appends fail now, and
       * the queue behind them is tried again at the next iteration. */
      broker_append_t *list = take(s, s->nmembers);
      slot_set_state(s, SLOT_IDLE);
      fail_list(list, rc, NULL, bt_strerror(rc));
    }
  }
  schedule(gc);
}

/* ---- lifecycle ------------------------------------------------------------------------------ */

static void update_hold(broker_group_commit_t *gc) {
  bool want = gc->draining && (gc->nqueued > 0 || gc->busy > 0);
  if (want == gc->holding)
    return;
  gc->holding = want;
  if (want)
    bt_app_hold(gc->cfg.app);
  else
    bt_app_release(gc->cfg.app);
}

/* What an append adds to the call's parameters: data as hex, every string with its quotes
 * and separator. Escapes are not counted; the budget bounds memory, it need not be exact. */
static size_t append_bytes(const broker_append_t *a) {
  size_t n = strlen(a->stream) + 64 + (a->partitionkey ? strlen(a->partitionkey) : 0);
  for (size_t i = 0; i < a->nevents; i++) {
    const broker_event_t *ev = &a->events[i];
    const char *str[] = {ev->id,   ev->type,            ev->source,    ev->specversion,
                         ev->subject, ev->time, ev->datacontenttype, ev->dataschema};
    n += 2 * ev->data_len + 64;
    for (size_t k = 0; k < BT_ARRAY_LEN(str); k++)
      n += str[k] ? strlen(str[k]) + 3 : 5;
    for (unsigned k = 0; k < ev->next; k++)
      n += strlen(ev->ext[k].name) + strlen(ev->ext[k].value) + 8;
  }
  return n;
}

int broker_group_commit_submit(broker_group_commit_t *gc, broker_append_t *a) {
  if (gc->closing)
    return BT_ECANCELED;
  if (gc->nqueued >= gc->cfg.queue_max)
    return BT_EAGAIN;
  a->bytes = append_bytes(a);
  a->next = NULL;
  if (gc->tail)
    gc->tail->next = a;
  else
    gc->head = a;
  gc->tail = a;
  set_queued(gc, gc->nqueued + 1);
  update_hold(gc);
  schedule(gc);
  return 0;
}

size_t broker_group_commit_queued(const broker_group_commit_t *gc) { return gc->nqueued; }

static void maybe_free(broker_group_commit_t *gc) {
  if (gc->kick_open || gc->busy > 0)
    return;
  for (int i = 0; i < NPARAMS; i++)
    bt_buf_free(&gc->params[i]);
  bt_buf_free(&gc->scratch);
  free(gc->ids.tab);
  free(gc->streams.tab);
  free(gc);
}

static void on_kick_closed(uv_handle_t *h) {
  broker_group_commit_t *gc = h->data;
  gc->kick_open = false;
  maybe_free(gc);
}

static void on_drain(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  broker_group_commit_t *gc = arg;
  gc->draining = true;
  update_hold(gc);
}

/* Queued appends were never sent: they fail as cancelled. Groups in flight finish through the
 * pool, which closes after us and fails them as outcome unknown if they are still out. */
static void on_close(bt_app_t *app, void *arg) {
  BT_UNUSED(app);
  broker_group_commit_t *gc = arg;
  gc->closing = true;
  broker_append_t *list = gc->head;
  gc->head = gc->tail = NULL;
  set_queued(gc, 0);
  fail_list(list, BT_ECANCELED, NULL, "the broker is shutting down");
  uv_close((uv_handle_t *)&gc->kick, on_kick_closed);
  gc->kick_active = false;
}

void broker_group_commit_stats_register(broker_group_commit_stats_t *s) {
  static const double sizes[] = {1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024, 4096};
  bt_metrics_gauge(&s->queued, "baton_broker_append_queued", "Appends waiting for a group commit.");
  bt_metrics_histogram(&s->group_size, "baton_broker_append_group_size",
                       "Appends per group-commit transaction.", sizes, BT_ARRAY_LEN(sizes));
  bt_metrics_histogram(&s->latency, "baton_broker_append_group_commit_seconds",
                       "Seconds from sending a group-commit transaction to its outcome.", NULL, 0);
  bt_metrics_counter(&s->groups, "baton_broker_append_groups_total",
                     "Group-commit transactions sent.");
  bt_metrics_counter(&s->split, "baton_broker_append_group_splits_total",
                     "Failed group-commit transactions retried as two halves.");
}

int broker_group_commit_new(broker_group_commit_t **out, const broker_group_commit_config_t *cfg) {
  if (!cfg->pg || !cfg->app || !cfg->stats || cfg->batch_max == 0 || cfg->events_max == 0 ||
      cfg->bytes_max == 0 ||
      cfg->queue_max == 0 || cfg->concurrency == 0 || cfg->concurrency > MAX_SLOTS)
    return BT_EINVAL;
  broker_group_commit_t *gc = calloc(1, sizeof *gc);
  if (!gc)
    return BT_ENOMEM;
  gc->cfg = *cfg;
  /* Load stays under one half: a group holds at most events_max ids and scans at most
   * 2 * batch_max appends. */
  if (hset_init(&gc->ids, cfg->events_max) || hset_init(&gc->streams, 2 * cfg->batch_max)) {
    free(gc->ids.tab);
    free(gc->streams.tab);
    free(gc);
    return BT_ENOMEM;
  }
  for (int i = 0; i < NPARAMS; i++)
    bt_buf_init(&gc->params[i], 0);
  bt_buf_init(&gc->scratch, 0);
  for (unsigned i = 0; i < MAX_SLOTS; i++)
    gc->slots[i] = (slot_t){.gc = gc, .id = i, .state = SLOT_IDLE};
  uv_idle_init(cfg->app->loop, &gc->kick);
  gc->kick.data = gc;
  gc->kick_open = true;
  bt_app_on_shutdown(cfg->app, on_drain, on_close, gc);
  *out = gc;
  return 0;
}
