/* baton-saga's engine end to end: real Postgres (a database of its own), devkafka and an
 * in-test participant written against plain librdkafka (it reads the command topics back
 * with the kafka oracle and answers on the reply topic in CloudEvents binary mode).
 *
 * - A saga started over HTTP puts its first command on Kafka (through saga.outbox and the
 *   outbox relay) with key = saga id and the ce_* headers of the wire format.
 * - The happy path reaches COMPLETED with one command per step, each answered once.
 * - A `failure` of step 2 compensates step 1 only, after the refusal (history order), and
 *   Kafka holds exactly ReleaseInventory as compensation.
 * - Duplicate and stale replies, through Kafka and over HTTP, are recorded as ignored in the
 *   history and never applied twice.
 * - Timeouts retry then compensate the timed-out step first; pause holds commands, abort
 *   compensates; a compensation failing past its retries leaves FAILED, an operator retry
 *   completes it; replies arriving together are group-committed.
 * - ?wait= answered by another process (NOTIFY), bounded, freed on disconnect; bearer auth;
 *   the metrics; a clean exit.
 * Oracles: Kafka's records (read independently of the engine), the history over HTTP and
 * the tables in Postgres. */
#include "test_saga_common.h"

static int setup(void **state) { return st_engine_setup("it_saga_engine"); }

/* ---- tests ------------------------------------------------------------------------------- */

/* The first command reaches Kafka with the wire format's key and headers. */
static void test_command_reaches_kafka(void **state) {
  char id[40];
  st_start_saga("{\"order\":\"o-1\",\"refuse\":\"nothing\"}", id);
  bt_test_kmsg_t *msgs = NULL;
  long n = 0;
  const bt_test_kmsg_t *m = NULL;
  uint64_t deadline = bt_test_now_ms() + 20000;
  while (!m && bt_test_now_ms() < deadline) {
    bt_test_kmsgs_free(msgs, n);
    n = bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), st_eng()->st.t_inv, 20000,
                               &msgs);
    for (long i = 0; i < n; i++)
      if (msgs[i].key && strcmp(msgs[i].key, id) == 0)
        m = &msgs[i];
    if (!m)
      usleep(50 * 1000);
  }
  assert_non_null(m);
  char want_id[128];
  snprintf(want_id, sizeof want_id, "%s/reserve-inventory/1/command", id);
  assert_string_equal(bt_test_kmsg_header(m, "ce_id"), want_id);
  assert_string_equal(bt_test_kmsg_header(m, "ce_specversion"), "1.0");
  assert_string_equal(bt_test_kmsg_header(m, "ce_type"), "ReserveInventory");
  assert_string_equal(bt_test_kmsg_header(m, "ce_source"), "/baton/saga/checkout");
  assert_string_equal(bt_test_kmsg_header(m, "ce_subject"), id);
  assert_string_equal(bt_test_kmsg_header(m, "ce_sagaid"), id);
  assert_string_equal(bt_test_kmsg_header(m, "ce_sagatype"), "checkout");
  assert_string_equal(bt_test_kmsg_header(m, "ce_sagastep"), "reserve-inventory");
  assert_string_equal(bt_test_kmsg_header(m, "ce_sagaattempt"), "1");
  assert_string_equal(bt_test_kmsg_header(m, "ce_sagakind"), "command");
  assert_string_equal(bt_test_kmsg_header(m, "ce_replyto"), st_eng()->st.t_reply);
  assert_non_null(bt_test_kmsg_header(m, "ce_deadline"));
  assert_string_equal(bt_test_kmsg_header(m, "content-type"), "application/json");
  json_t *v = json_loads(m->value, 0, NULL);
  assert_non_null(v);
  assert_string_equal(json_string_value(json_object_get(json_object_get(v, "input"), "order")),
                      "o-1");
  json_decref(v);
  bt_test_kmsgs_free(msgs, n);
  /* Delivered commands leave the outbox. */
  deadline = bt_test_now_ms() + 10000;
  while (st_sql_int("SELECT count(*) FROM saga.outbox", NULL) != 0 && bt_test_now_ms() < deadline)
    usleep(50 * 1000);
  assert_int_equal(st_sql_int("SELECT count(*) FROM saga.outbox", NULL), 0);
}

static void test_happy_and_refusal(void **state) {
  char ok[40], refused[40], dup[40];
  /* ok carries a trace: every command of it, not only the first, continues it. */
  static const char trace[] = "4bf92f3577b34da6a3ce929d0e0e4736";
  char url[128], hdr[160];
  snprintf(url, sizeof url, "%.63s/v1/sagas/checkout", st_engine_url());
  snprintf(hdr, sizeof hdr,
           "Content-Type: application/json\r\ntraceparent: 00-%s-00f067aa0ba902b7-01\r\n", trace);
  bt_test_http_resp_t sr;
  assert_int_equal(bt_test_http("POST", url, hdr, "{\"order\":\"o-2\"}", 15, &sr), 0);
  assert_int_equal(sr.status, 201);
  json_t *sj = json_loads(sr.body, 0, NULL);
  snprintf(ok, sizeof ok, "%s", json_string_value(json_object_get(sj, "id")));
  json_decref(sj);
  bt_test_http_free(&sr);
  st_start_saga("{\"order\":\"o-3\",\"refuse\":\"authorize-payment\"}", refused);
  st_start_saga("{\"order\":\"o-4\",\"dup\":true}", dup);
  const char *ids[] = {ok, refused, dup};
  const char *states[] = {"COMPLETED", "COMPENSATED", "COMPLETED"};
  st_participate_until(ids, states, 3);

  char h[4096], cmds[512];
  /* Happy path: one command per step on Kafka, every step succeeded once. */
  assert_int_equal(st_commands_for(st_eng()->st.t_inv, ok, cmds, sizeof cmds), 1);
  assert_string_equal(cmds, "ReserveInventory");
  assert_int_equal(st_commands_for(st_eng()->st.t_pay, ok, cmds, sizeof cmds), 1);
  assert_int_equal(st_commands_for(st_eng()->st.t_ship, ok, cmds, sizeof cmds), 1);
  st_history_words(ok, h, sizeof h);
  assert_int_equal(st_count_word(h, "succeeded:reserve-inventory"), 1);
  assert_int_equal(st_count_word(h, "succeeded:authorize-payment"), 1);
  assert_int_equal(st_count_word(h, "succeeded:create-shipment"), 1);
  if (!strstr(h, "completed:"))
    fail_msg("no completed in history: %s", h);
  bt_test_kmsg_t *pm;
  long npm =
      bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), st_eng()->st.t_ship, 20000, &pm);
  int traced = 0;
  for (long i = 0; i < npm; i++)
    if (pm[i].key && strcmp(pm[i].key, ok) == 0) {
      const char *tp = bt_test_kmsg_header(&pm[i], "traceparent");
      assert_non_null(tp);
      assert_int_equal(strncmp(tp + 3, trace, 32), 0);
      traced++;
    }
  bt_test_kmsgs_free(pm, npm);
  assert_int_equal(traced, 1);
  json_t *j = st_get_saga(ok);
  assert_string_equal(json_string_value(json_object_get(j, "trace_id")), trace);
  json_t *res = json_object_get(j, "results");
  assert_string_equal(json_string_value(json_object_get(json_object_get(res, "authorize-payment"),
                                                        "done")),
                      "AuthorizePayment");
  json_decref(j);

  /* Refusal at step 2: ReleaseInventory only, after the refusal; no VoidPayment, no shipment. */
  assert_int_equal(st_commands_for(st_eng()->st.t_inv, refused, cmds, sizeof cmds), 2);
  assert_string_equal(cmds, "ReserveInventory ReleaseInventory");
  assert_int_equal(st_commands_for(st_eng()->st.t_pay, refused, cmds, sizeof cmds), 1);
  assert_string_equal(cmds, "AuthorizePayment");
  assert_int_equal(st_commands_for(st_eng()->st.t_ship, refused, cmds, sizeof cmds), 0);
  st_history_words(refused, h, sizeof h);
  const char *r = strstr(h, "refused:authorize-payment");
  const char *u = strstr(h, "undone:reserve-inventory");
  if (!r || !u || u < r)
    fail_msg("history order: %s", h);
  assert_null(strstr(h, "undone:authorize-payment"));

  /* Every reply twice: the second of each is ignored, never applied. The last duplicate may
   * still be on its way when the saga completes: wait for it. */
  uint64_t until = bt_test_now_ms() + 20000;
  do {
    st_history_words(dup, h, sizeof h);
  } while (st_count_word(h, "reply_ignored:create-shipment") == 0 && bt_test_now_ms() < until &&
           usleep(50 * 1000) == 0);
  assert_int_equal(st_count_word(h, "succeeded:reserve-inventory"), 1);
  assert_int_equal(st_count_word(h, "succeeded:authorize-payment"), 1);
  assert_int_equal(st_count_word(h, "succeeded:create-shipment"), 1);
  assert_int_equal(st_count_word(h, "reply_ignored:reserve-inventory") +
                       st_count_word(h, "reply_ignored:authorize-payment") +
                       st_count_word(h, "reply_ignored:create-shipment"),
                   3);
  assert_int_equal(
      st_sql_int("SELECT count(*) FROM saga.replies_seen WHERE saga_id = $1::uuid", dup), 3);

  /* A stale reply after the end, through Kafka and over HTTP: recorded, nothing applied. */
  st_reply(ok, "reserve-inventory", "1", "command", "failure", "{}");
  char body[512], path[96];
  snprintf(body, sizeof body,
           "{\"specversion\":\"1.0\",\"id\":\"x\",\"source\":\"/it\",\"type\":\"SagaReply\","
           "\"sagaid\":\"%s\",\"sagastep\":\"authorize-payment\",\"sagaattempt\":1,"
           "\"sagakind\":\"command\",\"outcome\":\"success\",\"data\":{}}",
           ok);
  snprintf(path, sizeof path, "/v1/sagas/%s/replies", ok);
  json_t *a = st_http_json("POST", path, body, 200);
  assert_false(json_is_true(json_object_get(a, "applied")));
  assert_string_equal(json_string_value(json_object_get(a, "ignored")), "saga_ended");
  json_decref(a);
  uint64_t deadline = bt_test_now_ms() + 20000;
  do {
    st_history_words(ok, h, sizeof h);
    if (st_count_word(h, "reply_ignored:reserve-inventory") == 1)
      break;
    usleep(100 * 1000);
  } while (bt_test_now_ms() < deadline);
  assert_int_equal(st_count_word(h, "reply_ignored:reserve-inventory"), 1);
  assert_int_equal(st_count_word(h, "reply_ignored:authorize-payment"), 1);
  assert_int_equal(st_count_word(h, "succeeded:reserve-inventory"), 1);
  assert_true(st_saga_state_is(ok, "COMPLETED"));

  /* Malformed replies naming the saga, through Kafka (an outcome that is neither success nor
   * failure) and over HTTP (no outcome: 400): each shows in the history as reply_ignored with
   * the parser's message, and nothing else changes. */
  st_reply(ok, "create-shipment", "1", "command", "maybe", "{}");
  snprintf(body, sizeof body,
           "{\"specversion\":\"1.0\",\"id\":\"y\",\"source\":\"/it\",\"type\":\"SagaReply\","
           "\"sagaid\":\"%s\",\"sagastep\":\"create-shipment\",\"sagaattempt\":1,"
           "\"sagakind\":\"command\",\"data\":{}}",
           ok);
  json_decref(st_http_json("POST", path, body, 400));
  deadline = bt_test_now_ms() + 20000;
  do {
    st_history_words(ok, h, sizeof h);
    if (st_count_word(h, "reply_ignored:-") == 2)
      break;
    usleep(100 * 1000);
  } while (bt_test_now_ms() < deadline);
  assert_int_equal(st_count_word(h, "reply_ignored:-"), 2);
  json_t *g = st_get_saga(ok), *e;
  size_t i;
  int kafka = 0, http = 0;
  json_array_foreach(json_object_get(g, "history"), i, e) {
    const char *d = json_string_value(json_object_get(e, "detail"));
    kafka += d && strstr(d, "malformed (kafka)") && strstr(d, "outcome");
    http += d && strstr(d, "malformed (http)") && strstr(d, "outcome");
  }
  json_decref(g);
  assert_int_equal(kafka, 1);
  assert_int_equal(http, 1);
  assert_int_equal(st_count_word(h, "succeeded:create-shipment"), 1);
  assert_true(st_saga_state_is(ok, "COMPLETED"));
}

/* A participant that never answers: attempts 1 and 2 (numbered in ce_id), then the timed-out
 * step is compensated first, then the earlier one. Timers live in Postgres and are gone once
 * the saga ended. */
static void test_timeouts(void **state) {
  char id[40];
  st_start_saga_of("timeouts", "{\"order\":\"o-5\",\"silent\":\"authorize-payment\"}", id);
  const char *ids[] = {id};
  const char *states[] = {"COMPENSATED"};
  st_participate_until(ids, states, 1);
  bt_test_kmsg_t *msgs;
  long n =
      bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), st_eng()->st.t_pay, 20000, &msgs);
  char got[512] = "";
  size_t len = 0;
  for (long i = 0; i < n; i++)
    if (msgs[i].key && strcmp(msgs[i].key, id) == 0)
      len += (size_t)snprintf(got + len, sizeof got - len, "%s%s", len ? " " : "",
                              strchr(bt_test_kmsg_header(&msgs[i], "ce_id"), '/') + 1);
  bt_test_kmsgs_free(msgs, n);
  assert_string_equal(got, "authorize-payment/1/command authorize-payment/2/command "
                           "authorize-payment/1/compensation");
  char cmds[256], h[4096];
  assert_int_equal(st_commands_for(st_eng()->st.t_inv, id, cmds, sizeof cmds), 2);
  assert_string_equal(cmds, "ReserveInventory ReleaseInventory");
  assert_int_equal(st_commands_for(st_eng()->st.t_ship, id, cmds, sizeof cmds), 0);
  st_history_words(id, h, sizeof h);
  assert_int_equal(st_count_word(h, "timed_out:authorize-payment"), 2);
  const char *void_ = strstr(h, "undone:authorize-payment");
  const char *release = strstr(h, "undone:reserve-inventory");
  if (!void_ || !release || release < void_)
    fail_msg("compensation order: %s", h);
  assert_int_equal(st_sql_int("SELECT count(*) FROM saga.timers WHERE saga_id = $1::uuid", id), 0);
}

/* Pause: replies are still applied, but no command goes out until resume. Abort: a RUNNING
 * saga compensates now, the step whose command is out included. */
static void test_pause_abort(void **state) {
  char x[40], y[40], path[96], h[4096], cmds[256];
  st_start_saga("{\"order\":\"p-1\"}", x);
  snprintf(path, sizeof path, "/v1/sagas/%s/pause", x);
  json_decref(st_http_json("POST", path, NULL, 200));
  json_decref(st_http_json("POST", path, NULL, 409)); /* already paused */
  uint64_t deadline = bt_test_now_ms() + 20000;
  do {
    st_participate_once();
    st_history_words(x, h, sizeof h);
  } while (!strstr(h, "succeeded:reserve-inventory") && bt_test_now_ms() < deadline);
  if (!strstr(h, "succeeded:reserve-inventory"))
    fail_msg("the reply was not applied while paused: %s", h);
  usleep(500 * 1000); /* the relay polls every 20 ms: a command would be out by now */
  assert_int_equal(st_commands_for(st_eng()->st.t_pay, x, cmds, sizeof cmds), 0);
  json_t *j = st_get_saga(x);
  assert_true(json_is_true(json_object_get(j, "paused")));
  assert_string_equal(json_string_value(json_object_get(j, "state")), "RUNNING");
  json_decref(j);
  snprintf(path, sizeof path, "/v1/sagas/%s/resume", x);
  json_decref(st_http_json("POST", path, NULL, 200));

  st_start_saga("{\"order\":\"p-2\",\"silent\":\"authorize-payment\"}", y);
  const char *ids[] = {x};
  const char *states[] = {"COMPLETED"};
  st_participate_until(ids, states, 1);
  assert_int_equal(st_commands_for(st_eng()->st.t_pay, x, cmds, sizeof cmds), 1);
  deadline = bt_test_now_ms() + 20000;
  while (st_commands_for(st_eng()->st.t_pay, y, cmds, sizeof cmds) == 0 &&
         bt_test_now_ms() < deadline)
    st_participate_once();
  snprintf(path, sizeof path, "/v1/sagas/%s/abort", y);
  json_decref(st_http_json("POST", path, NULL, 200));
  json_decref(st_http_json("POST", path, NULL, 409));
  const char *ids2[] = {y};
  const char *states2[] = {"COMPENSATED"};
  st_participate_until(ids2, states2, 1);
  assert_int_equal(st_commands_for(st_eng()->st.t_pay, y, cmds, sizeof cmds), 2);
  assert_string_equal(cmds, "AuthorizePayment VoidPayment");
  assert_int_equal(st_commands_for(st_eng()->st.t_inv, y, cmds, sizeof cmds), 2);
  assert_string_equal(cmds, "ReserveInventory ReleaseInventory");
  st_history_words(y, h, sizeof h);
  const char *v = strstr(h, "undone:authorize-payment"), *r = strstr(h, "undone:reserve-inventory");
  if (!strstr(h, "aborted:") || !v || !r || r < v)
    fail_msg("abort history: %s", h);
}


/* A compensation that keeps failing leaves the saga FAILED after its retries; an operator
 * retry resumes it with a new attempt number and it completes. */
static void test_failed_then_retry(void **state) {
  char id[40], path[96], h[4096], cmds[256];
  st_start_saga("{\"order\":\"f-1\",\"refuse\":\"authorize-payment\","
                "\"undo_fail\":\"reserve-inventory\"}",
                id);
  const char *ids[] = {id};
  const char *failed[] = {"FAILED"};
  st_participate_until(ids, failed, 1);
  assert_int_equal(st_commands_for(st_eng()->st.t_inv, id, cmds, sizeof cmds), 3);
  assert_string_equal(cmds, "ReserveInventory ReleaseInventory ReleaseInventory");
  st_history_words(id, h, sizeof h);
  assert_int_equal(st_count_word(h, "undo_failed:reserve-inventory"), 2);
  snprintf(path, sizeof path, "/v1/sagas/%s/abort", id);
  json_decref(st_http_json("POST", path, NULL, 409)); /* not RUNNING */
  st_eng()->undo_heal = true;
  snprintf(path, sizeof path, "/v1/sagas/%s/retry", id);
  json_decref(st_http_json("POST", path, NULL, 200));
  const char *done[] = {"COMPENSATED"};
  st_participate_until(ids, done, 1);
  bt_test_kmsg_t *msgs;
  long n =
      bt_test_kafka_read_all(bt_test_env("BATON_KAFKA_BROKERS"), st_eng()->st.t_inv, 20000, &msgs);
  const char *last = NULL;
  for (long i = 0; i < n; i++)
    if (msgs[i].key && strcmp(msgs[i].key, id) == 0)
      last = bt_test_kmsg_header(&msgs[i], "ce_id");
  char want[128];
  snprintf(want, sizeof want, "%s/reserve-inventory/3/compensation", id);
  assert_non_null(last);
  assert_string_equal(last, want);
  bt_test_kmsgs_free(msgs, n);
  st_history_words(id, h, sizeof h);
  if (!strstr(h, "operator_retry:") || st_count_word(h, "undone:reserve-inventory") != 1)
    fail_msg("history: %s", h);
}

/* Replies that arrive together (8 sagas, each reply twice, one flush) are applied with group
 * commit: each saga's step succeeds once, each duplicate is recorded as ignored. */
static void test_group_commit(void **state) {
  enum { N = 8 };
  char ids[N][40], cmds[256], h[4096];
  for (int i = 0; i < N; i++)
    st_start_saga("{\"order\":\"g\"}", ids[i]);
  uint64_t deadline = bt_test_now_ms() + 20000;
  for (int i = 0; i < N; i++)
    while (st_commands_for(st_eng()->st.t_inv, ids[i], cmds, sizeof cmds) == 0 &&
           bt_test_now_ms() < deadline)
      usleep(50 * 1000);
  for (int i = 0; i < N; i++) {
    char ce_id[400];
    snprintf(ce_id, sizeof ce_id, "%.40s/reserve-inventory/1/command", ids[i]);
    assert_false(st_seen_before(ce_id)); /* the participant below leaves these to us */
  }
  double before = st_engine_metric("baton_saga_group_commits_total");
  for (int k = 0; k < 2; k++)
    for (int i = 0; i < N; i++)
      st_reply_nf(ids[i], "reserve-inventory", "1", "command", "success", "{\"r\":1}", false);
  assert_int_equal(rd_kafka_flush(st_eng()->producer, 10000), RD_KAFKA_RESP_ERR_NO_ERROR);
  for (int i = 0; i < N; i++) {
    deadline = bt_test_now_ms() + 20000;
    do {
      st_history_words(ids[i], h, sizeof h);
    } while (st_count_word(h, "reply_ignored:reserve-inventory") == 0 &&
             bt_test_now_ms() < deadline && usleep(50 * 1000) == 0);
    assert_int_equal(st_count_word(h, "succeeded:reserve-inventory"), 1);
    assert_int_equal(st_count_word(h, "reply_ignored:reserve-inventory"), 1);
  }
  assert_true(st_engine_metric("baton_saga_group_commits_total") > before);
  const char *states[N], *idp[N];
  for (int i = 0; i < N; i++) {
    idp[i] = ids[i];
    states[i] = "COMPLETED";
  }
  st_participate_until(idp, states, N);
}

/* ---- ?wait= ------------------------------------------------------------------------------ */

typedef struct bg_req {
  pthread_t th;
  char method[8], url[256];
  bt_test_http_resp_t r;
  int rc;
  volatile int done;
} bg_req_t;

static void *bg_run(void *arg) {
  bg_req_t *b = arg;
  const char *body = strcmp(b->method, "POST") == 0 ? "{\"order\":\"w-1\"}" : NULL;
  b->rc = bt_test_http(b->method, b->url, body ? "Content-Type: application/json\r\n" : NULL,
                       body, body ? strlen(body) : 0, &b->r);
  b->done = 1;
  return NULL;
}

static void bg_start(bg_req_t *b, const char *method, const char *url) {
  memset(b, 0, sizeof *b);
  snprintf(b->method, sizeof b->method, "%s", method);
  snprintf(b->url, sizeof b->url, "%s", url);
  assert_int_equal(pthread_create(&b->th, NULL, bg_run, b), 0);
}


/* A second engine process without Kafka (no relay, no consumer) holds the waits: the reply is
 * applied by the first one, and its NOTIFY wakes the second. */
static void test_wait(void **state) {
  int port = bt_test_free_port();
  char b_url[64], url[256];
  snprintf(b_url, sizeof b_url, "http://127.0.0.1:%d", port);
  pid_t b = st_engine_spawn(port, "BATON_KAFKA_BROKERS=", "BATON_SAGA_MAX_WAITERS=1");
  snprintf(url, sizeof url, "%s/readyz", b_url);
  assert_int_equal(bt_test_wait_status(url, 200, 30000), 0);

  /* Start with ?wait on B; the participant answers while it waits: 200 COMPLETED. */
  bg_req_t bg;
  snprintf(url, sizeof url, "%s/v1/sagas/checkout?wait=20s", b_url);
  bg_start(&bg, "POST", url);
  uint64_t deadline = bt_test_now_ms() + 30000;
  while (!bg.done && bt_test_now_ms() < deadline) {
    st_participate_once();
    usleep(50 * 1000);
  }
  pthread_join(bg.th, NULL);
  assert_int_equal(bg.rc, 0);
  if (bg.r.status != 200)
    fail_msg("start ?wait: %d %s", bg.r.status, bg.r.body);
  json_t *j = json_loads(bg.r.body, 0, NULL);
  assert_non_null(j);
  assert_string_equal(json_string_value(json_object_get(j, "state")), "COMPLETED");
  assert_non_null(json_object_get(json_object_get(j, "results"), "create-shipment"));
  char id[40];
  snprintf(id, sizeof id, "%s", json_string_value(json_object_get(j, "id")));
  json_decref(j);
  bt_test_http_free(&bg.r);
  assert_true(st_sql_int("SELECT count(*) FROM saga.history WHERE saga_id = $1::uuid AND what = "
                         "'completed'",
                         id) == 1);

  /* An ended saga answers at once; a running one answers its state when the wait runs out;
   * a start nobody answers gets 202 and a Location. */
  snprintf(url, sizeof url, "%s/v1/sagas/%s?wait=10s", b_url, id);
  bt_test_http_resp_t r;
  uint64_t t0 = bt_test_now_ms();
  assert_int_equal(bt_test_http("GET", url, NULL, NULL, 0, &r), 0);
  assert_int_equal(r.status, 200);
  assert_true(bt_test_now_ms() - t0 < 5000);
  bt_test_http_free(&r);
  snprintf(url, sizeof url, "%s/v1/sagas/checkout?wait=300ms", b_url);
  assert_int_equal(bt_test_http("POST", url, "Content-Type: application/json\r\n", "{}", 2, &r), 0);
  assert_int_equal(r.status, 202);
  char loc[96];
  assert_int_equal(bt_test_http_header(&r, "location", loc, sizeof loc), 0);
  assert_non_null(strstr(r.body, "\"RUNNING\""));
  bt_test_http_free(&r);
  snprintf(url, sizeof url, "%s%s?wait=forever", b_url, loc);
  assert_int_equal(bt_test_http("GET", url, NULL, NULL, 0, &r), 0);
  assert_int_equal(r.status, 400);
  bt_test_http_free(&r);

  /* One waiter at most on B: the second gets 503; a waiter whose client leaves is freed. */
  snprintf(url, sizeof url, "%s%s?wait=3s", b_url, loc);
  bg_start(&bg, "GET", url);
  deadline = bt_test_now_ms() + 5000;
  while (st_metric_at(b_url, "baton_saga_waiters") != 1 && bt_test_now_ms() < deadline)
    usleep(20 * 1000);
  assert_int_equal(bt_test_http("GET", url, NULL, NULL, 0, &r), 0);
  assert_int_equal(r.status, 503);
  bt_test_http_free(&r);
  pthread_join(bg.th, NULL);
  assert_int_equal(bg.r.status, 200);
  assert_non_null(strstr(bg.r.body, "\"RUNNING\""));
  bt_test_http_free(&bg.r);
  int fd = bt_test_connect("127.0.0.1", port);
  assert_true(fd >= 0);
  char raw[256];
  int n = snprintf(raw, sizeof raw, "GET %s?wait=30s HTTP/1.1\r\nHost: x\r\n\r\n", loc);
  assert_int_equal(write(fd, raw, (size_t)n), n);
  deadline = bt_test_now_ms() + 5000;
  while (st_metric_at(b_url, "baton_saga_waiters") != 1 && bt_test_now_ms() < deadline)
    usleep(20 * 1000);
  assert_true(st_metric_at(b_url, "baton_saga_waiters") == 1);
  close(fd);
  deadline = bt_test_now_ms() + 5000;
  while (st_metric_at(b_url, "baton_saga_waiters") != 0 && bt_test_now_ms() < deadline)
    usleep(20 * 1000);
  assert_true(st_metric_at(b_url, "baton_saga_waiters") == 0);
  assert_true(st_metric_at(b_url, "baton_saga_waits_abandoned_total") == 1);
  int st = bt_test_stop(b, 15, 15000);
  assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

/* After the tests above on the first process: the metrics of issue 8 §4 count what happened. */
static void test_metrics(void **state) {
  uint64_t deadline = bt_test_now_ms() + 5000;
  while (st_engine_metric("baton_saga_sagas{type=\"checkout\",state=\"COMPLETED\"}") < 13 &&
         bt_test_now_ms() < deadline)
    usleep(50 * 1000);
  /* COMPLETED: the first test's, ok and dup (test 2), the paused one, the group's 8 and the
   * ?wait one. COMPENSATED: refused, the aborted one, the operator-retried one (checkout) and
   * the timeouts one. RUNNING: the start nobody answered. */
  assert_true(st_engine_metric("baton_saga_sagas{type=\"checkout\",state=\"COMPLETED\"}") == 13);
  assert_true(st_engine_metric("baton_saga_sagas{type=\"checkout\",state=\"RUNNING\"}") == 1);
  assert_true(st_engine_metric("baton_saga_sagas{type=\"checkout\",state=\"COMPENSATED\"}") == 3);
  assert_true(st_engine_metric("baton_saga_sagas{type=\"timeouts\",state=\"COMPENSATED\"}") == 1);
  assert_true(st_engine_metric("baton_saga_compensations_total") == 4);
  assert_true(st_engine_metric("baton_saga_timeouts_total") >= 2);
  assert_true(st_engine_metric("baton_saga_retries_total") >= 1);
  assert_true(st_engine_metric("baton_saga_replies_ignored_total{reason=\"saga_ended\"}") >= 2);
  assert_true(st_engine_metric("baton_saga_latency_seconds_count") >= 4);
  assert_true(st_engine_metric("baton_saga_step_latency_seconds_count") >= 10);
  assert_true(st_engine_metric("baton_saga_oldest_live_seconds") > 0); /* unanswered starts */
  assert_true(st_engine_metric("baton_saga_started_total") == 16);     /* the others on B */
  assert_true(st_engine_metric("baton_saga_relay_published_total{relay=\"commands\"}") >= 10);
}

/* BATON_API_TOKENS: /v1 needs the bearer token, the probes do not. */
static void test_auth(void **state) {
  int port = bt_test_free_port();
  char base[64], url[128];
  snprintf(base, sizeof base, "http://127.0.0.1:%d", port);
  pid_t c = st_engine_spawn(port, "BATON_KAFKA_BROKERS=", "BATON_API_TOKENS=tok-a,tok-b");
  snprintf(url, sizeof url, "%s/readyz", base);
  assert_int_equal(bt_test_wait_status(url, 200, 30000), 0);
  bt_test_http_resp_t r;
  snprintf(url, sizeof url, "%s/v1/saga-types", base);
  assert_int_equal(bt_test_http("GET", url, NULL, NULL, 0, &r), 0);
  assert_int_equal(r.status, 401);
  bt_test_http_free(&r);
  assert_int_equal(bt_test_http("GET", url, "Authorization: Bearer nope\r\n", NULL, 0, &r), 0);
  assert_int_equal(r.status, 401);
  bt_test_http_free(&r);
  assert_int_equal(bt_test_http("GET", url, "Authorization: Bearer tok-b\r\n", NULL, 0, &r), 0);
  assert_int_equal(r.status, 200);
  bt_test_http_free(&r);
  snprintf(url, sizeof url, "%s/v1/sagas/checkout", base);
  assert_int_equal(bt_test_http("POST", url, "Content-Type: application/json\r\n", "{}", 2, &r), 0);
  assert_int_equal(r.status, 401);
  bt_test_http_free(&r);
  snprintf(url, sizeof url, "%s/healthz", base);
  assert_int_equal(bt_test_http("GET", url, NULL, NULL, 0, &r), 0);
  assert_int_equal(r.status, 200);
  bt_test_http_free(&r);
  int st = bt_test_stop(c, 15, 15000);
  assert_true(st >= 0 && WIFEXITED(st) && WEXITSTATUS(st) == 0);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_command_reaches_kafka),
      cmocka_unit_test(test_happy_and_refusal),
      cmocka_unit_test(test_timeouts),
      cmocka_unit_test(test_pause_abort),
      cmocka_unit_test(test_group_commit),
      cmocka_unit_test(test_failed_then_retry),
      cmocka_unit_test(test_wait),
      cmocka_unit_test(test_metrics),
      cmocka_unit_test(test_auth),
      cmocka_unit_test(st_engine_test_clean_exit),
  };
  return cmocka_run_group_tests(tests, setup, st_engine_teardown);
}
