/* Lost versus revoked: when every broker is unreachable past the session timeout, the group
 * has given the consumer's partitions away, and on_revoke must say lost = true (work in hand
 * must be dropped, not committed). After the brokers return the consumer gets an assignment
 * again. */
#include <stdint.h>
#include <unistd.h>

#include "app.h"
#include "kafka_consumer.h"
#include "kafka_oracle.h"
#include "log.h"
#include "test_kafka_common.h"

typedef struct st {
  bt_app_t app;
  uv_timer_t watchdog, step;
  bool timed_out;
  bt_kafka_consumer_t *c;
  unsigned assigns, revokes_lost, revokes_ok;
  int phase; /* 0 waiting for the first assignment, 1 brokers down, 2 up again */
} st_t;

static st_t S;

static void on_watchdog(uv_timer_t *t) {
  S.timed_out = true;
  bt_app_shutdown(&S.app);
}

static void close_timers(bt_app_t *app, void *arg) {
  uv_close((uv_handle_t *)&S.watchdog, NULL);
  uv_close((uv_handle_t *)&S.step, NULL);
}

static void on_message(bt_kafka_consumer_t *c, const bt_kafka_message_t *m, void *arg) {}

static void on_assign(bt_kafka_consumer_t *c, bt_kafka_partition_t *parts, size_t n, void *arg) {
  S.assigns++;
  if (S.phase == 0) {
    S.phase = 1;
    assert_int_equal(bt_test_kafka_brokers(0), 0);
  } else if (S.phase == 2) {
    bt_app_shutdown(&S.app);
  }
}

static void on_revoke(bt_kafka_consumer_t *c, const bt_kafka_partition_t *parts, size_t n,
                      bool lost, void *arg) {
  if (lost)
    S.revokes_lost++;
  else
    S.revokes_ok++;
  if (lost && S.phase == 1) {
    S.phase = 2;
    assert_int_equal(bt_test_kafka_brokers(1), 0);
  }
}

static void test_lost_told_apart(void **state) {
  char topic[64];
  snprintf(topic, sizeof topic, "it-consumer-lost-%d", (int)getpid());
  kt_topic(topic, 2);
  bt_app_init(&S.app, "it_kafka_consumer_lost", 20000);
  uv_timer_init(S.app.loop, &S.watchdog);
  uv_timer_init(S.app.loop, &S.step);
  uv_timer_start(&S.watchdog, on_watchdog, 60000, 0);
  bt_app_on_shutdown(&S.app, NULL, close_timers, NULL);
  const char *topics[] = {topic};
  bt_kafka_consumer_config_t cfg = {.brokers = bt_test_env("BATON_KAFKA_BROKERS"),
                                    .group_id = topic, .topics = topics, .ntopics = 1,
                                    .session_timeout_ms = 6000, .on_assign = on_assign,
                                    .on_revoke = on_revoke};
  char errstr[256];
  if (bt_kafka_consumer_new(&S.c, &S.app, &cfg, on_message, NULL, errstr) != 0)
    fail_msg("consumer: %s", errstr);
  int code = bt_app_run(&S.app);
  bt_test_kafka_brokers(1); /* whatever happened, leave devkafka up for the next test */
  print_message("assigns %u, lost %u, revoked %u\n", S.assigns, S.revokes_lost, S.revokes_ok);
  assert_false(S.timed_out);
  assert_int_equal(code, 0);
  assert_true(S.revokes_lost >= 1);
  assert_true(S.assigns >= 2);
  /* A revoke in good order (lost = false) is it_kafka_consumer_api's close. */
}

int main(void) {
  bt_log_init("it_kafka_consumer_lost", BT_LOG_WARN);
  bt_test_env_load();
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_lost_told_apart)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
