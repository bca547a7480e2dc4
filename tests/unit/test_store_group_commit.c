/* Unit tests of the group commit's pure parts (broker/group_commit.c, included for its
 * statics): how groups are formed from the queue (limits, FIFO, deferral of appends that share
 * an event id with one already in the group) and how a group is encoded into Postgres array
 * literals, checked by an independent decoder of the literal syntax. The transaction itself is
 * covered by the integration tests. */
#include <setjmp.h>
#include <stdarg.h>
#include <stddef.h>

#include <cmocka.h>

#include "group_commit.c"

static broker_group_commit_stats_t stats;

static broker_group_commit_t *gc_new(size_t batch_max, size_t events_max) {
  broker_group_commit_t *gc = calloc(1, sizeof *gc);
  assert_non_null(gc);
  gc->cfg = (broker_group_commit_config_t){.batch_max = batch_max,
                                           .events_max = events_max,
                                           .bytes_max = SIZE_MAX,
                                           .queue_max = 100,
                                           .concurrency = 1,
                                           .stats = &stats};
  assert_int_equal(hset_init(&gc->ids, events_max), 0);
  assert_int_equal(hset_init(&gc->streams, 2 * batch_max), 0);
  for (int i = 0; i < NPARAMS; i++)
    bt_buf_init(&gc->params[i], 0);
  bt_buf_init(&gc->scratch, 0);
  gc->slots[0] = (slot_t){.gc = gc};
  return gc;
}

static void gc_free(broker_group_commit_t *gc) { maybe_free(gc); /* no handle was opened */ }

/* What broker_group_commit_submit does, without the loop. */
static void enqueue(broker_group_commit_t *gc, broker_append_t *a) {
  a->next = NULL;
  if (gc->tail)
    gc->tail->next = a;
  else
    gc->head = a;
  gc->tail = a;
  gc->nqueued++;
}

static void assert_list(const broker_append_t *a, broker_append_t *const *want, size_t n) {
  for (size_t i = 0; i < n; i++, a = a ? a->next : NULL)
    assert_ptr_equal(a, want[i]);
  assert_null(a);
}

#define LIST(...)                                                                                  \
  (broker_append_t *const[]){__VA_ARGS__}, BT_ARRAY_LEN(((broker_append_t *[]){__VA_ARGS__}))

static broker_event_t ev_abc[3] = {{.id = "a"}, {.id = "b"}, {.id = "c"}};
static broker_event_t ev_a[1] = {{.id = "a"}}, ev_c[1] = {{.id = "c"}}, ev_d[1] = {{.id = "d"}};

static void test_limits_and_fifo(void **state) {
  broker_group_commit_t *gc = gc_new(3, 4);
  broker_append_t a[6] = {
      {.stream = "s1", .events = ev_a, .nevents = 1},
      {.stream = "s2", .events = ev_abc, .nevents = 3},
      {.stream = "s3", .events = ev_a, .nevents = 1}, /* would make 5 events: next group */
      {.stream = "s4", .events = ev_a, .nevents = 1},
      {.stream = "s5", .events = ev_a, .nevents = 1},
      {.stream = "s6", .events = ev_abc, .nevents = 3},
  };
  for (int i = 0; i < 6; i++)
    enqueue(gc, &a[i]);
  slot_t *s = &gc->slots[0];
  /* Events cap: a[2] does not fit, and nothing behind it overtakes it. */
  form_group(gc, s);
  assert_list(s->members, LIST(&a[0], &a[1]));
  assert_int_equal(gc->nqueued, 4);
  /* Appends cap (3). The same event id on other streams is no conflict. */
  form_group(gc, s);
  assert_list(s->members, LIST(&a[2], &a[3], &a[4]));
  form_group(gc, s);
  assert_list(s->members, LIST(&a[5]));
  assert_null(gc->head);
  assert_null(gc->tail);
  assert_int_equal(gc->nqueued, 0);
  gc_free(gc);
}

static void test_oversized_append_goes_alone(void **state) {
  broker_group_commit_t *gc = gc_new(8, 2);
  broker_append_t big = {.stream = "s", .events = ev_abc, .nevents = 3};
  broker_append_t small = {.stream = "t", .events = ev_a, .nevents = 1};
  enqueue(gc, &big);
  enqueue(gc, &small);
  form_group(gc, &gc->slots[0]);
  assert_list(gc->slots[0].members, LIST(&big));
  form_group(gc, &gc->slots[0]);
  assert_list(gc->slots[0].members, LIST(&small));
  gc_free(gc);
}

/* The byte budget: data counts as hex, so three 1000-byte events fill a 7000-byte group; an
 * append larger than the whole budget still goes, alone. */
static void test_byte_budget(void **state) {
  broker_group_commit_t *gc = gc_new(100, 100);
  gc->cfg.bytes_max = 7000;
  static char data[20000];
  broker_event_t e1k[4], e10k[1];
  for (int i = 0; i < 4; i++)
    e1k[i] = (broker_event_t){.id = (const char *[]){"a", "b", "c", "d"}[i], .type = "t",
                              .source = "/s", .specversion = "1.0", .data = data,
                              .data_len = 1000};
  e10k[0] = (broker_event_t){.id = "x", .type = "t", .source = "/s", .specversion = "1.0",
                             .data = data, .data_len = 10000};
  broker_append_t a[5] = {
      {.stream = "s1", .events = &e1k[0], .nevents = 1},
      {.stream = "s2", .events = &e1k[1], .nevents = 1},
      {.stream = "s3", .events = &e1k[2], .nevents = 1},
      {.stream = "s4", .events = &e1k[3], .nevents = 1}, /* 4 x ~2100 > 7000: next group */
      {.stream = "s5", .events = e10k, .nevents = 1},
  };
  for (int i = 0; i < 5; i++) {
    a[i].bytes = append_bytes(&a[i]);
    assert_true(a[i].bytes >= 2 * a[i].events[0].data_len);
    enqueue(gc, &a[i]);
  }
  slot_t *s = &gc->slots[0];
  form_group(gc, s);
  assert_list(s->members, LIST(&a[0], &a[1], &a[2]));
  form_group(gc, s);
  assert_list(s->members, LIST(&a[3])); /* a[4] alone is over the budget: its own group */
  form_group(gc, s);
  assert_list(s->members, LIST(&a[4]));
  gc_free(gc);
}

static void test_same_ids_same_stream_deferred(void **state) {
  broker_group_commit_t *gc = gc_new(10, 100);
  broker_append_t b[5] = {
      {.stream = "s1", .events = ev_a, .nevents = 1},
      {.stream = "s1", .events = ev_abc, .nevents = 3}, /* shares "a" with b[0]: waits */
      {.stream = "s1", .events = ev_d, .nevents = 1},   /* its stream now waits: keeps order */
      {.stream = "s2", .events = ev_a, .nevents = 1},   /* another stream: goes */
      {.stream = "s3", .events = ev_c, .nevents = 1},
  };
  for (int i = 0; i < 5; i++)
    enqueue(gc, &b[i]);
  slot_t *s = &gc->slots[0];
  form_group(gc, s);
  assert_list(s->members, LIST(&b[0], &b[3], &b[4]));
  assert_list(gc->head, LIST(&b[1], &b[2]));
  assert_ptr_equal(gc->tail, &b[2]);
  assert_int_equal(gc->nqueued, 2);
  /* The queue stays well formed: a new append goes behind the deferred ones. */
  broker_append_t late = {.stream = "s1", .events = ev_a, .nevents = 1};
  enqueue(gc, &late);
  form_group(gc, s);
  /* b[1] and b[2] share no id; `late` shares "a" with b[1] and waits again. */
  assert_list(s->members, LIST(&b[1], &b[2]));
  assert_list(gc->head, LIST(&late));
  form_group(gc, s);
  assert_list(s->members, LIST(&late));
  gc_free(gc);
}

static void test_hset(void **state) {
  hset_t h;
  assert_int_equal(hset_init(&h, 4), 0);
  assert_false(hset_has(&h, 42));
  hset_add(&h, 42);
  hset_add(&h, 42 + 16); /* same slot: probes on */
  assert_true(hset_has(&h, 42));
  assert_true(hset_has(&h, 42 + 16));
  assert_false(hset_has(&h, 42 + 32));
  hset_clear(&h);
  assert_false(hset_has(&h, 42));
  /* A wrapped generation clears for real. */
  hset_add(&h, 7);
  h.gen = UINT32_MAX;
  hset_add(&h, 9);
  hset_clear(&h);
  assert_false(hset_has(&h, 7));
  assert_false(hset_has(&h, 9));
  free(h.tab);
}

/* ---- encoding -------------------------------------------------------------------------------
 * An independent reader of one-dimensional array literals: {"quoted \" \\",NULL,12}. */

typedef struct {
  char *v[8];
  int n;
} arr_t;

static void arr_parse(const char *lit, arr_t *out) {
  out->n = 0;
  assert_int_equal(lit[0], '{');
  const char *p = lit + 1;
  if (*p == '}')
    goto end;
  for (;;) {
    assert_true(out->n < 8);
    char buf[1024];
    size_t len = 0;
    if (*p == '"') {
      for (p++; *p != '"'; p++) {
        if (*p == '\\')
          p++;
        assert_true(*p != '\0');
        buf[len++] = *p;
      }
      p++;
      buf[len] = '\0';
      out->v[out->n++] = strdup(buf);
    } else {
      while (*p != ',' && *p != '}')
        buf[len++] = *p++;
      buf[len] = '\0';
      out->v[out->n++] = strcmp(buf, "NULL") == 0 ? NULL : strdup(buf);
    }
    if (*p == '}')
      break;
    assert_int_equal(*p, ',');
    p++;
  }
end:
  assert_string_equal(p, "}");
}

static void arr_free(arr_t *a) {
  for (int i = 0; i < a->n; i++)
    free(a->v[i]);
}

static void assert_arr(const bt_buf_t *param, const char *const *want, int n) {
  /* encode() ends each literal with its NUL inside the buffer. */
  assert_int_equal(param->data[param->len - 1], '\0');
  arr_t a;
  arr_parse(param->data, &a);
  assert_int_equal(a.n, n);
  for (int i = 0; i < n; i++) {
    if (!want[i])
      assert_null(a.v[i]);
    else
      assert_string_equal(a.v[i], want[i]);
  }
  arr_free(&a);
}

#define ARR(...)                                                                                   \
  (const char *const[]){__VA_ARGS__}, (int)BT_ARRAY_LEN(((const char *[]){__VA_ARGS__}))

static void test_encode(void **state) {
  broker_group_commit_t *gc = gc_new(4, 16);
  broker_event_t e1[1] = {{.id = "a\"b\\c,{} NULL",
                           .type = "t",
                           .source = "/s",
                           .specversion = "1.0",
                           .time = "2024-01-01T00:00:00Z",
                           .datacontenttype = "application/octet-stream",
                           .data = "\x00\x01\xff",
                           .data_len = 3,
                           .next = 2}};
  e1[0].ext[0] = (broker_ext_t){"partitionkey", "k\"\\\n"};
  e1[0].ext[1] = (broker_ext_t){"traceparent", "00-ab"};
  broker_event_t e2[2] = {
      {.id = "e", .type = "t", .source = "/s", .specversion = "1.0", .subject = "NULL"},
      {.id = "", .type = "t", .source = "/s", .specversion = "1.0", .data = "", .data_len = 0}};
  broker_append_t a[2] = {
      {.stream = "s-1", .expected = BROKER_EXPECT_ANY, .events = e1, .nevents = 1,
       .partitionkey = "k\"\\\n"},
      {.stream = "s-2", .expected = 0, .events = e2, .nevents = 2},
  };
  a[0].next = &a[1];
  assert_int_equal(encode(gc, &a[0], 2), 0);
  bt_buf_t *p = gc->params;
  assert_arr(&p[0], ARR("s-1", "s-2"));
  assert_arr(&p[1], ARR("-1", "0"));
  assert_arr(&p[2], ARR("1", "2"));
  assert_arr(&p[3], ARR("k\"\\\n", NULL)); /* one partitionkey per append */
  assert_arr(&p[4], ARR("1", "2", "2"));
  assert_arr(&p[5], ARR("a\"b\\c,{} NULL", "e", ""));
  assert_arr(&p[8], ARR("1.0", "1.0", "1.0"));
  assert_arr(&p[9], ARR(NULL, "NULL", NULL)); /* a quoted "NULL" is a string */
  assert_arr(&p[10], ARR("2024-01-01T00:00:00Z", NULL, NULL));
  assert_arr(&p[11], ARR("application/octet-stream", NULL, NULL));
  assert_arr(&p[13], ARR("0001ff", NULL, ""));
  /* Extensions: a JSON object of strings, control characters escaped. */
  arr_t ext;
  arr_parse(p[14].data, &ext);
  assert_int_equal(ext.n, 3);
  assert_null(ext.v[1]);
  assert_null(ext.v[2]);
  json_error_t jerr;
  json_t *o = json_loads(ext.v[0], 0, &jerr);
  if (!o)
    fail_msg("extensions are not JSON: %s: %s", ext.v[0], jerr.text);
  assert_string_equal(json_string_value(json_object_get(o, "partitionkey")), "k\"\\\n");
  assert_string_equal(json_string_value(json_object_get(o, "traceparent")), "00-ab");
  assert_int_equal(json_object_size(o), 2);
  json_decref(o);
  arr_free(&ext);

  /* Only the first n appends of the list are encoded. */
  assert_int_equal(encode(gc, &a[0], 1), 0);
  assert_arr(&p[0], ARR("s-1"));
  assert_arr(&p[4], ARR("1"));
  gc_free(gc);
}

/* A failed transaction is split only when its content may be at fault. */
static void test_worth_splitting(void **state) {
  assert_true(worth_splitting(BT_EIO, "23514"));  /* check_violation */
  assert_true(worth_splitting(BT_EIO, "40001"));  /* serialization_failure */
  assert_true(worth_splitting(BT_EIO, NULL));     /* COMMIT rolled back */
  assert_false(worth_splitting(BT_EIO, "08006")); /* connection_failure */
  assert_false(worth_splitting(BT_EIO, "57P01")); /* admin_shutdown */
  assert_false(worth_splitting(BT_EIO, "57014")); /* query_canceled */
  assert_false(worth_splitting(BT_ECONNRESET, NULL));
  assert_false(worth_splitting(BT_ENOTCONN, NULL));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_limits_and_fifo),
      cmocka_unit_test(test_oversized_append_goes_alone),
      cmocka_unit_test(test_same_ids_same_stream_deferred),
      cmocka_unit_test(test_byte_budget),
      cmocka_unit_test(test_worth_splitting),
      cmocka_unit_test(test_hset),
      cmocka_unit_test(test_encode),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
