/* baton-broker's lifecycle through its real interfaces: /readyz follows Postgres and Kafka
 * going away and coming back, and SIGTERM with 200 publishes in flight answers every one and
 * exits 0. */
#include <pthread.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kafka_oracle.h"
#include "keepalive.h"
#include "testsupport.h"

static pid_t start_broker(int *port, const char *log_name) {
  *port = bt_test_free_port();
  char port_env[64], log[256];
  snprintf(port_env, sizeof port_env, "BATON_HTTP_PORT=%d", *port);
  snprintf(log, sizeof log, "%s/%s", getenv("BATON_BUILD_DIR"), log_name);
  const char *env[] = {port_env, "BATON_BROKER_RELAY=false", "BATON_SHUTDOWN_TIMEOUT=20s", NULL};
  const char *argv[] = {bt_test_bin("baton-broker"), NULL};
  pid_t pid = bt_test_spawn(argv, env, log);
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", *port);
  if (bt_test_wait_status(url, 200, 20000) != 0)
    fail_msg("broker not ready; see %s", log);
  return pid;
}

static void wait_readyz(int port, int status, int timeout_ms, const char *what) {
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", port);
  if (bt_test_wait_status(url, status, timeout_ms) != 0)
    fail_msg("/readyz did not answer %d within %d ms %s", status, timeout_ms, what);
}

static void test_readyz_follows_dependencies(void **state) {
  bt_test_env_load();
  int port;
  pid_t pid = start_broker(&port, "lifecycle-readyz.log");
  assert_int_equal(bt_test_sh("./dev pg-stop"), 0);
  wait_readyz(port, 503, 15000, "after Postgres stopped");
  assert_int_equal(bt_test_sh("./dev pg-start"), 0);
  wait_readyz(port, 200, 30000, "after Postgres came back");

  assert_int_equal(bt_test_kafka_brokers(0), 0);
  wait_readyz(port, 503, 20000, "after Kafka went down");
  assert_int_equal(bt_test_kafka_brokers(1), 0);
  wait_readyz(port, 200, 30000, "after Kafka came back");
  assert_int_equal(bt_test_stop(pid, SIGTERM, 15000), 0);
}

/* ---- SIGTERM with 200 publishes in flight ------------------------------------------------- */

#define INFLIGHT 200

typedef struct {
  int port;
  int index;
  const char *topic;
  int status;
} client_t;

static void *one_publish(void *arg) {
  client_t *c = arg;
  bt_test_ka_t *ka = malloc(sizeof *ka);
  if (bt_test_ka_open(ka, c->port) != 0) {
    c->status = -1;
    free(ka);
    return NULL;
  }
  char path[128], body[256];
  snprintf(path, sizeof path, "/v1/topics/%s/events", c->topic);
  int n = snprintf(body, sizeof body,
                   "{\"specversion\":\"1.0\",\"id\":\"drain-%d\",\"source\":\"/t\",\"type\":\"t\",\"subject\":\"s%d\"}",
                   c->index, c->index);
  c->status = bt_test_ka_request(ka, "POST", path, "Content-Type: application/cloudevents+json\r\n",
                                 body, (size_t)n, NULL, 0);
  bt_test_ka_close(ka);
  free(ka);
  return NULL;
}

static int set_rtt(int ms) {
  char url[256], body[32];
  snprintf(url, sizeof url, "%s/brokers/all/rtt", bt_test_env("BATON_DEVKAFKA_CONTROL"));
  snprintf(body, sizeof body, "{\"ms\":%d}", ms);
  bt_test_http_resp_t r;
  if (bt_test_http("POST", url, NULL, body, strlen(body), &r) != 0)
    return -1;
  int ok = r.status == 200 ? 0 : -1;
  bt_test_http_free(&r);
  return ok;
}

static void test_sigterm_with_200_in_flight(void **state) {
  bt_test_env_load();
  char topic[64];
  snprintf(topic, sizeof topic, "drain-%d", (int)getpid());
  assert_int_equal(bt_test_kafka_create_topic(topic, 3), 0);
  int port;
  pid_t pid = start_broker(&port, "lifecycle-drain.log");
  /* Slow Kafka down so that every publish is still waiting for its ack at SIGTERM. */
  assert_int_equal(set_rtt(400), 0);
  pthread_t t[INFLIGHT];
  client_t cs[INFLIGHT];
  for (int i = 0; i < INFLIGHT; i++) {
    cs[i] = (client_t){port, i, topic, 0};
    pthread_create(&t[i], NULL, one_publish, &cs[i]);
  }
  usleep(250 * 1000);
  kill(pid, SIGTERM);
  for (int i = 0; i < INFLIGHT; i++)
    pthread_join(t[i], NULL);
  int st = 0;
  assert_int_equal(waitpid(pid, &st, 0), pid);
  assert_int_equal(set_rtt(0), 0);
  int ok = 0;
  for (int i = 0; i < INFLIGHT; i++)
    ok += cs[i].status == 200;
  printf("answered 200: %d of %d; exit status %d\n", ok, INFLIGHT, WIFEXITED(st) ? WEXITSTATUS(st) : -1);
  assert_int_equal(ok, INFLIGHT);
  assert_true(WIFEXITED(st));
  assert_int_equal(WEXITSTATUS(st), 0);
  /* Every answered record is in Kafka. */
  bt_test_kmsg_t *msgs = NULL;
  long n = bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), topic, 20000, &msgs);
  assert_int_equal(n, INFLIGHT);
  bt_test_kmsgs_free(msgs, n);
}

int main(void) {
  signal(SIGPIPE, SIG_IGN);
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_readyz_follows_dependencies),
      cmocka_unit_test(test_sigterm_with_200_in_flight),
  };
  return cmocka_run_group_tests_name("broker_lifecycle", tests, NULL, NULL);
}
