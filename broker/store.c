/* The event store's HTTP face: POST /v1/streams/{stream}/events appends CloudEvents to a
 * stream with optimistic concurrency and idempotent retries (committed in groups by
 * group_commit.c), and GET /v1/streams/{stream}/events reads a stream back in version order.
 *
 * GAP-SAFETY CONTRACT with every reader of baton.events by position (the outbox relay):
 *   Positions are assigned in commit order. Each append transaction (one group commit, see
 *   baton.append_batch in store_schema.c) takes, as its LAST step, the row lock of the single
 *   baton.positions row (UPDATE ... SET last = last + n RETURNING last), inserts its events at
 *   positions last-n+1 .. last, and commits. That lock is held until COMMIT, and a waiter gets
 *   it only after the holder's commit is visible. So if a reader's snapshot shows position q,
 *   every transaction that took positions below q committed before it and is in that snapshot
 *   too: `WHERE position > $done ORDER BY position` can never skip an event that commits late.
 *   Positions are also dense (a transaction that aborts rolls its increment back with it), so
 *   a reader may assert that the next position it sees is exactly $done + 1.
 *   No deadlock: stream rows are locked first, in "C" collation order of stream names, and the
 *   positions row last, by every replica; after taking it a transaction only inserts rows
 *   whose unique keys are guarded by locks it holds, so it never waits while holding it.
 *   The price is that group transactions commit one after another, which is why appends are
 *   grouped: one lock hold and one WAL flush per group, not per append. */
#include <ctype.h>
#include <jansson.h>
#include <limits.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>

#include "arena.h"
#include "broker.h"
#include "cloudevent.h"
#include "group_commit.h"
#include "log.h"
#include "metrics.h"
#include "publish.h"
#include "relay_route.h"

#define STREAM_NAME_MAX 200
#define EVENT_ID_MAX 1000     /* with SOURCE_MAX, keeps (stream, source, id) inside a btree entry */
#define SOURCE_MAX 1000
#define STREAM_HEADERS_BYTES 64 /* the relay's ce_stream and ce_streamversion, beside the name */
#define GROUP_EVENTS_MIN 8192 /* events per group, unless one request may carry more */
#define GROUP_CONCURRENCY 2   /* groups in flight; the 2nd only when a full group waits */
#define READ_LIMIT_DEFAULT 100

struct broker_store {
  broker_t *b;
  /* BATON_BROKER_ROUTES, parsed here as well as by the relay: an append is refused unless its
   * stream has a topic the relay can write, on this replica or on any other. */
  broker_relay_routes_t routes;
  broker_group_commit_t *gc;
  broker_group_commit_stats_t gc_stats;
  struct {
    bt_counter_t requests, events, duplicates;
    bt_counter_t conflict_version, conflict_partial, conflict_id, conflict_pkey;
    bt_counter_t rejected_invalid, rejected_busy, rejected_unroutable, rejected_too_large;
    bt_counter_t failed_unavailable, failed_unknown, failed_error;
    bt_counter_t reads;
  } stats;
};

/* ---- input rules ------------------------------------------------------------------------- */

/* 1-200 characters of [A-Za-z0-9._:@-]: safe in URLs, logs and Kafka keys unescaped. */
static bool stream_name_valid(const char *s) {
  size_t n = strlen(s);
  if (n == 0 || n > STREAM_NAME_MAX)
    return false;
  for (size_t i = 0; i < n; i++)
    if (!isalnum((unsigned char)s[i]) && !strchr("._:@-", s[i]))
      return false;
  return true;
}

static int cmp_event_id(const void *x, const void *y) {
  const broker_event_t *const *a = x, *const *b = y;
  int c = strcmp((*a)->id, (*b)->id);
  return c ? c : strcmp((*a)->source, (*b)->source);
}

/* (source, id) pairs must be unique within an append: the idempotency rule counts stored
 * events, and the table's unique (stream, source, id) key would otherwise fail the whole
 * group. Sorting keeps this O(n log n) for any configured batch size. */
static int check_unique_ids(broker_event_t *events, size_t n, bt_arena_t *arena,
                            broker_parse_error_t *err) {
  const broker_event_t **sorted = bt_arena_alloc(arena, n * sizeof *sorted);
  if (!sorted)
    return broker_parse_fail(err, 413, "too_large", -1, NULL,
                      "the request needs more memory than allowed");
  for (size_t i = 0; i < n; i++)
    sorted[i] = &events[i];
  qsort(sorted, n, sizeof *sorted, cmp_event_id);
  for (size_t i = 1; i < n; i++) {
    if (cmp_event_id(&sorted[i - 1], &sorted[i]) != 0)
      continue;
    int a = (int)(sorted[i - 1] - events), b = (int)(sorted[i] - events);
    return broker_parse_fail(err, 400, "duplicate_event_id", a > b ? a : b, "id",
                      "events %d and %d have the same source and id '%.64s'; (source, id) must "
                      "be unique in an append",
                      a < b ? a : b, a > b ? a : b, sorted[i]->id);
  }
  return 0;
}

/* Parses {"expected_version": N | "any" | "no_stream", "events": [CloudEvent, ...]} into the
 * arena. expected_version defaults to "any"; unknown fields are refused so that a misspelt
 * "expectedVersion" cannot silently turn a guarded append into an unguarded one. The body has
 * this one format whatever the Content-Type says (curl -d sends form-urlencoded), so the
 * header is not checked. */
static int parse_append(const char *body, size_t len, size_t max_events, bt_arena_t *arena,
                        int64_t *expected, broker_event_t **events, size_t *nevents,
                        broker_parse_error_t *err) {
  json_error_t jerr;
  json_t *doc = json_loadb(body, len, 0, &jerr);
  if (!doc)
    return broker_parse_fail(err, 400, "invalid_json", -1, NULL,
                      "the body is not JSON: %s (line %d, column %d)", jerr.text, jerr.line,
                      jerr.column);
  int rc = -1;
  json_t *jexp = NULL, *jevents = NULL;
  const char *key;
  json_t *val;
  if (!json_is_object(doc)) {
    broker_parse_fail(err, 400, "invalid_body", -1, NULL,
               "the body must be an object {\"expected_version\": ..., \"events\": [...]}");
    goto out;
  }
  json_object_foreach(doc, key, val) {
    if (strcmp(key, "expected_version") == 0) {
      jexp = val;
    } else if (strcmp(key, "events") == 0) {
      jevents = val;
    } else {
      broker_parse_fail(err, 400, "unknown_field", -1, NULL,
                 "unknown field '%.64s' (expected \"expected_version\" and \"events\")", key);
      goto out;
    }
  }
  if (!jexp || json_is_null(jexp) ||
      (json_is_string(jexp) && strcmp(json_string_value(jexp), "any") == 0)) {
    *expected = BROKER_EXPECT_ANY;
  } else if (json_is_string(jexp) && strcmp(json_string_value(jexp), "no_stream") == 0) {
    *expected = 0;
  } else if (json_is_integer(jexp) && json_integer_value(jexp) >= 0) {
    *expected = (int64_t)json_integer_value(jexp);
  } else {
    broker_parse_fail(err, 400, "invalid_expected_version", -1, NULL,
               "expected_version must be a version number >= 0, \"any\" or \"no_stream\"");
    goto out;
  }
  if (!json_is_array(jevents) || json_array_size(jevents) == 0) {
    broker_parse_fail(err, 400, "invalid_events", -1, NULL,
               "\"events\" must be a non-empty array of CloudEvents");
    goto out;
  }
  size_t n = json_array_size(jevents);
  if (n > max_events) {
    broker_parse_fail(err, 413, "too_many_events", -1, NULL, "%zu events in one append; at most %zu", n,
               max_events);
    goto out;
  }
  broker_event_t *evs = bt_arena_alloc(arena, n * sizeof *evs);
  if (!evs) {
    broker_parse_fail(err, 413, "too_large", -1, NULL, "the request needs more memory than allowed");
    goto out;
  }
  for (size_t i = 0; i < n; i++) {
    if (broker_event_from_json(json_array_get(jevents, i), (int)i, arena, &evs[i], err) != 0)
      goto out;
    if (strlen(evs[i].id) > EVENT_ID_MAX) {
      broker_parse_fail(err, 400, "invalid_event", (int)i, "id", "event %zu: id is longer than %d bytes",
                 i, EVENT_ID_MAX);
      goto out;
    }
    if (strlen(evs[i].source) > SOURCE_MAX) {
      broker_parse_fail(err, 400, "invalid_event", (int)i, "source",
                        "event %zu: source is longer than %d bytes", i, SOURCE_MAX);
      goto out;
    }
  }
  if (check_unique_ids(evs, n, arena, err) != 0)
    goto out;
  *events = evs;
  *nevents = n;
  rc = 0;
out:
  json_decref(doc);
  return rc;
}

/* The relay publishes in position order, so an event it cannot write would stop it for
 * every stream. Everything it needs is therefore checked here, before the event is stored:
 * the stream's topic exists in name (the route gives a valid topic name) and is allowed by
 * BATON_BROKER_TOPICS; every event fits in one Kafka record under message.max.bytes; and the
 * events share one partitionkey (or none), which the stream then keeps (see migration 3 in
 * store_schema.c), so that a stream stays in one partition. Sets *pkey to that key. */
static int check_relayable(const broker_store_t *st, const char *stream,
                           const broker_event_t *evs, size_t n, const char **pkey,
                           broker_parse_error_t *err) {
  char buf[STREAM_NAME_MAX + 16];
  const char *topic = broker_relay_routes_topic(&st->routes, stream, buf, sizeof buf);
  if (!topic || !broker_topic_name_valid(topic))
    return broker_parse_fail(err, 400, "unroutable_stream", -1, NULL,
                             "stream '%.64s' maps to topic '%.80s', not a valid Kafka topic name; "
                             "use <category>-<id> or route the category in BATON_BROKER_ROUTES",
                             stream, topic ? topic : "(too long)");
  if (!broker_topic_allowed(st->b->cfg.topics, topic))
    return broker_parse_fail(err, 400, "topic_not_allowed", -1, NULL,
                             "stream '%.64s' maps to topic '%.80s', which BATON_BROKER_TOPICS "
                             "does not allow",
                             stream, topic);
  const char *pk = broker_event_ext(&evs[0], "partitionkey");
  for (size_t i = 0; i < n; i++) {
    const char *k = broker_event_ext(&evs[i], "partitionkey");
    if ((k == NULL) != (pk == NULL) || (k && strcmp(k, pk) != 0))
      return broker_parse_fail(err, 400, "partitionkey_mismatch", (int)i, "partitionkey",
                               "event %zu: partitionkey differs from event 0's; the events of a "
                               "stream share one partitionkey (or none)",
                               i);
    size_t bytes = broker_event_record_bytes(&evs[i], k ? k : stream) + strlen(stream) +
                   STREAM_HEADERS_BYTES;
    if (bytes > (size_t)st->b->cfg.kafka_message_max)
      return broker_parse_fail(err, 413, "event_too_large", (int)i, "data",
                               "event %zu: its Kafka record would take about %zu bytes, over "
                               "BATON_KAFKA_MESSAGE_MAX_BYTES (%lld)",
                               i, bytes, (long long)st->b->cfg.kafka_message_max);
  }
  *pkey = pk;
  return 0;
}

/* ---- answering ----------------------------------------------------------------------------- */

static void respond_parse_error(bt_http_req_t *req, const broker_parse_error_t *perr) {
  json_t *e = json_pack("{s:s, s:s}", "error", perr->code, "detail", perr->detail);
  if (perr->index >= 0) {
    json_object_set_new(e, "index", json_integer(perr->index));
    json_object_set_new(e, "attribute", json_string(perr->attribute));
  }
  bt_http_respond_json(req, perr->status, e);
}

/* A failure of Postgres or of the pool, for an append or a read (where "outcome unknown" is
 * harmless but still true). */
static void respond_pg_failure(broker_store_t *st, bt_http_req_t *req, bool append, int err,
                               const char *sqlstate, const char *errmsg) {
  broker_t *b = st->b;
  /* Only appends are counted: the metrics are about the write path. */
#define COUNT(c) (append ? bt_counter_inc(&st->stats.c) : (void)0)
  switch (err) {
  case BT_EAGAIN:
    COUNT(rejected_busy);
    broker_retry_after(b, req);
    bt_http_respond_error(req, 429, "overloaded",
                          "too many requests wait for Postgres; retry later");
    return;
  case BT_ECONNRESET:
    COUNT(failed_unknown);
    broker_retry_after(b, req);
    bt_http_respond_error(req, 503, "outcome_unknown",
                          "the connection to Postgres was lost after the request was sent, so it "
                          "may or may not have been stored; retry it unchanged (same event ids): "
                          "a retry is idempotent");
    return;
  case BT_EIO:
    /* Class 40 (serialization, deadlock), 53 (resources) and 57 (shutdown, cancel) pass; a
     * retry can succeed. Anything else is a fault of ours or of the schema. */
    if (sqlstate && (strncmp(sqlstate, "40", 2) == 0 || strncmp(sqlstate, "53", 2) == 0 ||
                     strncmp(sqlstate, "57", 2) == 0)) {
      COUNT(failed_unavailable);
      broker_retry_after(b, req);
      bt_http_respond_error(req, 503, "store_busy",
                            "Postgres refused the request for now (%s); retry", sqlstate);
      return;
    }
    COUNT(failed_error);
    bt_log_error("event store request failed", "{s:s, s:s}", "sqlstate", sqlstate ? sqlstate : "",
                 "error", errmsg);
    bt_http_respond_error(req, 500, "store_error", "Postgres refused the request (SQLSTATE %s)",
                          sqlstate && *sqlstate ? sqlstate : "?");
    return;
  default: /* BT_ENOTCONN, BT_ETIMEDOUT, BT_ECANCELED, BT_ENOMEM: nothing was sent */
    COUNT(failed_unavailable);
    broker_retry_after(b, req);
    bt_http_respond_error(req, 503, "store_unavailable", "the event store is unavailable: %s",
                          errmsg && *errmsg ? errmsg : bt_strerror(err));
    return;
  }
}
#undef COUNT

/* ---- append -------------------------------------------------------------------------------- */

typedef struct append_req {
  broker_append_t append;
  broker_store_t *st;
  bt_http_req_t *req;
  bt_arena_t arena; /* the events and the stream name */
} append_req_t;

static void append_free(append_req_t *ar) {
  bt_arena_reset(&ar->arena);
  free(ar);
}

static void on_append_done(broker_append_t *a, const char *errmsg) {
  append_req_t *ar = BT_CONTAINER_OF(a, append_req_t, append);
  broker_store_t *st = ar->st;
  bt_http_req_t *req = ar->req;
  switch (a->status) {
  case BROKER_APPEND_APPENDED:
  case BROKER_APPEND_DUPLICATE: {
    bool dup = a->status == BROKER_APPEND_DUPLICATE;
    if (dup)
      bt_counter_inc(&st->stats.duplicates);
    else
      bt_counter_add(&st->stats.events, a->nevents);
    /* The hot path, written without jansson: a valid stream name needs no JSON escaping. */
    char body[STREAM_NAME_MAX + 160];
    int len = snprintf(body, sizeof body,
                       "{\"stream\":\"%s\",\"first_version\":%lld,\"last_version\":%lld,"
                       "\"position\":%lld%s}",
                       a->stream, (long long)a->first_version, (long long)a->last_version,
                       (long long)a->position, dup ? ",\"duplicate\":true" : "");
    bt_http_respond(req, dup ? 200 : 201, "application/json", body, (size_t)len);
    break;
  }
  case BROKER_APPEND_WRONG_VERSION: {
    bt_counter_inc(&st->stats.conflict_version);
    char detail[128];
    if (a->expected == BROKER_EXPECT_ANY) /* cannot happen: "any" never conflicts */
      snprintf(detail, sizeof detail, "the stream is at version %lld",
               (long long)a->current_version);
    else
      snprintf(detail, sizeof detail, "expected version %lld, but the stream is at version %lld",
               (long long)a->expected, (long long)a->current_version);
    bt_http_respond_json(req, 409,
                         json_pack("{s:s, s:I, s:I, s:s}", "error", "wrong_expected_version",
                                   "current_version", (json_int_t)a->current_version,
                                   "expected_version", (json_int_t)a->expected, "detail", detail));
    break;
  }
  case BROKER_APPEND_PARTIAL_DUPLICATE: {
    bt_counter_inc(&st->stats.conflict_partial);
    char detail[256];
    snprintf(detail, sizeof detail,
             "%lld of the %zu event ids are already stored in this stream; an append must be "
             "either all new events or an exact retry",
             (long long)a->stored, a->nevents);
    bt_http_respond_json(req, 409,
                         json_pack("{s:s, s:I, s:I, s:s}", "error", "partial_duplicate", "stored",
                                   (json_int_t)a->stored, "current_version",
                                   (json_int_t)a->current_version, "detail", detail));
    break;
  }
  case BROKER_APPEND_ID_CONFLICT: {
    bt_counter_inc(&st->stats.conflict_id);
    const broker_event_t *ev = a->stored >= 0 && (size_t)a->stored < a->nevents
                                   ? &a->events[a->stored]
                                   : &a->events[0];
    char detail[400];
    snprintf(detail, sizeof detail,
             "event %lld: source '%.64s' and id '%.64s' are stored in this stream with other "
             "content; a retry must repeat the event exactly, a new event needs a new id",
             (long long)a->stored, ev->source, ev->id);
    bt_http_respond_json(req, 409,
                         json_pack("{s:s, s:I, s:s, s:s, s:I, s:s}", "error", "id_conflict", "index",
                                   (json_int_t)a->stored, "source", ev->source, "id", ev->id,
                                   "current_version", (json_int_t)a->current_version, "detail",
                                   detail));
    break;
  }
  case BROKER_APPEND_PARTITIONKEY_CONFLICT: {
    bt_counter_inc(&st->stats.conflict_pkey);
    bt_http_respond_json(
        req, 409,
        json_pack("{s:s, s:I, s:s}", "error", "partitionkey_conflict", "current_version",
                  (json_int_t)a->current_version, "detail",
                  "the stream's events carry another partitionkey (or none); every event of a "
                  "stream has the same one, which keeps the stream in one Kafka partition"));
    break;
  }
  case BROKER_APPEND_FAILED: respond_pg_failure(st, req, true, a->err, a->sqlstate, errmsg); break;
  default: bt_fatal("append: unknown status %d", (int)a->status);
  }
  append_free(ar);
}

bool broker_schema_ready(broker_t *b, bt_http_req_t *req) {
  if (b->schema_ready)
    return true;
  broker_retry_after(b, req);
  bt_http_respond_error(req, 503, "starting", "the event store schema is being migrated");
  return false;
}

static void handle_append(bt_http_req_t *req, void *arg) {
  broker_store_t *st = arg;
  broker_t *b = st->b;
  if (!bt_auth_check(b->auth, req))
    return;
  if (!broker_schema_ready(b, req))
    return;
  bt_counter_inc(&st->stats.requests);
  const char *stream = bt_http_req_param(req, "stream");
  if (!stream_name_valid(stream)) {
    bt_counter_inc(&st->stats.rejected_invalid);
    bt_http_respond_error(req, 400, "invalid_stream",
                          "stream '%.64s' is not a valid stream name (1-%d of [A-Za-z0-9._:@-])",
                          stream, STREAM_NAME_MAX);
    return;
  }
  append_req_t *ar = calloc(1, sizeof *ar);
  if (!ar) {
    broker_retry_after(b, req);
    bt_http_respond_error(req, 503, "overloaded", "out of memory");
    return;
  }
  ar->st = st;
  ar->req = req;
  /* Bounded by a few times the body, as publish does, plus the fixed-size event structs, so
   * that max_batch tiny events fit whatever they look like. */
  bt_arena_init(&ar->arena,
                4 * req->body_len +
                    (size_t)b->cfg.max_batch * (sizeof(broker_event_t) + sizeof(void *)) + 65536);
  broker_parse_error_t perr;
  broker_append_t *a = &ar->append;
  a->stream = bt_arena_strdup(&ar->arena, stream);
  a->done = on_append_done;
  if (!a->stream) {
    bt_http_respond_error(req, 413, "too_large", "the request needs more memory than allowed");
    append_free(ar);
    return;
  }
  if (parse_append(req->body, req->body_len, (size_t)b->cfg.max_batch, &ar->arena, &a->expected,
                   (broker_event_t **)&a->events, &a->nevents, &perr) != 0) {
    bt_counter_inc(&st->stats.rejected_invalid);
    respond_parse_error(req, &perr);
    append_free(ar);
    return;
  }
  if (check_relayable(st, stream, a->events, a->nevents, &a->partitionkey, &perr) != 0) {
    bt_counter_inc(perr.status == 413 ? &st->stats.rejected_too_large
                                      : &st->stats.rejected_unroutable);
    respond_parse_error(req, &perr);
    append_free(ar);
    return;
  }
  int rc = broker_group_commit_submit(st->gc, a);
  if (rc != 0) {
    bt_counter_inc(&st->stats.rejected_busy);
    broker_retry_after(b, req);
    if (rc == BT_EAGAIN)
      bt_http_respond_error(req, 429, "append_queue_full",
                            "%zu appends are waiting for a group commit; retry later",
                            broker_group_commit_queued(st->gc));
    else
      bt_http_respond_error(req, 503, "shutting_down", "the broker is shutting down");
    append_free(ar);
  }
}

/* ---- read ------------------------------------------------------------------------------------ */

/* One row per event of the page; with no event in range, one row whose event columns are
 * NULL; with no stream, no row. The stream's version comes from the same snapshot, so `next`
 * is exact. A page ends after $3 events or once the events before it hold $4 bytes (data,
 * extensions and attributes, as stored), whichever comes first; its first event is always
 * in it. The sizes come from the values' headers: octet_length and pg_column_size do not
 * detoast. */
static const char READ_SQL[] =
    "SELECT s.version, e.version, e.position, e.id, e.type, e.source, e.specversion, e.subject, "
    "e.time, e.datacontenttype, e.dataschema, e.data, e.extensions "
    "FROM baton.streams AS s LEFT JOIN LATERAL ("
    "  SELECT * FROM ("
    "    SELECT ev.*, sum(w.bytes) OVER (ORDER BY ev.version) - w.bytes AS before "
    "    FROM baton.events AS ev, LATERAL (SELECT coalesce(octet_length(ev.data), 0) + "
    "      coalesce(pg_column_size(ev.extensions), 0) + octet_length(ev.id) + "
    "      octet_length(ev.source) + octet_length(ev.type) + 64 AS bytes) AS w "
    "    WHERE ev.stream = s.stream AND ev.version >= $2::bigint "
    "    ORDER BY ev.version LIMIT $3::int) AS page "
    "  WHERE page.before < $4::bigint) AS e ON true "
    "WHERE s.stream = $1 ORDER BY e.version";

typedef struct read_req {
  broker_store_t *st;
  bt_http_req_t *req;
  char stream[STREAM_NAME_MAX + 1];
} read_req_t;

/* Whether the raw query string names parameter `name` (with or without a value). */
static bool query_has(const char *query, const char *name) {
  size_t len = strlen(name);
  for (const char *p = query; *p; p += strcspn(p, "&"), p += *p == '&') {
    if (strncmp(p, name, len) == 0 && (p[len] == '=' || p[len] == '&' || p[len] == '\0'))
      return true;
  }
  return false;
}

/* Parses a query parameter that must be an integer >= 1; returns 0 (def when absent) or -1. */
static int query_int(const bt_http_req_t *req, const char *name, int64_t def, int64_t *out) {
  char v[32];
  int n = bt_http_req_query(req, name, v, sizeof v);
  if (n < 0) {
    if (query_has(req->query, name))
      return -1; /* too long to be a number */
    *out = def;
    return 0;
  }
  char *end;
  long long x = strtoll(v, &end, 10);
  if (n == 0 || *end || !isdigit((unsigned char)v[0]) || x < 1 || x == LLONG_MAX)
    return -1;
  *out = x;
  return 0;
}

static int hexval(char c) {
  return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : c - 'A' + 10;
}

/* A row of READ_SQL as {"version","position","event"}, or NULL when out of memory. */
static json_t *row_to_json(const PGresult *res, int i) {
#define COL(k) (PQgetisnull(res, i, k) ? NULL : PQgetvalue(res, i, k))
  broker_event_t ev = {.id = COL(3),
                       .source = COL(5),
                       .type = COL(4),
                       .specversion = COL(6),
                       .subject = COL(7),
                       .time = COL(8),
                       .datacontenttype = COL(9),
                       .dataschema = COL(10)};
  char *data = NULL;
  const char *hex = COL(11); /* bytea's text output: \x then hex digits */
  if (hex && hex[0] == '\\' && hex[1] == 'x') {
    size_t n = (strlen(hex) - 2) / 2;
    data = malloc(n + 1);
    if (!data)
      return NULL;
    for (size_t k = 0; k < n; k++)
      data[k] = (char)(hexval(hex[2 + 2 * k]) << 4 | hexval(hex[3 + 2 * k]));
    ev.data = data;
    ev.data_len = n;
  }
  json_t *ext = COL(12) ? json_loads(COL(12), 0, NULL) : NULL;
  const char *name;
  json_t *val;
  json_object_foreach(ext, name, val) {
    if (ev.next < BROKER_MAX_EXTENSIONS && json_is_string(val))
      ev.ext[ev.next++] = (broker_ext_t){name, json_string_value(val)};
  }
  json_t *event = broker_event_to_json(&ev);
  json_t *out =
      event ? json_pack("{s:I, s:I, s:o}", "version", (json_int_t)atoll(PQgetvalue(res, i, 1)),
                        "position", (json_int_t)atoll(PQgetvalue(res, i, 2)), "event", event)
            : NULL;
  json_decref(ext);
  free(data);
  return out;
#undef COL
}

static void on_read_done(const bt_pg_result_t *r, void *arg) {
  read_req_t *rr = arg;
  broker_store_t *st = rr->st;
  bt_http_req_t *req = rr->req;
  if (r->err) {
    const char *sqlstate = r->error ? PQresultErrorField(r->error, PG_DIAG_SQLSTATE) : NULL;
    respond_pg_failure(st, req, false, r->err, sqlstate, r->errmsg);
    free(rr);
    return;
  }
  const PGresult *res = r->res[0];
  int n = PQntuples(res);
  long long stream_version = n > 0 ? atoll(PQgetvalue(res, 0, 0)) : 0;
  if (stream_version == 0) {
    bt_http_respond_error(req, 404, "stream_not_found", "stream '%s' has no events", rr->stream);
    free(rr);
    return;
  }
  json_t *events = json_array();
  long long last = 0;
  for (int i = 0; i < n && !PQgetisnull(res, i, 1); i++) {
    json_t *e = row_to_json(res, i);
    if (!e || json_array_append_new(events, e) != 0) {
      json_decref(events);
      bt_http_respond_error(req, 503, "overloaded", "out of memory");
      free(rr);
      return;
    }
    last = atoll(PQgetvalue(res, i, 1));
  }
  json_t *next = last > 0 && last < stream_version ? json_integer(last + 1) : json_null();
  bt_http_respond_json(req, 200,
                       json_pack("{s:s, s:I, s:o, s:o}", "stream", rr->stream, "stream_version",
                                 (json_int_t)stream_version, "events", events, "next", next));
  free(rr);
}

static void handle_read(bt_http_req_t *req, void *arg) {
  broker_store_t *st = arg;
  broker_t *b = st->b;
  if (!bt_auth_check(b->auth, req))
    return;
  if (!broker_schema_ready(b, req))
    return;
  bt_counter_inc(&st->stats.reads);
  const char *stream = bt_http_req_param(req, "stream");
  if (!stream_name_valid(stream)) {
    bt_http_respond_error(req, 400, "invalid_stream",
                          "stream '%.64s' is not a valid stream name (1-%d of [A-Za-z0-9._:@-])",
                          stream, STREAM_NAME_MAX);
    return;
  }
  int64_t from, limit;
  if (query_int(req, "from", 1, &from) != 0) {
    bt_http_respond_error(req, 400, "invalid_from", "from must be a version number >= 1");
    return;
  }
  if (query_int(req, "limit", READ_LIMIT_DEFAULT, &limit) != 0) {
    bt_http_respond_error(req, 400, "invalid_limit", "limit must be a number >= 1");
    return;
  }
  if (limit > b->cfg.read_limit_max)
    limit = b->cfg.read_limit_max;
  read_req_t *rr = calloc(1, sizeof *rr);
  if (!rr) {
    broker_retry_after(b, req);
    bt_http_respond_error(req, 503, "overloaded", "out of memory");
    return;
  }
  rr->st = st;
  rr->req = req;
  snprintf(rr->stream, sizeof rr->stream, "%s", stream);
  char sfrom[24], slimit[24], sbytes[24];
  snprintf(sfrom, sizeof sfrom, "%lld", (long long)from);
  snprintf(slimit, sizeof slimit, "%lld", (long long)limit);
  snprintf(sbytes, sizeof sbytes, "%lld", (long long)b->cfg.read_bytes_max);
  const char *values[] = {rr->stream, sfrom, slimit, sbytes};
  int rc = bt_pg_pool_query(b->pg, READ_SQL, 4, values, on_read_done, rr);
  if (rc != 0) {
    respond_pg_failure(st, req, false, rc, NULL, bt_strerror(rc));
    free(rr);
  }
}

/* ---- start --------------------------------------------------------------------------------- */

static void register_metrics(broker_store_t *st) {
  bt_metrics_counter(&st->stats.requests, "baton_broker_append_requests_total",
                     "Append requests received.");
  bt_metrics_counter(&st->stats.events, "baton_broker_append_events_total",
                     "Events written by appends.");
  bt_metrics_counter(&st->stats.duplicates, "baton_broker_append_duplicates_total",
                     "Appends answered 200 as exact retries of stored events.");
  bt_metrics_counter(&st->stats.conflict_version,
                     "baton_broker_append_conflicts_total{reason=\"wrong_expected_version\"}",
                     "Appends refused with 409.");
  bt_metrics_counter(&st->stats.conflict_partial,
                     "baton_broker_append_conflicts_total{reason=\"partial_duplicate\"}",
                     "Appends refused with 409.");
  bt_metrics_counter(&st->stats.conflict_id,
                     "baton_broker_append_conflicts_total{reason=\"id_conflict\"}",
                     "Appends refused with 409.");
  bt_metrics_counter(&st->stats.conflict_pkey,
                     "baton_broker_append_conflicts_total{reason=\"partitionkey_conflict\"}",
                     "Appends refused with 409.");
  bt_metrics_counter(&st->stats.rejected_unroutable,
                     "baton_broker_append_rejected_total{reason=\"unroutable\"}",
                     "Appends refused before reaching Postgres.");
  bt_metrics_counter(&st->stats.rejected_too_large,
                     "baton_broker_append_rejected_total{reason=\"too_large\"}",
                     "Appends refused before reaching Postgres.");
  bt_metrics_counter(&st->stats.rejected_invalid,
                     "baton_broker_append_rejected_total{reason=\"invalid\"}",
                     "Appends refused before reaching Postgres.");
  bt_metrics_counter(&st->stats.rejected_busy,
                     "baton_broker_append_rejected_total{reason=\"busy\"}",
                     "Appends refused before reaching Postgres.");
  bt_metrics_counter(&st->stats.failed_unavailable,
                     "baton_broker_append_failures_total{reason=\"unavailable\"}",
                     "Appends that failed in or before Postgres.");
  bt_metrics_counter(&st->stats.failed_unknown,
                     "baton_broker_append_failures_total{reason=\"outcome_unknown\"}",
                     "Appends that failed in or before Postgres.");
  bt_metrics_counter(&st->stats.failed_error,
                     "baton_broker_append_failures_total{reason=\"error\"}",
                     "Appends that failed in or before Postgres.");
  bt_metrics_counter(&st->stats.reads, "baton_broker_read_requests_total",
                     "Stream read requests received.");
  broker_group_commit_stats_register(&st->gc_stats);
}

static void on_committed(void *arg) {
  broker_store_t *st = arg;
  broker_relay_nudge(st->b);
}

int broker_store_start(broker_t *b) {
  /* Never freed: the metrics registry points into it for the life of the process. */
  broker_store_t *st = calloc(1, sizeof *st);
  if (!st)
    return BT_ENOMEM;
  st->b = b;
  char err[256];
  int rc = broker_relay_routes_parse(&st->routes, b->cfg.routes, err, sizeof err);
  if (rc != 0) {
    bt_log_error("invalid BATON_BROKER_ROUTES", "{s:s}", "error", err);
    free(st);
    return rc;
  }
  size_t events_max =
      (size_t)b->cfg.max_batch > GROUP_EVENTS_MIN ? (size_t)b->cfg.max_batch : GROUP_EVENTS_MIN;
  broker_group_commit_config_t gcc = {
      .pg = b->pg,
      .app = &b->app,
      .batch_max = (size_t)b->cfg.append_batch_max,
      .events_max = events_max,
      .bytes_max = (size_t)b->cfg.append_group_bytes,
      .queue_max = (size_t)b->cfg.append_queue_max,
      .concurrency = GROUP_CONCURRENCY,
      .stats = &st->gc_stats,
      .committed = on_committed,
      .arg = st,
  };
  rc = broker_group_commit_new(&st->gc, &gcc);
  if (rc != 0) {
    bt_log_error("cannot create the group commit", "{s:s}", "error", bt_strerror(rc));
    broker_relay_routes_free(&st->routes);
    free(st);
    return rc;
  }
  register_metrics(st);
  bt_http_server_route_auth(b->http, "POST", "/v1/streams/{stream}/events", handle_append, st);
  bt_http_server_route_auth(b->http, "GET", "/v1/streams/{stream}/events", handle_read, st);
  b->store = st;
  bt_log_info("event store ready", "{s:i, s:i, s:i}", "append_batch", (int)b->cfg.append_batch_max,
              "append_queue", (int)b->cfg.append_queue_max, "group_concurrency", GROUP_CONCURRENCY);
  return 0;
}
