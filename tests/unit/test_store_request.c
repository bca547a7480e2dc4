/* Unit tests of the event store's request rules (broker/store.c, included for its statics):
 * stream names, the append body (expected_version, events, unique ids, limits) and the read
 * query parameters. No server is involved. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "store.c"

static void test_stream_names(void **state) {
  const char *good[] = {"a", "order-42", "x:y@z.w_v-1", "A.B_C-D:E@F", "0"};
  for (size_t i = 0; i < BT_ARRAY_LEN(good); i++)
    assert_true(stream_name_valid(good[i]));
  const char *bad[] = {"", "a b", "a/b", "caf\xc3\xa9", "a\"b", "a\\b", "a%20b", "a?b", "a\tb"};
  for (size_t i = 0; i < BT_ARRAY_LEN(bad); i++)
    assert_false(stream_name_valid(bad[i]));
  char name[STREAM_NAME_MAX + 2];
  memset(name, 'x', sizeof name);
  name[STREAM_NAME_MAX] = '\0';
  assert_true(stream_name_valid(name));
  name[STREAM_NAME_MAX] = 'x';
  name[STREAM_NAME_MAX + 1] = '\0';
  assert_false(stream_name_valid(name));
}

/* Parses body with at most max events; returns the status (0 when accepted). */
static int parse(const char *body, size_t max, int64_t *expected, size_t *n,
                 broker_parse_error_t *err) {
  bt_arena_t arena;
  bt_arena_init(&arena, 0);
  broker_event_t *events = NULL;
  int rc = parse_append(body, strlen(body), max, &arena, expected, &events, n, err);
  bt_arena_reset(&arena);
  return rc == 0 ? 0 : err->status;
}

#define EV(id) "{\"specversion\":\"1.0\",\"id\":\"" id "\",\"source\":\"s\",\"type\":\"t\"}"

static void test_expected_version(void **state) {
  int64_t exp;
  size_t n;
  broker_parse_error_t err;
  assert_int_equal(
      parse("{\"expected_version\":\"any\",\"events\":[" EV("a") "]}", 10, &exp, &n, &err), 0);
  assert_int_equal(exp, BROKER_EXPECT_ANY);
  assert_int_equal(parse("{\"events\":[" EV("a") "]}", 10, &exp, &n, &err), 0);
  assert_int_equal(exp, BROKER_EXPECT_ANY);
  assert_int_equal(
      parse("{\"expected_version\":null,\"events\":[" EV("a") "]}", 10, &exp, &n, &err), 0);
  assert_int_equal(exp, BROKER_EXPECT_ANY);
  assert_int_equal(
      parse("{\"expected_version\":\"no_stream\",\"events\":[" EV("a") "]}", 10, &exp, &n, &err),
      0);
  assert_int_equal(exp, 0);
  assert_int_equal(parse("{\"expected_version\":0,\"events\":[" EV("a") "]}", 10, &exp, &n, &err),
                   0);
  assert_int_equal(exp, 0);
  assert_int_equal(parse("{\"expected_version\":42,\"events\":[" EV("a") "]}", 10, &exp, &n, &err),
                   0);
  assert_int_equal(exp, 42);
  assert_int_equal(n, 1);
  const char *bad[] = {"-1", "1.0", "\"42\"", "\"ANY\"", "true", "{}", "[]"};
  for (size_t i = 0; i < BT_ARRAY_LEN(bad); i++) {
    char body[256];
    snprintf(body, sizeof body, "{\"expected_version\":%s,\"events\":[" EV("a") "]}", bad[i]);
    assert_int_equal(parse(body, 10, &exp, &n, &err), 400);
    assert_string_equal(err.code, "invalid_expected_version");
  }
}

static void test_body_shape(void **state) {
  int64_t exp;
  size_t n;
  broker_parse_error_t err;
  assert_int_equal(parse("", 10, &exp, &n, &err), 400);
  assert_string_equal(err.code, "invalid_json");
  assert_int_equal(parse("[" EV("a") "]", 10, &exp, &n, &err), 400);
  assert_string_equal(err.code, "invalid_body");
  assert_int_equal(parse("{\"events\":[]}", 10, &exp, &n, &err), 400);
  assert_string_equal(err.code, "invalid_events");
  assert_int_equal(parse("{\"events\":" EV("a") "}", 10, &exp, &n, &err), 400);
  assert_string_equal(err.code, "invalid_events");
  assert_int_equal(parse("{\"expected_version\":1}", 10, &exp, &n, &err), 400);
  assert_string_equal(err.code, "invalid_events");
  assert_int_equal(parse("{\"expectedVersion\":1,\"events\":[" EV("a") "]}", 10, &exp, &n, &err),
                   400);
  assert_string_equal(err.code, "unknown_field");
  assert_non_null(strstr(err.detail, "expectedVersion"));
  /* Too many events: 413, before any event is parsed. */
  assert_int_equal(parse("{\"events\":[" EV("a") "," EV("b") "," EV("c") "]}", 2, &exp, &n, &err),
                   413);
  assert_string_equal(err.code, "too_many_events");
  assert_int_equal(parse("{\"events\":[" EV("a") "," EV("b") "]}", 2, &exp, &n, &err), 0);
  assert_int_equal(n, 2);
}

static void test_events(void **state) {
  int64_t exp;
  size_t n;
  broker_parse_error_t err;
  /* An invalid event is named by index and attribute (cloudevent.c's rules). */
  assert_int_equal(
      parse("{\"events\":[" EV("a") ",{\"id\":\"b\",\"source\":\"s\",\"type\":\"t\"}]}", 10, &exp,
            &n, &err),
      400);
  assert_int_equal(err.index, 1);
  assert_string_equal(err.attribute, "specversion");
  /* Duplicate ids within one append, reported at the later index, however far apart. */
  assert_int_equal(
      parse("{\"events\":[" EV("x") "," EV("y") "," EV("z") "," EV("y") "]}", 10, &exp, &n, &err),
      400);
  assert_string_equal(err.code, "duplicate_event_id");
  assert_int_equal(err.index, 3);
  assert_non_null(strstr(err.detail, "events 1 and 3"));
  /* Ids longer than the limit. */
  char body[4096], id[EVENT_ID_MAX + 2];
  memset(id, 'i', EVENT_ID_MAX + 1);
  id[EVENT_ID_MAX + 1] = '\0';
  snprintf(body, sizeof body,
           "{\"events\":[{\"specversion\":\"1.0\",\"id\":\"%s\",\"source\":\"s\",\"type\":\"t\"}]}",
           id);
  assert_int_equal(parse(body, 10, &exp, &n, &err), 400);
  assert_string_equal(err.attribute, "id");
  id[EVENT_ID_MAX] = '\0';
  snprintf(body, sizeof body,
           "{\"events\":[{\"specversion\":\"1.0\",\"id\":\"%s\",\"source\":\"s\",\"type\":\"t\"}]}",
           id);
  assert_int_equal(parse(body, 10, &exp, &n, &err), 0);
}

static void test_many_unique_ids(void **state) {
  /* 5,000 distinct ids pass (the uniqueness check sorts rather than comparing all pairs). */
  size_t cap = 5000 * 80 + 64, len = 0;
  char *body = malloc(cap);
  len += (size_t)snprintf(body + len, cap - len, "{\"events\":[");
  for (int i = 0; i < 5000; i++)
    len += (size_t)snprintf(
        body + len, cap - len,
        "%s{\"specversion\":\"1.0\",\"id\":\"e%d\",\"source\":\"s\",\"type\":\"t\"}", i ? "," : "",
        i);
  snprintf(body + len, cap - len, "]}");
  int64_t exp;
  size_t n;
  broker_parse_error_t err;
  assert_int_equal(parse(body, 5000, &exp, &n, &err), 0);
  assert_int_equal(n, 5000);
  free(body);
}

static int query(const char *q, const char *name, int64_t def, int64_t *out) {
  bt_http_req_t req;
  memset(&req, 0, sizeof req);
  req.query = q;
  return query_int(&req, name, def, out);
}

static void test_query_ints(void **state) {
  int64_t v;
  assert_int_equal(query("", "from", 1, &v), 0);
  assert_int_equal(v, 1);
  assert_int_equal(query("limit=5", "from", 7, &v), 0);
  assert_int_equal(v, 7);
  assert_int_equal(query("from=12&limit=5", "from", 1, &v), 0);
  assert_int_equal(v, 12);
  assert_int_equal(query("from=12&limit=5", "limit", 1, &v), 0);
  assert_int_equal(v, 5);
  assert_int_equal(query("fromage=3", "from", 1, &v), 0); /* another parameter */
  assert_int_equal(v, 1);
  const char *bad[] = {"from=0",
                       "from=-3",
                       "from=x",
                       "from=",
                       "from",
                       "from=1.5",
                       "from=+4",
                       "from= 4",
                       "from=99999999999999999999",
                       "from=123456789012345678901234567890123"};
  for (size_t i = 0; i < BT_ARRAY_LEN(bad); i++)
    if (query(bad[i], "from", 1, &v) != -1)
      fail_msg("'%s' was accepted", bad[i]);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_stream_names),    cmocka_unit_test(test_expected_version),
      cmocka_unit_test(test_body_shape),      cmocka_unit_test(test_events),
      cmocka_unit_test(test_many_unique_ids), cmocka_unit_test(test_query_ints),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
