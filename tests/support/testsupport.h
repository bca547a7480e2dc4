/* Helpers shared by the integration tests: the stack's environment, child processes of
 * our own binaries, a blocking HTTP/1.1 client, and shell commands against the dev stack.
 * Everything here blocks; it is test code, not runtime code. */
#ifndef BT_TESTSUPPORT_H
#define BT_TESTSUPPORT_H

#include <stdarg.h>
#include <stddef.h>
#include <setjmp.h>
#include <stdint.h>
#include <sys/types.h>
#include <cmocka.h>

/* Loads $BATON_TEST_ENV (KEY=VALUE lines written by `./dev stack-up`) into the process
 * environment. Fails the test (cmocka fail_msg) when the file is missing: in CI every server
 * is started, so a missing stack is a failure, never a skip. */
void bt_test_env_load(void);
/* getenv() that fails the test when the variable is unset. */
const char *bt_test_env(const char *name);

/* Path of a built binary, e.g. bt_test_bin("baton-broker") -> $BATON_BUILD_DIR/broker/baton-broker.
 * Known names: baton-broker, baton-devkafka, baton-saga, baton-projector and the example
 * participants baton-inventory, baton-payment, baton-shipping. Returns a static buffer. */
const char *bt_test_bin(const char *name);

/* Starts a child process with extra environment entries ("K=V", NULL-terminated; may be
 * NULL). stdout/stderr go to `logfile` if non-NULL (appended). Returns the pid. */
pid_t bt_test_spawn(const char *const argv[], const char *const extra_env[], const char *logfile);
/* Sends sig and waits up to timeout_ms; returns the exit status as from waitpid (or -1 on
 * timeout, after which the child is SIGKILLed and reaped). */
int bt_test_stop(pid_t pid, int sig, int timeout_ms);
/* Returns a free TCP port on 127.0.0.1. */
int bt_test_free_port(void);

/* Polls GET url until it answers `status` or timeout_ms passes; returns 0 or -1. */
int bt_test_wait_status(const char *url, int status, int timeout_ms);

typedef struct bt_test_http_resp {
  int status;          /* 0 if the connection failed */
  char *body;          /* malloc'd, NUL-terminated */
  size_t body_len;
  char *headers;       /* raw response header block, malloc'd */
} bt_test_http_resp_t;

/* One blocking request on a fresh connection. `headers` is extra raw header lines, each
 * ending in "\r\n", or NULL. Returns 0 when a response was read, -1 otherwise. */
int bt_test_http(const char *method, const char *url, const char *headers, const char *body,
                 size_t body_len, bt_test_http_resp_t *resp);
void bt_test_http_free(bt_test_http_resp_t *resp);
/* Value of a response header (case-insensitive) copied into out; 0 if found. */
int bt_test_http_header(const bt_test_http_resp_t *resp, const char *name, char *out, size_t outsz);

/* Connects a blocking TCP socket to host:port; returns the fd or -1. */
int bt_test_connect(const char *host, int port);

/* Runs a shell command with the stack env (e.g. "./dev pg-restart") from the source dir;
 * returns its exit status. */
int bt_test_sh(const char *fmt, ...) __attribute__((format(printf, 1, 2)));

/* Writes `text` to dir/file (a definition file, say), replacing it. Returns 0, or -1 with
 * errno set. */
int bt_test_write_file(const char *dir, const char *file, const char *text);

/* Milliseconds from CLOCK_MONOTONIC. */
uint64_t bt_test_now_ms(void);

#endif
