/* Log buffering tests. Each case runs in a forked child whose stdout is a file or a pipe, and
 * checks what reached it: lines wait in the buffer (no write per line), come out in order on
 * the flush timer, at exit and before abort, and a full buffer drops lines instead of blocking. */
#include <fcntl.h>
#include <stdbool.h>
#include <signal.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <jansson.h>

#include "buf.h"
#include "errors.h"
#include "log.h"
#include "testsupport.h"

static int wait_child(pid_t pid, int timeout_ms) {
  uint64_t until = bt_test_now_ms() + (uint64_t)timeout_ms;
  int st = 0;
  while (waitpid(pid, &st, WNOHANG) != pid) {
    if (bt_test_now_ms() > until) {
      kill(pid, SIGKILL);
      waitpid(pid, &st, 0);
      fail_msg("child %d still running after %d ms (blocked?)", (int)pid, timeout_ms);
    }
    usleep(10000);
  }
  return WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
}

/* A temporary file for a child's stdout; returns its fd (unlinked). */
static int temp_out(void) {
  char path[] = "/tmp/bt-test-log-XXXXXX";
  int fd = mkstemp(path);
  assert_true(fd >= 0);
  unlink(path);
  return fd;
}

static char *read_all(int fd) {
  struct stat st;
  assert_int_equal(fstat(fd, &st), 0);
  char *s = calloc(1, (size_t)st.st_size + 1);
  assert_int_equal(pread(fd, s, (size_t)st.st_size, 0), st.st_size);
  return s;
}

/* Checks that text holds JSON lines whose "seq" runs first..first+n-1 in order (lines with
 * no seq are skipped); returns how many seq lines it saw. A last line without a newline is
 * allowed when partial_tail is set (a write cut short by a full pipe). */
static int check_seq_lines(char *text, int first, bool partial_tail) {
  int want = first, seen = 0;
  for (char *line = text, *nl; *line; line = nl + 1) {
    nl = strchr(line, '\n');
    if (!nl) {
      assert_true(partial_tail);
      break;
    }
    *nl = '\0';
    json_error_t e;
    json_t *j = json_loads(line, 0, &e);
    if (!j)
      fail_msg("not a JSON line: %s", line);
    json_t *seq = json_object_get(j, "seq");
    if (seq) {
      if (json_integer_value(seq) < want)
        fail_msg("seq %lld after %d: out of order", (long long)json_integer_value(seq), want - 1);
      if (!partial_tail && json_integer_value(seq) != want)
        fail_msg("seq %lld, want %d: a line is missing", (long long)json_integer_value(seq), want);
      want = (int)json_integer_value(seq) + 1;
      seen++;
    }
    json_decref(j);
  }
  return seen;
}

/* --- buffered on the loop, flushed by the timer, the rest at exit ------------------------- */
static int check_fd;

static void on_check(uv_timer_t *t) {
  /* The 50 ms flush timer is due before this one, so the first 100 lines are out by now. */
  char *s = read_all(check_fd);
  int lines = 0;
  for (char *p = s; (p = strchr(p, '\n')); p++)
    lines++;
  free(s);
  if (lines != 100)
    _exit(11);
  for (int i = 100; i < 150; i++)
    bt_log_info("tail", "{s:i}", "seq", i);
  exit(0); /* atexit flushes the 50 lines still buffered */
}

static void test_flushed_on_timer_and_at_exit_in_order(void **state) {
  int fd = temp_out();
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(fd, STDOUT_FILENO);
    check_fd = fd;
    bt_log_init("test-log", BT_LOG_INFO);
    static uv_loop_t loop;
    uv_loop_init(&loop);
    if (bt_log_attach(&loop) != 0)
      _exit(9);
    for (int i = 0; i < 100; i++)
      bt_log_info("line", "{s:i}", "seq", i);
    struct stat st;
    if (fstat(fd, &st) != 0 || st.st_size != 0)
      _exit(10); /* written at once: not buffered */
    static uv_timer_t check;
    uv_timer_init(&loop, &check);
    uv_timer_start(&check, on_check, 1000, 0);
    uv_run(&loop, UV_RUN_DEFAULT);
    _exit(12);
  }
  int code = wait_child(pid, 30000);
  if (code != 0)
    fail_msg("child exit %d (10: not buffered, 11: timer did not flush, 12: no exit)", code);
  char *s = read_all(fd);
  assert_int_equal(check_seq_lines(s, 0, false), 150);
  free(s);
  close(fd);
}

/* --- bt_fatal flushes before abort ------------------------------------------------------- */
static void test_fatal_flushes_buffered_lines(void **state) {
  int fd = temp_out();
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    dup2(fd, STDOUT_FILENO);
    signal(SIGABRT, SIG_DFL);
    bt_log_init("test-log", BT_LOG_INFO);
    static uv_loop_t loop;
    uv_loop_init(&loop);
    if (bt_log_attach(&loop) != 0)
      _exit(9);
    for (int i = 0; i < 10; i++)
      bt_log_info("before fatal", "{s:i}", "seq", i);
    bt_fatal("boom %d", 42);
  }
  assert_int_equal(wait_child(pid, 30000), 128 + SIGABRT);
  char *s = read_all(fd);
  assert_non_null(strstr(s, "boom 42"));
  assert_int_equal(check_seq_lines(s, 0, false), 10);
  free(s);
  close(fd);
}

/* --- a stdout nobody reads: the bounded buffer drops and counts, never blocks ------------ */
static void test_full_buffer_drops_instead_of_blocking(void **state) {
  int p[2];
  assert_int_equal(pipe(p), 0);
  pid_t pid = fork();
  assert_true(pid >= 0);
  if (pid == 0) {
    close(p[0]);
    dup2(p[1], STDOUT_FILENO);
    fcntl(STDOUT_FILENO, F_SETFL, fcntl(STDOUT_FILENO, F_GETFL) | O_NONBLOCK);
    bt_log_init("test-log", BT_LOG_INFO);
    bt_log_set_buffer(64 << 10, 16 << 10, 50);
    static uv_loop_t loop;
    uv_loop_init(&loop);
    if (bt_log_attach(&loop) != 0)
      _exit(9);
    for (int i = 0; i < 20000; i++)
      bt_log_info("filler line to fill the pipe and the buffer", "{s:i}", "seq", i);
    _exit(bt_log_dropped() > 0 ? 0 : 10);
  }
  close(p[1]);
  /* The child must finish while nobody reads: blocking on the pipe would hang it. */
  assert_int_equal(wait_child(pid, 30000), 0);
  bt_buf_t b;
  bt_buf_init(&b, 0);
  char chunk[65536];
  ssize_t n;
  while ((n = read(p[0], chunk, sizeof chunk)) > 0)
    assert_int_equal(bt_buf_append(&b, chunk, (size_t)n), 0);
  close(p[0]);
  assert_int_equal(bt_buf_append(&b, "", 0), 0);
  int seen = check_seq_lines(b.data, 0, true);
  assert_true(seen > 100);   /* the pipe got what fit */
  assert_true(seen < 20000); /* and the rest was dropped */
  bt_buf_free(&b);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_flushed_on_timer_and_at_exit_in_order),
      cmocka_unit_test(test_fatal_flushes_buffered_lines),
      cmocka_unit_test(test_full_buffer_drops_instead_of_blocking),
  };
  return cmocka_run_group_tests_name("log", tests, NULL, NULL);
}
