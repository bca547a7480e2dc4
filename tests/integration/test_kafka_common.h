/* Helpers shared by the Kafka adapter tests: devkafka's control endpoint and a small reader
 * that consumes a whole topic into an array (an oracle that does not use the code under test's
 * producer path). Header-only: each test is one executable. */
#ifndef TEST_KAFKA_COMMON_H
#define TEST_KAFKA_COMMON_H

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testsupport.h"

/* Kafka error codes injected through devkafka. */
#define KT_API_PRODUCE 0
#define KT_ERR_INVALID_RECORD 87 /* permanent for the batch, not persisted */

static inline void kt_control(const char *method, const char *path, const char *body) {
  char url[256];
  snprintf(url, sizeof url, "%s%s", bt_test_env("BATON_DEVKAFKA_CONTROL"), path);
  bt_test_http_resp_t resp;
  assert_int_equal(bt_test_http(method, url, body ? "Content-Type: application/json\r\n" : NULL,
                                body, body ? strlen(body) : 0, &resp), 0);
  if (resp.status != 200)
    fail_msg("%s %s: %d %s", method, path, resp.status, resp.body);
  bt_test_http_free(&resp);
}

static inline void kt_topic(const char *name, int partitions) {
  char body[160];
  snprintf(body, sizeof body, "{\"name\":\"%s\",\"partitions\":%d}", name, partitions);
  kt_control("POST", "/topics", body);
}

/* The next n requests of api_key fail with err. */
static inline void kt_push_errors(int api_key, int err, int n) {
  char body[160];
  int len = snprintf(body, sizeof body, "{\"api_key\":%d,\"errors\":[", api_key);
  for (int i = 0; i < n; i++)
    len += snprintf(body + len, sizeof body - (size_t)len, "%s%d", i ? "," : "", err);
  snprintf(body + len, sizeof body - (size_t)len, "]}");
  kt_control("POST", "/errors", body);
}

static inline void kt_clear_errors(int api_key) {
  char path[64];
  snprintf(path, sizeof path, "/errors/%d", api_key);
  kt_control("DELETE", path, NULL);
}

#endif
