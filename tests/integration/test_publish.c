/* Publish through a real baton-broker into baton-devkafka, checked by reading Kafka back:
 * 10,000 events per content mode each present once with the right key, headers and data;
 * every validation error over HTTP (and nothing published); topic rules; bearer auth. */
#include <jansson.h>
#include <signal.h>
#include <sys/wait.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "baton/v1/event.pb-c.h"
#include "errors.h"
#include "kafka_oracle.h"
#include "keepalive.h"
#include "testsupport.h"

static int port;
static pid_t broker;
static char run_id[32];

static pid_t start_broker(int *out_port, const char *const extra[]) {
  *out_port = bt_test_free_port();
  char port_env[64], log[256];
  snprintf(port_env, sizeof port_env, "BATON_HTTP_PORT=%d", *out_port);
  snprintf(log, sizeof log, "%s/publish-broker-%d.log", getenv("BATON_BUILD_DIR"), *out_port);
  const char *env[16] = {port_env, "BATON_LOG_LEVEL=warn"};
  size_t n = 2;
  for (size_t i = 0; extra && extra[i] && n < 15; i++)
    env[n++] = extra[i];
  env[n] = NULL;
  const char *argv[] = {bt_test_bin("baton-broker"), NULL};
  pid_t pid = bt_test_spawn(argv, env, log);
  char url[128];
  snprintf(url, sizeof url, "http://127.0.0.1:%d/readyz", *out_port);
  if (bt_test_wait_status(url, 200, 15000) != 0)
    fail_msg("broker did not become ready; see %s", log);
  return pid;
}

static int setup(void **state) {
  bt_test_env_load();
  unsetenv("BATON_PG_DSN"); /* publish needs no event store */
  snprintf(run_id, sizeof run_id, "%d", (int)getpid());
  broker = start_broker(&port, NULL);
  return 0;
}

static int teardown(void **state) {
  assert_int_equal(bt_test_stop(broker, SIGTERM, 10000), 0);
  return 0;
}

/* ---- 10,000 events per content mode ------------------------------------------------------- */

enum mode { STRUCTURED, BATCH, BINARY, PROTOBUF };
#define NEVENTS 10000
#define PER_BATCH 100

typedef struct {
  enum mode mode;
  char topic[96];
} mode_ctx_t;

/* Event j of the run: its id, subject (used as key unless a partitionkey is set), and data. */
static void event_fields(const mode_ctx_t *m, size_t j, char *id, char *subject, char *data) {
  sprintf(id, "%s-%zu", m->topic, j);
  sprintf(subject, "agg-%zu", j % 97);
  sprintf(data, "{\"n\":%zu,\"pad\":\"%s\"}", j, "xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx");
}

static size_t json_event(const mode_ctx_t *m, size_t j, char *out, size_t sz) {
  char id[128], subject[32], data[128];
  event_fields(m, j, id, subject, data);
  /* Every third event carries a partitionkey, which must win over the subject as key. */
  char pk[48] = "";
  if (j % 3 == 0)
    sprintf(pk, ",\"partitionkey\":\"pk-%zu\"", j % 7);
  return (size_t)snprintf(out, sz,
                          "{\"specversion\":\"1.0\",\"id\":\"%s\",\"source\":\"/test/publish\","
                          "\"type\":\"test.created\",\"subject\":\"%s\",\"time\":\"2026-11-21T10:00:00Z\","
                          "\"traceparent\":\"00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\""
                          "%s,\"data\":%s}",
                          id, subject, pk, data);
}

static size_t build_request(size_t i, char *path, size_t path_sz, char *headers, size_t headers_sz,
                            char *body, size_t body_sz, void *arg) {
  const mode_ctx_t *m = arg;
  snprintf(path, path_sz, "/v1/topics/%s/events", m->topic);
  switch (m->mode) {
  case STRUCTURED:
    snprintf(headers, headers_sz, "Content-Type: application/cloudevents+json\r\n");
    return json_event(m, i, body, body_sz);
  case BATCH: {
    snprintf(headers, headers_sz, "Content-Type: application/cloudevents-batch+json\r\n");
    size_t n = 0;
    body[n++] = '[';
    for (size_t k = 0; k < PER_BATCH; k++) {
      if (k)
        body[n++] = ',';
      n += json_event(m, i * PER_BATCH + k, body + n, body_sz - n);
    }
    body[n++] = ']';
    return n;
  }
  case BINARY: {
    char id[128], subject[32], data[128];
    event_fields(m, i, id, subject, data);
    snprintf(headers, headers_sz,
             "Content-Type: application/json\r\nce-specversion: 1.0\r\nce-id: %s\r\n"
             "ce-source: /test/publish\r\nce-type: test.created\r\nce-subject: %s\r\n"
             "ce-time: 2026-11-21T10:00:00Z\r\n",
             id, subject);
    if (i % 3 == 0)
      snprintf(headers + strlen(headers), headers_sz - strlen(headers), "ce-partitionkey: pk-%zu\r\n", i % 7);
    /* trace context from the HTTP request itself */
    snprintf(headers + strlen(headers), headers_sz - strlen(headers),
             "traceparent: 00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01\r\n");
    return (size_t)sprintf(body, "%s", data);
  }
  case PROTOBUF: {
    snprintf(headers, headers_sz, "Content-Type: application/x-protobuf\r\n");
    Baton__V1__Event evs[PER_BATCH], *ptrs[PER_BATCH];
    Baton__V1__Event__ExtensionsEntry ext[PER_BATCH][2], *extp[PER_BATCH][2];
    static __thread char ids[PER_BATCH][128], subjects[PER_BATCH][32], datas[PER_BATCH][128],
        pks[PER_BATCH][32];
    for (size_t k = 0; k < PER_BATCH; k++) {
      size_t j = i * PER_BATCH + k;
      event_fields(m, j, ids[k], subjects[k], datas[k]);
      baton__v1__event__init(&evs[k]);
      evs[k].id = ids[k];
      evs[k].source = "/test/publish";
      evs[k].type = "test.created";
      evs[k].specversion = "1.0";
      evs[k].subject = subjects[k];
      evs[k].time = "2026-11-21T10:00:00Z";
      evs[k].datacontenttype = "application/json";
      evs[k].data.data = (uint8_t *)datas[k];
      evs[k].data.len = strlen(datas[k]);
      baton__v1__event__extensions_entry__init(&ext[k][0]);
      ext[k][0].key = "traceparent";
      ext[k][0].value = "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01";
      extp[k][0] = &ext[k][0];
      evs[k].n_extensions = 1;
      if (j % 3 == 0) {
        sprintf(pks[k], "pk-%zu", j % 7);
        baton__v1__event__extensions_entry__init(&ext[k][1]);
        ext[k][1].key = "partitionkey";
        ext[k][1].value = pks[k];
        extp[k][1] = &ext[k][1];
        evs[k].n_extensions = 2;
      }
      evs[k].extensions = extp[k];
      ptrs[k] = &evs[k];
    }
    Baton__V1__EventBatch b = BATON__V1__EVENT_BATCH__INIT;
    b.n_events = PER_BATCH;
    b.events = ptrs;
    size_t len = baton__v1__event_batch__get_packed_size(&b);
    assert_true(len < body_sz);
    return baton__v1__event_batch__pack(&b, (uint8_t *)body);
  }
  }
  return 0;
}

static void check_topic(const mode_ctx_t *m) {
  bt_test_kmsg_t *msgs = NULL;
  long n = bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), m->topic, 30000, &msgs);
  assert_int_equal(n, NEVENTS);
  unsigned char *seen = calloc(NEVENTS, 1);
  for (long i = 0; i < n; i++) {
    const bt_test_kmsg_t *k = &msgs[i];
    const char *ce_id = bt_test_kmsg_header(k, "ce_id");
    assert_non_null(ce_id);
    const char *dash = strrchr(ce_id, '-');
    size_t j = strtoul(dash + 1, NULL, 10);
    assert_true(j < NEVENTS);
    if (seen[j]++)
      fail_msg("event %s appears twice in %s", ce_id, m->topic);
    char id[128], subject[32], data[128], key[32];
    event_fields(m, j, id, subject, data);
    assert_string_equal(ce_id, id);
    if (j % 3 == 0)
      sprintf(key, "pk-%zu", j % 7);
    else
      strcpy(key, subject);
    assert_non_null(k->key);
    assert_string_equal(k->key, key);
    assert_string_equal(bt_test_kmsg_header(k, "ce_specversion"), "1.0");
    assert_string_equal(bt_test_kmsg_header(k, "ce_source"), "/test/publish");
    assert_string_equal(bt_test_kmsg_header(k, "ce_type"), "test.created");
    assert_string_equal(bt_test_kmsg_header(k, "ce_subject"), subject);
    assert_string_equal(bt_test_kmsg_header(k, "ce_time"), "2026-11-21T10:00:00Z");
    assert_string_equal(bt_test_kmsg_header(k, "content-type"), "application/json");
    assert_string_equal(bt_test_kmsg_header(k, "traceparent"),
                        "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01");
    assert_int_equal(k->value_len, strlen(data));
    assert_memory_equal(k->value, data, k->value_len);
  }
  free(seen);
  bt_test_kmsgs_free(msgs, n);
}

static void run_mode(enum mode mode, const char *name) {
  mode_ctx_t m = {.mode = mode};
  snprintf(m.topic, sizeof m.topic, "pub-%s-%s", name, run_id);
  assert_int_equal(bt_test_kafka_create_topic(m.topic, 4), 0);
  size_t requests = (mode == BATCH || mode == PROTOBUF) ? NEVENTS / PER_BATCH : NEVENTS;
  size_t counts[6];
  size_t ok = bt_test_ka_drive(port, requests, 16, build_request, &m, 200, counts);
  assert_int_equal(ok, requests);
  check_topic(&m);
}

static void test_structured_10000(void **state) { run_mode(STRUCTURED, "structured"); }
static void test_batch_10000(void **state) { run_mode(BATCH, "batch"); }
static void test_binary_10000(void **state) { run_mode(BINARY, "binary"); }
static void test_protobuf_10000(void **state) { run_mode(PROTOBUF, "protobuf"); }

/* ---- errors over HTTP, and nothing published ---------------------------------------------- */

static int post(int p, const char *path, const char *headers, const char *body,
                bt_test_http_resp_t *r) {
  char url[1024];
  snprintf(url, sizeof url, "http://127.0.0.1:%d%s", p, path);
  assert_int_equal(bt_test_http("POST", url, headers, body, strlen(body), r), 0);
  return r->status;
}

#define GOOD "{\"specversion\":\"1.0\",\"id\":\"ok-1\",\"source\":\"/s\",\"type\":\"t\"}"

static void test_validation_errors_publish_nothing(void **state) {
  char topic[64], path[128];
  snprintf(topic, sizeof topic, "pub-invalid-%s", run_id);
  snprintf(path, sizeof path, "/v1/topics/%s/events", topic);
  assert_int_equal(bt_test_kafka_create_topic(topic, 1), 0);
  struct { const char *ct, *body; int status; const char *error, *attribute; int index; } cases[] = {
      {"application/cloudevents+json", "{\"id\":\"1\",\"source\":\"s\",\"type\":\"t\"}", 400, "invalid_event", "specversion", 0},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"source\":\"s\",\"type\":\"t\"}", 400, "invalid_event", "id", 0},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"type\":\"t\"}", 400, "invalid_event", "source", 0},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\"}", 400, "invalid_event", "type", 0},
      {"application/cloudevents+json", "{\"specversion\":\"2.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\"}", 400, "invalid_event", "specversion", 0},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"time\":\"noon\"}", 400, "invalid_event", "time", 0},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"data\":1,\"data_base64\":\"AA==\"}", 400, "invalid_event", "data_base64", 0},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"data_base64\":\"%%%\"}", 400, "invalid_event", "data_base64", 0},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"my-ext\":\"x\"}", 400, "invalid_event", "my-ext", 0},
      {"application/cloudevents+json", "{\"specversion\":\"1.0\",\"id\":\"1\",\"source\":\"s\",\"type\":\"t\",\"ext\":[1]}", 400, "invalid_event", "ext", 0},
      {"application/cloudevents+json", "not json", 400, "invalid_json", NULL, -1},
      {"application/cloudevents-batch+json", "[" GOOD ",{\"specversion\":\"1.0\",\"id\":\"2\",\"source\":\"s\"}]", 400, "invalid_event", "type", 1},
      {"application/cloudevents-batch+json", "[]", 400, "empty_batch", NULL, -1},
      {"application/x-protobuf", "\x0a\xff", 400, "invalid_protobuf", NULL, -1},
      {"text/plain", "hello", 415, "unsupported_media_type", NULL, -1},
  };
  for (size_t i = 0; i < BT_ARRAY_LEN(cases); i++) {
    char hdr[128];
    snprintf(hdr, sizeof hdr, "Content-Type: %s\r\n", cases[i].ct);
    bt_test_http_resp_t r;
    post(port, path, hdr, cases[i].body, &r);
    json_t *j = json_loads(r.body, 0, NULL);
    if (r.status != cases[i].status || !j ||
        strcmp(json_string_value(json_object_get(j, "error")), cases[i].error) != 0)
      fail_msg("case %zu: %d %s", i, r.status, r.body);
    if (cases[i].attribute) {
      assert_string_equal(json_string_value(json_object_get(j, "attribute")), cases[i].attribute);
      assert_int_equal(json_integer_value(json_object_get(j, "index")), cases[i].index);
    }
    json_decref(j);
    bt_test_http_free(&r);
  }
  /* Binary mode missing ce-type */
  bt_test_http_resp_t r;
  post(port, path, "ce-specversion: 1.0\r\nce-id: b\r\nce-source: /s\r\n", "x", &r);
  assert_int_equal(r.status, 400);
  assert_non_null(strstr(r.body, "\"attribute\":\"type\""));
  bt_test_http_free(&r);
  /* A body over BATON_HTTP_MAX_BODY (1 MiB by default) */
  size_t big = (1 << 20) + 10;
  char *body = malloc(big + 1);
  memset(body, ' ', big);
  body[big] = '\0';
  post(port, path, "Content-Type: application/cloudevents+json\r\n", body, &r);
  assert_int_equal(r.status, 413);
  bt_test_http_free(&r);
  free(body);
  /* None of the above wrote anything: a batch with one bad event is refused whole. */
  bt_test_kmsg_t *msgs = NULL;
  assert_int_equal(bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), topic, 10000, &msgs), 0);
  bt_test_kmsgs_free(msgs, 0);
  /* And a good one goes through. */
  post(port, path, "Content-Type: application/cloudevents+json\r\n", GOOD, &r);
  assert_int_equal(r.status, 200);
  assert_non_null(strstr(r.body, "\"id\":\"ok-1\""));
  bt_test_http_free(&r);
}

static void test_topic_rules(void **state) {
  bt_test_http_resp_t r;
  post(port, "/v1/topics/bad%20topic/events", "Content-Type: application/cloudevents+json\r\n", GOOD, &r);
  assert_int_equal(r.status, 400);
  assert_non_null(strstr(r.body, "invalid_topic"));
  bt_test_http_free(&r);
  char name[300];
  memset(name, 'a', 260);
  strcpy(name + 260, "");
  char path[400];
  snprintf(path, sizeof path, "/v1/topics/%s/events", name);
  post(port, path, "Content-Type: application/cloudevents+json\r\n", GOOD, &r);
  assert_int_equal(r.status, 400);
  bt_test_http_free(&r);

  /* A broker with an allow-list: exact names and prefixes. */
  int p2;
  const char *extra[] = {"BATON_BROKER_TOPICS=allowed-exact,allowed.*", NULL};
  pid_t b2 = start_broker(&p2, extra);
  post(p2, "/v1/topics/other/events", "Content-Type: application/cloudevents+json\r\n", GOOD, &r);
  assert_int_equal(r.status, 403);
  assert_non_null(strstr(r.body, "topic_not_allowed"));
  bt_test_http_free(&r);
  post(p2, "/v1/topics/allowed.sub/events", "Content-Type: application/cloudevents+json\r\n", GOOD, &r);
  assert_int_equal(r.status, 200);
  bt_test_http_free(&r);
  post(p2, "/v1/topics/allowed-exact/events", "Content-Type: application/cloudevents+json\r\n", GOOD, &r);
  assert_int_equal(r.status, 200);
  bt_test_http_free(&r);
  assert_int_equal(bt_test_stop(b2, SIGTERM, 10000), 0);
}

static void test_auth(void **state) {
  char file[] = "/tmp/bt-tokens-XXXXXX";
  int fd = mkstemp(file);
  /* Comments and blank lines are not tokens. */
  const char *content = "# tokens for the tests\n#commented-token\n  \nfile-token-1\n\nfile-token-2\n";
  assert_true(write(fd, content, strlen(content)) == (ssize_t)strlen(content));
  close(fd);
  char file_env[128];
  snprintf(file_env, sizeof file_env, "BATON_API_TOKENS_FILE=%s", file);
  const char *extra[] = {"BATON_API_TOKENS=env-token", file_env, NULL};
  int p2;
  pid_t b2 = start_broker(&p2, extra);
  bt_test_http_resp_t r;
  const char *path = "/v1/topics/auth-test/events";
  post(p2, path, "Content-Type: application/cloudevents+json\r\n", GOOD, &r);
  assert_int_equal(r.status, 401);
  assert_non_null(strstr(r.body, "unauthorized"));
  bt_test_http_free(&r);
  post(p2, path, "Content-Type: application/cloudevents+json\r\nAuthorization: Bearer env-tokeX\r\n", GOOD, &r);
  assert_int_equal(r.status, 401);
  bt_test_http_free(&r);
  post(p2, path, "Content-Type: application/cloudevents+json\r\nAuthorization: Bearer env-token\r\n", GOOD, &r);
  assert_int_equal(r.status, 200);
  bt_test_http_free(&r);
  post(p2, path, "Content-Type: application/cloudevents+json\r\nAuthorization: Bearer file-token-2\r\n", GOOD, &r);
  assert_int_equal(r.status, 200);
  bt_test_http_free(&r);
  post(p2, path, "Content-Type: application/cloudevents+json\r\nAuthorization: Bearer #commented-token\r\n", GOOD, &r);
  assert_int_equal(r.status, 401);
  bt_test_http_free(&r);
  /* Health, readiness and metrics stay open. */
  const char *open_paths[] = {"/healthz", "/readyz", "/metrics"};
  for (size_t i = 0; i < 3; i++) {
    char url[128];
    snprintf(url, sizeof url, "http://127.0.0.1:%d%s", p2, open_paths[i]);
    assert_int_equal(bt_test_http("GET", url, NULL, NULL, 0, &r), 0);
    assert_int_equal(r.status, 200);
    bt_test_http_free(&r);
  }
  assert_int_equal(bt_test_stop(b2, SIGTERM, 10000), 0);
  unlink(file);
}

/* A tokens file over the read limit (64 KiB) stops the start with a message naming the file,
 * instead of being cut, which would drop the tokens past the cut (here file-token-late) or
 * cut one in two. */
static void test_tokens_file_too_large(void **state) {
  char file[] = "/tmp/bt-tokens-big-XXXXXX";
  int fd = mkstemp(file);
  assert_true(fd >= 0);
  FILE *f = fdopen(fd, "w");
  fputs("file-token-early\n", f);
  for (int i = 0; i < 70000; i++)
    fputc(' ', f);
  fputs("\nfile-token-late\n", f);
  fclose(f);
  char file_env[128], port_env[64], log[256];
  snprintf(file_env, sizeof file_env, "BATON_API_TOKENS_FILE=%s", file);
  snprintf(port_env, sizeof port_env, "BATON_HTTP_PORT=%d", bt_test_free_port());
  snprintf(log, sizeof log, "%s/publish-broker-bigtokens-%d.log", getenv("BATON_BUILD_DIR"),
           (int)getpid());
  unlink(log);
  const char *env[] = {port_env, file_env, NULL};
  const char *argv[] = {bt_test_bin("baton-broker"), NULL};
  pid_t pid = bt_test_spawn(argv, env, log);
  int status = bt_test_stop(pid, 0, 15000); /* no signal: it must exit by itself */
  unlink(file);
  if (!(status >= 0 && WIFEXITED(status) && WEXITSTATUS(status) != 0))
    fail_msg("a broker with a 70 kB tokens file did not refuse to start (status %d, log %s)",
             status, log);
  FILE *lf = fopen(log, "r");
  assert_non_null(lf);
  char text[65536];
  size_t n = fread(text, 1, sizeof text - 1, lf);
  fclose(lf);
  text[n] = '\0';
  assert_non_null(strstr(text, file));
  assert_non_null(strstr(text, "larger than"));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_structured_10000),
      cmocka_unit_test(test_batch_10000),
      cmocka_unit_test(test_binary_10000),
      cmocka_unit_test(test_protobuf_10000),
      cmocka_unit_test(test_validation_errors_publish_nothing),
      cmocka_unit_test(test_topic_rules),
      cmocka_unit_test(test_auth),
      cmocka_unit_test(test_tokens_file_too_large),
  };
  return cmocka_run_group_tests_name("publish", tests, setup, teardown);
}
