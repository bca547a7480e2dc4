/* Kafka producer adapter against baton-devkafka: 100,000 messages, each delivery report
 * received exactly once, with the local queue kept small so backpressure (BT_EAGAIN) is
 * exercised on the way. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "kafka_producer.h"
#include "log.h"
#include "testsupport.h"

#define NMSG 100000
#define NPART 4 /* ~25k tiny records per partition: well inside the mock's 5 MB each */

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

typedef struct run {
  bt_app_t app;
  bt_kafka_producer_t *p;
  uv_timer_t watchdog;
  char topic[64];
  unsigned next;             /* next id to produce */
  unsigned reports;          /* reports seen */
  unsigned errors;
  unsigned eagain;           /* produce() refusals seen by us */
  bool ready_seen;
  bool timed_out;
  bt_kafka_producer_stats_t final; /* the adapter's own counters at the last report */
  uint8_t count[NMSG];       /* reports per id */
  int32_t bad_partition;
} run_t;

static run_t *run;

static void pump(run_t *r);

static void on_delivery(const bt_kafka_delivery_t *d, void *opaque) {
  run_t *r = run;
  unsigned id = (unsigned)(uintptr_t)opaque;
  if (id < NMSG && r->count[id] < 255)
    r->count[id]++;
  r->reports++;
  if (d->err != 0)
    r->errors++;
  else if (d->partition < 0 || d->partition >= NPART || d->offset < 0)
    r->bad_partition = d->partition;
  r->ready_seen = r->ready_seen || bt_kafka_producer_ready(r->p);
  if (r->reports == NMSG) {
    r->final = *bt_kafka_producer_stats(r->p);
    bt_app_shutdown(&r->app);
  }
  else
    pump(r);
}

/* Produces until done or the local queue is full; deliveries call it again. */
static void pump(run_t *r) {
  while (r->next < NMSG) {
    char key[16], value[32];
    int klen = snprintf(key, sizeof key, "%u", r->next);
    int vlen = snprintf(value, sizeof value, "v%u", r->next);
    bt_kafka_header_t hdr = {.name = "ce_id", .value = key, .len = (size_t)klen};
    bt_kafka_record_t rec = {.topic = r->topic, .partition = BT_KAFKA_PARTITION_ANY,
                             .key = key, .key_len = (size_t)klen, .value = value,
                             .value_len = (size_t)vlen, .headers = &hdr, .nheaders = 1};
    int rc = bt_kafka_producer_produce(r->p, &rec, on_delivery, (void *)(uintptr_t)r->next);
    if (rc == BT_EAGAIN) {
      r->eagain++;
      return;
    }
    assert_int_equal(rc, 0);
    r->next++;
  }
}

static void on_watchdog(uv_timer_t *t) {
  run_t *r = t->data;
  r->timed_out = true;
  bt_app_shutdown(&r->app);
}

static void close_watchdog(bt_app_t *app, void *arg) {
  uv_close((uv_handle_t *)&((run_t *)arg)->watchdog, NULL);
}

static void test_100k_each_report_once(void **state) {
  run_t *r = run = calloc(1, sizeof *r);
  assert_non_null(r);
  r->bad_partition = INT32_MIN;
  snprintf(r->topic, sizeof r->topic, "it-producer-%d", (int)getpid());
  char body[128];
  snprintf(body, sizeof body, "{\"name\":\"%s\",\"partitions\":%d}", r->topic, NPART);
  control_post("/topics", body);

  bt_app_init(&r->app, "it_kafka_producer", 30000);
  bt_kafka_producer_config_t cfg = {.brokers = bt_test_env("BATON_KAFKA_BROKERS"),
                                    .queue_max_messages = 5000};
  char errstr[256];
  if (bt_kafka_producer_new(&r->p, &r->app, &cfg, errstr) != 0)
    fail_msg("producer: %s", errstr);
  uv_timer_init(r->app.loop, &r->watchdog);
  r->watchdog.data = r;
  uv_timer_start(&r->watchdog, on_watchdog, 120000, 0);
  bt_app_on_shutdown(&r->app, NULL, close_watchdog, r);
  uint64_t t0 = bt_test_now_ms();
  pump(r);
  int exit_code = bt_app_run(&r->app);
  uint64_t ms = bt_test_now_ms() - t0;
  print_message("%u reports in %llu ms, %u EAGAIN refusals\n", r->reports,
                (unsigned long long)ms, r->eagain);

  assert_false(r->timed_out);
  assert_int_equal(exit_code, 0);
  assert_int_equal(r->reports, NMSG);
  assert_int_equal(r->errors, 0);
  assert_int_equal(r->bad_partition, INT32_MIN);
  for (unsigned i = 0; i < NMSG; i++)
    if (r->count[i] != 1)
      fail_msg("message %u: %u delivery reports", i, r->count[i]);
  /* The queue bound (5,000) is far below 100,000, so backpressure must have answered. */
  assert_true(r->eagain > 0);
  assert_true(r->ready_seen);
  assert_int_equal(r->final.delivered.value, NMSG);
  assert_int_equal(r->final.failed.value, 0);
  assert_true(r->final.in_flight_msgs.value == 0 && r->final.in_flight_bytes.value == 0);
  assert_int_equal(r->final.queue_full.value, r->eagain);
  free(r);
}

int main(void) {
  bt_log_init("it_kafka_producer", BT_LOG_WARN);
  bt_test_env_load();
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_100k_each_report_once)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
