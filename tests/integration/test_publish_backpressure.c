/* Publish under overload: with every Kafka broker down, 32 clients flood the broker for
 * several delivery timeouts. Answers must be only 429 (in-flight limit) and 503 (delivery
 * timeout), the broker's peak RSS must stay under 64 MB, and once Kafka is back publishing
 * succeeds again. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "kafka_oracle.h"
#include "keepalive.h"
#include "testsupport.h"

/* ASan's shadow memory and free-queue quarantine (256 MB by default) inflate RSS; the bound
 * there still proves memory stops growing, at a scale that includes the sanitizer. */
#if defined(__SANITIZE_ADDRESS__)
#define RSS_BOUND_KB (768 * 1024)
#else
#define RSS_BOUND_KB (64 * 1024)
#endif
#define FLOOD_MS 7000
#define THREADS 32

static int port;
static char topic[64];
static volatile int stop_flood;
static size_t counts[600];
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;

static size_t batch_body(char *body, size_t sz, unsigned seed) {
  size_t n = 0;
  body[n++] = '[';
  for (int k = 0; k < 50; k++)
    n += (size_t)snprintf(body + n, sz - n,
                          "%s{\"specversion\":\"1.0\",\"id\":\"bp-%u-%d\",\"source\":\"/bp\",\"type\":\"t\","
                          "\"subject\":\"s%d\",\"data\":{\"pad\":\"%0180d\"}}",
                          k ? "," : "", seed, k, k, 0);
  body[n++] = ']';
  return n;
}

static void *flood(void *arg) {
  bt_test_ka_t *c = malloc(sizeof *c);
  bt_test_ka_open(c, port);
  char *body = malloc(65536), path[128], resp[256];
  snprintf(path, sizeof path, "/v1/topics/%s/events", topic);
  unsigned seed = (unsigned)(uintptr_t)arg * 1000000u;
  while (!stop_flood) {
    size_t len = batch_body(body, 65536, seed++);
    int st = bt_test_ka_request(c, "POST", path, "Content-Type: application/cloudevents-batch+json\r\n",
                                body, len, resp, sizeof resp);
    pthread_mutex_lock(&mu);
    counts[st > 0 && st < 600 ? st : 0]++;
    pthread_mutex_unlock(&mu);
    if (st == 429)
      usleep(2000); /* a polite client would honour Retry-After; this one barely waits */
  }
  bt_test_ka_close(c);
  free(c);
  free(body);
  return NULL;
}

static long peak_rss_kb(pid_t pid) {
  char path[64], line[256];
  snprintf(path, sizeof path, "/proc/%d/status", (int)pid);
  FILE *f = fopen(path, "r");
  long kb = -1;
  while (f && fgets(line, sizeof line, f))
    if (strncmp(line, "VmHWM:", 6) == 0)
      kb = strtol(line + 6, NULL, 10);
  if (f)
    fclose(f);
  return kb;
}

static void test_flood_with_kafka_down(void **state) {
  bt_test_env_load();
  unsetenv("BATON_PG_DSN");
  snprintf(topic, sizeof topic, "bp-%d", (int)getpid());
  assert_int_equal(bt_test_kafka_create_topic(topic, 2), 0);
  port = bt_test_free_port();
  char port_env[64], log[256];
  snprintf(port_env, sizeof port_env, "BATON_HTTP_PORT=%d", port);
  snprintf(log, sizeof log, "%s/backpressure-broker.log", getenv("BATON_BUILD_DIR"));
  const char *env[] = {port_env, "BATON_KAFKA_DELIVERY_TIMEOUT=2s",
                       "BATON_BROKER_MAX_INFLIGHT_MESSAGES=1000",
                       "BATON_BROKER_MAX_INFLIGHT_BYTES=4MiB", "BATON_LOG_LEVEL=warn", NULL};
  const char *argv[] = {bt_test_bin("baton-broker"), NULL};
  pid_t pid = bt_test_spawn(argv, env, log);
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", port);
  assert_int_equal(bt_test_wait_status(url, 200, 15000), 0);

  assert_int_equal(bt_test_kafka_brokers(0), 0);
  pthread_t t[THREADS];
  for (uintptr_t i = 0; i < THREADS; i++)
    pthread_create(&t[i], NULL, flood, (void *)i);
  usleep(FLOOD_MS * 1000);
  stop_flood = 1;
  for (int i = 0; i < THREADS; i++)
    pthread_join(t[i], NULL);
  long rss = peak_rss_kb(pid);
  /* One more request while Kafka is still down: 503 past the delivery timeout, with
   * Retry-After, and the answer names the record that failed. */
  {
    char purl[256];
    snprintf(purl, sizeof purl, "http://127.0.0.1:%d/v1/topics/%s/events", port, topic);
    const char *ev = "{\"specversion\":\"1.0\",\"id\":\"late-1\",\"source\":\"/bp\",\"type\":\"t\"}";
    bt_test_http_resp_t lr;
    assert_int_equal(bt_test_http("POST", purl, "Content-Type: application/cloudevents+json\r\n", ev,
                                  strlen(ev), &lr), 0);
    char retry[16] = "";
    assert_int_equal(lr.status, 503);
    assert_int_equal(bt_test_http_header(&lr, "retry-after", retry, sizeof retry), 0);
    assert_string_equal(retry, "1");
    assert_non_null(strstr(lr.body, "\"id\":\"late-1\""));
    assert_non_null(strstr(lr.body, "delivery_failed"));
    bt_test_http_free(&lr);
  }
  /* Readiness reflects the lost dependency while Kafka is down. */
  bt_test_http_resp_t r;
  snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", port);
  assert_int_equal(bt_test_http("GET", url, NULL, NULL, 0, &r), 0);
  int ready_status = r.status;
  bt_test_http_free(&r);
  assert_int_equal(bt_test_kafka_brokers(1), 0);

  size_t other = 0;
  for (int s = 0; s < 600; s++)
    if (s != 429 && s != 503)
      other += counts[s];
  printf("flood: 429=%zu 503=%zu other=%zu (transport failures %zu), peak RSS %ld kB, readyz %d\n",
         counts[429], counts[503], other, counts[0], rss, ready_status);
  assert_true(counts[429] > 0);
  assert_true(counts[503] > 0);
  assert_int_equal(other, 0);
  assert_true(rss > 0 && rss < RSS_BOUND_KB);
  assert_int_equal(ready_status, 503);

  /* Service resumes once Kafka is back. */
  char path[128], body[65536], resp[256];
  snprintf(path, sizeof path, "/v1/topics/%s/events", topic);
  bt_test_ka_t *c = malloc(sizeof *c);
  bt_test_ka_open(c, port);
  int st = 0;
  uint64_t deadline = bt_test_now_ms() + 30000;
  while (bt_test_now_ms() < deadline) {
    size_t len = batch_body(body, sizeof body, 999999);
    st = bt_test_ka_request(c, "POST", path, "Content-Type: application/cloudevents-batch+json\r\n",
                            body, len, resp, sizeof resp);
    if (st == 200)
      break;
    usleep(200 * 1000);
  }
  bt_test_ka_close(c);
  free(c);
  assert_int_equal(st, 200);
  assert_int_equal(bt_test_stop(pid, SIGTERM, 15000), 0);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_flood_with_kafka_down)};
  return cmocka_run_group_tests_name("publish_backpressure", tests, NULL, NULL);
}
