/* A failed uv_accept must leave the server's connection count alone. The listener's callback
 * is called by hand with no connection pending, so uv_accept fails (EAGAIN) as it does when a
 * client resets between the kernel's accept queue and ours; the count stays 0 instead of
 * wrapping to UINT_MAX through a close that uncounts a connection never counted. The .c is
 * included to reach on_connection. */
#include "testsupport.h"

#include "http_server.c"

static void test_failed_accept_not_counted(void **state) {
  (void)state;
  bt_log_init("test-http-accept", BT_LOG_ERROR);
  bt_app_t app;
  bt_app_init(&app, "test-http-accept", 1000);
  bt_http_server_t *srv;
  char err[256];
  assert_int_equal(bt_http_server_start(&srv, &app, "127.0.0.1", 0, NULL, err), 0);
  on_connection((uv_stream_t *)&srv->listener, 0); /* nothing to accept */
  for (int i = 0; i < 10; i++)
    uv_run(app.loop, UV_RUN_NOWAIT); /* the failed connection's close callbacks */
  assert_int_equal(bt_http_server_connections(srv), 0);
  /* A real client afterwards is counted once. */
  int fd = bt_test_connect("127.0.0.1", bt_http_server_port(srv));
  assert_true(fd >= 0);
  for (int i = 0; i < 200 && bt_http_server_connections(srv) == 0; i++)
    uv_run(app.loop, UV_RUN_NOWAIT);
  assert_int_equal(bt_http_server_connections(srv), 1);
  close(fd);
  for (int i = 0; i < 200 && bt_http_server_connections(srv) != 0; i++)
    uv_run(app.loop, UV_RUN_NOWAIT);
  assert_int_equal(bt_http_server_connections(srv), 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_failed_accept_not_counted)};
  return cmocka_run_group_tests_name("http_accept", tests, NULL, NULL);
}
