/* The consumer APIs the saga engine and the projector build on, against devkafka:
 * - on_assign chooses start offsets (the projector's offsets live in its sinks), with the
 *   cooperative-sticky assignor and a static group.instance.id; on_revoke hears the close;
 * - batch delivery stays within batch_max;
 * - kept messages stay valid past their callback and count against max_in_flight: fetching
 *   pauses and resumes without losing or repeating a message (per partition, offsets follow
 *   each other), and lag gauges from cached watermarks show the backlog meanwhile;
 * - stored offsets are committed coalesced (no explicit commit): a second run of the group
 *   starts exactly after them;
 * - a manual consumer (no group subscription) reads from the offsets it assigns. */
#include <stdint.h>
#include <unistd.h>

#include "app.h"
#include "kafka_consumer.h"
#include "kafka_producer.h"
#include "log.h"
#include "test_kafka_common.h"

#define NPART 2
#define NPER 300          /* records per partition */
#define START_P0 40       /* on_assign starts partition 0 here */
#define BATCH_MAX 16
#define MAX_IN_FLIGHT 50
#define NEXTRA 10         /* records per partition added before the second run */

typedef struct st {
  bt_app_t app;
  uv_timer_t watchdog, release_timer;
  bool timed_out;
  char topic[64];
  unsigned produced;
  /* run state */
  int64_t next[NPART];      /* next expected offset per partition, -1 before the first */
  int64_t first[NPART];
  unsigned order_errors, messages, batches, max_batch, target;
  unsigned assigns, revokes, revokes_lost;
  bt_kafka_consumer_t *c;
  const bt_kafka_message_t *held[4096];
  unsigned nheld, max_unreleased;
  bool keep;                /* keep messages and release them from a timer */
  bool store;               /* store offsets (coalesced commit) */
  int64_t max_lag;          /* largest lag seen while holding */
  bool payload_ok;
} st_t;

static st_t S;

static void on_watchdog(uv_timer_t *t) {
  S.timed_out = true;
  bt_app_shutdown(&S.app);
}

static void close_timers(bt_app_t *app, void *arg) {
  uv_close((uv_handle_t *)&S.watchdog, NULL);
  uv_close((uv_handle_t *)&S.release_timer, NULL);
}

static void app_start(const char *name) {
  /* devkafka's group coordinator can take a session timeout or two to settle a join or a
   * leave when the machine is loaded: the close gets 60 s. */
  bt_app_init(&S.app, name, 60000);
  uv_timer_init(S.app.loop, &S.watchdog);
  uv_timer_init(S.app.loop, &S.release_timer);
  uv_timer_start(&S.watchdog, on_watchdog, 120000, 0);
  bt_app_on_shutdown(&S.app, NULL, close_timers, NULL);
}

static void on_produced(const bt_kafka_delivery_t *d, void *opaque) {
  assert_int_equal(d->err, 0);
  if (--S.produced == 0)
    bt_app_shutdown(&S.app);
}

/* Writes n records to each partition; the value is "<partition>:<offset-independent seq>". */
static void produce(unsigned n) {
  app_start("it_kafka_consumer_api_produce");
  bt_kafka_producer_config_t cfg = {.brokers = bt_test_env("BATON_KAFKA_BROKERS")};
  bt_kafka_producer_t *p;
  char errstr[256];
  if (bt_kafka_producer_new(&p, &S.app, &cfg, errstr) != 0)
    fail_msg("producer: %s", errstr);
  for (int32_t part = 0; part < NPART; part++)
    for (unsigned i = 0; i < n; i++) {
      char v[32];
      int len = snprintf(v, sizeof v, "p%d", part);
      bt_kafka_record_t rec = {.topic = S.topic, .partition = part, .key = "k", .key_len = 1,
                               .value = v, .value_len = (size_t)len};
      assert_int_equal(bt_kafka_producer_produce(p, &rec, on_produced, NULL), 0);
      S.produced++;
    }
  assert_int_equal(bt_app_run(&S.app), 0);
  assert_false(S.timed_out);
}

static void reset_run(unsigned target) {
  for (int i = 0; i < NPART; i++)
    S.next[i] = S.first[i] = -1;
  S.order_errors = S.messages = S.batches = S.max_batch = 0;
  S.assigns = S.revokes = S.revokes_lost = 0;
  S.nheld = S.max_unreleased = 0;
  S.max_lag = 0;
  S.target = target;
  S.payload_ok = true;
}

static void check_done(void) {
  /* >=: a repeated message would otherwise hold the run until the watchdog; the counts are
   * asserted exactly afterwards. */
  if (S.messages >= S.target && S.nheld == 0)
    bt_app_shutdown(&S.app);
}

static void on_release(uv_timer_t *t) {
  /* Look at the backlog while fetching is held back, then let a part of it go. */
  for (int32_t part = 0; part < NPART; part++) {
    int64_t lag;
    if (bt_kafka_consumer_lag(S.c, S.topic, part, &lag) == 0 && lag > S.max_lag)
      S.max_lag = lag;
  }
  unsigned n = S.nheld < 20 ? S.nheld : 20;
  for (unsigned i = 0; i < n; i++) {
    const bt_kafka_message_t *m = S.held[--S.nheld];
    /* Still valid after its callback: the payload is what the producer wrote. */
    char want[8];
    snprintf(want, sizeof want, "p%d", m->partition);
    if (m->value_len != strlen(want) || memcmp(m->value, want, m->value_len) != 0)
      S.payload_ok = false;
    bt_kafka_consumer_release(S.c, m);
  }
  check_done();
}

static void on_batch(bt_kafka_consumer_t *c, bt_kafka_message_t *const *msgs, size_t n,
                     void *arg) {
  S.batches++;
  if (n > S.max_batch)
    S.max_batch = (unsigned)n;
  for (size_t i = 0; i < n; i++) {
    const bt_kafka_message_t *m = msgs[i];
    assert_true(m->partition >= 0 && m->partition < NPART);
    int64_t *next = &S.next[m->partition];
    if (*next < 0)
      S.first[m->partition] = m->offset;
    else if (m->offset != *next)
      S.order_errors++;
    *next = m->offset + 1;
    S.messages++;
    if (S.store)
      assert_int_equal(bt_kafka_consumer_store(c, m), 0);
    if (S.keep) {
      bt_kafka_consumer_keep(c, m);
      assert_true(S.nheld < BT_ARRAY_LEN(S.held));
      S.held[S.nheld++] = m;
      if (S.nheld > S.max_unreleased)
        S.max_unreleased = S.nheld;
    }
  }
  if (S.keep && !uv_is_active((uv_handle_t *)&S.release_timer))
    uv_timer_start(&S.release_timer, on_release, 50, 50);
  check_done();
}

static void on_assign(bt_kafka_consumer_t *c, bt_kafka_partition_t *parts, size_t n,
                      void *arg) {
  S.assigns++;
  /* The "sink" gives the offsets: after the messages it has seen, as a projector does (the
   * group may rebalance mid-run, and devkafka's does); in the first run it says p0 is done
   * up to 40 before anything is seen. */
  for (size_t i = 0; i < n; i++) {
    int32_t part = parts[i].partition;
    if (part < 0 || part >= NPART)
      continue;
    if (S.next[part] >= 0)
      parts[i].offset = S.next[part];
    else if (part == 0 && S.target == NPART * NPER - START_P0)
      parts[i].offset = START_P0;
  }
}

static void on_revoke(bt_kafka_consumer_t *c, const bt_kafka_partition_t *parts, size_t n,
                      bool lost, void *arg) {
  S.revokes++;
  if (lost)
    S.revokes_lost++;
}

static bt_kafka_consumer_t *consumer(const char *group, bool manual) {
  const char *topics[] = {S.topic};
  bt_kafka_consumer_config_t cfg = {
      .name = "kafka_projector",
      .brokers = bt_test_env("BATON_KAFKA_BROKERS"),
      .group_id = group,
      .topics = topics,
      .ntopics = 1,
      .manual = manual,
      .assignor = "cooperative-sticky",
      .group_instance_id = manual ? NULL : "it-consumer-api-1",
      .stats_interval_ms = 100,
      .commit_interval_ms = 100,
      .batch_max = BATCH_MAX,
      .max_in_flight = MAX_IN_FLIGHT,
      .on_batch = on_batch,
      .on_assign = on_assign,
      .on_revoke = on_revoke,
  };
  bt_kafka_consumer_t *c;
  char errstr[256];
  if (bt_kafka_consumer_new(&c, &S.app, &cfg, NULL, NULL, errstr) != 0)
    fail_msg("consumer: %s", errstr);
  return c;
}

static void test_consumer_api(void **state) {
  snprintf(S.topic, sizeof S.topic, "it-consumer-api-%d", (int)getpid());
  kt_topic(S.topic, NPART);
  produce(NPER);

  /* Run 1: keep every message, release slowly; store offsets for a coalesced commit. */
  reset_run(NPART * NPER - START_P0);
  S.keep = S.store = true;
  app_start("it_kafka_consumer_api_1");
  S.c = consumer(S.topic, false);
  assert_int_equal(bt_app_run(&S.app), 0);
  print_message("run 1: %u messages in %u batches (max %u), max unreleased %u, max lag %lld, "
                "first %lld/%lld, next %lld/%lld, order errors %u\n",
                S.messages, S.batches, S.max_batch, S.max_unreleased, (long long)S.max_lag,
                (long long)S.first[0], (long long)S.first[1], (long long)S.next[0],
                (long long)S.next[1], S.order_errors);
  assert_false(S.timed_out);
  assert_int_equal(S.messages, NPART * NPER - START_P0);
  assert_int_equal(S.order_errors, 0);
  assert_int_equal(S.first[0], START_P0); /* on_assign's offset was used */
  assert_int_equal(S.first[1], 0);
  assert_true(S.assigns >= 1);
  assert_true(S.revokes >= 1 && S.revokes_lost == 0); /* the close revokes in good order */
  assert_true(S.max_batch > 1 && S.max_batch <= BATCH_MAX);
  /* The budget held: at most one batch past it (the one that crossed it). */
  assert_true(S.max_unreleased <= MAX_IN_FLIGHT + BATCH_MAX);
  assert_true(S.max_lag > 0);
  assert_true(S.payload_ok);

  /* Run 2 of the same group starts right after the stored offsets. */
  produce(NEXTRA);
  reset_run(NPART * NEXTRA);
  S.keep = false;
  S.store = true;
  app_start("it_kafka_consumer_api_2");
  S.c = consumer(S.topic, false);
  assert_int_equal(bt_app_run(&S.app), 0);
  assert_false(S.timed_out);
  assert_int_equal(S.first[0], NPER);
  assert_int_equal(S.first[1], NPER);
  assert_int_equal(S.messages, NPART * NEXTRA);
  assert_int_equal(S.order_errors, 0);

  /* A manual consumer reads partition 1 from an offset it picks, without a subscription. */
  reset_run(NPER + NEXTRA - 100);
  S.store = false;
  app_start("it_kafka_consumer_api_manual");
  S.c = consumer(NULL, true);
  bt_kafka_partition_t p = {.topic = S.topic, .partition = 1, .offset = 100};
  assert_int_equal(bt_kafka_consumer_assign(S.c, &p, 1), 0);
  assert_int_equal(bt_app_run(&S.app), 0);
  assert_false(S.timed_out);
  assert_int_equal(S.first[1], 100);
  assert_int_equal(S.next[0], -1);
  assert_int_equal(S.messages, NPER + NEXTRA - 100);
  assert_int_equal(S.order_errors, 0);
}

int main(void) {
  bt_log_init("it_kafka_consumer_api", BT_LOG_WARN);
  bt_test_env_load();
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_consumer_api)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
