/* The event store keeps the promises the README makes about what it accepts, against a real
 * baton-broker and Postgres: a stream the relay could not route is refused (400) instead of
 * stopping the relay later; an event too large for a Kafka record is refused (413), by append
 * and by publish; idempotency is keyed on (stream, source, id) and compares content (409
 * id_conflict); a stream keeps one partitionkey (409 partitionkey_conflict); a 409 leaves no
 * stream row behind; a read page stops at its byte budget; every /v1 route needs the bearer
 * token. SQL on a connection of the test's own is the oracle. */
#include <stdbool.h>

#include "test_store_util.h"

#define TOKEN "promises-token"
#define AUTH "Authorization: Bearer " TOKEN "\r\n"

static store_broker_t br;

static int setup(void **state) {
  bt_test_env_load();
  /* Streams of the categories "it" and "order" are allowed; "pay" is not. The small Kafka
   * record limit and read budget keep the requests that cross them small. */
  const char *extra[] = {"BATON_BROKER_TOPICS=it.events,order.events,promises-topic",
                         "BATON_KAFKA_MESSAGE_MAX_BYTES=100000",
                         "BATON_BROKER_READ_BYTES=1024",
                         "BATON_API_TOKENS=" TOKEN,
                         NULL};
  store_broker_start(&br, "it_store_promises", extra);
  return 0;
}

static int teardown(void **state) {
  store_broker_stop(&br);
  return 0;
}

/* A request with the bearer token (or without, when auth is false). */
static int call(const char *method, const char *path, const char *ctype, const char *body,
                bool auth, json_t **doc) {
  char url[1024], headers[256];
  snprintf(url, sizeof url, "%s%s", br.url, path);
  snprintf(headers, sizeof headers, "%s%s%s%s", ctype ? "Content-Type: " : "", ctype ? ctype : "",
           ctype ? "\r\n" : "", auth ? AUTH : "");
  bt_test_http_resp_t r;
  bt_test_http(method, url, headers, body, body ? strlen(body) : 0, &r);
  if (doc)
    *doc = json_loads(r.body ? r.body : "", 0, NULL);
  int status = r.status;
  bt_test_http_free(&r);
  return status;
}

static int append(const char *stream, const char *body, json_t **doc) {
  char path[512];
  snprintf(path, sizeof path, "/v1/streams/%s/events", stream);
  return call("POST", path, "application/json", body, true, doc);
}

static void expect(int status, json_t *doc, int want_status, const char *want_error) {
  if (status != want_status || (want_error && strcmp(jstr(doc, "error"), want_error) != 0)) {
    char *text = doc ? json_dumps(doc, JSON_COMPACT) : NULL;
    fail_msg("expected %d %s, got %d %s", want_status, want_error ? want_error : "", status,
             text ? text : "(no JSON)");
  }
  json_decref(doc);
}

static void append_expect(const char *stream, const char *body, int want_status,
                          const char *want_error) {
  json_t *doc = NULL;
  int status = append(stream, body, &doc);
  expect(status, doc, want_status, want_error);
}

/* One event: {"specversion","id","source","type", extra members (JSON text, may be "")}. */
static char *one_event(const char *expected, const char *id, const char *source,
                       const char *extra) {
  size_t n = strlen(extra) + strlen(id) + strlen(source) + 256;
  char *b = malloc(n);
  snprintf(b, n,
           "{\"expected_version\":%s,\"events\":[{\"specversion\":\"1.0\",\"id\":\"%s\","
           "\"source\":\"%s\",\"type\":\"it.promise\"%s%s}]}",
           expected, id, source, *extra ? "," : "", extra);
  return b;
}

static long long count_streams_row(PGconn *pg, const char *stream) {
  const char *p[] = {stream};
  return store_sql_int(pg, "SELECT count(*) FROM baton.streams WHERE stream = $1", 1, p);
}

/* ---- routing -------------------------------------------------------------------------------- */

/* ':' and '@' are legal in stream names, but a stream without a '-' is its own category, and
 * "<category>.events" is then no Kafka topic name. Such an append is refused; the same
 * characters after the category are fine. */
static void test_unroutable_stream(void **state) {
  char bad[160], good[160], forbidden[160];
  snprintf(bad, sizeof bad, "it:%s@x", store_run_id());
  snprintf(good, sizeof good, "order-%s:a@b", store_run_id());
  snprintf(forbidden, sizeof forbidden, "pay-%s", store_run_id());
  char *body = one_event("\"any\"", "r1", "/it", "");
  json_t *doc;
  assert_int_equal(append(bad, body, &doc), 400);
  assert_string_equal(jstr(doc, "error"), "unroutable_stream");
  assert_non_null(strstr(jstr(doc, "detail"), ".events"));
  json_decref(doc);
  append_expect(good, body, 201, NULL);
  /* pay.events is a valid name, but BATON_BROKER_TOPICS does not allow it. */
  append_expect(forbidden, body, 400, "topic_not_allowed");
  free(body);
  PGconn *pg = store_pg();
  assert_int_equal(store_count_stream(pg, bad), 0);
  assert_int_equal(count_streams_row(pg, bad), 0);
  assert_int_equal(store_count_stream(pg, forbidden), 0);
  assert_int_equal(store_count_stream(pg, good), 1);
  PQfinish(pg);
  assert_true(store_metric(&br, "baton_broker_append_rejected_total{reason=\"unroutable\"}") >= 2);
}

/* ---- size ------------------------------------------------------------------------------------ */

static char *big_data_event(const char *expected, const char *id, size_t data_len) {
  char *data = malloc(data_len + 1);
  memset(data, 'x', data_len);
  data[data_len] = '\0';
  size_t n = data_len + 64;
  char *extra = malloc(n);
  snprintf(extra, n, "\"datacontenttype\":\"text/plain\",\"data\":\"%s\"", data);
  char *b = one_event(expected, id, "/it", extra);
  free(data);
  free(extra);
  return b;
}

/* BATON_KAFKA_MESSAGE_MAX_BYTES=100000: an event of 150 kB would be stored and then fail in
 * the relay forever (MSG_SIZE_TOO_LARGE); it is refused with 413 instead, by append and by
 * publish, and one of 50 kB passes. */
static void test_oversized_event(void **state) {
  char stream[160];
  snprintf(stream, sizeof stream, "it-big-%s", store_run_id());
  char *body = big_data_event("\"any\"", "big-1", 150000);
  json_t *doc;
  assert_int_equal(append(stream, body, &doc), 413);
  assert_string_equal(jstr(doc, "error"), "event_too_large");
  assert_int_equal(jint(doc, "index"), 0);
  assert_non_null(strstr(jstr(doc, "detail"), "BATON_KAFKA_MESSAGE_MAX_BYTES"));
  json_decref(doc);
  free(body);
  body = big_data_event("\"any\"", "small-1", 50000);
  append_expect(stream, body, 201, NULL);
  free(body);
  PGconn *pg = store_pg();
  assert_int_equal(store_count_stream(pg, stream), 1);
  PQfinish(pg);

  /* Publish: the same limit, before any record is produced. */
  char ev[160000];
  memset(ev, 0, sizeof ev);
  int len = snprintf(ev, sizeof ev,
                     "{\"specversion\":\"1.0\",\"id\":\"p-big\",\"source\":\"/it\",\"type\":\"t\","
                     "\"datacontenttype\":\"text/plain\",\"data\":\"");
  memset(ev + len, 'y', 150000);
  strcpy(ev + len + 150000, "\"}");
  assert_int_equal(call("POST", "/v1/topics/promises-topic/events",
                        "application/cloudevents+json", ev, true, &doc),
                   413);
  assert_string_equal(jstr(doc, "error"), "event_too_large");
  json_decref(doc);
}

/* ---- idempotency scope -------------------------------------------------------------------- */

/* CloudEvents makes (source, id) unique: the same id from two sources is two events, in one
 * append or in two. The same (source, id) with other content is refused, and writes nothing;
 * an exact retry is a duplicate. */
static void test_cross_source_ids(void **state) {
  char stream[160];
  snprintf(stream, sizeof stream, "it-xsrc-%s", store_run_id());
  char *a = one_event("\"no_stream\"", "same-id", "/source-a", "\"data\":{\"v\":1}");
  char *b = one_event("1", "same-id", "/source-b", "\"data\":{\"v\":1}");
  append_expect(stream, a, 201, NULL);
  json_t *doc;
  assert_int_equal(append(stream, b, &doc), 201); /* not a "duplicate" of a's event */
  assert_int_equal(jint(doc, "first_version"), 2);
  json_decref(doc);
  /* Exact retries of each: 200, with their own versions. */
  assert_int_equal(append(stream, a, &doc), 200);
  assert_int_equal(jint(doc, "first_version"), 1);
  json_decref(doc);
  assert_int_equal(append(stream, b, &doc), 200);
  assert_int_equal(jint(doc, "first_version"), 2);
  json_decref(doc);
  free(a);
  free(b);
  /* The same (source, id) with another payload, or another attribute. */
  char *c = one_event("\"any\"", "same-id", "/source-a", "\"data\":{\"v\":2}");
  assert_int_equal(append(stream, c, &doc), 409);
  assert_string_equal(jstr(doc, "error"), "id_conflict");
  assert_string_equal(jstr(doc, "source"), "/source-a");
  assert_string_equal(jstr(doc, "id"), "same-id");
  json_decref(doc);
  free(c);
  c = one_event("\"any\"", "same-id", "/source-b", "\"data\":{\"v\":1},\"subject\":\"other\"");
  append_expect(stream, c, 409, "id_conflict");
  free(c);
  /* One append with the same id from two sources. */
  const char *two = "{\"events\":["
                    "{\"specversion\":\"1.0\",\"id\":\"pair\",\"source\":\"/x\",\"type\":\"t\"},"
                    "{\"specversion\":\"1.0\",\"id\":\"pair\",\"source\":\"/y\",\"type\":\"t\"}]}";
  assert_int_equal(append(stream, two, &doc), 201);
  assert_int_equal(jint(doc, "last_version"), 4);
  json_decref(doc);
  PGconn *pg = store_pg();
  assert_int_equal(store_count_stream(pg, stream), 4);
  const char *p[] = {stream};
  /* Every stored event has its payload hash. */
  assert_int_equal(store_sql_int(pg,
                                 "SELECT count(*) FROM baton.events WHERE stream = $1 "
                                 "AND payload_hash IS NOT NULL",
                                 1, p),
                   4);
  PQfinish(pg);
  assert_true(store_metric(&br, "baton_broker_append_conflicts_total{reason=\"id_conflict\"}") >=
              2);
}

/* ---- one partition per stream ------------------------------------------------------------- */

/* The relay keys a stream's records by partitionkey, else by the stream id: the first append
 * fixes the stream's key, and another one (or none) is refused, so the stream cannot be split
 * across partitions. */
static void test_one_partitionkey_per_stream(void **state) {
  char stream[160], plain[160];
  snprintf(stream, sizeof stream, "it-pk-%s", store_run_id());
  snprintf(plain, sizeof plain, "it-nopk-%s", store_run_id());
  char *eu1 = one_event("\"no_stream\"", "pk-1", "/it", "\"partitionkey\":\"eu\"");
  char *us = one_event("\"any\"", "pk-2", "/it", "\"partitionkey\":\"us\"");
  char *none = one_event("\"any\"", "pk-3", "/it", "");
  char *eu2 = one_event("1", "pk-4", "/it", "\"partitionkey\":\"eu\"");
  append_expect(stream, eu1, 201, NULL);
  append_expect(stream, us, 409, "partitionkey_conflict");
  append_expect(stream, none, 409, "partitionkey_conflict");
  append_expect(stream, eu2, 201, NULL);
  /* A stream without a key keeps having none. */
  append_expect(plain, none, 201, NULL);
  append_expect(plain, us, 409, "partitionkey_conflict");
  free(eu1);
  free(us);
  free(none);
  free(eu2);
  /* Two keys in one append. */
  const char *mixed = "{\"events\":["
                      "{\"specversion\":\"1.0\",\"id\":\"m1\",\"source\":\"/x\",\"type\":\"t\","
                      "\"partitionkey\":\"eu\"},"
                      "{\"specversion\":\"1.0\",\"id\":\"m2\",\"source\":\"/x\",\"type\":\"t\","
                      "\"partitionkey\":\"us\"}]}";
  json_t *doc;
  assert_int_equal(append(stream, mixed, &doc), 400);
  assert_string_equal(jstr(doc, "error"), "partitionkey_mismatch");
  assert_int_equal(jint(doc, "index"), 1);
  json_decref(doc);
  PGconn *pg = store_pg();
  const char *p[] = {stream};
  assert_int_equal(store_count_stream(pg, stream), 2);
  assert_int_equal(store_sql_int(pg,
                                 "SELECT count(DISTINCT extensions->>'partitionkey') FROM "
                                 "baton.events WHERE stream = $1",
                                 1, p),
                   1);
  assert_int_equal(store_count_stream(pg, plain), 1);
  PQfinish(pg);
}

/* ---- a 409 leaves nothing behind ---------------------------------------------------------- */

static void test_conflict_leaves_no_stream_row(void **state) {
  char stream[160];
  snprintf(stream, sizeof stream, "it-ghost-%s", store_run_id());
  char *body = one_event("3", "g-1", "/it", "");
  json_t *doc;
  assert_int_equal(append(stream, body, &doc), 409);
  assert_string_equal(jstr(doc, "error"), "wrong_expected_version");
  assert_int_equal(jint(doc, "current_version"), 0);
  json_decref(doc);
  free(body);
  PGconn *pg = store_pg();
  assert_int_equal(count_streams_row(pg, stream), 0);
  assert_int_equal(store_count_stream(pg, stream), 0);
  PQfinish(pg);
  /* And the stream can still be created as new. */
  body = one_event("\"no_stream\"", "g-2", "/it", "");
  append_expect(stream, body, 201, NULL);
  free(body);
}

/* ---- read pages by bytes ------------------------------------------------------------------ */

/* BATON_BROKER_READ_BYTES=1024 and events of 600 bytes of data: a page holds two events (the
 * second starts below the budget), and `next` walks the rest. */
static void test_read_byte_budget(void **state) {
  char stream[160];
  snprintf(stream, sizeof stream, "it-readbytes-%s", store_run_id());
  for (int i = 1; i <= 5; i++) {
    char id[16], exp[16];
    snprintf(id, sizeof id, "rb-%d", i);
    snprintf(exp, sizeof exp, "%d", i - 1);
    char *body = big_data_event(i == 1 ? "\"no_stream\"" : exp, id, 600);
    append_expect(stream, body, 201, NULL);
    free(body);
  }
  long long from = 1;
  int pages = 0, seen = 0;
  while (from > 0 && pages < 10) {
    char path[256];
    snprintf(path, sizeof path, "/v1/streams/%s/events?from=%lld&limit=100", stream, from);
    json_t *doc;
    assert_int_equal(call("GET", path, NULL, NULL, true, &doc), 200);
    json_t *events = json_object_get(doc, "events");
    assert_true(json_array_size(events) >= 1);
    assert_true(json_array_size(events) <= 2);
    for (size_t i = 0; i < json_array_size(events); i++)
      assert_int_equal(jint(json_array_get(events, i), "version"), ++seen);
    json_t *next = json_object_get(doc, "next");
    from = json_is_integer(next) ? json_integer_value(next) : 0;
    json_decref(doc);
    pages++;
  }
  assert_int_equal(seen, 5);
  assert_int_equal(pages, 3);
}

/* ---- auth on every /v1 route --------------------------------------------------------------- */

static void test_auth_on_every_route(void **state) {
  char stream[160], stream_path[256];
  snprintf(stream, sizeof stream, "it-auth-%s", store_run_id());
  snprintf(stream_path, sizeof stream_path, "/v1/streams/%s/events", stream);
  const char *ev = "{\"specversion\":\"1.0\",\"id\":\"a1\",\"source\":\"/it\",\"type\":\"t\"}";
  char append_body[256];
  snprintf(append_body, sizeof append_body, "{\"events\":[%s]}", ev);
  struct {
    const char *method, *path, *ctype, *body;
    int with_token;
  } routes[] = {
      {"POST", stream_path, "application/json", append_body, 201},
      {"GET", stream_path, NULL, NULL, 200},
      {"POST", "/v1/topics/promises-topic/events", "application/cloudevents+json", ev, 200},
  };
  for (size_t i = 0; i < BT_ARRAY_LEN(routes); i++) {
    json_t *doc;
    int st = call(routes[i].method, routes[i].path, routes[i].ctype, routes[i].body, false, &doc);
    if (st != 401)
      fail_msg("%s %s without a token answered %d", routes[i].method, routes[i].path, st);
    assert_string_equal(jstr(doc, "error"), "unauthorized");
    json_decref(doc);
  }
  /* Nothing was written without the token; with it, each route works. */
  PGconn *pg = store_pg();
  assert_int_equal(store_count_stream(pg, stream), 0);
  PQfinish(pg);
  for (size_t i = 0; i < BT_ARRAY_LEN(routes); i++) {
    json_t *doc;
    int st = call(routes[i].method, routes[i].path, routes[i].ctype, routes[i].body, true, &doc);
    json_decref(doc);
    if (st != routes[i].with_token)
      fail_msg("%s %s with the token answered %d, not %d", routes[i].method, routes[i].path, st,
               routes[i].with_token);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_unroutable_stream),
      cmocka_unit_test(test_oversized_event),
      cmocka_unit_test(test_cross_source_ids),
      cmocka_unit_test(test_one_partitionkey_per_stream),
      cmocka_unit_test(test_conflict_leaves_no_stream_row),
      cmocka_unit_test(test_read_byte_budget),
      cmocka_unit_test(test_auth_on_every_route),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
