/* CloudEvents ingest: each content mode parses into the same event, and every validation
 * rule refuses with the right status, index and attribute. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/v1/event.pb-c.h"
#include "cloudevent.h"
#include "testsupport.h"

static bt_http_req_t make_req(const char *ctype, const char *body, size_t len) {
  bt_http_req_t r;
  memset(&r, 0, sizeof r);
  r.method = "POST";
  r.path = "/v1/topics/t/events";
  r.query = "";
  if (ctype) {
    r.headers[0].name = "content-type";
    r.headers[0].value = ctype;
    r.nheaders = 1;
  }
  r.body = body;
  r.body_len = len;
  return r;
}

static int parse(const char *ctype, const char *body, broker_event_t **evs, size_t *n,
                 broker_parse_error_t *err, bt_arena_t *a) {
  bt_http_req_t r = make_req(ctype, body, strlen(body));
  return broker_events_parse(&r, a, 100, evs, n, err);
}

static void test_structured(void **state) {
  bt_arena_t a;
  bt_arena_init(&a, 0);
  broker_event_t *evs;
  size_t n;
  broker_parse_error_t err;
  assert_int_equal(parse("application/cloudevents+json; charset=utf-8",
                         "{\"specversion\":\"1.0\",\"id\":\"e1\",\"source\":\"/s\",\"type\":\"t.v1\","
                         "\"subject\":\"order-1\",\"time\":\"2026-01-02T03:04:05.123+01:00\","
                         "\"traceparent\":\"00-abc-def-01\",\"partitionkey\":\"pk\",\"num\":42,"
                         "\"flag\":true,\"data\":{\"a\":1}}",
                         &evs, &n, &err, &a),
                   0);
  assert_int_equal(n, 1);
  assert_string_equal(evs[0].id, "e1");
  assert_string_equal(evs[0].subject, "order-1");
  assert_string_equal(evs[0].datacontenttype, "application/json");
  assert_int_equal(evs[0].data_len, 7);
  assert_memory_equal(evs[0].data, "{\"a\":1}", 7);
  assert_string_equal(broker_event_ext(&evs[0], "traceparent"), "00-abc-def-01");
  assert_string_equal(broker_event_ext(&evs[0], "num"), "42");
  assert_string_equal(broker_event_ext(&evs[0], "flag"), "true");
  assert_string_equal(broker_event_key(&evs[0], NULL), "pk");
  bt_arena_reset(&a);
}

static void test_batch_and_data_forms(void **state) {
  bt_arena_t a;
  bt_arena_init(&a, 0);
  broker_event_t *evs;
  size_t n;
  broker_parse_error_t err;
  assert_int_equal(
      parse("application/cloudevents-batch+json",
            "[{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"data_base64\":\"aGVsbG8=\"},"
            "{\"specversion\":\"1.0\",\"id\":\"2\",\"source\":\"s\",\"type\":\"t\",\"datacontenttype\":\"text/plain\",\"data\":\"plain text\"},"
            "{\"specversion\":\"1.0\",\"id\":\"3\",\"source\":\"s\",\"type\":\"t\",\"data\":\"json string\"},"
            "{\"specversion\":\"1.0\",\"id\":\"4\",\"source\":\"s\",\"type\":\"t\",\"subject\":\"sub\"}]",
            &evs, &n, &err, &a),
      0);
  assert_int_equal(n, 4);
  assert_int_equal(evs[0].data_len, 5);
  assert_memory_equal(evs[0].data, "hello", 5);
  assert_memory_equal(evs[1].data, "plain text", 10);
  assert_memory_equal(evs[2].data, "\"json string\"", 13);
  assert_null(evs[3].data);
  assert_string_equal(broker_event_key(&evs[3], NULL), "sub");
  bt_arena_reset(&a);
}

static void test_binary_mode(void **state) {
  bt_arena_t a;
  bt_arena_init(&a, 0);
  bt_http_req_t r = make_req("application/octet-stream", "\x01\x02raw", 5);
  const char *h[][2] = {{"ce-specversion", "1.0"}, {"ce-id", "b1"}, {"ce-source", "/src"},
                        {"ce-type", "x.y"}, {"ce-subject", "caf%C3%A9"}, {"ce-traceparent", "00-1-2-01"}};
  for (size_t i = 0; i < BT_ARRAY_LEN(h); i++) {
    r.headers[r.nheaders].name = h[i][0];
    r.headers[r.nheaders++].value = h[i][1];
  }
  broker_event_t *evs;
  size_t n;
  broker_parse_error_t err;
  assert_int_equal(broker_events_parse(&r, &a, 10, &evs, &n, &err), 0);
  assert_int_equal(n, 1);
  assert_string_equal(evs[0].subject, "caf\xc3\xa9");
  assert_string_equal(evs[0].datacontenttype, "application/octet-stream");
  assert_int_equal(evs[0].data_len, 5);
  assert_string_equal(broker_event_ext(&evs[0], "traceparent"), "00-1-2-01");
  bt_arena_reset(&a);
}

static void test_protobuf(void **state) {
  Baton__V1__Event e = BATON__V1__EVENT__INIT;
  e.id = "p1";
  e.source = "/p";
  e.type = "t";
  e.specversion = "1.0";
  e.data.data = (uint8_t *)"abc";
  e.data.len = 3;
  Baton__V1__Event__ExtensionsEntry x = BATON__V1__EVENT__EXTENSIONS_ENTRY__INIT;
  x.key = "partitionkey";
  x.value = "k9";
  Baton__V1__Event__ExtensionsEntry *xs[] = {&x};
  e.extensions = xs;
  e.n_extensions = 1;
  Baton__V1__Event *es[] = {&e};
  Baton__V1__EventBatch b = BATON__V1__EVENT_BATCH__INIT;
  b.events = es;
  b.n_events = 1;
  size_t len = baton__v1__event_batch__get_packed_size(&b);
  uint8_t *buf = malloc(len);
  baton__v1__event_batch__pack(&b, buf);
  bt_http_req_t r = make_req("application/x-protobuf", (const char *)buf, len);
  bt_arena_t a;
  bt_arena_init(&a, 0);
  broker_event_t *evs;
  size_t n;
  broker_parse_error_t err;
  assert_int_equal(broker_events_parse(&r, &a, 10, &evs, &n, &err), 0);
  assert_string_equal(evs[0].id, "p1");
  assert_null(evs[0].subject);
  assert_string_equal(broker_event_key(&evs[0], NULL), "k9");
  r.body = "\xff\xff\xff";
  r.body_len = 3;
  assert_int_equal(broker_events_parse(&r, &a, 10, &evs, &n, &err), -1);
  assert_int_equal(err.status, 400);
  assert_string_equal(err.code, "invalid_protobuf");
  free(buf);
  bt_arena_reset(&a);
}

/* Every rule: status, index and attribute. */
static void test_validation_errors(void **state) {
  struct { const char *ct, *body; int status; int index; const char *attr; } cases[] = {
      {"application/cloudevents+json", "{\"id\":\"1\",\"source\":\"s\",\"type\":\"t\"}", 400, 0, "specversion"},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"source\":\"s\",\"type\":\"t\"}", 400, 0, "id"},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"type\":\"t\"}", 400, 0, "source"},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\"}", 400, 0, "type"},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"\",\"source\":\"s\",\"type\":\"t\"}", 400, 0, "id"},
      {"application/cloudevents+json", "{\"specversion\":\"0.3\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\"}", 400, 0, "specversion"},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":1,\"source\":\"s\",\"type\":\"t\"}", 400, 0, "id"},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"time\":\"yesterday\"}", 400, 0, "time"},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"time\":\"2026-13-01T00:00:00Z\"}", 400, 0, "time"},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"data\":1,\"data_base64\":\"AA==\"}", 400, 0, "data_base64"},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"data_base64\":\"!!!\"}", 400, 0, "data_base64"},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"Bad_Ext\":\"x\"}", 400, 0, "Bad_Ext"},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"obj\":{}}", 400, 0, "obj"},
      {"application/cloudevents+json", "{not json", 400, -1, ""},
      {"application/cloudevents-batch+json", "{}", 400, -1, ""},
      {"application/cloudevents-batch+json", "[]", 400, -1, ""},
      {"application/cloudevents-batch+json",
       "[{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\"},{\"specversion\":\"1.0\",\"id\":\"2\",\"source\":\"s\"}]",
       400, 1, "type"},
      {"text/plain", "hello", 415, -1, ""},
      {NULL, "hello", 415, -1, ""},
  };
  for (size_t i = 0; i < BT_ARRAY_LEN(cases); i++) {
    bt_arena_t a;
    bt_arena_init(&a, 0);
    broker_event_t *evs;
    size_t n;
    broker_parse_error_t err;
    bt_http_req_t r = make_req(cases[i].ct, cases[i].body, strlen(cases[i].body));
    if (broker_events_parse(&r, &a, 100, &evs, &n, &err) != -1)
      fail_msg("case %zu was accepted", i);
    if (err.status != cases[i].status || err.index != cases[i].index ||
        strcmp(err.attribute, cases[i].attr) != 0)
      fail_msg("case %zu: got %d index %d attribute '%s' (%s)", i, err.status, err.index,
               err.attribute, err.detail);
    bt_arena_reset(&a);
  }
}

static void test_batch_limit(void **state) {
  bt_arena_t a;
  bt_arena_init(&a, 0);
  char body[4096] = "[";
  for (int i = 0; i < 5; i++)
    snprintf(body + strlen(body), sizeof body - strlen(body),
             "%s{\"specversion\":\"1.0\",\"id\":\"%d\",\"source\":\"s\",\"type\":\"t\"}", i ? "," : "", i);
  strcat(body, "]");
  bt_http_req_t r = make_req("application/cloudevents-batch+json", body, strlen(body));
  broker_event_t *evs;
  size_t n;
  broker_parse_error_t err;
  assert_int_equal(broker_events_parse(&r, &a, 4, &evs, &n, &err), -1);
  assert_int_equal(err.status, 413);
  assert_int_equal(broker_events_parse(&r, &a, 5, &evs, &n, &err), 0);
  assert_int_equal(n, 5);
  bt_arena_reset(&a);
}

static void test_rfc3339(void **state) {
  assert_true(broker_rfc3339_valid("2026-11-21T10:00:00Z"));
  assert_true(broker_rfc3339_valid("2026-11-21T10:00:00.123456-05:30"));
  assert_false(broker_rfc3339_valid("2026-11-21"));
  assert_false(broker_rfc3339_valid("2026-11-21T25:00:00Z"));
  assert_false(broker_rfc3339_valid("2026-11-21T10:00:00"));
  assert_false(broker_rfc3339_valid("2026-11-21T10:00:00Zjunk"));
}

static void test_to_json_roundtrip(void **state) {
  bt_arena_t a;
  bt_arena_init(&a, 0);
  broker_event_t *evs;
  size_t n;
  broker_parse_error_t err;
  assert_int_equal(parse("application/cloudevents+json",
                         "{\"specversion\":\"1.0\",\"id\":\"e\",\"source\":\"s\",\"type\":\"t\",\"x\":\"y\",\"data\":[1,2]}",
                         &evs, &n, &err, &a),
                   0);
  json_t *j = broker_event_to_json(&evs[0]);
  char *s = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
  assert_string_equal(s, "{\"data\":[1,2],\"datacontenttype\":\"application/json\",\"id\":\"e\","
                         "\"source\":\"s\",\"specversion\":\"1.0\",\"type\":\"t\",\"x\":\"y\"}");
  free(s);
  json_decref(j);
  bt_arena_reset(&a);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_structured),        cmocka_unit_test(test_batch_and_data_forms),
      cmocka_unit_test(test_binary_mode),       cmocka_unit_test(test_protobuf),
      cmocka_unit_test(test_validation_errors), cmocka_unit_test(test_batch_limit),
      cmocka_unit_test(test_rfc3339),           cmocka_unit_test(test_to_json_roundtrip),
  };
  return cmocka_run_group_tests_name("cloudevent", tests, NULL, NULL);
}
