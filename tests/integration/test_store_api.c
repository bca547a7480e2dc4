/* The event store through HTTP against a real baton-broker and Postgres: append and read back
 * (attributes, binary data, extensions, pagination with `next`), the expected_version rules,
 * idempotent retries (sequential and concurrent), partial duplicates, every 400/404 answer,
 * the metrics, and that concurrent appends really share transactions. SQL on a connection of
 * the test's own is the oracle for what was written. */
#include <pthread.h>

#include "test_store_util.h"

static store_broker_t br;

static int setup(void **state) {
  bt_test_env_load();
  /* A small read limit so the cap is observable. */
  const char *extra[] = {"BATON_BROKER_READ_LIMIT=3", NULL};
  store_broker_start(&br, "it_store_api", extra);
  return 0;
}

static int teardown(void **state) {
  store_broker_stop(&br);
  return 0;
}

static void stream_name(char *out, size_t n, const char *what) {
  snprintf(out, n, "it-%s-%s", what, store_run_id());
}

static int append(const char *stream, const char *body, json_t **doc) {
  char path[512];
  snprintf(path, sizeof path, "/v1/streams/%s/events", stream);
  return store_http(&br, "POST", path, body, doc, NULL);
}

static int read_stream(const char *stream, const char *query, json_t **doc) {
  char path[512];
  snprintf(path, sizeof path, "/v1/streams/%s/events%s", stream, query);
  return store_http(&br, "GET", path, NULL, doc, NULL);
}

/* ---- append and read --------------------------------------------------------------------- */

static void test_append_and_read(void **state) {
  char stream[128];
  stream_name(stream, sizeof stream, "rw");
  /* Every kind of attribute survives the round trip: binary data, JSON data, text data and
   * extensions (with characters that need escaping on the way into Postgres arrays). The
   * events of a stream share one partitionkey. */
#define PK "\"partitionkey\":\"k,\\\"}{\\\\\","
  const char *body =
      "{\"expected_version\":\"no_stream\",\"events\":["
      "{" PK "\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/s\",\"type\":\"t.json\","
      "\"subject\":\"sub\",\"time\":\"2024-05-01T10:00:00Z\",\"dataschema\":\"https://x/s\","
      "\"data\":{\"a\":[1,2],\"q\":\"\\\"{}\\\\\"}},"
      "{" PK "\"specversion\":\"1.0\",\"id\":\"e2\",\"source\":\"/s\",\"type\":\"t.bin\","
      "\"datacontenttype\":\"application/octet-stream\",\"data_base64\":\"AAEC/w==\","
      "\"traceparent\":\"00-0af7651916cd43dd8448eb211c80319c-"
      "b7ad6b7169203331-01\"},"
      "{" PK "\"specversion\":\"1.0\",\"id\":\"e3\",\"source\":\"/s\",\"type\":\"t.text\","
      "\"datacontenttype\":\"text/plain\",\"data\":\"h\\u00e9llo\"},"
      "{" PK "\"specversion\":\"1.0\",\"id\":\"e4 \\\"q\\\" \\\\ ,{} "
      "NULL\",\"source\":\"/s\",\"type\":\"t.none\"},"
      "{" PK "\"specversion\":\"1.0\",\"id\":\"e5\",\"source\":\"/s\",\"type\":\"t.none\"}]}";
  json_t *doc;
  assert_int_equal(append(stream, body, &doc), 201);
  assert_string_equal(jstr(doc, "stream"), stream);
  assert_int_equal(jint(doc, "first_version"), 1);
  assert_int_equal(jint(doc, "last_version"), 5);
  json_int_t position = jint(doc, "position");
  json_decref(doc);

  /* The oracle: five rows, versions 1..5 at consecutive positions ending at `position`. */
  PGconn *pg = store_pg();
  const char *p[] = {stream};
  PGresult *r =
      store_sql(pg,
                "SELECT version, position, id, encode(data, 'hex'), extensions->>'partitionkey' "
                "FROM baton.events WHERE stream = $1 ORDER BY version",
                1, p);
  assert_int_equal(PQntuples(r), 5);
  for (int i = 0; i < 5; i++) {
    assert_int_equal(atoll(PQgetvalue(r, i, 0)), i + 1);
    assert_int_equal(atoll(PQgetvalue(r, i, 1)), position - 4 + i);
  }
  assert_string_equal(PQgetvalue(r, 1, 3), "000102ff");
  assert_string_equal(PQgetvalue(r, 1, 4), "k,\"}{\\");
  PQclear(r);
  PQfinish(pg);

  /* Read it back three at a time (BATON_BROKER_READ_LIMIT=3 caps limit=100). */
  assert_int_equal(read_stream(stream, "?limit=100", &doc), 200);
  assert_int_equal(jint(doc, "stream_version"), 5);
  json_t *events = json_object_get(doc, "events");
  assert_int_equal(json_array_size(events), 3);
  assert_int_equal(jint(doc, "next"), 4);
  json_t *e0 = json_array_get(events, 0), *ev0 = json_object_get(e0, "event");
  assert_int_equal(jint(e0, "version"), 1);
  assert_int_equal(jint(e0, "position"), position - 4);
  assert_string_equal(jstr(ev0, "id"), "e1");
  assert_string_equal(jstr(ev0, "subject"), "sub");
  assert_string_equal(jstr(ev0, "time"), "2024-05-01T10:00:00Z");
  assert_string_equal(jstr(ev0, "dataschema"), "https://x/s");
  json_t *want = json_loads("{\"a\":[1,2],\"q\":\"\\\"{}\\\\\"}", 0, NULL);
  assert_true(json_equal(json_object_get(ev0, "data"), want));
  json_decref(want);
  json_t *ev1 = json_object_get(json_array_get(events, 1), "event");
  assert_string_equal(jstr(ev1, "data_base64"), "AAEC/w==");
  assert_string_equal(jstr(ev1, "partitionkey"), "k,\"}{\\");
  assert_string_equal(jstr(ev1, "traceparent"),
                      "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
  json_t *ev2 = json_object_get(json_array_get(events, 2), "event");
  assert_string_equal(jstr(ev2, "data"), "h\xc3\xa9llo");
  json_decref(doc);

  assert_int_equal(read_stream(stream, "?from=4&limit=2", &doc), 200);
  events = json_object_get(doc, "events");
  assert_int_equal(json_array_size(events), 2);
  assert_int_equal(jint(json_array_get(events, 0), "version"), 4);
  /* An id with the characters that array literals and JSON escape. */
  assert_string_equal(jstr(json_object_get(json_array_get(events, 0), "event"), "id"),
                      "e4 \"q\" \\ ,{} NULL");
  assert_int_equal(jint(json_array_get(events, 1), "version"), 5);
  assert_true(json_is_null(json_object_get(doc, "next")));
  assert_null(json_object_get(json_object_get(json_array_get(events, 1), "event"), "data"));
  json_decref(doc);

  /* Past the end: an empty page, no next. */
  assert_int_equal(read_stream(stream, "?from=6", &doc), 200);
  assert_int_equal(json_array_size(json_object_get(doc, "events")), 0);
  assert_true(json_is_null(json_object_get(doc, "next")));
  json_decref(doc);
}

/* Pagination that walks a longer stream with `next` only, from the default `from`. */
static void test_read_pagination(void **state) {
  char stream[128];
  stream_name(stream, sizeof stream, "pages");
  char *body = store_append_body("\"any\"", "p", 1, 8);
  assert_int_equal(append(stream, body, NULL), 201);
  free(body);
  int seen = 0;
  char query[64] = "?limit=3";
  for (int page = 0; page < 10; page++) {
    json_t *doc;
    assert_int_equal(read_stream(stream, query, &doc), 200);
    json_t *events = json_object_get(doc, "events");
    for (size_t i = 0; i < json_array_size(events); i++)
      assert_int_equal(jint(json_array_get(events, i), "version"), ++seen);
    json_t *next = json_object_get(doc, "next");
    if (json_is_null(next)) {
      json_decref(doc);
      break;
    }
    snprintf(query, sizeof query, "?from=%lld&limit=3", (long long)json_integer_value(next));
    json_decref(doc);
  }
  assert_int_equal(seen, 8);
}

/* The largest append allowed (BATON_BROKER_MAX_BATCH, 1000 by default) of tiny events, and
 * one more. */
static void test_max_batch(void **state) {
  char stream[128];
  stream_name(stream, sizeof stream, "max");
  char *body = store_append_body("\"no_stream\"", "m", 1, 1000);
  json_t *doc;
  assert_int_equal(append(stream, body, &doc), 201);
  assert_int_equal(jint(doc, "last_version"), 1000);
  json_decref(doc);
  free(body);
  body = store_append_body("\"any\"", "n", 1, 1001);
  assert_int_equal(append(stream, body, &doc), 413);
  assert_string_equal(jstr(doc, "error"), "too_many_events");
  json_decref(doc);
  free(body);
  PGconn *pg = store_pg();
  assert_int_equal(store_count_stream(pg, stream), 1000);
  PQfinish(pg);
}

/* ---- expected_version ------------------------------------------------------------------- */

static void test_expected_version(void **state) {
  char stream[128];
  stream_name(stream, sizeof stream, "ev");
  json_t *doc;
  char *b;

  /* A number on a stream that does not exist: 409 at version 0, and still no stream. */
  b = store_append_body("3", "x", 1, 1);
  assert_int_equal(append(stream, b, &doc), 409);
  free(b);
  assert_string_equal(jstr(doc, "error"), "wrong_expected_version");
  assert_int_equal(jint(doc, "current_version"), 0);
  json_decref(doc);
  assert_int_equal(read_stream(stream, "", &doc), 404);
  assert_string_equal(jstr(doc, "error"), "stream_not_found");
  json_decref(doc);

  b = store_append_body("\"no_stream\"", "a", 1, 2);
  assert_int_equal(append(stream, b, &doc), 201);
  free(b);
  assert_int_equal(jint(doc, "first_version"), 1);
  assert_int_equal(jint(doc, "last_version"), 2);
  json_decref(doc);

  /* no_stream on an existing stream. */
  b = store_append_body("\"no_stream\"", "b", 1, 1);
  assert_int_equal(append(stream, b, &doc), 409);
  free(b);
  assert_string_equal(jstr(doc, "error"), "wrong_expected_version");
  assert_int_equal(jint(doc, "current_version"), 2);
  json_decref(doc);

  /* The right number, then a stale one, then "any". */
  b = store_append_body("2", "c", 1, 3);
  assert_int_equal(append(stream, b, &doc), 201);
  free(b);
  assert_int_equal(jint(doc, "first_version"), 3);
  assert_int_equal(jint(doc, "last_version"), 5);
  json_decref(doc);
  b = store_append_body("2", "d", 1, 1);
  assert_int_equal(append(stream, b, &doc), 409);
  free(b);
  assert_int_equal(jint(doc, "current_version"), 5);
  json_decref(doc);
  b = store_append_body("\"any\"", "e", 1, 1);
  assert_int_equal(append(stream, b, &doc), 201);
  free(b);
  assert_int_equal(jint(doc, "first_version"), 6);
  json_decref(doc);
  /* Absent means "any". */
  assert_int_equal(
      append(
          stream,
          "{\"events\":[{\"specversion\":\"1.0\",\"id\":\"f\",\"source\":\"s\",\"type\":\"t\"}]}",
          &doc),
      201);
  assert_int_equal(jint(doc, "first_version"), 7);
  json_decref(doc);

  PGconn *pg = store_pg();
  assert_int_equal(store_count_stream(pg, stream), 7);
  PQfinish(pg);
}

/* ---- idempotency ------------------------------------------------------------------------- */

typedef struct {
  const char *stream, *body;
  int status;
  json_int_t first, last, position;
} retry_t;

static void *post_retry(void *arg) {
  retry_t *r = arg;
  json_t *doc = NULL;
  r->status = append(r->stream, r->body, &doc);
  json_t *f = json_object_get(doc, "first_version"), *l = json_object_get(doc, "last_version"),
         *p = json_object_get(doc, "position");
  r->first = json_integer_value(f);
  r->last = json_integer_value(l);
  r->position = json_integer_value(p);
  json_decref(doc);
  return NULL;
}

static void test_idempotent_retries(void **state) {
  char stream[128];
  stream_name(stream, sizeof stream, "idem");
  /* Something else first, so the retried append does not start at version 1. */
  char *b0 = store_append_body("\"no_stream\"", "before", 1, 2);
  assert_int_equal(append(stream, b0, NULL), 201);
  free(b0);

  char *body = store_append_body("2", "retried", 1, 3);
  retry_t r[6];
  pthread_t th[3];
  for (int i = 0; i < 6; i++)
    r[i] = (retry_t){.stream = stream, .body = body};
  for (int i = 0; i < 3; i++) /* three at once */
    assert_int_equal(pthread_create(&th[i], NULL, post_retry, &r[i]), 0);
  for (int i = 0; i < 3; i++)
    pthread_join(th[i], NULL);
  for (int i = 3; i < 6; i++) /* then three in sequence */
    post_retry(&r[i]);
  int created = 0;
  for (int i = 0; i < 6; i++) {
    if (r[i].status == 201)
      created++;
    else
      assert_int_equal(r[i].status, 200);
    assert_int_equal(r[i].first, 3);
    assert_int_equal(r[i].last, 5);
    assert_int_equal(r[i].position, r[0].position);
  }
  assert_int_equal(created, 1);
  free(body);

  PGconn *pg = store_pg();
  const char *p[] = {stream};
  assert_int_equal(store_count_stream(pg, stream), 5);
  assert_int_equal(
      store_sql_int(
          pg, "SELECT count(*) FROM baton.events WHERE stream = $1 AND id LIKE 'retried-%'", 1, p),
      3);

  /* One stored id and one new: 409 partial_duplicate, nothing written. */
  json_t *doc;
  body = store_append_body("\"any\"", "retried", 3, 2); /* retried-3 (stored), retried-4 (new) */
  assert_int_equal(append(stream, body, &doc), 409);
  free(body);
  assert_string_equal(jstr(doc, "error"), "partial_duplicate");
  assert_int_equal(jint(doc, "stored"), 1);
  json_decref(doc);
  assert_int_equal(store_count_stream(pg, stream), 5);
  /* The same ids in another stream are different events. */
  char other[160];
  snprintf(other, sizeof other, "%s-other", stream);
  body = store_append_body("\"any\"", "retried", 1, 3);
  assert_int_equal(append(other, body, NULL), 201);
  free(body);
  PQfinish(pg);
}

/* ---- refusals ---------------------------------------------------------------------------- */

static void expect_error(int status, json_t *doc, int want_status, const char *want_error) {
  if (status != want_status || strcmp(jstr(doc, "error"), want_error) != 0)
    fail_msg("expected %d %s, got %d %s", want_status, want_error, status,
             doc ? json_dumps(doc, JSON_COMPACT) : "(no JSON)");
  json_decref(doc);
}

static void append_fails(const char *stream, const char *body, int want_status,
                         const char *want_error) {
  json_t *doc = NULL;
  int status = append(stream, body, &doc);
  expect_error(status, doc, want_status, want_error);
}

static void read_fails(const char *stream, const char *query, int want_status,
                       const char *want_error) {
  json_t *doc = NULL;
  int status = read_stream(stream, query, &doc);
  expect_error(status, doc, want_status, want_error);
}

static void test_bad_requests(void **state) {
  char stream[128];
  stream_name(stream, sizeof stream, "bad");
  const char *ev = "{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"s\",\"type\":\"t\"}";
  char body[1024];
  json_t *doc;
  snprintf(body, sizeof body, "{\"events\":[%s]}", ev);

  /* Stream names. */
  append_fails("bad%20name", body, 400, "invalid_stream");
  char longname[256];
  int len = snprintf(longname, sizeof longname, "it-long-%s-", store_run_id());
  memset(longname + len, 'a', (size_t)(201 - len));
  longname[201] = '\0';
  append_fails(longname, body, 400, "invalid_stream");
  longname[200] = '\0'; /* 200 is fine */
  assert_int_equal(append(longname, body, NULL), 201);

  /* Bodies. */
  append_fails(stream, "not json", 400, "invalid_json");
  append_fails(stream, "[1,2]", 400, "invalid_body");
  append_fails(stream, "{\"events\":[]}", 400, "invalid_events");
  append_fails(stream, "{\"events\":{}}", 400, "invalid_events");
  snprintf(body, sizeof body, "{\"expectedVersion\":1,\"events\":[%s]}", ev);
  append_fails(stream, body, 400, "unknown_field");
  const char *bad_expected[] = {"-1", "1.5", "\"sometimes\"", "true", "[]"};
  for (size_t i = 0; i < BT_ARRAY_LEN(bad_expected); i++) {
    snprintf(body, sizeof body, "{\"expected_version\":%s,\"events\":[%s]}", bad_expected[i], ev);
    append_fails(stream, body, 400, "invalid_expected_version");
  }
  snprintf(body, sizeof body, "{\"events\":[%s,%s]}", ev, ev);
  assert_int_equal(append(stream, body, &doc), 400);
  assert_string_equal(jstr(doc, "error"), "duplicate_event_id");
  assert_int_equal(jint(doc, "index"), 1);
  json_decref(doc);
  assert_int_equal(
      append(stream, "{\"events\":[{\"specversion\":\"1.0\",\"id\":\"x\",\"type\":\"t\"}]}", &doc),
      400);
  assert_string_equal(jstr(doc, "error"), "invalid_event");
  assert_string_equal(jstr(doc, "attribute"), "source");
  json_decref(doc);

  /* Nothing of any of that was written. */
  PGconn *pg = store_pg();
  assert_int_equal(store_count_stream(pg, stream), 0);
  PQfinish(pg);

  /* Reads. */
  read_fails(stream, "", 404, "stream_not_found");
  read_fails("bad%20name", "", 400, "invalid_stream");
  const char *bad_from[] = {"?from=0", "?from=-1", "?from=abc",
                            "?from=",  "?from=1x", "?from=99999999999999999999999"};
  for (size_t i = 0; i < BT_ARRAY_LEN(bad_from); i++)
    read_fails(longname, bad_from[i], 400, "invalid_from");
  const char *bad_limit[] = {"?limit=0", "?limit=-5", "?limit=ten", "?from=1&limit="};
  for (size_t i = 0; i < BT_ARRAY_LEN(bad_limit); i++)
    read_fails(longname, bad_limit[i], 400, "invalid_limit");
}

/* ---- group commit and metrics --------------------------------------------------------------- */

typedef struct {
  int id, n;
  int ok;
} writer_t;

static void *many_appends(void *arg) {
  writer_t *w = arg;
  for (int i = 0; i < w->n; i++) {
    char stream[160], prefix[64];
    snprintf(stream, sizeof stream, "it-group-%s-%d-%d", store_run_id(), w->id, i);
    snprintf(prefix, sizeof prefix, "g%d", w->id);
    char *body = store_append_body("\"no_stream\"", prefix, i, 1);
    if (append(stream, body, NULL) == 201)
      w->ok++;
    free(body);
  }
  return NULL;
}

/* 32 writers append at once while the group before theirs is held inside Postgres (its
 * stream's row is locked by the test): they must all wait in the queue, and then share one
 * transaction. Holding the group makes this a condition to wait for, not a bet on timing. */
static void shared_transaction(void) {
  enum { WRITERS = 32 };
  char hold[160];
  stream_name(hold, sizeof hold, "hold");
  char *body = store_append_body("\"no_stream\"", "hold", 0, 1);
  assert_int_equal(append(hold, body, NULL), 201);
  free(body);
  PGconn *locker = store_pg(), *observer = store_pg();
  store_lock_stream(locker, hold);
  store_async_t held, w[WRITERS];
  store_async_start(&held, &br, hold, store_append_body("\"any\"", "held", 1, 1));
  store_wait_blocked(observer, locker, 20000);
  double groups0 = store_metric(&br, "baton_broker_append_groups_total");
  double appends0 = store_metric(&br, "baton_broker_append_group_size_sum");
  for (int i = 0; i < WRITERS; i++) {
    char stream[160];
    snprintf(stream, sizeof stream, "it-shared-%s-%d", store_run_id(), i);
    store_async_start(&w[i], &br, stream, store_append_body("\"no_stream\"", "s", i, 1));
  }
  assert_int_equal(store_wait_metric(&br, "baton_broker_append_queued", WRITERS, 30000), WRITERS);
  PQclear(store_sql(locker, "COMMIT", 0, NULL));
  for (int i = 0; i < WRITERS; i++) {
    store_async_join(&w[i]);
    assert_int_equal(w[i].status, 201);
  }
  store_async_join(&held);
  assert_int_equal(held.status, 201);
  double groups = store_metric(&br, "baton_broker_append_groups_total") - groups0;
  double appends = store_metric(&br, "baton_broker_append_group_size_sum") - appends0;
  print_message("group commit: %.0f appends in %.0f transactions\n", appends, groups);
  assert_int_equal((int)appends, WRITERS);
  assert_int_equal((int)groups, 1);
  PQfinish(locker);
  PQfinish(observer);
}

static void test_group_commit_and_metrics(void **state) {
  shared_transaction();
  enum { WRITERS = 32, EACH = 20 };
  writer_t w[WRITERS];
  pthread_t th[WRITERS];
  for (int i = 0; i < WRITERS; i++) {
    w[i] = (writer_t){.id = i, .n = EACH};
    assert_int_equal(pthread_create(&th[i], NULL, many_appends, &w[i]), 0);
  }
  int ok = 0;
  for (int i = 0; i < WRITERS; i++) {
    pthread_join(th[i], NULL);
    ok += w[i].ok;
  }
  /* Under load every append is answered 201; how many transactions they shared depends on
   * timing, which shared_transaction() checks deterministically instead. */
  assert_int_equal(ok, WRITERS * EACH);
  double groups = store_metric(&br, "baton_broker_append_groups_total");
  assert_true(store_metric(&br, "baton_broker_append_requests_total") >= WRITERS * EACH);
  assert_true(store_metric(&br, "baton_broker_append_events_total") >= WRITERS * EACH);
  assert_true(store_metric(&br, "baton_broker_append_duplicates_total") >= 1);
  assert_true(store_metric(&br, "baton_broker_append_conflicts_total") >= 1);
  assert_true(store_metric(&br, "baton_broker_append_group_commit_seconds_count") >= groups);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_append_and_read),
      cmocka_unit_test(test_read_pagination),
      cmocka_unit_test(test_max_batch),
      cmocka_unit_test(test_expected_version),
      cmocka_unit_test(test_idempotent_retries),
      cmocka_unit_test(test_bad_requests),
      cmocka_unit_test(test_group_commit_and_metrics),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
