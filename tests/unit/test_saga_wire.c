/* The participant wire format: a command's headers and value exactly as issue 8 §2 says, the
 * protobuf SagaCommand, and replies parsed from binary mode, structured mode and protobuf into
 * one struct, with a message naming the field for every malformed input. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/v1/saga.pb-c.h"
#include "saga_wire.h"
#include "testsupport.h"

static const char *yaml_json =
    "saga: checkout\nversion: 1\nsteps:\n"
    "  - { name: reserve, topic: inventory.commands, command: Reserve, compensation: Release }\n"
    "  - { name: pay, topic: payment.commands, command: Pay }\n"
    "---\n"
    "saga: checkout-pb\nversion: 1\nencoding: protobuf\nreply_topic: pb.replies\nsteps:\n"
    "  - { name: reserve, topic: inventory.commands, command: Reserve, compensation: Release }\n"
    "  - { name: pay, topic: payment.commands, command: Pay }\n";

static saga_defs_t defs;

static int setup(void **state) {
  char *errs = NULL;
  if (saga_defs_load_text(&defs, "w.yaml", yaml_json, strlen(yaml_json), &errs) != 0)
    fail_msg("%s", errs);
  return 0;
}

static int teardown(void **state) {
  saga_defs_free(&defs);
  return 0;
}

static const char *hdr(const saga_wire_msg_t *m, const char *name) {
  for (size_t i = 0; i < m->nheaders; i++)
    if (strcmp(m->headers[i].name, name) == 0) {
      assert_int_equal(strlen(m->headers[i].value), m->headers[i].len);
      return m->headers[i].value;
    }
  return NULL;
}

static void test_command_headers_and_value(void **state) {
  json_t *input = json_pack("{s:s}", "order", "o-1");
  json_t *results = json_pack("{s:{s:s}}", "reserve", "reservation", "r-9");
  saga_command_ctx_t c = {.saga_id = "0b8f6a4e-1c1d-4b51-9a0e-2f3c4d5e6f70",
                          .plan = saga_defs_find(&defs, "checkout", 1),
                          .step = 0,
                          .attempt = 2,
                          .kind = SAGA_KIND_COMPENSATION,
                          .deadline_unix_ms = 1764637323004ull,
                          .traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
                          .input = input,
                          .results = results};
  saga_wire_msg_t m;
  char err[256];
  assert_int_equal(saga_wire_build_command(&c, &m, err, sizeof err), 0);
  assert_string_equal(m.topic, "inventory.commands");
  assert_int_equal(m.key_len, strlen(c.saga_id));
  assert_memory_equal(m.key, c.saga_id, m.key_len);
  assert_string_equal(hdr(&m, "ce_specversion"), "1.0");
  assert_string_equal(hdr(&m, "ce_type"), "Release");
  assert_string_equal(hdr(&m, "ce_id"), "0b8f6a4e-1c1d-4b51-9a0e-2f3c4d5e6f70/reserve/2/compensation");
  assert_string_equal(hdr(&m, "ce_source"), "/baton/saga/checkout");
  assert_string_equal(hdr(&m, "ce_subject"), c.saga_id);
  assert_string_equal(hdr(&m, "ce_sagaid"), c.saga_id);
  assert_string_equal(hdr(&m, "ce_sagatype"), "checkout");
  assert_string_equal(hdr(&m, "ce_sagastep"), "reserve");
  assert_string_equal(hdr(&m, "ce_sagaattempt"), "2");
  assert_string_equal(hdr(&m, "ce_sagakind"), "compensation");
  assert_string_equal(hdr(&m, "ce_replyto"), "checkout.replies");
  assert_string_equal(hdr(&m, "ce_deadline"), "2025-12-02T01:02:03.004Z");
  assert_string_equal(hdr(&m, "traceparent"), c.traceparent);
  assert_string_equal(hdr(&m, "content-type"), "application/json");
  char *v = strndup(m.value, m.value_len);
  assert_string_equal(v, "{\"input\":{\"order\":\"o-1\"},\"results\":{\"reserve\":"
                         "{\"reservation\":\"r-9\"}}}"
);
  free(v);
  saga_wire_msg_free(&m);

  /* A command on step 1, no traceparent: the header is absent rather than empty. */
  c.step = 1;
  c.kind = SAGA_KIND_COMMAND;
  c.attempt = 1;
  c.traceparent = NULL;
  assert_int_equal(saga_wire_build_command(&c, &m, err, sizeof err), 0);
  assert_string_equal(hdr(&m, "ce_type"), "Pay");
  assert_string_equal(hdr(&m, "ce_sagakind"), "command");
  assert_null(hdr(&m, "traceparent"));
  saga_wire_msg_free(&m);

  /* Errors. */
  c.kind = SAGA_KIND_COMPENSATION;
  assert_int_equal(saga_wire_build_command(&c, &m, err, sizeof err), BT_EINVAL);
  assert_string_equal(err, "command: step \"pay\" has no compensation");
  c.step = 5;
  assert_int_equal(saga_wire_build_command(&c, &m, err, sizeof err), BT_EINVAL);
  assert_string_equal(err, "command: step 5 is beyond the plan's 2 steps");
  json_decref(input);
  json_decref(results);
}

static void test_protobuf_command(void **state) {
  json_t *input = json_pack("{s:i}", "n", 1);
  saga_command_ctx_t c = {.saga_id = "s-1",
                          .plan = saga_defs_find(&defs, "checkout-pb", 1),
                          .step = 1,
                          .attempt = 3,
                          .kind = SAGA_KIND_COMMAND,
                          .deadline_unix_ms = 5000,
                          .input = input};
  saga_wire_msg_t m;
  char err[256];
  assert_int_equal(saga_wire_build_command(&c, &m, err, sizeof err), 0);
  assert_string_equal(hdr(&m, "content-type"), "application/protobuf");
  assert_string_equal(hdr(&m, "ce_replyto"), "pb.replies");
  Baton__V1__SagaCommand *cmd = baton__v1__saga_command__unpack(NULL, m.value_len, m.value);
  assert_non_null(cmd);
  assert_string_equal(cmd->saga_id, "s-1");
  assert_string_equal(cmd->saga_type, "checkout-pb");
  assert_int_equal(cmd->step, 1);
  assert_int_equal(cmd->attempt, 3);
  assert_int_equal(cmd->kind, BATON__V1__SAGA_COMMAND__KIND__COMMAND);
  assert_string_equal(cmd->command_type, "Pay");
  assert_string_equal(cmd->reply_topic, "pb.replies");
  assert_int_equal(cmd->deadline_unix_ms, 5000);
  char *payload = strndup((char *)cmd->payload.data, cmd->payload.len);
  assert_string_equal(payload, "{\"input\":{\"n\":1},\"results\":{}}");
  free(payload);
  baton__v1__saga_command__free_unpacked(cmd, NULL);
  saga_wire_msg_free(&m);
  json_decref(input);
}

#define H(n, v) {n, v, sizeof(v) - 1}

static void test_binary_reply(void **state) {
  const saga_plan_t *plan = saga_defs_find(&defs, "checkout", 1);
  bt_kafka_header_t h[] = {H("ce_specversion", "1.0"),     H("ce_sagaid", "s-1"),
                           H("ce_sagastep", "pay"),        H("ce_sagaattempt", "2"),
                           H("ce_sagakind", "command"),    H("ce_outcome", "failure"),
                           H("traceparent", "00-ab-cd-01")};
  const char *data = "{\"error\":\"card declined\"}";
  saga_reply_t r;
  char err[256];
  assert_int_equal(saga_wire_parse_reply(h, BT_ARRAY_LEN(h), data, strlen(data), &r, err, sizeof err),
                   0);
  assert_string_equal(r.saga_id, "s-1");
  assert_int_equal(saga_wire_reply_step(&r, plan), 1);
  assert_int_equal(r.attempt, 2);
  assert_int_equal(r.kind, SAGA_KIND_COMMAND);
  assert_int_equal(r.outcome, SAGA_OUTCOME_FAILURE);
  assert_string_equal(json_string_value(json_object_get(r.data, "error")), "card declined");
  assert_string_equal(r.traceparent, "00-ab-cd-01");
  saga_wire_reply_free(&r);

  /* Malformed: each field at fault is named. */
  struct {
    size_t idx;
    bt_kafka_header_t repl;
    const char *msg;
  } cases[] = {
      {3, H("ce_sagaattempt", "two"), "binary reply: header ce_sagaattempt: \"two\" is not an attempt number"},
      {3, H("ce_sagaattempt", "0"), "binary reply: header ce_sagaattempt: 0 is out of range (1-2147483647)"},
      {4, H("ce_sagakind", "undo"), "binary reply: header ce_sagakind: \"undo\" is not command or compensation"},
      {5, H("ce_outcome", "ok"), "binary reply: header ce_outcome: \"ok\" is not success, failure or retry"},
      {1, H("ce_sagaid", ""), "binary reply: header ce_sagaid: must have 1 to 64 characters"},
      {2, H("ce_other", "x"), "binary reply: header ce_sagastep is missing"},
  };
  for (size_t i = 0; i < BT_ARRAY_LEN(cases); i++) {
    bt_kafka_header_t hh[BT_ARRAY_LEN(h)];
    memcpy(hh, h, sizeof h);
    hh[cases[i].idx] = cases[i].repl;
    assert_int_equal(saga_wire_parse_reply(hh, BT_ARRAY_LEN(hh), NULL, 0, &r, err, sizeof err),
                     BT_EINVAL);
    assert_string_equal(err, cases[i].msg);
  }
  assert_int_equal(saga_wire_parse_reply(h, BT_ARRAY_LEN(h), "{nope", 5, &r, err, sizeof err),
                   BT_EINVAL);
  assert_non_null(strstr(err, "binary reply: data is not JSON"));
  /* An unknown step name resolves to -1. */
  bt_kafka_header_t h2[BT_ARRAY_LEN(h)];
  memcpy(h2, h, sizeof h);
  h2[2] = (bt_kafka_header_t)H("ce_sagastep", "ship");
  assert_int_equal(saga_wire_parse_reply(h2, BT_ARRAY_LEN(h2), NULL, 0, &r, err, sizeof err), 0);
  assert_null(r.data);
  assert_int_equal(saga_wire_reply_step(&r, plan), -1);
}

static void test_structured_reply(void **state) {
  const char *ok = "{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"/inv\",\"type\":\"Reserved\","
                   "\"sagaid\":\"s-2\",\"sagastep\":\"reserve\",\"sagaattempt\":1,"
                   "\"sagakind\":\"compensation\",\"outcome\":\"retry\",\"data\":{\"n\":5}}";
  saga_reply_t r;
  char err[256];
  assert_int_equal(saga_wire_parse_reply(NULL, 0, ok, strlen(ok), &r, err, sizeof err), 0);
  assert_string_equal(r.saga_id, "s-2");
  assert_string_equal(r.step_name, "reserve");
  assert_int_equal(r.attempt, 1);
  assert_int_equal(r.kind, SAGA_KIND_COMPENSATION);
  assert_int_equal(r.outcome, SAGA_OUTCOME_RETRY);
  assert_int_equal(json_integer_value(json_object_get(r.data, "n")), 5);
  saga_wire_reply_free(&r);
  struct {
    const char *in, *msg;
  } cases[] = {
      {"[1]", "structured reply: not a JSON object"},
      {"{\"sagastep\":\"a\"}", "structured reply: attribute sagaid is missing"},
      {"{\"sagaid\":\"s\",\"sagastep\":\"a\",\"sagaattempt\":\"x\",\"sagakind\":\"command\","
       "\"outcome\":\"success\"}",
       "structured reply: attribute sagaattempt: \"x\" is not an attempt number"},
      {"{\"sagaid\":\"s\",\"sagastep\":3,\"sagaattempt\":1,\"sagakind\":\"command\","
       "\"outcome\":\"success\"}",
       "structured reply: attribute sagastep is not a string"},
  };
  for (size_t i = 0; i < BT_ARRAY_LEN(cases); i++) {
    assert_int_equal(saga_wire_parse_structured(cases[i].in, strlen(cases[i].in), &r, err, sizeof err),
                     BT_EINVAL);
    assert_string_equal(err, cases[i].msg);
  }
  assert_int_equal(saga_wire_parse_structured("{", 1, &r, err, sizeof err), BT_EINVAL);
  assert_non_null(strstr(err, "structured reply: not a JSON object:"));
}

static void test_protobuf_reply(void **state) {
  Baton__V1__SagaReply pr = BATON__V1__SAGA_REPLY__INIT;
  pr.saga_id = "s-3";
  pr.step = 1;
  pr.attempt = 4;
  pr.outcome = BATON__V1__SAGA_REPLY__OUTCOME__FAILURE;
  pr.kind = BATON__V1__SAGA_COMMAND__KIND__COMMAND;
  pr.error = "no stock";
  uint8_t buf[256];
  size_t len = baton__v1__saga_reply__pack(&pr, buf);
  bt_kafka_header_t h[] = {H("content-type", "application/protobuf")};
  saga_reply_t r;
  char err[256];
  assert_int_equal(saga_wire_parse_reply(h, 1, buf, len, &r, err, sizeof err), 0);
  assert_string_equal(r.saga_id, "s-3");
  assert_int_equal(r.step_index, 1);
  assert_int_equal(saga_wire_reply_step(&r, saga_defs_find(&defs, "checkout", 1)), 1);
  assert_int_equal(r.attempt, 4);
  assert_int_equal(r.outcome, SAGA_OUTCOME_FAILURE);
  assert_string_equal(json_string_value(json_object_get(r.data, "error")), "no stock");
  saga_wire_reply_free(&r);
  /* Garbage and out-of-range fields. */
  assert_int_equal(saga_wire_parse_protobuf("\xff\xff\xff", 3, &r, err, sizeof err), BT_EINVAL);
  assert_string_equal(err, "protobuf reply: not a baton.v1.SagaReply message");
  pr.attempt = 0;
  len = baton__v1__saga_reply__pack(&pr, buf);
  assert_int_equal(saga_wire_parse_protobuf(buf, len, &r, err, sizeof err), BT_EINVAL);
  assert_string_equal(err, "protobuf reply: step 1 or attempt 0 out of range");
  pr.attempt = 1;
  pr.saga_id = "";
  len = baton__v1__saga_reply__pack(&pr, buf);
  assert_int_equal(saga_wire_parse_protobuf(buf, len, &r, err, sizeof err), BT_EINVAL);
  assert_string_equal(err, "protobuf reply: saga_id: must have 1 to 64 characters");
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_command_headers_and_value), cmocka_unit_test(test_protobuf_command),
      cmocka_unit_test(test_binary_reply),              cmocka_unit_test(test_structured_reply),
      cmocka_unit_test(test_protobuf_reply),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
