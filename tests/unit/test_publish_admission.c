/* Unit tests of publish's answer rules (broker/publish.c, included for its statics): a request
 * answers 429 only when none of its records was handed to the producer, so that a 4xx never
 * hides a write; once a record is out, a refusal further on answers 503 naming every record.
 * Also the Kafka record size estimate that append and publish compare with
 * message.max.bytes. No server is involved. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "publish.c"

static void test_no_4xx_after_a_partial_write(void **state) {
  broker_event_t evs[3] = {{.id = "a"}, {.id = "b"}, {.id = "c"}};
  publish_req_t pr = {.events = evs, .n = 3};
  pr.results = calloc(3, sizeof *pr.results);
  assert_non_null(pr.results);
  /* The producer's queue was full at the first record: nothing went out. */
  for (int i = 0; i < 3; i++)
    pr.results[i].err = BT_EAGAIN;
  pr.handed = 0;
  assert_int_equal(failure_status(&pr), 429);
  /* The first record went out, the second was refused, the third not sent: a 429 would tell
   * the client that nothing was published, and its retry would duplicate record a. */
  pr.results[0].err = 0;
  pr.handed = 1;
  assert_int_equal(failure_status(&pr), 503);
  /* A record Kafka refused (502) does not hide a full queue after a write either. */
  pr.results[0].err = BT_ERANGE;
  assert_int_equal(failure_status(&pr), 503);
  /* Only records Kafka refused: 502. */
  for (int i = 0; i < 3; i++)
    pr.results[i].err = BT_ERANGE;
  pr.handed = 3;
  assert_int_equal(failure_status(&pr), 502);
  free(pr.results);
}

static void test_record_size_estimate(void **state) {
  static char data[5000];
  broker_event_t ev = {.id = "id-1", .source = "/s", .type = "t", .specversion = "1.0",
                       .data = data, .data_len = sizeof data, .next = 1};
  ev.ext[0] = (broker_ext_t){"traceparent", "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01"};
  size_t n = broker_event_record_bytes(&ev, "key-1");
  /* At least every byte Kafka counts (value, key, header names and values) ... */
  size_t exact = sizeof data + strlen("key-1") + strlen("ce_specversion1.0ce_idid-1ce_source/s") +
                 strlen("ce_typet") + strlen("traceparent") + strlen(ev.ext[0].value);
  assert_true(n >= exact);
  /* ... and not wildly more: the limit must not refuse events that fit. */
  assert_true(n <= exact + 512);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_no_4xx_after_a_partial_write),
      cmocka_unit_test(test_record_size_estimate),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
