/* Record decoding: Debezium with and without the schema wrapper (c/u/r/d, tombstones),
 * CloudEvents binary and structured, protobuf BillingEvent, and poison with its reason. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/v1/billing.pb-c.h"
#include "proj_decode.h"
#include "testsupport.h"

typedef struct decoded {
  proj_decode_result_t r;
  proj_event_t ev;
  char reason[256];
} decoded_t;

static decoded_t decode(proj_format_t fmt, const void *value, size_t len, const proj_header_t *h,
                        size_t nh) {
  proj_record_t rec = {"t", 0, 7, value, len, h, nh};
  decoded_t d;
  d.r = proj_decode(fmt, &rec, &d.ev, d.reason, sizeof d.reason);
  return d;
}

static decoded_t decode_str(proj_format_t fmt, const char *s) {
  return decode(fmt, s, s ? strlen(s) : 0, NULL, 0);
}

static void expect(decoded_t *d, const char *type, const char *doc_json) {
  if (d->r != PROJ_DECODED)
    fail_msg("result %d: %s", d->r, d->reason);
  assert_string_equal(d->ev.type, type);
  json_t *want = json_loads(doc_json, JSON_DECODE_ANY, NULL);
  assert_non_null(want);
  if (!json_equal(want, d->ev.doc)) {
    char *got = json_dumps(d->ev.doc, JSON_ENCODE_ANY);
    fail_msg("doc %s, want %s", got, doc_json);
  }
  json_decref(want);
  proj_event_clear(&d->ev);
}

static void expect_poison(decoded_t *d, const char *reason_part) {
  assert_int_equal(d->r, PROJ_POISON);
  if (!strstr(d->reason, reason_part))
    fail_msg("reason '%s' lacks '%s'", d->reason, reason_part);
  assert_null(d->ev.type);
  assert_null(d->ev.doc);
}

#define SRC "\"source\":{\"table\":\"invoices\",\"db\":\"billing\"}"

static void test_debezium(void **state) {
  decoded_t d = decode_str(PROJ_FMT_DEBEZIUM_JSON,
                           "{\"op\":\"c\",\"before\":null,\"after\":{\"invoice_id\":\"I1\",\"amount_cents\":5}," SRC "}");
  expect(&d, "invoices:c", "{\"invoice_id\":\"I1\",\"amount_cents\":5}");
  d = decode_str(PROJ_FMT_DEBEZIUM_JSON, "{\"op\":\"r\",\"after\":{\"invoice_id\":\"I2\"}," SRC "}");
  expect(&d, "invoices:r", "{\"invoice_id\":\"I2\"}");
  /* The schema/payload wrapper of the JSON converter with schemas.enable. */
  d = decode_str(PROJ_FMT_DEBEZIUM_JSON,
                 "{\"schema\":{\"type\":\"struct\"},\"payload\":{\"op\":\"u\",\"before\":{\"invoice_id\":\"I1\"},"
                 "\"after\":{\"invoice_id\":\"I1\",\"status\":\"paid\"}," SRC "}}");
  expect(&d, "invoices:u", "{\"invoice_id\":\"I1\",\"status\":\"paid\"}");
  /* op d deletes with the row as it was, not waiting for the tombstone (jdbc #1508). */
  d = decode_str(PROJ_FMT_DEBEZIUM_JSON,
                 "{\"op\":\"d\",\"before\":{\"invoice_id\":\"I1\",\"amount_cents\":5},\"after\":null," SRC "}");
  expect(&d, "invoices:d", "{\"invoice_id\":\"I1\",\"amount_cents\":5}");
  d = decode_str(PROJ_FMT_DEBEZIUM_JSON, NULL);
  assert_int_equal(d.r, PROJ_SKIPPED);
  d = decode_str(PROJ_FMT_DEBEZIUM_JSON, "{\"schema\":{},\"payload\":null}");
  assert_int_equal(d.r, PROJ_SKIPPED);
}

static void test_debezium_poison(void **state) {
  decoded_t d = decode_str(PROJ_FMT_DEBEZIUM_JSON, "{\"op\":\"c\",");
  expect_poison(&d, "invalid JSON at line 1");
  d = decode_str(PROJ_FMT_DEBEZIUM_JSON, "[1,2]");
  expect_poison(&d, "not a Debezium envelope: no \"op\"");
  d = decode_str(PROJ_FMT_DEBEZIUM_JSON, "{\"op\":\"c\",\"after\":{}}");
  expect_poison(&d, "without source.table");
  d = decode_str(PROJ_FMT_DEBEZIUM_JSON, "{\"op\":\"t\"," SRC "}");
  expect_poison(&d, "unsupported Debezium op \"t\"");
  d = decode_str(PROJ_FMT_DEBEZIUM_JSON, "{\"op\":\"d\",\"before\":null," SRC "}");
  expect_poison(&d, "Debezium op \"d\" without \"before\" row");
  d = decode_str(PROJ_FMT_DEBEZIUM_JSON, "{\"op\":\"c\",\"after\":5," SRC "}");
  expect_poison(&d, "Debezium op \"c\" without \"after\" row");
}

#define H(n, v) {(n), (v), sizeof(v) - 1}

static void test_cloudevents(void **state) {
  /* Binary mode exactly as the broker writes its records. */
  proj_header_t h[] = {H("ce_specversion", "1.0"), H("ce_id", "e1"), H("ce_type", "InvoiceIssued"),
                       H("content-type", "application/json; charset=utf-8")};
  const char *data = "{\"invoice_id\":\"I1\"}";
  decoded_t d = decode(PROJ_FMT_CLOUDEVENTS_JSON, data, strlen(data), h, 4);
  expect(&d, "InvoiceIssued", "{\"invoice_id\":\"I1\"}");
  d = decode(PROJ_FMT_CLOUDEVENTS_JSON, "", 0, h, 3);
  expect(&d, "InvoiceIssued", "null");
  d = decode_str(PROJ_FMT_CLOUDEVENTS_JSON,
                 "{\"specversion\":\"1.0\",\"id\":\"e\",\"source\":\"/s\",\"type\":\"PaymentReceived\","
                 "\"data\":{\"paid_at\":\"2026-01-01\"}}");
  expect(&d, "PaymentReceived", "{\"paid_at\":\"2026-01-01\"}");
}

static void test_cloudevents_poison(void **state) {
  proj_header_t h[] = {H("ce_type", "X"), H("content-type", "application/octet-stream")};
  decoded_t d = decode(PROJ_FMT_CLOUDEVENTS_JSON, "\x01", 1, h, 2);
  expect_poison(&d, "binary-mode data is application/octet-stream, not JSON");
  d = decode(PROJ_FMT_CLOUDEVENTS_JSON, "{bad", 4, h, 1);
  expect_poison(&d, "invalid JSON");
  proj_header_t empty[] = {{"ce_type", "", 0}};
  d = decode(PROJ_FMT_CLOUDEVENTS_JSON, "{}", 2, empty, 1);
  expect_poison(&d, "event type is empty");
  d = decode_str(PROJ_FMT_CLOUDEVENTS_JSON, "{\"type\":\"X\"}");
  expect_poison(&d, "neither a ce_type header nor a structured CloudEvent");
  d = decode_str(PROJ_FMT_CLOUDEVENTS_JSON, "{\"specversion\":\"1.0\",\"type\":\"X\",\"data_base64\":\"AA==\"}");
  expect_poison(&d, "data_base64");
  d = decode_str(PROJ_FMT_CLOUDEVENTS_JSON, NULL);
  expect_poison(&d, "empty record without a ce_type header");
}

static void test_protobuf(void **state) {
  Baton__V1__InvoiceIssued ii = BATON__V1__INVOICE_ISSUED__INIT;
  ii.invoice_id = "I1";
  ii.customer_id = "C1";
  ii.amount_cents = 12345678901LL;
  ii.due_date = "2026-02-01";
  Baton__V1__BillingEvent ev = BATON__V1__BILLING_EVENT__INIT;
  ev.event_case = BATON__V1__BILLING_EVENT__EVENT_INVOICE_ISSUED;
  ev.invoice_issued = &ii;
  uint8_t buf[256];
  size_t n = baton__v1__billing_event__pack(&ev, buf);
  decoded_t d = decode(PROJ_FMT_PROTOBUF, buf, n, NULL, 0);
  expect(&d, "InvoiceIssued",
         "{\"invoice_id\":\"I1\",\"customer_id\":\"C1\",\"amount_cents\":12345678901,\"currency\":\"\","
         "\"due_date\":\"2026-02-01\",\"issued_at\":\"\"}");
  Baton__V1__InvoiceVoided iv = BATON__V1__INVOICE_VOIDED__INIT;
  iv.invoice_id = "I1";
  ev.event_case = BATON__V1__BILLING_EVENT__EVENT_INVOICE_VOIDED;
  ev.invoice_voided = &iv;
  n = baton__v1__billing_event__pack(&ev, buf);
  d = decode(PROJ_FMT_PROTOBUF, buf, n, NULL, 0);
  expect(&d, "InvoiceVoided", "{\"invoice_id\":\"I1\",\"customer_id\":\"\",\"reason\":\"\",\"voided_at\":\"\"}");
  /* Poison: garbage, and a valid message with nothing in the oneof. */
  d = decode(PROJ_FMT_PROTOBUF, "\xff\xff\xff", 3, NULL, 0);
  expect_poison(&d, "not a baton.v1.BillingEvent");
  d = decode(PROJ_FMT_PROTOBUF, "", 0, NULL, 0);
  expect_poison(&d, "BillingEvent with no event set");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_debezium),          cmocka_unit_test(test_debezium_poison),
      cmocka_unit_test(test_cloudevents),       cmocka_unit_test(test_cloudevents_poison),
      cmocka_unit_test(test_protobuf),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
