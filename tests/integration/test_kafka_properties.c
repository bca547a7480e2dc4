/* BATON_KAFKA_PROPERTIES: SASL/PLAIN settings reach librdkafka (its own config dump says so),
 * bad entries are refused with a message that names the entry and never shows a secret, and
 * the broker's start-up log shows the settings with the password masked. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "kafka_client.h"
#include "kafka_props.h"
#include "log.h"
#include "test_kafka_common.h"

#define SECRET "hunter2-Zq8"
#define SASL_PROPS                                                                               \
  "security.protocol=SASL_PLAINTEXT, sasl.mechanism=PLAIN,sasl.username=svc-baton,"             \
  "sasl.password=" SECRET ",client.id=a\\,b"

/* Value of name in librdkafka's dump of conf, or NULL. */
static const char *dump_get(const char **dump, size_t n, const char *name) {
  for (size_t i = 0; i + 1 < n; i += 2)
    if (strcmp(dump[i], name) == 0)
      return dump[i + 1];
  return NULL;
}

static void test_sasl_reaches_librdkafka(void **state) {
  bt_kafka_client_t c = {0};
  char errstr[256];
  rd_kafka_conf_t *conf = bt_kafka_client_conf(&c, "127.0.0.1:1", SASL_PROPS, 1000, errstr);
  if (!conf)
    fail_msg("conf: %s", errstr);
  size_t n;
  const char **dump = rd_kafka_conf_dump(conf, &n);
  assert_string_equal(dump_get(dump, n, "security.protocol"), "sasl_plaintext");
  assert_string_equal(dump_get(dump, n, "sasl.mechanisms"), "PLAIN");
  assert_string_equal(dump_get(dump, n, "sasl.username"), "svc-baton");
  assert_string_equal(dump_get(dump, n, "sasl.password"), SECRET);
  assert_string_equal(dump_get(dump, n, "client.id"), "a,b"); /* the escaped comma */
  rd_kafka_conf_dump_free(dump, n);
  rd_kafka_conf_destroy(conf);

  char shown[512];
  bt_kafka_props_mask(SASL_PROPS, shown, sizeof shown);
  assert_null(strstr(shown, SECRET));
  assert_non_null(strstr(shown, "sasl.password=***"));
  assert_non_null(strstr(shown, "sasl.username=svc-baton"));
}

static void expect_refused(const char *props, const char *want) {
  bt_kafka_client_t c = {0};
  char errstr[256] = "";
  rd_kafka_conf_t *conf = bt_kafka_client_conf(&c, "127.0.0.1:1", props, 1000, errstr);
  if (conf)
    fail_msg("accepted: %s", props);
  if (!strstr(errstr, want))
    fail_msg("%s: error \"%s\" lacks \"%s\"", props, errstr, want);
  assert_null(strstr(errstr, SECRET));
}

static void test_bad_entries_named(void **state) {
  expect_refused("sasl.password=" SECRET ",sasl.username", "entry 2 (sasl.username)");
  expect_refused("sasl.password=" SECRET ",acks=1", "entry 2 (acks): set by baton itself");
  expect_refused("no.such.setting=1", "entry 1 (no.such.setting)");
  expect_refused("=x", "empty name");
  expect_refused("client.id=x,socket.timeout.ms=soon", "entry 2 (socket.timeout.ms)");
  assert_true(bt_kafka_prop_is_secret("ssl.key.password"));
  assert_true(bt_kafka_prop_is_secret("ssl.keystore.password"));
  assert_true(bt_kafka_prop_is_secret("ssl.key.pem"));
  assert_true(bt_kafka_prop_is_secret("sasl.oauthbearer.client.secret"));
  assert_false(bt_kafka_prop_is_secret("sasl.username"));
}

/* The broker logs its settings at start; the password must not appear, masked or not. */
static void test_broker_log_masks_secret(void **state) {
  int port = bt_test_free_port();
  char port_env[64], log[256], url[128];
  snprintf(port_env, sizeof port_env, "BATON_HTTP_PORT=%d", port);
  snprintf(log, sizeof log, "%s/it_kafka_properties_broker.log", getenv("BATON_BUILD_DIR"));
  unlink(log);
  const char *env[] = {port_env, "BATON_BROKER_RELAY=false", "BATON_SHUTDOWN_TIMEOUT=5s",
                       "BATON_KAFKA_PROPERTIES=" SASL_PROPS, NULL};
  const char *argv[] = {bt_test_bin("baton-broker"), NULL};
  pid_t pid = bt_test_spawn(argv, env, log);
  snprintf(url, sizeof url, "http://127.0.0.1:%d/healthz", port);
  if (bt_test_wait_status(url, 200, 20000) != 0)
    fail_msg("broker did not start; see %s", log);
  int status = bt_test_stop(pid, SIGTERM, 20000);
  assert_true(WIFEXITED(status));

  FILE *f = fopen(log, "r");
  assert_non_null(f);
  static char text[1 << 20];
  size_t len = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[len] = '\0';
  if (strstr(text, SECRET))
    fail_msg("the password appears in %s", log);
  assert_non_null(strstr(text, "\"kafka client created\""));
  assert_non_null(strstr(text, "sasl.password=***"));
  assert_non_null(strstr(text, "sasl.username=svc-baton"));
}

int main(void) {
  bt_log_init("it_kafka_properties", BT_LOG_WARN);
  bt_test_env_load();
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_sasl_reaches_librdkafka),
                                     cmocka_unit_test(test_bad_entries_named),
                                     cmocka_unit_test(test_broker_log_masks_secret)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
