/* The alarm() backstop around rd_kafka_destroy(): a destroy that blocks (here an on_destroy
 * interceptor that never returns, standing for a librdkafka thread that never joins) must not
 * hang the process past the shutdown deadline. A child process destroys such a handle
 * with a 2 s deadline; it must end with exit code 1 and a log line saying why, in well under
 * the test's own timeout. */
#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include "app.h"
#include "kafka_client.h"
#include "log.h"
#include "test_kafka_common.h"

static rd_kafka_resp_err_t hang(rd_kafka_t *rk, void *ic_opaque) {
  for (;;)
    pause();
  return 0;
}

static rd_kafka_resp_err_t on_new(rd_kafka_t *rk, const rd_kafka_conf_t *conf, void *ic_opaque,
                                  char *errstr, size_t errstr_size) {
  return rd_kafka_interceptor_add_on_destroy(rk, "hang", hang, NULL);
}

static void child(const char *logpath) {
  int fd = open(logpath, O_WRONLY | O_CREAT | O_TRUNC, 0644);
  if (fd < 0 || dup2(fd, STDOUT_FILENO) < 0)
    _exit(3);
  bt_log_init("it_kafka_destroy_backstop_child", BT_LOG_INFO);
  bt_app_t app;
  bt_app_init(&app, "it_kafka_destroy_backstop_child", 2000);
  bt_kafka_client_t c = {0};
  char errstr[256];
  rd_kafka_conf_t *conf = bt_kafka_client_conf(&c, bt_test_env("BATON_KAFKA_BROKERS"), NULL,
                                               1000, errstr);
  if (!conf || rd_kafka_conf_interceptor_add_on_new(conf, "hang", on_new, NULL) != 0 ||
      bt_kafka_client_create(&c, &app, "producer", NULL, RD_KAFKA_PRODUCER, conf, NULL,
                                      errstr) != 0)
    _exit(4);
  bt_kafka_client_destroy(&c);
  _exit(0); /* reached only if the destroy returned */
}

static void test_hung_destroy_ends_process(void **state) {
  char logpath[256];
  snprintf(logpath, sizeof logpath, "%s/it_kafka_destroy_backstop.log",
           getenv("BATON_BUILD_DIR"));
  uint64_t t0 = bt_test_now_ms();
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0)
    child(logpath);
  int status = 0;
  pid_t r;
  /* Generous: the backstop fires after 2 s; 30 s means it did not fire at all. */
  while ((r = waitpid(pid, &status, WNOHANG)) == 0 && bt_test_now_ms() - t0 < 30000)
    usleep(50000);
  if (r == 0) {
    kill(pid, SIGKILL);
    waitpid(pid, &status, 0);
    fail_msg("the child still hung in rd_kafka_destroy after 30 s");
  }
  print_message("child ended after %llu ms\n", (unsigned long long)(bt_test_now_ms() - t0));
  assert_true(WIFEXITED(status));
  assert_int_equal(WEXITSTATUS(status), 1);
  FILE *f = fopen(logpath, "r");
  assert_non_null(f);
  char text[65536];
  size_t n = fread(text, 1, sizeof text - 1, f);
  fclose(f);
  text[n] = '\0';
  assert_non_null(strstr(text, "kafka handle destroy blocked past the shutdown deadline"));
}

int main(void) {
  bt_log_init("it_kafka_destroy_backstop", BT_LOG_WARN);
  bt_test_env_load();
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_hung_destroy_ends_process)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
