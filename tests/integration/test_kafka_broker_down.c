/* Kafka producer adapter with a broker taken down through baton-devkafka's control endpoint.
 * The partition leader goes down: messages with a short delivery timeout fail with
 * BT_ETIMEDOUT within that timeout, messages with a long one wait, and once the broker is
 * back they are delivered. The oracle is Kafka itself, read back with kcat. Further tests
 * take every broker down and check that readiness follows, and that a shutdown drain waits
 * for the reports of messages still in flight. */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "app.h"
#include "kafka_producer.h"
#include "log.h"
#include "testsupport.h"

#define LEADER "2" /* broker id leading the test partition */
#define SHORT_TIMEOUT_MS 3000
#define NWARM 10      /* ids 0..9: delivered before the fault */
#define NFAIL 50      /* ids 100..149: short timeout while the leader is down */
#define NWAIT 500     /* ids 1000..1499: long timeout, delivered after the leader is back */
#define WAIT_MORE_MS 1000

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

/* Whatever happened (here or in an earlier run), the shared devkafka gets every broker back. */
static int bring_all_up(void **state) {
  control_post("/brokers/all/up", "");
  return 0;
}

typedef enum { WARMING, FAILING, WAITING, RECOVERING, DONE } step_t;

static struct {
  bt_app_t app;
  uv_timer_t tick;
  uint64_t deadline;
  bool timed_out;
  char topic[64];
  bt_kafka_producer_t *fast, *slow; /* short and long delivery timeouts */
  step_t step;
  uint64_t t_down, t_failed, t_up, t_recovered;
  unsigned warm_ok, warm_err, fail_timedout, fail_other, wait_ok, wait_err, early_waits;
  uint8_t reports[1500];
} st;

static void on_report(const bt_kafka_delivery_t *d, void *opaque) {
  unsigned id = (unsigned)(uintptr_t)opaque;
  st.reports[id]++;
  if (id < NWARM) {
    st.warm_ok += d->err == 0;
    st.warm_err += d->err != 0;
  }
  else if (id < 1000) {
    if (d->err == BT_ETIMEDOUT)
      st.fail_timedout++;
    else
      st.fail_other++;
  } else {
    if (st.step != RECOVERING)
      st.early_waits++;
    if (d->err == 0)
      st.wait_ok++;
    else
      st.wait_err++;
  }
}

static void produce(bt_kafka_producer_t *p, unsigned id) {
  char key[16];
  int n = snprintf(key, sizeof key, "%u", id);
  bt_kafka_record_t rec = {.topic = st.topic, .partition = 0, .key = key, .key_len = (size_t)n,
                           .value = key, .value_len = (size_t)n};
  assert_int_equal(bt_kafka_producer_produce(p, &rec, on_report, (void *)(uintptr_t)id), 0);
}

/* Moves through the scenario; each step waits for what the previous one caused. */
static void on_tick(uv_timer_t *t) {
  uint64_t now = bt_test_now_ms();
  if (now > st.deadline) {
    st.timed_out = true;
    bt_app_shutdown(&st.app);
    return;
  }
  switch (st.step) {
  case WARMING:
    if (st.warm_err > 0) /* the cluster was not healthy to begin with */
      bt_app_shutdown(&st.app);
    if (st.warm_ok < NWARM)
      return;
    control_post("/brokers/" LEADER "/down", "");
    st.t_down = now;
    for (unsigned i = 0; i < NFAIL; i++)
      produce(st.fast, 100 + i);
    for (unsigned i = 0; i < NWAIT; i++)
      produce(st.slow, 1000 + i);
    st.step = FAILING;
    return;
  case FAILING:
    if (st.fail_timedout + st.fail_other < NFAIL)
      return;
    st.t_failed = now;
    st.step = WAITING;
    return;
  case WAITING:
    if (now < st.t_failed + WAIT_MORE_MS)
      return;
    control_post("/brokers/" LEADER "/up", "");
    st.t_up = now;
    st.step = RECOVERING;
    return;
  case RECOVERING:
    if (st.wait_ok + st.wait_err < NWAIT)
      return;
    st.t_recovered = now;
    st.step = DONE;
    bt_app_shutdown(&st.app);
    return;
  case DONE:
    return;
  }
}

static void close_tick(bt_app_t *app, void *arg) { uv_close((uv_handle_t *)&st.tick, NULL); }

/* Counts each key in the topic, as Kafka has it. */
static void read_back(unsigned counts[1500]) {
  char cmd[512];
  snprintf(cmd, sizeof cmd, "kcat -C -b '%s' -t '%s' -o beginning -e -q -f '%%k\\n'",
           bt_test_env("BATON_KAFKA_BROKERS"), st.topic);
  FILE *f = popen(cmd, "r");
  assert_non_null(f);
  char line[64];
  while (fgets(line, sizeof line, f)) {
    unsigned id = (unsigned)strtoul(line, NULL, 10);
    if (id < 1500)
      counts[id]++;
  }
  assert_int_equal(pclose(f), 0);
}

static void test_leader_down_then_up(void **state) {
  snprintf(st.topic, sizeof st.topic, "it-broker-down-%d", (int)getpid());
  char body[160];
  snprintf(body, sizeof body, "{\"name\":\"%s\",\"partitions\":1}", st.topic);
  control_post("/topics", body);
  char path[160];
  snprintf(path, sizeof path, "/topics/%s/partitions/0/leader", st.topic);
  control_post(path, "{\"id\":" LEADER "}");

  bt_app_init(&st.app, "it_kafka_broker_down", 10000);
  char errstr[256];
  bt_kafka_producer_config_t fast = {.brokers = bt_test_env("BATON_KAFKA_BROKERS"),
                                     .delivery_timeout_ms = SHORT_TIMEOUT_MS};
  bt_kafka_producer_config_t slow = {.brokers = fast.brokers, .delivery_timeout_ms = 120000};
  if (bt_kafka_producer_new(&st.fast, &st.app, &fast, errstr) != 0 ||
      bt_kafka_producer_new(&st.slow, &st.app, &slow, errstr) != 0)
    fail_msg("producer: %s", errstr);
  for (unsigned i = 0; i < NWARM; i++)
    produce(st.fast, i);
  st.deadline = bt_test_now_ms() + 90000;
  uv_timer_init(st.app.loop, &st.tick);
  uv_timer_start(&st.tick, on_tick, 20, 20);
  bt_app_on_shutdown(&st.app, NULL, close_tick, NULL);
  assert_int_equal(bt_app_run(&st.app), 0);

  print_message("failed after %llu ms, recovered %llu ms after the broker came back\n",
                (unsigned long long)(st.t_failed - st.t_down),
                (unsigned long long)(st.t_recovered - st.t_up));
  assert_int_equal(st.warm_ok, NWARM);
  assert_false(st.timed_out);
  /* Errors surface, as BT_ETIMEDOUT, within the delivery timeout (plus scheduling slack). */
  assert_int_equal(st.fail_timedout, NFAIL);
  assert_int_equal(st.fail_other, 0);
  assert_true(st.t_failed - st.t_down >= SHORT_TIMEOUT_MS - 500);
  assert_true(st.t_failed - st.t_down <= SHORT_TIMEOUT_MS + 3000);
  /* The long-timeout messages waited for the broker instead, then all went through. */
  assert_int_equal(st.early_waits, 0);
  assert_int_equal(st.wait_ok, NWAIT);
  assert_int_equal(st.wait_err, 0);
  for (unsigned i = 0; i < 1500; i++)
    assert_true(st.reports[i] <= 1);

  unsigned counts[1500] = {0};
  read_back(counts);
  for (unsigned i = 0; i < NWARM; i++)
    if (counts[i] != 1)
      fail_msg("warm-up message %u is in Kafka %u times", i, counts[i]);
  for (unsigned i = 100; i < 100 + NFAIL; i++)
    if (counts[i] != 0)
      fail_msg("message %u failed yet is in Kafka", i);
  for (unsigned i = 1000; i < 1000 + NWAIT; i++)
    if (counts[i] != 1)
      fail_msg("message %u is in Kafka %u times", i, counts[i]);
}

/* ---- every broker down: readiness follows -------------------------------------------- */

static struct {
  bt_app_t app;
  uv_timer_t tick;
  bt_kafka_producer_t *p;
  int phase; /* 0 wait ready, 1 wait unready, 2 wait ready again */
  uint64_t deadline, t_phase[3];
  bool timed_out;
} rd;

static void on_ready_tick(uv_timer_t *t) {
  uint64_t now = bt_test_now_ms();
  if (now > rd.deadline) {
    rd.timed_out = true;
    bt_app_shutdown(&rd.app);
    return;
  }
  bool ready = bt_app_ready(&rd.app, NULL);
  if (rd.phase == 0 && ready) {
    control_post("/brokers/all/down", "");
    rd.t_phase[rd.phase++] = now;
  } else if (rd.phase == 1 && !ready) {
    control_post("/brokers/all/up", "");
    rd.t_phase[rd.phase++] = now;
  } else if (rd.phase == 2 && ready) {
    rd.t_phase[rd.phase++] = now;
    bt_app_shutdown(&rd.app);
  }
}

static void close_ready_tick(bt_app_t *app, void *arg) {
  uv_close((uv_handle_t *)&rd.tick, NULL);
}

static void test_all_down_readiness(void **state) {
  bt_app_init(&rd.app, "it_kafka_readiness", 10000);
  bt_kafka_producer_config_t cfg = {.brokers = bt_test_env("BATON_KAFKA_BROKERS")};
  char errstr[256];
  if (bt_kafka_producer_new(&rd.p, &rd.app, &cfg, errstr) != 0)
    fail_msg("producer: %s", errstr);
  rd.deadline = bt_test_now_ms() + 60000;
  uv_timer_init(rd.app.loop, &rd.tick);
  uv_timer_start(&rd.tick, on_ready_tick, 20, 20);
  bt_app_on_shutdown(&rd.app, NULL, close_ready_tick, NULL);
  /* bt_app_ready() is false until the app runs. */
  assert_int_equal(bt_app_run(&rd.app), 0);
  assert_false(rd.timed_out);
  print_message("unready %llu ms after all brokers went down, ready %llu ms after they came back\n",
                (unsigned long long)(rd.t_phase[1] - rd.t_phase[0]),
                (unsigned long long)(rd.t_phase[2] - rd.t_phase[1]));
  assert_int_equal(rd.phase, 3);
}

/* ---- a drain waits for the reports of messages still in flight ----------------------- */

#define NDRAIN 100

static struct {
  bt_app_t app;
  uv_timer_t later;
  int fired;
  unsigned ok, other;
  bool after_up; /* the broker was back before the first report */
} dr;

static void on_drained_report(const bt_kafka_delivery_t *d, void *opaque) {
  if (d->err == 0)
    dr.ok++;
  else
    dr.other++;
}

/* First the shutdown starts while the leader is down, then the leader comes back. */
static void on_later(uv_timer_t *t) {
  if (dr.fired++ == 0) {
    bt_app_shutdown(&dr.app);
    uv_timer_start(t, on_later, 1000, 0);
    return;
  }
  dr.after_up = dr.ok + dr.other == 0;
  control_post("/brokers/" LEADER "/up", "");
  uv_close((uv_handle_t *)t, NULL);
}

static void test_drain_waits_for_reports(void **state) {
  char topic[64], body[160], path[160];
  snprintf(topic, sizeof topic, "it-drain-%d", (int)getpid());
  snprintf(body, sizeof body, "{\"name\":\"%s\",\"partitions\":1}", topic);
  control_post("/topics", body);
  snprintf(path, sizeof path, "/topics/%s/partitions/0/leader", topic);
  control_post(path, "{\"id\":" LEADER "}");
  control_post("/brokers/" LEADER "/down", "");

  bt_app_init(&dr.app, "it_kafka_drain", 30000);
  bt_kafka_producer_t *p;
  bt_kafka_producer_config_t cfg = {.brokers = bt_test_env("BATON_KAFKA_BROKERS"),
                                    .delivery_timeout_ms = 60000};
  char errstr[256];
  if (bt_kafka_producer_new(&p, &dr.app, &cfg, errstr) != 0)
    fail_msg("producer: %s", errstr);
  for (unsigned i = 0; i < NDRAIN; i++) {
    bt_kafka_record_t rec = {.topic = topic, .partition = 0, .value = "x", .value_len = 1};
    assert_int_equal(bt_kafka_producer_produce(p, &rec, on_drained_report, NULL), 0);
  }
  uv_timer_init(dr.app.loop, &dr.later);
  uv_timer_start(&dr.later, on_later, 300, 0);
  /* 0: the drain ended because every report arrived, not because the deadline passed. */
  assert_int_equal(bt_app_run(&dr.app), 0);
  assert_true(dr.after_up);
  assert_int_equal(dr.ok, NDRAIN);
  assert_int_equal(dr.other, 0);
}

int main(void) {
  bt_log_init("it_kafka_broker_down", BT_LOG_WARN);
  bt_test_env_load();
  const struct CMUnitTest tests[] = {
      cmocka_unit_test_teardown(test_leader_down_then_up, bring_all_up),
      cmocka_unit_test_teardown(test_all_down_readiness, bring_all_up),
      cmocka_unit_test_teardown(test_drain_waits_for_reports, bring_all_up),
  };
  return cmocka_run_group_tests(tests, bring_all_up, bring_all_up);
}
