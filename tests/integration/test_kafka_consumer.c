/* Kafka consumer adapter against baton-devkafka: N messages produced, consumed with explicit
 * commits; a restarted consumer of the same group resumes exactly at the committed offsets
 * (every message processed once across both runs, no gap and no repeat per partition), and
 * pause() stops delivery until resume(). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "kafka_consumer.h"
#include "kafka_producer.h"
#include "log.h"
#include "testsupport.h"

#define NMSG 3000
#define NPART 3
#define FIRST_RUN 1200   /* messages processed and committed before the restart */
#define PAUSE_AT 100     /* the second run pauses after this many messages */
#define PAUSE_MS 1000

typedef struct state {
  bt_app_t app;
  uv_timer_t watchdog, pause_timer;
  bool timed_out;
  char topic[64];
  bt_kafka_producer_t *p;
  unsigned produced, delivered, produce_errors;
  bt_kafka_consumer_t *c;
  int run;                      /* 1 or 2 */
  unsigned processed[3];        /* per run */
  unsigned commits_pending, commit_errors;
  bool stopping, paused;
  unsigned delivered_while_paused;
  int64_t committed[NPART];     /* next offset committed by run 1, -1 if none */
  int64_t expect[NPART];        /* run 2: next offset expected per partition, -1 before first */
  unsigned order_violations, header_mismatches;
  uint8_t seen[NMSG];
} state_t;

static state_t st;

static void control_post(const char *path, const char *body) {
  char url[256];
  snprintf(url, sizeof url, "%s%s", bt_test_env("BATON_DEVKAFKA_CONTROL"), path);
  bt_test_http_resp_t resp;
  assert_int_equal(bt_test_http("POST", url, "Content-Type: application/json\r\n", body,
                                strlen(body), &resp), 0);
  if (resp.status != 200)
    fail_msg("POST %s: %d %s", path, resp.status, resp.body);
  bt_test_http_free(&resp);
}

static void on_watchdog(uv_timer_t *t) {
  st.timed_out = true;
  bt_app_shutdown(&st.app);
}

static void close_timers(bt_app_t *app, void *arg) {
  uv_close((uv_handle_t *)&st.watchdog, NULL);
  uv_close((uv_handle_t *)&st.pause_timer, NULL);
}

/* A fresh app per phase, as a restarted process would have. */
static void app_start(const char *name) {
  bt_app_init(&st.app, name, 20000);
  uv_timer_init(st.app.loop, &st.watchdog);
  uv_timer_init(st.app.loop, &st.pause_timer);
  uv_timer_start(&st.watchdog, on_watchdog, 60000, 0);
  bt_app_on_shutdown(&st.app, NULL, close_timers, NULL);
}

static void app_finish(void) {
  assert_int_equal(bt_app_run(&st.app), 0);
  assert_false(st.timed_out);
}

static void on_produced(const bt_kafka_delivery_t *d, void *opaque) {
  if (d->err)
    st.produce_errors++;
  if (++st.delivered == NMSG)
    bt_app_shutdown(&st.app);
}

static void produce_all(void) {
  app_start("it_kafka_consumer_produce");
  bt_kafka_producer_config_t cfg = {.brokers = bt_test_env("BATON_KAFKA_BROKERS")};
  char errstr[256];
  if (bt_kafka_producer_new(&st.p, &st.app, &cfg, errstr) != 0)
    fail_msg("producer: %s", errstr);
  for (unsigned i = 0; i < NMSG; i++) {
    char id[16];
    int n = snprintf(id, sizeof id, "%u", i);
    bt_kafka_header_t hdr = {.name = "ce_id", .value = id, .len = (size_t)n};
    bt_kafka_record_t rec = {.topic = st.topic, .partition = (int32_t)(i % NPART), .key = id,
                             .key_len = (size_t)n, .value = "x", .value_len = 1,
                             .headers = &hdr, .nheaders = 1};
    assert_int_equal(bt_kafka_producer_produce(st.p, &rec, on_produced, NULL), 0);
  }
  app_finish();
  assert_int_equal(st.delivered, NMSG);
  assert_int_equal(st.produce_errors, 0);
}

static void on_committed(int err, void *arg) {
  if (err)
    st.commit_errors++;
  st.commits_pending--;
  if (st.stopping && st.commits_pending == 0)
    bt_app_shutdown(&st.app);
}

static void on_resume(uv_timer_t *t) {
  st.paused = false;
  bt_kafka_consumer_resume(st.c);
}

/* Records one processed message: its id from the key, checked against the ce_id header. */
static void process(const bt_kafka_message_t *m) {
  char key[16] = {0};
  memcpy(key, m->key, m->key_len < 15 ? m->key_len : 15);
  unsigned id = (unsigned)strtoul(key, NULL, 10);
  const void *hv;
  size_t hlen;
  if (bt_kafka_message_header(m, "ce_id", &hv, &hlen) != 0 || hlen != m->key_len ||
      memcmp(hv, m->key, hlen) != 0)
    st.header_mismatches++;
  if (id < NMSG && st.seen[id] < 255)
    st.seen[id]++;
  st.processed[st.run]++;
}

static void on_message(bt_kafka_consumer_t *c, const bt_kafka_message_t *m, void *arg) {
  if (st.paused)
    st.delivered_while_paused++;
  if (st.run == 1) {
    /* After FIRST_RUN the process "crashes" logically: nothing more is processed or
     * committed, although librdkafka keeps delivering what it fetched. */
    if (st.stopping)
      return;
    process(m);
    st.committed[m->partition] = m->offset + 1;
    st.commits_pending++;
    assert_int_equal(bt_kafka_consumer_commit(c, m->topic, m->partition, m->offset + 1,
                                              on_committed, NULL), 0);
    st.stopping = st.processed[1] == FIRST_RUN;
    return;
  }
  int64_t *expect = &st.expect[m->partition];
  /* The first message of a partition comes from its committed offset (or 0 if none). */
  int64_t committed = st.committed[m->partition];
  int64_t want = *expect >= 0 ? *expect : committed >= 0 ? committed : 0;
  if (m->offset != want)
    st.order_violations++;
  *expect = m->offset + 1;
  process(m);
  if (st.processed[2] == PAUSE_AT) {
    st.paused = true;
    bt_kafka_consumer_pause(c);
    uv_timer_start(&st.pause_timer, on_resume, PAUSE_MS, 0);
  }
  if (st.processed[1] + st.processed[2] == NMSG)
    bt_app_shutdown(&st.app);
}

static void consume_run(int run) {
  st.run = run;
  app_start(run == 1 ? "it_kafka_consumer_1" : "it_kafka_consumer_2");
  const char *topics[] = {st.topic};
  bt_kafka_consumer_config_t cfg = {.brokers = bt_test_env("BATON_KAFKA_BROKERS"),
                                    .group_id = st.topic, .topics = topics, .ntopics = 1};
  char errstr[256];
  if (bt_kafka_consumer_new(&st.c, &st.app, &cfg, on_message, NULL, errstr) != 0)
    fail_msg("consumer: %s", errstr);
  app_finish();
}

static void test_commit_and_resume(void **state) {
  snprintf(st.topic, sizeof st.topic, "it-consumer-%d", (int)getpid());
  char body[128];
  snprintf(body, sizeof body, "{\"name\":\"%s\",\"partitions\":%d}", st.topic, NPART);
  control_post("/topics", body);
  for (int p = 0; p < NPART; p++)
    st.committed[p] = st.expect[p] = -1;

  produce_all();

  consume_run(1);
  assert_int_equal(st.processed[1], FIRST_RUN);
  assert_int_equal(st.commits_pending, 0);
  assert_int_equal(st.commit_errors, 0);

  consume_run(2);
  print_message("run 1 processed %u, run 2 processed %u\n", st.processed[1], st.processed[2]);
  assert_int_equal(st.processed[2], NMSG - FIRST_RUN);
  assert_int_equal(st.order_violations, 0);
  assert_int_equal(st.header_mismatches, 0);
  assert_int_equal(st.delivered_while_paused, 0);
  for (unsigned i = 0; i < NMSG; i++)
    if (st.seen[i] != 1)
      fail_msg("message %u processed %u times", i, st.seen[i]);
}

int main(void) {
  bt_log_init("it_kafka_consumer", BT_LOG_WARN);
  bt_test_env_load();
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_commit_and_resume)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
