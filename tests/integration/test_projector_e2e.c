/* End to end through every public interface: billing-generator produces legacy billing
 * traffic (protobuf) to Kafka, baton-projector projects it, and the read API's answers equal
 * the generator's own oracle for every customer: the balance and open-count aggregates, and
 * the unpaid list walked page by page with cursors in due-date order, each document as
 * issued. The test learns that everything is applied only through the read API itself:
 * one ?after=<topic>:<partition>:<last offset> read per partition (read-your-writes), with
 * the last offsets taken from Kafka by an independent reader. */
#include <jansson.h>

#include "kafka_oracle.h"
#include "test_projector_common.h"

#define TOKEN "e2e-token"
enum { CUSTOMERS = 30, EVENTS = 6000, PAGE = 7 };

static pt_env_t env;
static char proj[32];

static json_t *get_json(int want, const char *fmt, ...) {
  char path[1024], url[1200];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(path, sizeof path, fmt, ap);
  va_end(ap);
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", env.port, path);
  bt_test_http_resp_t resp;
  if (bt_test_http("GET", url, "Authorization: Bearer " TOKEN "\r\n", NULL, 0, &resp) != 0)
    fail_msg("GET %s: no answer", path);
  if (resp.status != want)
    fail_msg("GET %s: %d (want %d): %s", path, resp.status, want, resp.body);
  json_error_t e;
  json_t *j = json_loads(resp.body, 0, &e);
  if (!j)
    fail_msg("GET %s: not JSON: %s", path, resp.body);
  bt_test_http_free(&resp);
  return j;
}

static void test_e2e(void **state) {
  pt_setup(&env, "it_projector_e2e");
  int pid = (int)getpid();
  char topic[64], ctopic[64], oracle_path[256];
  snprintf(proj, sizeof proj, "e2e_%d", pid);
  snprintf(topic, sizeof topic, "e2e.invoices.%d", pid);
  snprintf(ctopic, sizeof ctopic, "e2e.customers.%d", pid);
  snprintf(oracle_path, sizeof oracle_path, "%s/oracle.json", env.defs);
  assert_int_equal(bt_test_kafka_create_topic(topic, 3), 0);
  assert_int_equal(bt_test_kafka_create_topic(ctopic, 1), 0);
  char def[2048];
  snprintf(def, sizeof def, pt_invoices_def, proj, topic);
  pt_write_def(&env, "e2e.yaml", def);
  pt_start(&env, (const char *[]){"BATON_API_TOKENS=" TOKEN, NULL});

  /* The traffic, while the projector runs. */
  const char *brokers = bt_test_env("BATON_KAFKA_BROKERS");
  char customers[16], events[16];
  snprintf(customers, sizeof customers, "%d", CUSTOMERS);
  snprintf(events, sizeof events, "%d", EVENTS);
  const char *argv[] = {bt_test_bin("billing-generator"), "--customers", customers, "--events",
                        events, "--seed", "2024", "--brokers", brokers, "--topic", topic,
                        "--customers-topic", ctopic, "--oracle", oracle_path, NULL};
  int st = bt_test_stop(bt_test_spawn(argv, NULL, env.log), 0, 120000);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);

  /* Read-your-writes on every partition's last record: once each answers 200, the whole
   * topic is applied. */
  bt_test_kmsg_t *msgs;
  long n = bt_test_kafka_read_all(brokers, topic, 30000, &msgs);
  assert_true(n > EVENTS / 2);
  int64_t last[3] = {-1, -1, -1};
  for (long i = 0; i < n; i++)
    if (msgs[i].offset > last[msgs[i].partition])
      last[msgs[i].partition] = msgs[i].offset;
  bt_test_kmsgs_free(msgs, n);
  char field[96];
  for (int p = 0; p < 3; p++) {
    assert_true(last[p] >= 0);
    json_t *j = get_json(200, "/v1/projections/%s/aggregates/balance/cust-000001?after=%s:%d:%lld&wait=60s",
                         proj, topic, p, (long long)last[p]);
    snprintf(field, sizeof field, "%s:%d", topic, p);
    assert_true(json_integer_value(json_object_get(json_object_get(j, "offsets"), field)) > last[p]);
    json_decref(j);
  }

  /* Every customer against the oracle. */
  json_error_t e;
  json_t *oracle = json_load_file(oracle_path, 0, &e);
  if (!oracle)
    fail_msg("%s: %s", oracle_path, e.text);
  json_t *custs = json_object_get(oracle, "customers");
  assert_int_equal(json_object_size(custs), CUSTOMERS);
  const char *c;
  json_t *want;
  long long total = 0, pages = 0;
  json_object_foreach(custs, c, want) {
    json_t *j = get_json(200, "/v1/projections/%s/aggregates/balance/%s", proj, c);
    assert_int_equal(json_integer_value(json_object_get(j, "value")),
                     json_integer_value(json_object_get(want, "balance")));
    total += json_integer_value(json_object_get(j, "value"));
    json_decref(j);
    j = get_json(200, "/v1/projections/%s/aggregates/open_invoices/%s", proj, c);
    assert_int_equal(json_integer_value(json_object_get(j, "value")),
                     json_integer_value(json_object_get(want, "open_invoices")));
    json_decref(j);
    json_t *unpaid = json_object_get(want, "unpaid");
    size_t k = 0;
    char cursor[512] = "";
    for (;;) {
      j = get_json(200, "/v1/projections/%s?index=unpaid_by_due&value=%s&limit=%d%s%s", proj, c,
                   PAGE, cursor[0] ? "&cursor=" : "", cursor);
      pages++;
      json_t *items = json_object_get(j, "items");
      for (size_t i = 0; i < json_array_size(items); i++, k++) {
        json_t *it = json_array_get(items, i), *w = json_array_get(unpaid, k);
        if (!w)
          fail_msg("%s: more unpaid invoices than the oracle's %zu", c, json_array_size(unpaid));
        assert_string_equal(json_string_value(json_object_get(it, "key")),
                            json_string_value(json_object_get(w, "invoice_id")));
        json_t *doc = json_object_get(it, "doc");
        assert_string_equal(json_string_value(json_object_get(doc, "due_date")),
                            json_string_value(json_object_get(w, "due_date")));
        assert_int_equal(json_integer_value(json_object_get(doc, "amount_cents")),
                         json_integer_value(json_object_get(w, "amount_cents")));
        assert_string_equal(json_string_value(json_object_get(doc, "status")), "unpaid");
        assert_string_equal(json_string_value(json_object_get(doc, "customer_id")), c);
      }
      json_t *next = json_object_get(j, "next_cursor");
      bool more = json_is_string(next);
      if (more)
        snprintf(cursor, sizeof cursor, "%s", json_string_value(next));
      json_decref(j);
      if (!more)
        break;
    }
    assert_int_equal(k, json_array_size(unpaid));
    /* And the first unpaid invoice by key. */
    if (json_array_size(unpaid) > 0) {
      const char *id = json_string_value(json_object_get(json_array_get(unpaid, 0), "invoice_id"));
      j = get_json(200, "/v1/projections/%s/%s", proj, id);
      assert_string_equal(json_string_value(json_object_get(json_object_get(j, "doc"), "status")),
                          "unpaid");
      json_decref(j);
    }
  }
  assert_int_equal(total, json_integer_value(json_object_get(oracle, "total_balance")));
  assert_true(pages > CUSTOMERS); /* some lists took several pages: the cursors were walked */
  json_decref(oracle);
  pt_teardown(&env);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_e2e)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
