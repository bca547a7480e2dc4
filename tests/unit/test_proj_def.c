/* Projection definitions: the example loads with every part in place, and each kind
 * of mistake is refused with its exact file:line:col: field: message. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "proj_def.h"
#include "testsupport.h"

#define HEAD                                                                                  \
  "projection: inv\n"                                                                         \
  "source: { topics: [t], format: cloudevents-json }\n"                                       \
  "key: invoice_id\n"
#define ON                                                                                    \
  "on:\n"                                                                                     \
  "  Issued: { upsert: { customer_id: $.c, amount: $.a, status: unpaid } }\n"
#define SINKS "sinks: [redis]\n"

static void test_example_loads(void **state) {
  char path[4096], err[512] = "";
  const char *src = getenv("BATON_SOURCE_DIR"); /* set by ctest */
  assert_non_null(src);
  snprintf(path, sizeof path, "%s/examples/projections", src);
  proj_def_set_t set;
  if (proj_def_load_dir(&set, path, 0, err, sizeof err) != 0)
    fail_msg("%s", err);
  assert_true(set.ndefs >= 1);
  const proj_def_t *d = &set.defs[0];
  assert_string_equal(d->name, "invoices");
  assert_int_equal(d->ntopics, 1);
  assert_string_equal(d->topics[0], "legacy.billing.invoices");
  assert_int_equal(d->format, PROJ_FMT_PROTOBUF);
  assert_int_equal(d->key.npath, 1);
  assert_string_equal(d->key.path[0], "invoice_id");
  assert_int_equal(d->nrules, 3);
  const proj_rule_t *r = proj_def_rule(d, "InvoiceIssued");
  assert_non_null(r);
  assert_int_equal(r->op, PROJ_OP_UPSERT);
  assert_int_equal(r->nfields, 4);
  assert_string_equal(r->fields[3].name, "status");
  assert_int_equal(r->fields[3].value.kind, PROJ_VAL_LITERAL);
  assert_string_equal(json_string_value(r->fields[3].value.literal), "unpaid");
  assert_int_equal(r->fields[0].value.kind, PROJ_VAL_PATH);
  assert_string_equal(r->fields[0].value.path[0], "customer_id");
  assert_int_equal(proj_def_rule(d, "PaymentReceived")->op, PROJ_OP_MERGE);
  assert_int_equal(proj_def_rule(d, "InvoiceVoided")->op, PROJ_OP_DELETE);
  assert_null(proj_def_rule(d, "CustomerUpdated"));
  assert_int_equal(d->nindexes, 2);
  assert_string_equal(d->indexes[1].name, "unpaid_by_due");
  assert_string_equal(d->indexes[1].order, "due_date");
  assert_int_equal(d->indexes[1].nwhere, 1);
  assert_string_equal(json_string_value(d->indexes[1].where[0].equals), "unpaid");
  assert_int_equal(d->naggregates, 2);
  assert_string_equal(d->aggregates[0].sum, "amount_cents");
  assert_false(d->aggregates[0].count);
  assert_true(d->aggregates[1].count);
  assert_null(d->aggregates[1].sum);
  assert_int_equal(d->sinks, PROJ_SINK_REDIS | PROJ_SINK_POSTGRES);
  for (size_t i = 0; i < set.ndefs; i++)
    if (strcmp(set.defs[i].name, "invoices_cdc") == 0)
      assert_int_equal(proj_def_rule(&set.defs[i], "invoices:d")->op, PROJ_OP_DELETE);
  proj_def_set_free(&set);
}

static void test_values(void **state) {
  const char *y = HEAD
      "on:\n"
      "  E: { upsert: { a: $.x.y-z, b: 12, c: \"12\", d: [$.p, lit, 3], e: null, f: $, g: 1.5 } }\n"
      SINKS;
  proj_def_t d;
  char err[512] = "";
  assert_int_equal(proj_def_parse(&d, "v.yaml", y, strlen(y), err, sizeof err), 0);
  const proj_field_t *f = d.rules[0].fields;
  assert_int_equal(f[0].value.npath, 2);
  assert_string_equal(f[0].value.path[1], "y-z");
  assert_true(json_is_integer(f[1].value.literal));
  assert_true(json_is_string(f[2].value.literal));
  assert_int_equal(f[3].value.kind, PROJ_VAL_ARRAY);
  assert_int_equal(f[3].value.nitems, 3);
  assert_int_equal(f[3].value.items[0].kind, PROJ_VAL_PATH);
  assert_string_equal(json_string_value(f[3].value.items[1].literal), "lit");
  assert_true(json_is_null(f[4].value.literal));
  assert_int_equal(f[5].value.kind, PROJ_VAL_PATH);
  assert_int_equal(f[5].value.npath, 0);
  assert_true(json_is_real(f[6].value.literal));
  proj_def_free(&d);
}

typedef struct bad_case {
  const char *yaml;
  const char *message;
} bad_case_t;

static const bad_case_t bad_cases[] = {
    {HEAD ON SINKS "extra: 1\n", "b.yaml:7:1: (top): unknown key 'extra'"},
    {"source: { topics: [t], format: protobuf }\nkey: k\n" ON SINKS,
     "b.yaml:1:1: (top): missing required key 'projection'"},
    {"projection: Bad-Name\n", "b.yaml:1:13: projection: 'Bad-Name' is not a name ([A-Za-z_][A-Za-z0-9_]*, at most 63)"},
    {"projection: p\nsource: { topics: [t], format: avro }\n",
     "b.yaml:2:32: source.format: unknown format 'avro' (expected debezium-json, cloudevents-json or protobuf)"},
    {"projection: p\nsource: { topics: [], format: protobuf }\n",
     "b.yaml:2:19: source.topics: needs at least one topic"},
    {"projection: p\nsource: { topics: [a, a], format: protobuf }\n",
     "b.yaml:2:23: source.topics: duplicate topic 'a'"},
    {"projection: p\nsource: { topics: [a] }\n", "b.yaml:2:9: source: missing required key 'format'"},
    {HEAD "on:\n  E: { remove: true }\n" SINKS,
     "b.yaml:5:8: on.E: unknown operation 'remove' (expected upsert, merge or delete)"},
    {HEAD "on:\n  E: { delete: yes }\n" SINKS, "b.yaml:5:16: on.E: delete takes `true`"},
    {HEAD "on:\n  E: { delete: true, upsert: { a: 1 } }\n" SINKS,
     "b.yaml:5:6: on.E: needs exactly one of upsert, merge or delete, found 2 keys"},
    {HEAD "on:\n  E: { upsert: { a: $..b } }\n" SINKS,
     "b.yaml:5:21: on.E.upsert.a: bad path '$..b': empty segment"},
    {HEAD "on:\n  E: { upsert: { a: $a } }\n" SINKS,
     "b.yaml:5:21: on.E.upsert.a: bad path '$a': expected $ or $.field.field"},
    {HEAD "on:\n  E:\n    upsert:\n      a: $.b[0]\n" SINKS,
     "b.yaml:7:10: on.E.upsert.a: bad path '$.b[0]': segment has '['"},
    {HEAD "on:\n  E: { upsert: { a: [[1]] } }\n" SINKS,
     "b.yaml:5:22: on.E.upsert.a: arrays hold paths and literals only (one level), found a list"},
    {HEAD "on:\n  E: { upsert: { a: { b: 1 } } }\n" SINKS,
     "b.yaml:5:21: on.E.upsert.a: expected a path, a literal or a list of them, found a mapping"},
    {HEAD "on:\n  E: { merge: {} }\n" SINKS, "b.yaml:5:15: on.E.merge: merge needs at least one field"},
    {HEAD "on:\n  E: { delete: true }\n  E: { delete: true }\n" SINKS,
     "b.yaml:6:3: on: duplicate key 'E'"},
    {HEAD "on: {}\n" SINKS, "b.yaml:4:5: on: needs at least one event type"},
    {HEAD ON "indexes:\n  - { name: i, field: nope }\n" SINKS,
     "b.yaml:7:23: indexes.i.field: field 'nope' is not set by any rule in on"},
    {HEAD ON "indexes:\n  - { name: i, field: customer_id }\n  - { name: i, field: status }\n" SINKS,
     "b.yaml:8:13: indexes.i: duplicate index name 'i'"},
    {HEAD ON "indexes:\n  - { field: status }\n" SINKS, "b.yaml:7:5: indexes[0]: missing required key 'name'"},
    {HEAD ON "indexes:\n  - { name: i, field: status, sort: amount }\n" SINKS,
     "b.yaml:7:31: indexes[0]: unknown key 'sort'"},
    {HEAD ON "indexes:\n  - { name: i, field: status, where: { status: $.x } }\n" SINKS,
     "b.yaml:7:48: indexes.i.where.status: where compares document fields with literals, not paths"},
    {HEAD ON "aggregates:\n  - { name: a, group: customer_id, sum: amount, count: true }\n" SINKS,
     "b.yaml:7:5: aggregates.a: give either sum or count, not both"},
    {HEAD ON "aggregates:\n  - { name: a, group: customer_id }\n" SINKS,
     "b.yaml:7:5: aggregates.a: needs sum: FIELD or count: true"},
    {HEAD ON "aggregates:\n  - { name: a, group: customer_id, count: 2 }\n" SINKS,
     "b.yaml:7:43: aggregates.a: count takes `true`"},
    {HEAD ON "aggregates:\n  - { name: a, group: customer_id, sum: total }\n" SINKS,
     "b.yaml:7:41: aggregates.a.sum: field 'total' is not set by any rule in on"},
    {HEAD ON "aggregates:\n  - { name: a, group: customer_id, count: true }\n"
     "  - { name: a, group: status, count: true }\n" SINKS,
     "b.yaml:8:13: aggregates.a: duplicate aggregate name 'a'"},
    {HEAD ON "sinks: [redis, kafka]\n", "b.yaml:6:16: sinks: unknown sink 'kafka' (expected redis or postgres)"},
    {HEAD ON "sinks: [redis, redis]\n", "b.yaml:6:16: sinks: duplicate sink 'redis'"},
    {HEAD ON "sinks: []\n", "b.yaml:6:8: sinks: needs at least one sink"},
    {HEAD ON, "b.yaml:1:1: (top): missing required key 'sinks'"},
    {"projection: p\nkey: $\n", "b.yaml:1:1: (top): missing required key 'source'"},
    {"projection: p\nsource: { topics: [t], format: protobuf }\nkey: $\n",
     "b.yaml:3:6: key: the key must name a field of the event, not $"},
    {"", "b.yaml:1:1: projection: the file is empty"},
    {"- a\n", "b.yaml:1:1: (top): expected a mapping, found a list"},
    {"projection: [\n", "b.yaml:2:1: (yaml): did not find expected node content while parsing a flow node"},
};

static void test_bad_definitions(void **state) {
  size_t bad = 0;
  for (size_t i = 0; i < BT_ARRAY_LEN(bad_cases); i++) {
    proj_def_t d;
    char err[512] = "";
    int rc = proj_def_parse(&d, "b.yaml", bad_cases[i].yaml, strlen(bad_cases[i].yaml), err, sizeof err);
    if (rc != BT_EINVAL || strcmp(err, bad_cases[i].message) != 0)
      bad++, print_error("case %zu: rc %d\n  got:  %s\n  want: %s\n", i, rc, err, bad_cases[i].message);
  }
  assert_int_equal(bad, 0);
}

static void write_file(const char *dir, const char *name, const char *text) {
  char p[4096];
  snprintf(p, sizeof p, "%s/%s", dir, name);
  FILE *f = fopen(p, "w");
  assert_non_null(f);
  fputs(text, f);
  fclose(f);
}

static void test_dir(void **state) {
  char dir[] = "/tmp/proj_def_XXXXXX", err[512] = "";
  assert_non_null(mkdtemp(dir));
  proj_def_set_t set;
  assert_int_equal(proj_def_load_dir(&set, dir, 0, err, sizeof err), BT_EINVAL);
  assert_non_null(strstr(err, "no projection definitions"));
  write_file(dir, "a.yaml", HEAD ON SINKS);
  write_file(dir, "notes.txt", "ignored");
  assert_int_equal(proj_def_load_dir(&set, dir, 0, err, sizeof err), 0);
  assert_int_equal(set.ndefs, 1);
  proj_def_set_free(&set);
  /* A file over the limit is refused by name rather than read whole. */
  assert_int_equal(proj_def_load_dir(&set, dir, 16, err, sizeof err), BT_EINVAL);
  assert_non_null(strstr(err, "a.yaml: larger than the definition file limit"));
  write_file(dir, "b.yml", HEAD ON SINKS);
  assert_int_equal(proj_def_load_dir(&set, dir, 0, err, sizeof err), BT_EINVAL);
  char want[4200];
  snprintf(want, sizeof want, "%s/b.yml: projection: duplicate projection name 'inv' (also in %s/a.yaml)", dir, dir);
  assert_string_equal(err, want);
  char p[4096];
  snprintf(p, sizeof p, "%s/a.yaml", dir);
  unlink(p);
  snprintf(p, sizeof p, "%s/b.yml", dir);
  unlink(p);
  snprintf(p, sizeof p, "%s/notes.txt", dir);
  unlink(p);
  rmdir(dir);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_example_loads),
      cmocka_unit_test(test_values),
      cmocka_unit_test(test_bad_definitions),
      cmocka_unit_test(test_dir),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
