/* Saga definitions: every invalid definition gives its exact message (file, line, column,
 * field), valid ones load with their defaults, versions coexist, a directory is loaded in
 * file order, and a plan survives the JSON round trip it takes through Postgres. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "saga_def.h"
#include "testsupport.h"

#define HEAD "saga: checkout\nversion: 1\n"
#define STEP1 "  - name: a\n    topic: a.commands\n    command: DoA\n"
#define STEP2 "  - name: b\n    topic: b.commands\n    command: DoB\n"

static const char *valid =
    "saga: checkout\n"
    "version: 3\n"
    "deadline: 60s\n"
    "steps:\n"
    "  - name: reserve-inventory\n"
    "    topic: inventory.commands\n"
    "    command: ReserveInventory\n"
    "    compensation: ReleaseInventory\n"
    "    timeout: 5s\n"
    "    retry: { max_attempts: 4, backoff: fixed, initial: 250ms, max: 1s, jitter: false }\n"
    "    compensation_retry: { max_attempts: 7 }\n"
    "  - name: authorize-payment\n"
    "    topic: payment.commands\n"
    "    command: AuthorizePayment\n"
    "    compensation: VoidPayment\n"
    "  - name: create-shipment\n"
    "    topic: shipping.commands\n"
    "    command: CreateShipment\n";

static void test_valid_loads(void **state) {
  saga_defs_t d = {0};
  char *errs = NULL;
  assert_int_equal(saga_defs_load_text(&d, "c.yaml", valid, strlen(valid), &errs), 0);
  assert_null(errs);
  assert_int_equal(d.n, 1);
  const saga_plan_t *p = saga_defs_find(&d, "checkout", 0);
  assert_non_null(p);
  assert_string_equal(p->name, "checkout");
  assert_int_equal(p->version, 3);
  assert_int_equal(p->deadline_ms, 60000);
  assert_string_equal(p->reply_topic, "checkout.replies");
  assert_int_equal(p->encoding, SAGA_ENCODING_JSON);
  assert_int_equal(p->nsteps, 3);
  assert_string_equal(p->steps[0].compensation, "ReleaseInventory");
  assert_int_equal(p->steps[0].timeout_ms, 5000);
  assert_int_equal(p->steps[0].retry.max_attempts, 4);
  assert_int_equal(p->steps[0].retry.backoff, SAGA_BACKOFF_FIXED);
  assert_int_equal(p->steps[0].retry.initial_ms, 250);
  assert_int_equal(p->steps[0].retry.max_ms, 1000);
  assert_false(p->steps[0].retry.jitter);
  assert_int_equal(p->steps[0].comp_retry.max_attempts, 7);
  /* Defaults. */
  assert_int_equal(p->steps[1].timeout_ms, 30000);
  assert_int_equal(p->steps[1].retry.max_attempts, 3);
  assert_int_equal(p->steps[1].retry.backoff, SAGA_BACKOFF_EXPONENTIAL);
  assert_true(p->steps[1].retry.jitter);
  assert_null(p->steps[2].compensation);
  assert_int_equal(saga_plan_step_index(p, "create-shipment"), 2);
  assert_int_equal(saga_plan_step_index(p, "nope"), -1);
  saga_defs_free(&d);
}

typedef struct bad_case {
  const char *yaml;
  const char *msg; /* the exact message, without the trailing newline */
} bad_case_t;

static const bad_case_t bad_cases[] = {
    {HEAD "colour: red\nsteps:\n" STEP1,
     "t.yaml:3:1: colour: unknown key (known keys: saga, version, deadline, reply_topic, encoding, "
     "steps)"},
    {"version: 1\nsteps:\n" STEP1, "t.yaml:1:1: saga: missing (required)"},
    {"saga: checkout\nsteps:\n" STEP1, "t.yaml:1:1: version: missing (required)"},
    {HEAD, "t.yaml:1:1: steps: missing (required)"},
    {HEAD "steps:\n  - name: a\n    command: DoA\n", "t.yaml:4:5: steps[0].topic: missing (required)"},
    {HEAD "steps:\n  - name: a\n    topic: a.commands\n    command: DoA\n    colour: red\n",
     "t.yaml:7:5: steps[0].colour: unknown key (known keys: name, topic, command, compensation, "
     "timeout, retry, compensation_retry)"},
    {HEAD "steps:\n" STEP1 "  - name: a\n    topic: b.commands\n    command: DoB\n",
     "t.yaml:7:5: steps[1].name: duplicate step name \"a\" (also steps[0], line 4)"},
    {HEAD "steps:\n" STEP1 "    timeout: 5x\n",
     "t.yaml:7:14: steps[0].timeout: bad duration \"5x\": write a number with ms, s, m or h (e.g. "
     "250ms, 5s), from 1ms to 30 days"},
    {HEAD "steps:\n" STEP1 "    timeout: 5\n",
     "t.yaml:7:14: steps[0].timeout: bad duration \"5\": write a number with ms, s, m or h (e.g. "
     "250ms, 5s), from 1ms to 30 days"},
    {HEAD "deadline: soon\nsteps:\n" STEP1,
     "t.yaml:3:11: deadline: bad duration \"soon\": write a number with ms, s, m or h (e.g. 250ms, "
     "5s), from 1ms to 30 days"},
    {HEAD "steps:\n" STEP1 STEP2 "    compensation: UndoB\n",
     "t.yaml:7:5: steps[1].compensation: the last step's compensation \"UndoB\" can never run: once "
     "the last step succeeds the saga is COMPLETED, and no later step can fail; remove it"},
    {HEAD "steps:\n  - name: a\n    topic: bad topic\n    command: DoA\n",
     "t.yaml:5:12: steps[0].topic: \"bad topic\" is not a valid Kafka topic name (1-249 of "
     "[a-zA-Z0-9._-])"},
    {HEAD "steps:\n  - name: a/b\n    topic: a.commands\n    command: DoA\n",
     "t.yaml:4:11: steps[0].name: \"a/b\" is not a valid name (1-128 of [a-zA-Z0-9._-])"},
    {"saga: checkout\nversion: zero\nsteps:\n" STEP1,
     "t.yaml:2:10: version: must be an integer from 1 to 4294967295, got \"zero\""},
    {HEAD "steps:\n" STEP1 "    retry: { backoff: linear }\n",
     "t.yaml:7:23: steps[0].retry.backoff: \"linear\" is not one of fixed, exponential"},
    {HEAD "steps:\n" STEP1 "    retry: { max_attempts: 0 }\n",
     "t.yaml:7:28: steps[0].retry.max_attempts: must be an integer from 1 to 1000, got \"0\""},
    {HEAD "steps:\n" STEP1 "    retry: { initial: 2s, max: 1s }\n",
     "t.yaml:7:32: steps[0].retry.max: must be at least initial (2000 ms)"},
    {HEAD "steps:\n" STEP1 "    retry: { jitter: maybe }\n",
     "t.yaml:7:22: steps[0].retry.jitter: must be true or false, got \"maybe\""},
    {HEAD "steps:\n" STEP1 "    compensation_retry: { max_attempts: 2 }\n" STEP2,
     "t.yaml:7:25: steps[0].compensation_retry: set without a compensation"},
    {HEAD "encoding: xml\nsteps:\n" STEP1, "t.yaml:3:11: encoding: \"xml\" is not one of json, protobuf"},
    {HEAD "steps: []\n", "t.yaml:3:8: steps: must list from 1 to 64 steps, not 0"},
    {HEAD "steps: nope\n", "t.yaml:3:8: steps: expected a list of steps"},
    {HEAD "saga: again\nsteps:\n" STEP1, "t.yaml:3:1: saga: duplicate key"},
    {HEAD "steps:\n  - name: [a]\n    topic: a.commands\n    command: DoA\n",
     "t.yaml:4:11: steps[0].name: expected a single value, not a list"},
    {"- just a list\n", "t.yaml:1:1: (document): expected a mapping of saga: ..."},
    {"saga: [unclosed\n", "t.yaml:2:1: yaml: did not find expected ',' or ']' while parsing a flow sequence"},
    {"", "t.yaml:1:1: saga: the file defines no saga"},
};

static void test_each_invalid_definition_gives_its_message(void **state) {
  for (size_t i = 0; i < BT_ARRAY_LEN(bad_cases); i++) {
    saga_defs_t d = {0};
    char *errs = NULL;
    const char *y = bad_cases[i].yaml;
    int rc = saga_defs_load_text(&d, "t.yaml", y, strlen(y), &errs);
    if (rc != BT_EINVAL || !errs)
      fail_msg("case %zu loaded although invalid:\n%s", i, y);
    char want[1024];
    snprintf(want, sizeof want, "%s\n", bad_cases[i].msg);
    if (strcmp(errs, want) != 0)
      fail_msg("case %zu:\n%s\nwant: %sgot:  %s", i, y, want, errs);
    assert_int_equal(d.n, 0);
    free(errs);
    saga_defs_free(&d);
  }
}

static void test_all_errors_reported_at_once(void **state) {
  const char *y = HEAD "deadline: x\nsteps:\n  - name: a\n    topic: \"a b\"\n    command: DoA\n"
                       "    timeout: y\n";
  saga_defs_t d = {0};
  char *errs = NULL;
  assert_int_equal(saga_defs_load_text(&d, "t.yaml", y, strlen(y), &errs), BT_EINVAL);
  assert_non_null(strstr(errs, "t.yaml:3:11: deadline: bad duration"));
  assert_non_null(strstr(errs, "t.yaml:6:12: steps[0].topic:"));
  assert_non_null(strstr(errs, "t.yaml:8:14: steps[0].timeout: bad duration"));
  free(errs);
}

static void test_versions_coexist(void **state) {
  saga_defs_t d = {0};
  char *errs = NULL;
  const char *v1 = HEAD "steps:\n" STEP1;
  const char *v2 = "saga: checkout\nversion: 2\nsteps:\n" STEP1 STEP2 "---\nsaga: other\nversion: 1\n"
                   "encoding: protobuf\nsteps:\n" STEP1;
  assert_int_equal(saga_defs_load_text(&d, "v1.yaml", v1, strlen(v1), &errs), 0);
  assert_int_equal(saga_defs_load_text(&d, "v2.yaml", v2, strlen(v2), &errs), 0);
  assert_int_equal(d.n, 3);
  assert_int_equal(saga_defs_find(&d, "checkout", 1)->nsteps, 1);
  assert_int_equal(saga_defs_find(&d, "checkout", 2)->nsteps, 2);
  assert_int_equal(saga_defs_find(&d, "checkout", 0)->version, 2);
  assert_int_equal(saga_defs_find(&d, "other", 0)->encoding, SAGA_ENCODING_PROTOBUF);
  assert_null(saga_defs_find(&d, "checkout", 3));
  /* The same (saga, version) twice is refused, naming the first file. */
  assert_int_equal(saga_defs_load_text(&d, "again.yaml", v1, strlen(v1), &errs), BT_EINVAL);
  assert_string_equal(errs, "again.yaml:2:10: version: saga \"checkout\" version 1 is already "
                            "defined in v1.yaml\n");
  free(errs);
  saga_defs_free(&d);
}

static void write_file(const char *dir, const char *name, const char *text) {
  char path[512];
  snprintf(path, sizeof path, "%s/%s", dir, name);
  FILE *f = fopen(path, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void test_directory(void **state) {
  char dir[] = "/tmp/saga_defs_XXXXXX";
  assert_non_null(mkdtemp(dir));
  write_file(dir, "a.yaml", HEAD "steps:\n" STEP1);
  write_file(dir, "b.yml", "saga: checkout\nversion: 2\nsteps:\n" STEP1);
  write_file(dir, "notes.txt", "not a definition");
  saga_defs_t d;
  char *errs = NULL;
  assert_int_equal(saga_defs_load(&d, dir, &errs), 0);
  assert_int_equal(d.n, 2);
  saga_defs_free(&d);
  /* A bad file fails the whole load, with every file's messages. */
  write_file(dir, "c.yaml", "saga: x\n");
  write_file(dir, "d.yaml", HEAD "steps:\n" STEP1);
  assert_int_equal(saga_defs_load(&d, dir, &errs), BT_EINVAL);
  assert_int_equal(d.n, 0);
  char want[1024];
  snprintf(want, sizeof want,
           "%s/c.yaml:1:1: version: missing (required)\n%s/c.yaml:1:1: steps: missing (required)\n"
           "%s/d.yaml:2:10: version: saga \"checkout\" version 1 is already defined in %s/a.yaml\n",
           dir, dir, dir, dir);
  assert_string_equal(errs, want);
  free(errs);
  char cmd[600];
  snprintf(cmd, sizeof cmd, "rm -rf %s", dir);
  assert_int_equal(system(cmd), 0);
  assert_int_equal(saga_defs_load(&d, dir, &errs), BT_EINVAL);
  assert_non_null(strstr(errs, "BATON_SAGA_DEFINITIONS: cannot open the directory"));
  free(errs);
}

static void test_example_definitions_load(void **state) {
  const char *src = getenv("BATON_SOURCE_DIR");
  assert_non_null(src);
  char dir[1024];
  snprintf(dir, sizeof dir, "%s/examples/sagas", src);
  saga_defs_t d;
  char *errs = NULL;
  if (saga_defs_load(&d, dir, &errs) != 0)
    fail_msg("%s", errs);
  assert_non_null(saga_defs_find(&d, "checkout", 0));
  saga_defs_free(&d);
}

static void test_json_round_trip(void **state) {
  saga_defs_t d = {0};
  char *errs = NULL;
  assert_int_equal(saga_defs_load_text(&d, "c.yaml", valid, strlen(valid), &errs), 0);
  const saga_plan_t *p = d.plans[0];
  json_t *j = saga_plan_to_json(p);
  assert_non_null(j);
  char *text = json_dumps(j, JSON_COMPACT | JSON_SORT_KEYS);
  json_decref(j);
  json_t *back_j = json_loads(text, 0, NULL);
  char err[256] = "";
  saga_plan_t *q = saga_plan_from_json(back_j, err, sizeof err);
  json_decref(back_j);
  if (!q)
    fail_msg("%s", err);
  assert_string_equal(q->name, p->name);
  assert_int_equal(q->version, p->version);
  assert_int_equal(q->deadline_ms, p->deadline_ms);
  assert_string_equal(q->reply_topic, p->reply_topic);
  assert_int_equal(q->nsteps, p->nsteps);
  for (size_t i = 0; i < p->nsteps; i++) {
    assert_string_equal(q->steps[i].name, p->steps[i].name);
    assert_string_equal(q->steps[i].topic, p->steps[i].topic);
    assert_string_equal(q->steps[i].command, p->steps[i].command);
    if (p->steps[i].compensation)
      assert_string_equal(q->steps[i].compensation, p->steps[i].compensation);
    else
      assert_null(q->steps[i].compensation);
    assert_int_equal(q->steps[i].timeout_ms, p->steps[i].timeout_ms);
    assert_memory_equal(&q->steps[i].retry, &p->steps[i].retry, sizeof(saga_retry_t));
    assert_memory_equal(&q->steps[i].comp_retry, &p->steps[i].comp_retry, sizeof(saga_retry_t));
  }
  /* Serialising the copy gives the same text: nothing was lost or defaulted on the way. */
  json_t *j2 = saga_plan_to_json(q);
  char *text2 = json_dumps(j2, JSON_COMPACT | JSON_SORT_KEYS);
  assert_string_equal(text, text2);
  free(text);
  free(text2);
  json_decref(j2);
  saga_plan_free(q);
  /* Malformed stored plans are refused with a message. */
  json_t *bad = json_pack("{s:s}", "saga", "x");
  assert_null(saga_plan_from_json(bad, err, sizeof err));
  assert_non_null(strstr(err, "stored plan"));
  json_decref(bad);
  saga_defs_free(&d);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_valid_loads),
      cmocka_unit_test(test_each_invalid_definition_gives_its_message),
      cmocka_unit_test(test_all_errors_reported_at_once),
      cmocka_unit_test(test_versions_coexist),
      cmocka_unit_test(test_directory),
      cmocka_unit_test(test_example_definitions_load),
      cmocka_unit_test(test_json_round_trip),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
