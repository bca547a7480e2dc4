/* The read API of a running baton-projector, over HTTP, against Redis contents written here by
 * hand per the storage layout contract (briefs/proj-layout.md), so the expected answers come
 * from the test's own data and not from the sinks: documents, index pages in the index's
 * order walked with cursors, aggregates, the offsets each answer carries, 404s that say what
 * is missing, 400s, 401 without a token, ?after= met at once, met while waiting (a write made
 * meanwhile) and timed out (504 with the position), the waiter bound (503), a waiter freed
 * when its client disconnects, and a version switch. */
#include <jansson.h>
#include <pthread.h>

#include "kafka_oracle.h"
#include "test_projector_common.h"

#define TOKEN "read-secret"

static pt_env_t env;
static char proj[32], topic[64];

static int get(const char *path, const char *token, json_t **out) {
  char url[8400], hdr[128] = "";
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", env.port, path);
  if (token)
    snprintf(hdr, sizeof hdr, "Authorization: Bearer %s\r\n", token);
  bt_test_http_resp_t resp;
  if (bt_test_http("GET", url, hdr, NULL, 0, &resp) != 0)
    fail_msg("GET %s: no answer", path);
  int st = resp.status;
  if (out) {
    json_error_t e;
    *out = json_loads(resp.body, 0, &e);
    if (!*out)
      fail_msg("GET %s: %d, body is not JSON: %s", path, st, resp.body);
  }
  bt_test_http_free(&resp);
  return st;
}

/* GET with the token; asserts the status and the error code (NULL for success). */
static json_t *expect(int status, const char *code, const char *fmt, ...) {
  char path[8192];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(path, sizeof path, fmt, ap);
  va_end(ap);
  json_t *j;
  int st = get(path, TOKEN, &j);
  if (st != status) {
    char *s = json_dumps(j, 0);
    fail_msg("GET %s: %d (want %d): %s", path, st, status, s);
  }
  const char *got = json_string_value(json_object_get(j, "error"));
  if (code && (!got || strcmp(got, code) != 0))
    fail_msg("GET %.200s: error %s (want %s): %s", path, got ? got : "none", code,
             json_dumps(j, 0));
  return j;
}

static void redis_do(redisContext *c, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  redisReply *r = redisvCommand(c, fmt, ap);
  va_end(ap);
  if (!r || r->type == REDIS_REPLY_ERROR)
    fail_msg("redis %s: %s", fmt, r ? r->str : c->errstr);
  freeReplyObject(r);
}

/* A member of an ordered index per the contract: "s" + text, NUL, key. */
static void idx_add(redisContext *c, int v, const char *index, const char *value,
                    const char *sort, const char *key) {
  char member[256];
  int n = snprintf(member, sizeof member, "%s%s", sort ? "s" : "", sort ? sort : "");
  member[n] = '\0';
  n += 1 + snprintf(member + n + 1, sizeof member - (size_t)n - 1, "%s", key);
  redis_do(c, "ZADD bt:proj:{%s}:v%d:idx:%s:%s 0 %b", proj, v, index, value, member, (size_t)n);
}

static void doc_put(redisContext *c, int v, const char *key, const char *cust, long amount,
                    const char *due, const char *status) {
  redis_do(c,
           "SET bt:proj:{%s}:v%d:doc:%s {\"customer_id\":\"%s\",\"amount_cents\":%ld,"
           "\"due_date\":\"%s\",\"status\":\"%s\"}",
           proj, v, key, cust, amount, due, status);
}

static long long waiters_gauge(void) {
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/metrics", env.port);
  bt_test_http_resp_t resp;
  assert_int_equal(bt_test_http("GET", url, NULL, NULL, 0, &resp), 0);
  const char *p = strstr(resp.body, "\nbaton_projector_read_waiters ");
  long long n = p ? atoll(p + strlen("\nbaton_projector_read_waiters ")) : -1;
  bt_test_http_free(&resp);
  return n;
}

/* A GET run on a thread, for reads that wait. */
typedef struct bg_get {
  pthread_t th;
  char path[512];
  int status;
  json_t *body;
  uint64_t ms;
} bg_get_t;

static void *bg_run(void *arg) {
  bg_get_t *g = arg;
  uint64_t t0 = bt_test_now_ms();
  g->status = get(g->path, TOKEN, &g->body);
  g->ms = bt_test_now_ms() - t0;
  return NULL;
}

static void bg_start(bg_get_t *g, const char *fmt, ...) {
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(g->path, sizeof g->path, fmt, ap);
  va_end(ap);
  g->body = NULL;
  assert_int_equal(pthread_create(&g->th, NULL, bg_run, g), 0);
}

static void wait_gauge(long long want) {
  uint64_t deadline = bt_test_now_ms() + 5000;
  while (waiters_gauge() != want) {
    if (bt_test_now_ms() > deadline)
      fail_msg("baton_projector_read_waiters stayed %lld, want %lld", waiters_gauge(), want);
    usleep(20000);
  }
}

static void test_read_api(void **state) {
  pt_setup(&env, "it_projector_read");
  snprintf(proj, sizeof proj, "rd%d", (int)getpid());
  snprintf(topic, sizeof topic, "it.read.%d", (int)getpid());
  assert_int_equal(bt_test_kafka_create_topic(topic, 2), 0);
  char def[2048];
  snprintf(def, sizeof def,
           "projection: %s\n"
           "source: { topics: [%s], format: cloudevents-json }\n"
           "key: invoice_id\n"
           "on:\n"
           "  InvoiceIssued: { upsert: { customer_id: $.customer_id, amount_cents: $.amount_cents,\n"
           "                             due_date: $.due_date, status: unpaid } }\n"
           "  PaymentReceived: { merge: { status: paid } }\n"
           "indexes:\n"
           "  - { name: by_customer, field: customer_id }\n"
           "  - { name: unpaid_by_due, field: customer_id, where: { status: unpaid }, order: due_date }\n"
           "aggregates:\n"
           "  - { name: balance, group: customer_id, sum: amount_cents, where: { status: unpaid } }\n"
           "sinks: [redis]\n",
           proj, topic);
  pt_write_def(&env, "read.yaml", def);
  snprintf(def, sizeof def,
           "projection: %spg\nsource: { topics: [%s], format: cloudevents-json }\nkey: invoice_id\n"
           "on:\n  InvoiceIssued: { upsert: { customer_id: $.customer_id } }\nsinks: [postgres]\n",
           proj, topic);
  pt_write_def(&env, "pgonly.yaml", def);
  pt_start(&env, (const char *[]){"BATON_API_TOKENS=" TOKEN, "BATON_PROJECTOR_READ_MAX_WAITERS=3",
                                  "BATON_PROJECTOR_READ_LIMIT_MAX=100", NULL});

  /* Auth: no token, a wrong token. */
  char path[512];
  snprintf(path, sizeof path, "/v1/projections/%s/inv-1", proj);
  assert_int_equal(get(path, NULL, NULL), 401);
  assert_int_equal(get(path, "nope", NULL), 401);
  /* The rebuild route is an operator's: refused without a token, before anything starts. */
  {
    char url[600];
    snprintf(url, sizeof url, "http://127.0.0.1:%d/v1/projections/%s/rebuild", env.port, proj);
    bt_test_http_resp_t resp;
    assert_int_equal(bt_test_http("POST", url, "", NULL, 0, &resp), 0);
    assert_int_equal(resp.status, 401);
    bt_test_http_free(&resp);
  }

  /* Known, but never built: no `current`. */
  redisContext *c = pt_redis();
  redis_do(c, "DEL bt:proj:{%s}:current", proj);
  json_decref(expect(503, "projection_not_ready", "/v1/projections/%s/inv-1", proj));
  /* A read-your-writes read waits for the first build too, then says why it gave up. */
  uint64_t t0 = bt_test_now_ms();
  json_decref(expect(503, "projection_not_ready", "/v1/projections/%s/inv-1?after=%s:0:0&wait=250ms",
                     proj, topic));
  assert_true(bt_test_now_ms() - t0 >= 240);
  json_decref(expect(404, "unknown_projection", "/v1/projections/nosuch%s/inv-1", proj));
  json_decref(expect(404, "not_served", "/v1/projections/%spg/inv-1", proj));

  /* Version 1 by hand. A customer id with ':' in it: the contract puts it last. */
  const char *cust = "C:42";
  static const struct { const char *key, *due; long amount; bool unpaid; } inv[] = {
      {"inv-1", "2024-03-01", 1000, true}, {"inv-2", "2024-01-15", 250, true},
      {"inv-3", "2024-02-01", 4000, false}, {"inv-4", "2024-01-15", 75, true},
      {"inv-5", "2024-05-30", 5, true},    {"inv-6", "2024-01-01", 999, true},
  };
  long balance = 0;
  for (size_t i = 0; i < 6; i++) {
    doc_put(c, 1, inv[i].key, cust, inv[i].amount, inv[i].due, inv[i].unpaid ? "unpaid" : "paid");
    idx_add(c, 1, "by_customer", cust, NULL, inv[i].key);
    if (inv[i].unpaid) {
      idx_add(c, 1, "unpaid_by_due", cust, inv[i].due, inv[i].key);
      balance += inv[i].amount;
    }
  }
  redis_do(c, "HSET bt:proj:{%s}:v1:agg:balance %s %ld", proj, cust, balance);
  redis_do(c, "HSET bt:proj:{%s}:v1:off %s:0 10 %s:1 3", proj, topic, topic);
  redis_do(c, "SET bt:proj:{%s}:current 1", proj);

  /* A document, with the offsets of the same instant. */
  json_t *j = expect(200, NULL, "/v1/projections/%s/inv-2", proj);
  assert_int_equal(json_integer_value(json_object_get(j, "version")), 1);
  assert_string_equal(json_string_value(json_object_get(j, "key")), "inv-2");
  json_t *doc = json_object_get(j, "doc");
  assert_int_equal(json_integer_value(json_object_get(doc, "amount_cents")), 250);
  assert_string_equal(json_string_value(json_object_get(doc, "customer_id")), cust);
  char field[96];
  snprintf(field, sizeof field, "%s:0", topic);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "offsets"), field)), 10);
  snprintf(field, sizeof field, "%s:1", topic);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "offsets"), field)), 3);
  json_decref(j);
  j = expect(404, "key_not_found", "/v1/projections/%s/inv-404", proj);
  assert_non_null(strstr(json_string_value(json_object_get(j, "detail")), "no document"));
  json_decref(j);

  /* The ordered index, two by two: due date, then key (inv-2 and inv-4 share a date). */
  static const char *order[] = {"inv-6", "inv-2", "inv-4", "inv-1", "inv-5"};
  size_t got = 0;
  char cursor[512] = "";
  for (int page = 0; page < 10; page++) {
    j = expect(200, NULL, "/v1/projections/%s?index=unpaid_by_due&value=C%%3A42&limit=2%s%s", proj,
               cursor[0] ? "&cursor=" : "", cursor);
    json_t *items = json_object_get(j, "items");
    for (size_t i = 0; i < json_array_size(items); i++, got++) {
      assert_true(got < 5);
      json_t *it = json_array_get(items, i);
      assert_string_equal(json_string_value(json_object_get(it, "key")), order[got]);
      assert_string_equal(json_string_value(json_object_get(json_object_get(it, "doc"), "status")),
                          "unpaid");
    }
    assert_int_equal(json_integer_value(json_object_get(j, "count")), json_array_size(items));
    assert_non_null(json_object_get(j, "offsets"));
    json_t *next = json_object_get(j, "next_cursor");
    if (json_is_null(next)) {
      json_decref(j);
      break;
    }
    snprintf(cursor, sizeof cursor, "%s", json_string_value(next));
    json_decref(j);
  }
  assert_int_equal(got, 5);
  /* The unordered index holds all six, by key; the default limit takes them in one page. */
  j = expect(200, NULL, "/v1/projections/%s?index=by_customer&value=C:42", proj);
  assert_int_equal(json_array_size(json_object_get(j, "items")), 6);
  assert_string_equal(json_string_value(json_object_get(json_array_get(json_object_get(j, "items"), 2), "key")), "inv-3");
  assert_true(json_is_null(json_object_get(j, "next_cursor")));
  json_decref(j);
  j = expect(200, NULL, "/v1/projections/%s?index=by_customer&value=C:nobody", proj);
  assert_int_equal(json_array_size(json_object_get(j, "items")), 0);
  json_decref(j);
  json_decref(expect(404, "unknown_index", "/v1/projections/%s?index=nope&value=x", proj));
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s?index=by_customer", proj));
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s?value=x", proj));
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s?index=by_customer&value=x&limit=0", proj));
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s?index=by_customer&value=x&limit=101", proj));
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s?index=by_customer&value=x&cursor=%%2A%%2A", proj));
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s?index=by_customer&value=x&cursor=YWJj", proj));
  /* Too long to be a cursor or an after= of ours: refused, not read as absent. */
  char big[3001];
  memset(big, 'A', 3000);
  big[3000] = '\0';
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s?index=by_customer&value=x&cursor=%s", proj, big));
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s/inv-1?after=%s:0:1", proj, big));

  /* Aggregates: a total, an absent group (0), an unknown aggregate. */
  j = expect(200, NULL, "/v1/projections/%s/aggregates/balance/C:42", proj);
  assert_int_equal(json_integer_value(json_object_get(j, "value")), balance);
  assert_string_equal(json_string_value(json_object_get(j, "group")), cust);
  json_decref(j);
  j = expect(200, NULL, "/v1/projections/%s/aggregates/balance/C:0", proj);
  assert_int_equal(json_integer_value(json_object_get(j, "value")), 0);
  json_decref(j);
  json_decref(expect(404, "unknown_aggregate", "/v1/projections/%s/aggregates/nope/C:42", proj));

  /* ?after=: malformed, a topic the projection does not read, wait without after. */
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s/inv-1?after=%s:0", proj, topic));
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s/inv-1?after=%s:x:1", proj, topic));
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s/inv-1?after=other:0:1", proj));
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s/inv-1?wait=1s", proj));
  json_decref(expect(400, "invalid_parameter", "/v1/projections/%s/inv-1?after=%s:0:1&wait=soon", proj, topic));
  /* Met at once: offset 9 is applied (next is 10). */
  j = expect(200, NULL, "/v1/projections/%s/inv-1?after=%s:0:9", proj, topic);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "doc"), "amount_cents")), 1000);
  json_decref(j);
  /* Timed out: offset 10 is not applied; 504 with the position, after the wait. */
  t0 = bt_test_now_ms();
  j = expect(504, "not_yet_applied", "/v1/projections/%s/inv-1?after=%s:0:10&wait=300ms", proj, topic);
  uint64_t took = bt_test_now_ms() - t0;
  assert_true(took >= 290 && took < 3000);
  snprintf(field, sizeof field, "%s:0", topic);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "offsets"), field)), 10);
  json_decref(j);
  /* Never applied partition (no field yet) with wait=0: 504 at once. */
  json_decref(expect(504, "not_yet_applied", "/v1/projections/%s/inv-1?after=%s:5:0&wait=0", proj, topic));

  /* Met while waiting: the "sink" applies offset 10 (the document changes with it) after
   * 400 ms; the read answers with the new document, well before its 10 s wait. */
  bg_get_t g;
  bg_start(&g, "/v1/projections/%s/inv-1?after=%s:0:10&wait=10s", proj, topic);
  wait_gauge(1);
  usleep(400000);
  doc_put(c, 1, "inv-1", cust, 1111, "2024-03-01", "unpaid");
  redis_do(c, "HSET bt:proj:{%s}:v1:off %s:0 11", proj, topic);
  pthread_join(g.th, NULL);
  assert_int_equal(g.status, 200);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(g.body, "doc"), "amount_cents")), 1111);
  assert_true(g.ms >= 400 && g.ms < 5000);
  json_decref(g.body);
  /* The same on an index page and an aggregate. */
  bg_get_t gi, ga;
  bg_start(&gi, "/v1/projections/%s?index=unpaid_by_due&value=C:42&after=%s:1:3", proj, topic);
  bg_start(&ga, "/v1/projections/%s/aggregates/balance/C:42?after=%s:1:3", proj, topic);
  wait_gauge(2);
  redis_do(c, "HSET bt:proj:{%s}:v1:agg:balance %s 7", proj, cust);
  redis_do(c, "HSET bt:proj:{%s}:v1:off %s:1 4", proj, topic);
  pthread_join(gi.th, NULL);
  pthread_join(ga.th, NULL);
  assert_int_equal(gi.status, 200);
  assert_int_equal(json_array_size(json_object_get(gi.body, "items")), 5);
  assert_int_equal(ga.status, 200);
  assert_int_equal(json_integer_value(json_object_get(ga.body, "value")), 7);
  json_decref(gi.body);
  json_decref(ga.body);

  /* The waiter bound (3): three wait, the fourth is refused with 503. */
  bg_get_t w[3];
  for (int i = 0; i < 3; i++)
    bg_start(&w[i], "/v1/projections/%s/inv-1?after=%s:0:50&wait=%dms", proj, topic, 1500 + 100 * i);
  wait_gauge(3);
  json_decref(expect(503, "too_many_waiters", "/v1/projections/%s/inv-1?after=%s:0:50", proj, topic));
  for (int i = 0; i < 3; i++) {
    pthread_join(w[i].th, NULL);
    assert_int_equal(w[i].status, 504);
    json_decref(w[i].body);
  }
  wait_gauge(0);

  /* A client that goes away frees its waiter at once, long before its 30 s wait. */
  int fd = bt_test_connect("127.0.0.1", env.port);
  assert_true(fd >= 0);
  char req[512];
  int n = snprintf(req, sizeof req,
                   "GET /v1/projections/%s/inv-1?after=%s:0:99&wait=30s HTTP/1.1\r\nHost: x\r\n"
                   "Authorization: Bearer " TOKEN "\r\n\r\n", proj, topic);
  assert_int_equal(write(fd, req, (size_t)n), n);
  wait_gauge(1);
  close(fd);
  wait_gauge(0);

  /* A version switch: version 2 beside 1, then `current` moves; reads follow at once. */
  doc_put(c, 2, "inv-1", cust, 2222, "2024-03-01", "unpaid");
  redis_do(c, "HSET bt:proj:{%s}:v2:off %s:0 11 %s:1 4", proj, topic, topic);
  j = expect(200, NULL, "/v1/projections/%s/inv-1", proj);
  assert_int_equal(json_integer_value(json_object_get(j, "version")), 1);
  json_decref(j);
  redis_do(c, "SET bt:proj:{%s}:current 2", proj);
  j = expect(200, NULL, "/v1/projections/%s/inv-1", proj);
  assert_int_equal(json_integer_value(json_object_get(j, "version")), 2);
  assert_int_equal(json_integer_value(json_object_get(json_object_get(j, "doc"), "amount_cents")), 2222);
  json_decref(j);
  json_decref(expect(404, "key_not_found", "/v1/projections/%s/inv-2", proj));

  /* A waiter at shutdown gets its answer (504 here), and the process exits cleanly. */
  bg_start(&g, "/v1/projections/%s/inv-1?after=%s:0:99&wait=20s", proj, topic);
  wait_gauge(1);
  int st = bt_test_stop(env.pid, SIGTERM, 15000);
  env.pid = 0;
  pthread_join(g.th, NULL);
  assert_int_equal(g.status, 504);
  assert_true(g.ms < 10000);
  json_decref(g.body);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);

  redis_do(c, "EVAL %s 0 bt:proj:{%s}:*",
           "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do redis.call('DEL', k) end", proj);
  redisFree(c);
  pt_teardown(&env);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_read_api)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
