/* The read API while its Redis is down, with the stack's Redis stopped and started through
 * ./dev: reads answer 503 redis_unavailable with Retry-After (never hang, never crash), a read
 * waiting on ?after= when Redis goes away still gets its answer at its deadline, and once
 * Redis is back (empty: the dev Redis keeps nothing on disk) reads say the projection is not
 * ready, then serve what is written again. Contents are written by hand per the storage
 * layout, as in it_projector_read. */
#include <jansson.h>
#include <pthread.h>

#include "kafka_oracle.h"
#include "test_projector_common.h"

#define TOKEN "faults-token"

static pt_env_t env;
static char proj[32], topic[64];

static int get(const char *path, char *retry_after, size_t ralen, char **body) {
  char url[1024];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", env.port, path);
  bt_test_http_resp_t resp;
  if (bt_test_http("GET", url, "Authorization: Bearer " TOKEN "\r\n", NULL, 0, &resp) != 0)
    fail_msg("GET %s: no answer", path);
  if (retry_after && bt_test_http_header(&resp, "Retry-After", retry_after, ralen) != 0)
    retry_after[0] = '\0';
  int st = resp.status;
  if (body) {
    *body = resp.body;
    resp.body = NULL;
  }
  bt_test_http_free(&resp);
  return st;
}

static void fill(redisContext *c, long amount) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "{\"customer_id\":\"C1\",\"amount_cents\":%ld}", amount);
  freeReplyObject(test_redis_cmd(c, "SET bt:proj:{%s}:v1:doc:inv-1 %s", proj, cmd));
  freeReplyObject(test_redis_cmd(c, "HSET bt:proj:{%s}:v1:off %s:0 5", proj, topic));
  freeReplyObject(test_redis_cmd(c, "SET bt:proj:{%s}:current 1", proj));
}

typedef struct bg {
  pthread_t th;
  char path[512];
  int status;
  char *body;
  uint64_t ms;
} bg_t;

static void *bg_run(void *arg) {
  bg_t *g = arg;
  uint64_t t0 = bt_test_now_ms();
  g->status = get(g->path, NULL, 0, &g->body);
  g->ms = bt_test_now_ms() - t0;
  return NULL;
}

static void test_redis_down(void **state) {
  pt_setup(&env, "it_projector_read_faults");
  snprintf(proj, sizeof proj, "rf%d", (int)getpid());
  snprintf(topic, sizeof topic, "it.readf.%d", (int)getpid());
  assert_int_equal(bt_test_kafka_create_topic(topic, 1), 0);
  char def[1024];
  snprintf(def, sizeof def,
           "projection: %s\nsource: { topics: [%s], format: cloudevents-json }\nkey: invoice_id\n"
           "on:\n  InvoiceIssued: { upsert: { customer_id: $.customer_id } }\nsinks: [redis]\n",
           proj, topic);
  pt_write_def(&env, "f.yaml", def);
  pt_start(&env, (const char *[]){"BATON_API_TOKENS=" TOKEN, NULL});
  char path[256], ra[16], *body;
  snprintf(path, sizeof path, "/v1/projections/%s/inv-1", proj);

  redisContext *c = pt_redis();
  fill(c, 100);
  redisFree(c);
  assert_int_equal(get(path, NULL, 0, NULL), 200);

  /* A waiter parks, then Redis goes away under it. */
  bg_t g = {.body = NULL};
  snprintf(g.path, sizeof g.path, "/v1/projections/%s/inv-1?after=%s:0:100&wait=3s", proj, topic);
  assert_int_equal(pthread_create(&g.th, NULL, bg_run, &g), 0);
  usleep(300000);
  assert_int_equal(bt_test_sh("./dev redis-stop"), 0);

  /* Down: 503 at once, with Retry-After, and /readyz says so. */
  uint64_t deadline = bt_test_now_ms() + 10000;
  int st;
  while ((st = get(path, ra, sizeof ra, &body)) != 503 && bt_test_now_ms() < deadline) {
    free(body);
    usleep(50000);
  }
  assert_int_equal(st, 503);
  assert_non_null(strstr(body, "redis_unavailable"));
  assert_string_equal(ra, "1");
  free(body);
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", env.port);
  assert_int_equal(bt_test_wait_status(url, 503, 5000), 0);

  /* The waiter is answered at its deadline, not stranded. */
  pthread_join(g.th, NULL);
  assert_int_equal(g.status, 503);
  assert_non_null(strstr(g.body, "redis_unavailable"));
  assert_true(g.ms >= 2900 && g.ms < 6000);
  free(g.body);

  /* Back, empty: not ready (the projection has no live version), then served again. */
  assert_int_equal(bt_test_sh("./dev redis-start"), 0);
  assert_int_equal(bt_test_wait_status(url, 200, 20000), 0);
  st = get(path, NULL, 0, &body);
  assert_int_equal(st, 503);
  assert_non_null(strstr(body, "projection_not_ready"));
  free(body);
  c = pt_redis();
  fill(c, 200);
  assert_int_equal(get(path, NULL, 0, &body), 200);
  assert_non_null(strstr(body, "\"amount_cents\":200"));
  free(body);
  freeReplyObject(test_redis_cmd(c, "EVAL %s 0 bt:proj:{%s}:*",
                                 "for _, k in ipairs(redis.call('KEYS', ARGV[1])) do "
                                 "redis.call('DEL', k) end",
                                 proj));
  redisFree(c);
  pt_teardown(&env);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_redis_down)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
