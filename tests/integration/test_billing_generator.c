/* billing-generator against an oracle of its own making: the same seed gives the same bytes
 * in each format (another seed does not), and a replay of the emitted records done here, with
 * jansson and the generated protobuf code but no projector code, gives exactly the balances,
 * unpaid lists (ordered by due date, then invoice id) and open counts of its --oracle file.
 * Produced to devkafka, every record of one invoice sits in one partition and the records
 * read back replay to the same oracle. */
#include <jansson.h>
#include <stdbool.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "baton/v1/billing.pb-c.h"
#include "kafka_oracle.h"
#include "testsupport.h"

#define EVENTS "6000"
#define CUSTOMERS "40"

static char dir[256];

static char *slurp(const char *path, size_t *len) {
  FILE *f = fopen(path, "rb");
  if (!f)
    fail_msg("cannot open %s", path);
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *buf = malloc((size_t)n + 1);
  assert_non_null(buf);
  assert_int_equal(fread(buf, 1, (size_t)n, f), (size_t)n);
  buf[n] = '\0';
  fclose(f);
  *len = (size_t)n;
  return buf;
}

/* Runs the generator (extra args NULL-terminated) and fails the test unless it exits 0. */
static void generate(const char *const *extra) {
  const char *argv[32] = {bt_test_bin("billing-generator"), "--events", EVENTS, "--customers",
                          CUSTOMERS};
  size_t n = 5;
  for (size_t i = 0; extra[i]; i++)
    argv[n++] = extra[i];
  argv[n] = NULL;
  char log[320];
  snprintf(log, sizeof log, "%s/generator.log", dir);
  pid_t pid = bt_test_spawn(argv, NULL, log);
  int st = bt_test_stop(pid, 0, 120000);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
}

/* ---- the independent replay: invoice id -> {customer, amount, due, unpaid} -------------- */

typedef struct model {
  json_t *inv; /* invoice id -> {customer_id, amount_cents, due_date, unpaid: bool} */
  long events;
} model_t;

static void model_put(model_t *m, json_t *row, bool unpaid) {
  const char *id = json_string_value(json_object_get(row, "invoice_id"));
  assert_non_null(id);
  json_object_set_new(m->inv, id,
                      json_pack("{s:O, s:O, s:O, s:b}", "customer_id",
                                json_object_get(row, "customer_id"), "amount_cents",
                                json_object_get(row, "amount_cents"), "due_date",
                                json_object_get(row, "due_date"), "unpaid", unpaid));
}

static void model_set_paid(model_t *m, const char *id) {
  json_t *e = json_object_get(m->inv, id);
  assert_non_null(e); /* a payment of an invoice never issued would be a generator bug */
  json_object_set_new(e, "unpaid", json_false());
}

static void model_event(model_t *m, const char *type, json_t *data) {
  m->events++;
  const char *id = json_string_value(json_object_get(data, "invoice_id"));
  if (strcmp(type, "InvoiceIssued") == 0)
    model_put(m, data, true);
  else if (strcmp(type, "PaymentReceived") == 0)
    model_set_paid(m, id);
  else if (strcmp(type, "InvoiceVoided") == 0)
    assert_int_equal(json_object_del(m->inv, id), 0);
  else
    assert_string_equal(type, "CustomerUpdated");
}

static void model_debezium(model_t *m, json_t *env) {
  m->events++;
  const char *op = json_string_value(json_object_get(env, "op"));
  const char *table = json_string_value(json_object_get(json_object_get(env, "source"), "table"));
  assert_non_null(op);
  if (strcmp(table, "customers") == 0)
    return;
  assert_string_equal(table, "invoices");
  if (strcmp(op, "d") == 0) {
    json_t *before = json_object_get(env, "before");
    assert_int_equal(json_object_del(m->inv, json_string_value(json_object_get(before, "invoice_id"))), 0);
  } else {
    json_t *after = json_object_get(env, "after");
    model_put(m, after, strcmp(json_string_value(json_object_get(after, "status")), "unpaid") == 0);
  }
}

static void model_protobuf(model_t *m, const void *buf, size_t len) {
  Baton__V1__BillingEvent *ev = baton__v1__billing_event__unpack(NULL, len, buf);
  assert_non_null(ev);
  json_t *d = NULL;
  const char *type = NULL;
  switch (ev->event_case) {
  case BATON__V1__BILLING_EVENT__EVENT_INVOICE_ISSUED:
    type = "InvoiceIssued";
    d = json_pack("{s:s, s:s, s:I, s:s}", "invoice_id", ev->invoice_issued->invoice_id,
                  "customer_id", ev->invoice_issued->customer_id, "amount_cents",
                  (json_int_t)ev->invoice_issued->amount_cents, "due_date",
                  ev->invoice_issued->due_date);
    break;
  case BATON__V1__BILLING_EVENT__EVENT_PAYMENT_RECEIVED:
    type = "PaymentReceived";
    d = json_pack("{s:s}", "invoice_id", ev->payment_received->invoice_id);
    break;
  case BATON__V1__BILLING_EVENT__EVENT_INVOICE_VOIDED:
    type = "InvoiceVoided";
    d = json_pack("{s:s}", "invoice_id", ev->invoice_voided->invoice_id);
    break;
  case BATON__V1__BILLING_EVENT__EVENT_CUSTOMER_UPDATED:
    type = "CustomerUpdated";
    d = json_object();
    break;
  default: fail_msg("BillingEvent without an event");
  }
  model_event(m, type, d);
  json_decref(d);
  baton__v1__billing_event__free_unpacked(ev, NULL);
}

/* Replays a file written with --out in format fmt. */
static void replay_file(model_t *m, const char *fmt, const char *path) {
  size_t len;
  char *buf = slurp(path, &len);
  if (strcmp(fmt, "protobuf") == 0) {
    size_t p = 0;
    while (p < len) {
      assert_true(p + 4 <= len);
      const unsigned char *u = (const unsigned char *)buf + p;
      size_t n = (size_t)u[0] << 24 | (size_t)u[1] << 16 | (size_t)u[2] << 8 | u[3];
      assert_true(p + 4 + n <= len);
      model_protobuf(m, buf + p + 4, n);
      p += 4 + n;
    }
  } else {
    for (char *line = strtok(buf, "\n"); line; line = strtok(NULL, "\n")) {
      json_error_t e;
      json_t *j = json_loads(line, 0, &e);
      if (!j)
        fail_msg("%s: %s", path, e.text);
      if (strcmp(fmt, "debezium-json") == 0)
        model_debezium(m, json_object_get(j, "payload") ? json_object_get(j, "payload") : j);
      else
        model_event(m, json_string_value(json_object_get(j, "type")), json_object_get(j, "data"));
      json_decref(j);
    }
  }
  free(buf);
}

static int cmp_unpaid(const void *a, const void *b) {
  json_t *x = *(json_t *const *)a, *y = *(json_t *const *)b;
  int c = strcmp(json_string_value(json_object_get(x, "due_date")),
                 json_string_value(json_object_get(y, "due_date")));
  return c ? c : strcmp(json_string_value(json_object_get(x, "invoice_id")),
                        json_string_value(json_object_get(y, "invoice_id")));
}

/* Holds the replayed model to the oracle file, customer by customer. */
static void check_oracle(model_t *m, const char *oracle_path) {
  json_error_t e;
  json_t *o = json_load_file(oracle_path, 0, &e);
  if (!o)
    fail_msg("%s: %s", oracle_path, e.text);
  assert_int_equal(json_integer_value(json_object_get(o, "events")), m->events);
  json_t *custs = json_object_get(o, "customers");
  assert_int_equal(json_object_size(custs), atoi(CUSTOMERS));
  /* Group the replay's unpaid invoices per customer. */
  json_t *by = json_object();
  const char *id;
  json_t *inv;
  long open = 0;
  json_object_foreach(m->inv, id, inv) {
    if (!json_is_true(json_object_get(inv, "unpaid")))
      continue;
    open++;
    const char *c = json_string_value(json_object_get(inv, "customer_id"));
    if (!json_object_get(by, c))
      json_object_set_new(by, c, json_array());
    json_array_append_new(json_object_get(by, c),
                          json_pack("{s:s, s:O, s:O}", "invoice_id", id, "due_date",
                                    json_object_get(inv, "due_date"), "amount_cents",
                                    json_object_get(inv, "amount_cents")));
  }
  assert_int_equal(json_integer_value(json_object_get(o, "open_invoices")), open);
  assert_true(open > 100); /* the workload leaves plenty unpaid */
  const char *c;
  json_t *want;
  long nonzero = 0;
  json_object_foreach(custs, c, want) {
    json_t *list = json_object_get(by, c);
    size_t n = list ? json_array_size(list) : 0;
    json_t **v = calloc(n + 1, sizeof *v);
    long long balance = 0;
    for (size_t i = 0; i < n; i++) {
      v[i] = json_array_get(list, i);
      balance += json_integer_value(json_object_get(v[i], "amount_cents"));
    }
    qsort(v, n, sizeof *v, cmp_unpaid);
    json_t *sorted = json_array();
    for (size_t i = 0; i < n; i++)
      json_array_append(sorted, v[i]);
    free(v);
    assert_int_equal(json_integer_value(json_object_get(want, "balance")), balance);
    assert_int_equal(json_integer_value(json_object_get(want, "open_invoices")), (long)n);
    if (!json_equal(json_object_get(want, "unpaid"), sorted))
      fail_msg("customer %s: unpaid list differs from the replay", c);
    nonzero += balance != 0;
    json_decref(sorted);
  }
  assert_true(nonzero > atoi(CUSTOMERS) / 2);
  json_decref(by);
  json_decref(o);
}

static void model_init(model_t *m) { *m = (model_t){.inv = json_object()}; }
static void model_free(model_t *m) { json_decref(m->inv); }

static void test_files(void **state) {
  static const char *fmts[] = {"protobuf", "debezium-json", "cloudevents-json"};
  char a[320], b[320], c[320], oa[320], ob[320];
  size_t la, lb, lc, loa, lob;
  char *first_oracle = NULL;
  size_t first_len = 0;
  for (size_t i = 0; i < 3; i++) {
    snprintf(a, sizeof a, "%s/a.%zu", dir, i);
    snprintf(b, sizeof b, "%s/b.%zu", dir, i);
    snprintf(c, sizeof c, "%s/c.%zu", dir, i);
    snprintf(oa, sizeof oa, "%s/oa.%zu.json", dir, i);
    snprintf(ob, sizeof ob, "%s/ob.%zu.json", dir, i);
    generate((const char *[]){"--format", fmts[i], "--seed", "11", "--out", a, "--oracle", oa, NULL});
    generate((const char *[]){"--format", fmts[i], "--seed", "11", "--out", b, "--oracle", ob, NULL});
    generate((const char *[]){"--format", fmts[i], "--seed", "12", "--out", c, NULL});
    char *ba = slurp(a, &la), *bb = slurp(b, &lb), *bc = slurp(c, &lc);
    char *boa = slurp(oa, &loa), *bob = slurp(ob, &lob);
    assert_true(la > 100000);
    assert_int_equal(la, lb);
    assert_memory_equal(ba, bb, la);
    assert_true(la != lc || memcmp(ba, bc, la) != 0);
    assert_int_equal(loa, lob);
    assert_memory_equal(boa, bob, loa);
    /* The events are the same in every format, so is the oracle. */
    if (!first_oracle) {
      first_oracle = boa;
      first_len = loa;
    } else {
      assert_int_equal(first_len, loa);
      assert_memory_equal(first_oracle, boa, loa);
      free(boa);
    }
    model_t m;
    model_init(&m);
    replay_file(&m, fmts[i], a);
    check_oracle(&m, oa);
    model_free(&m);
    free(ba);
    free(bb);
    free(bc);
    free(bob);
  }
  free(first_oracle);
}

static void test_kafka(void **state) {
  bt_test_env_load();
  const char *brokers = bt_test_env("BATON_KAFKA_BROKERS");
  char inv_topic[64], cust_topic[64], oracle[320];
  snprintf(inv_topic, sizeof inv_topic, "bg.invoices.%d", (int)getpid());
  snprintf(cust_topic, sizeof cust_topic, "bg.customers.%d", (int)getpid());
  snprintf(oracle, sizeof oracle, "%s/kafka-oracle.json", dir);
  assert_int_equal(bt_test_kafka_create_topic(inv_topic, 3), 0);
  assert_int_equal(bt_test_kafka_create_topic(cust_topic, 2), 0);
  generate((const char *[]){"--seed", "5", "--brokers", brokers, "--topic", inv_topic,
                            "--customers-topic", cust_topic, "--oracle", oracle, NULL});
  bt_test_kmsg_t *inv, *cust;
  long ni = bt_test_kafka_read_all(brokers, inv_topic, 30000, &inv);
  long nc = bt_test_kafka_read_all(brokers, cust_topic, 30000, &cust);
  assert_true(ni > 0 && nc > 0);
  assert_int_equal(ni + nc, atol(EVENTS));
  /* Each invoice in one partition; read in offset order per partition, which is all the
   * order the projector gets and all that the oracle needs. */
  json_t *part = json_object();
  model_t m;
  model_init(&m);
  for (long i = 0; i < ni; i++) {
    assert_non_null(inv[i].key);
    json_t *p = json_object_get(part, inv[i].key);
    if (p)
      assert_int_equal(json_integer_value(p), inv[i].partition);
    else
      json_object_set_new(part, inv[i].key, json_integer(inv[i].partition));
    assert_string_equal(bt_test_kmsg_header(&inv[i], "content-type"), "application/protobuf");
    model_protobuf(&m, inv[i].value, inv[i].value_len);
  }
  assert_true(json_object_size(part) > 100);
  for (long i = 0; i < nc; i++)
    model_protobuf(&m, cust[i].value, cust[i].value_len);
  check_oracle(&m, oracle);
  model_free(&m);
  json_decref(part);
  bt_test_kmsgs_free(inv, ni);
  bt_test_kmsgs_free(cust, nc);
}

int main(void) {
  snprintf(dir, sizeof dir, "/tmp/it_billing_generator.%d", (int)getpid());
  mkdir(dir, 0700);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_files),
      cmocka_unit_test(test_kafka),
  };
  int rc = cmocka_run_group_tests(tests, NULL, NULL);
  bt_test_sh("rm -rf %s", dir);
  return rc;
}
