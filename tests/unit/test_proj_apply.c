/* Mapping and batch application: each operation's semantics, per-key collapse in Kafka order,
 * exact aggregate deltas, and a property test checking random batches against event-by-event
 * application and a from-scratch recomputation (the oracle), including a replica built only
 * from the emitted effects, as a sink would build it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "proj_apply.h"
#include "testsupport.h"

static const char *DEF =
    "projection: p\n"
    "source: { topics: [t], format: cloudevents-json }\n"
    "key: id\n"
    "on:\n"
    "  Put:   { upsert: { g: $.g, amt: $.amt, st: open, o: $.o, tags: [$.g, x] } }\n"
    "  Set:   { merge: { st: $.st } }\n"
    "  Move:  { merge: { g: $.g } }\n"
    "  Del:   { delete: true }\n"
    "indexes:\n"
    "  - { name: by_g, field: g }\n"
    "  - { name: open_by_g, field: g, where: { st: open }, order: o }\n"
    "aggregates:\n"
    "  - { name: total, group: g, sum: amt, where: { st: open } }\n"
    "  - { name: cnt, group: g, count: true }\n"
    "sinks: [redis]\n";

static proj_def_t def;

static int setup(void **state) {
  char err[256];
  if (proj_def_parse(&def, "p.yaml", DEF, strlen(DEF), err, sizeof err))
    fail_msg("%s", err);
  return 0;
}

static int teardown(void **state) {
  proj_def_free(&def);
  return 0;
}

static proj_change_t change(const char *type, const char *data) {
  proj_event_t ev = {(char *)type, json_loads(data, 0, NULL)};
  assert_non_null(ev.doc);
  proj_change_t c;
  char reason[256];
  if (proj_map(&def, &ev, &c, reason, sizeof reason))
    fail_msg("%s", reason);
  json_decref(ev.doc);
  return c;
}

static void clear_changes(proj_change_t *c, size_t n) {
  for (size_t i = 0; i < n; i++)
    proj_change_clear(&c[i]);
}

static void test_map(void **state) {
  proj_change_t c = change("Put", "{\"id\":7,\"g\":\"A\",\"amt\":5,\"o\":\"2026-01-01\"}");
  assert_string_equal(c.key, "7");
  assert_int_equal(c.op, PROJ_OP_UPSERT);
  json_t *want = json_loads("{\"g\":\"A\",\"amt\":5,\"st\":\"open\",\"o\":\"2026-01-01\",\"tags\":[\"A\",\"x\"]}", 0, NULL);
  assert_true(json_equal(want, c.fields));
  json_decref(want);
  proj_change_clear(&c);
  c = change("Del", "{\"id\":\"k\"}");
  assert_int_equal(c.op, PROJ_OP_DELETE);
  assert_null(c.fields);
  proj_change_clear(&c);

  /* Poison: unmapped, no key, a path the event lacks. */
  struct {
    const char *type, *data, *reason;
  } bad[] = {
      {"Nope", "{\"id\":1}", "no rule in on for event type 'Nope'"},
      {"Del", "{\"x\":1}", "key: $.id is missing, empty, too long or not a string or integer"},
      {"Del", "{\"id\":{}}", "key: $.id is missing, empty, too long or not a string or integer"},
      {"Put", "{\"id\":1,\"g\":\"A\",\"o\":1}", "on.Put: field amt: $.amt is not in the event"},
      {"Put", "{\"id\":1,\"amt\":1,\"o\":1}", "on.Put: field g: $.g is not in the event"},
  };
  for (size_t i = 0; i < BT_ARRAY_LEN(bad); i++) {
    proj_event_t ev = {(char *)bad[i].type, json_loads(bad[i].data, 0, NULL)};
    char reason[256] = "";
    assert_int_equal(proj_map(&def, &ev, &c, reason, sizeof reason), BT_EINVAL);
    assert_string_equal(reason, bad[i].reason);
    assert_null(c.key);
    json_decref(ev.doc);
  }
}

static size_t count_kind(const proj_effects_t *e, proj_effect_kind_t k) {
  size_t n = 0;
  for (size_t i = 0; i < e->n; i++)
    n += e->v[i].kind == k;
  return n;
}

static int64_t agg(proj_state_t *s, const char *name, const char *group) {
  return json_integer_value(json_object_get(json_object_get(s->aggs, name), group));
}

static void test_collapse(void **state) {
  proj_state_t s;
  assert_int_equal(proj_state_init(&s), 0);
  proj_effects_t e = {0};
  /* Put then delete of a new key in one batch: nothing at all reaches the sink. */
  proj_change_t b1[] = {change("Put", "{\"id\":\"k\",\"g\":\"A\",\"amt\":5,\"o\":1}"), change("Del", "{\"id\":\"k\"}")};
  assert_int_equal(proj_apply_batch(&s, &def, b1, 2, &e), 0);
  assert_int_equal(e.n, 0);
  assert_int_equal(json_object_size(s.docs), 0);
  clear_changes(b1, 2);
  /* Existing key: put, then delete then put ends as the put; then put then delete is a delete. */
  proj_change_t b2[] = {change("Put", "{\"id\":\"k\",\"g\":\"A\",\"amt\":5,\"o\":1}")};
  assert_int_equal(proj_apply_batch(&s, &def, b2, 1, &e), 0);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_DOC_PUT), 1);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_INDEX_ADD), 2);
  assert_int_equal(agg(&s, "total", "A"), 5);
  proj_effects_clear(&e);
  proj_change_t b3[] = {change("Del", "{\"id\":\"k\"}"), change("Put", "{\"id\":\"k\",\"g\":\"A\",\"amt\":9,\"o\":1}")};
  assert_int_equal(proj_apply_batch(&s, &def, b3, 2, &e), 0);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_DOC_DELETE), 0);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_DOC_PUT), 1);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_INDEX_REMOVE), 0);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_AGG_DELTA), 1);
  assert_int_equal(e.v[e.n - 1].delta, 4);
  assert_int_equal(agg(&s, "total", "A"), 9);
  proj_effects_clear(&e);
  proj_change_t b4[] = {change("Put", "{\"id\":\"k\",\"g\":\"A\",\"amt\":1,\"o\":1}"), change("Del", "{\"id\":\"k\"}")};
  assert_int_equal(proj_apply_batch(&s, &def, b4, 2, &e), 0);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_DOC_DELETE), 1);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_DOC_PUT), 0);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_INDEX_REMOVE), 2);
  assert_null(json_object_get(s.docs, "k"));
  assert_int_equal(agg(&s, "total", "A"), 0);
  assert_int_equal(agg(&s, "cnt", "A"), 0);
  proj_effects_clear(&e);
  clear_changes(b2, 1);
  clear_changes(b3, 2);
  clear_changes(b4, 2);
  proj_state_free(&s);
}

static void test_replay_and_moves(void **state) {
  proj_state_t s;
  assert_int_equal(proj_state_init(&s), 0);
  proj_effects_t e = {0};
  proj_change_t put = change("Put", "{\"id\":\"k\",\"g\":\"A\",\"amt\":5,\"o\":1}");
  assert_int_equal(proj_apply_batch(&s, &def, &put, 1, &e), 0);
  proj_effects_clear(&e);
  /* A replayed event changes nothing: no effect at all, aggregates as they were. */
  assert_int_equal(proj_apply_batch(&s, &def, &put, 1, &e), 0);
  assert_int_equal(e.n, 0);
  assert_int_equal(agg(&s, "total", "A"), 5);
  /* Moving between groups moves the contribution and the index membership. */
  proj_change_t mv = change("Move", "{\"id\":\"k\",\"g\":\"B\"}");
  assert_int_equal(proj_apply_batch(&s, &def, &mv, 1, &e), 0);
  assert_int_equal(agg(&s, "total", "A"), 0);
  assert_int_equal(agg(&s, "total", "B"), 5);
  assert_int_equal(agg(&s, "cnt", "B"), 1);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_INDEX_REMOVE), 2);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_INDEX_ADD), 2);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_AGG_DELTA), 4);
  proj_effects_clear(&e);
  /* Leaving the where filter: out of total and open_by_g, still counted and in by_g. */
  proj_change_t st = change("Set", "{\"id\":\"k\",\"st\":\"closed\"}");
  assert_int_equal(proj_apply_batch(&s, &def, &st, 1, &e), 0);
  assert_int_equal(agg(&s, "total", "B"), 0);
  assert_int_equal(agg(&s, "cnt", "B"), 1);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_INDEX_REMOVE), 1);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_INDEX_ADD), 0);
  assert_string_equal(def.indexes[e.v[1].index].name, "open_by_g");
  proj_effects_clear(&e);
  /* A merge onto a missing document creates it from the merged fields. */
  proj_change_t st2 = change("Set", "{\"id\":\"new\",\"st\":\"open\"}");
  assert_int_equal(proj_apply_batch(&s, &def, &st2, 1, &e), 0);
  assert_int_equal(count_kind(&e, PROJ_EFFECT_DOC_PUT), 1);
  assert_int_equal(json_object_size(json_object_get(s.docs, "new")), 1);
  proj_effects_clear(&e);
  proj_change_clear(&put);
  proj_change_clear(&mv);
  proj_change_clear(&st);
  proj_change_clear(&st2);
  proj_state_free(&s);
}

/* ---- property test ------------------------------------------------------------------------ */

/* What a sink holds when it applies only the effects: documents, index sets (member ->
 * order), aggregate totals. */
typedef struct replica {
  json_t *docs, *index, *aggs;
} replica_t;

static void replica_apply(replica_t *r, const proj_effects_t *e) {
  for (size_t i = 0; i < e->n; i++) {
    const proj_effect_t *x = &e->v[i];
    char set[600];
    switch (x->kind) {
    case PROJ_EFFECT_DOC_PUT: json_object_set(r->docs, x->key, x->doc); break;
    case PROJ_EFFECT_DOC_DELETE: json_object_del(r->docs, x->key); break;
    case PROJ_EFFECT_INDEX_ADD:
    case PROJ_EFFECT_INDEX_REMOVE: {
      snprintf(set, sizeof set, "%s/%s", def.indexes[x->index].name, x->value);
      json_t *members = json_object_get(r->index, set);
      if (!members) {
        json_object_set_new(r->index, set, json_object());
        members = json_object_get(r->index, set);
      }
      if (x->kind == PROJ_EFFECT_INDEX_ADD)
        json_object_set_new(members, x->key, x->order ? json_incref(x->order) : json_null());
      else {
        assert_non_null(json_object_get(members, x->key)); /* removes only what it added */
        json_object_del(members, x->key);
      }
      if (json_object_size(members) == 0)
        json_object_del(r->index, set);
      break;
    }
    case PROJ_EFFECT_AGG_DELTA: {
      assert_int_not_equal(x->delta, 0);
      snprintf(set, sizeof set, "%s/%s", def.aggregates[x->aggregate].name, x->group);
      json_int_t v = json_integer_value(json_object_get(r->aggs, set)) + x->delta;
      if (v)
        json_object_set_new(r->aggs, set, json_integer(v));
      else
        json_object_del(r->aggs, set);
      break;
    }
    }
  }
}

/* The oracle: index sets and totals recomputed from the final documents alone. */
static void recompute(json_t *docs, json_t **index, json_t **aggs) {
  *index = json_object();
  *aggs = json_object();
  const char *key;
  json_t *doc;
  json_object_foreach(docs, key, doc) {
    char buf[512], set[600];
    for (size_t i = 0; i < def.nindexes; i++) {
      json_t *order;
      if (!proj_index_member(&def.indexes[i], doc, buf, sizeof buf, &order))
        continue;
      snprintf(set, sizeof set, "%s/%s", def.indexes[i].name, buf);
      if (!json_object_get(*index, set))
        json_object_set_new(*index, set, json_object());
      json_object_set_new(json_object_get(*index, set), key, order ? json_incref(order) : json_null());
    }
    for (size_t i = 0; i < def.naggregates; i++) {
      int64_t amount;
      if (!proj_aggregate_contribution(&def.aggregates[i], doc, buf, sizeof buf, &amount))
        continue;
      snprintf(set, sizeof set, "%s/%s", def.aggregates[i].name, buf);
      json_int_t v = json_integer_value(json_object_get(*aggs, set)) + amount;
      if (v)
        json_object_set_new(*aggs, set, json_integer(v));
      else
        json_object_del(*aggs, set);
    }
  }
}

/* The state's totals flattened like the replica's, for comparison. */
static json_t *flat_aggs(proj_state_t *s) {
  json_t *o = json_object();
  const char *name, *group;
  json_t *groups, *v;
  json_object_foreach(s->aggs, name, groups) json_object_foreach(groups, group, v) {
    char set[600];
    snprintf(set, sizeof set, "%s/%s", name, group);
    json_object_set(o, set, v);
  }
  return o;
}

static void assert_json_equal(json_t *a, json_t *b, const char *what, unsigned seed) {
  if (!json_equal(a, b)) {
    char *sa = json_dumps(a, JSON_SORT_KEYS), *sb = json_dumps(b, JSON_SORT_KEYS);
    fail_msg("seed %u: %s differ:\n %s\n %s", seed, what, sa, sb);
  }
}

static proj_change_t random_change(unsigned *seed) {
  static const char *groups[] = {"A", "B", "C"};
  char data[256];
  int key = rand_r(seed) % 8, r = rand_r(seed) % 10;
  const char *g = groups[rand_r(seed) % 3];
  if (r < 4)
    snprintf(data, sizeof data, "{\"id\":\"k%d\",\"g\":\"%s\",\"amt\":%d,\"o\":%d}", key, g,
             rand_r(seed) % 150 - 50, rand_r(seed) % 5);
  else if (r < 6)
    snprintf(data, sizeof data, "{\"id\":\"k%d\",\"st\":\"%s\"}", key, rand_r(seed) % 2 ? "open" : "closed");
  else if (r < 8)
    snprintf(data, sizeof data, "{\"id\":\"k%d\",\"g\":\"%s\"}", key, g);
  else
    snprintf(data, sizeof data, "{\"id\":\"k%d\"}", key);
  return change(r < 4 ? "Put" : r < 6 ? "Set" : r < 8 ? "Move" : "Del", data);
}

static void test_property(void **state) {
  enum { ROUNDS = 300, EVENTS = 60 };
  for (unsigned round = 0; round < ROUNDS; round++) {
    unsigned seed = round * 7919u + 1;
    proj_change_t ch[EVENTS];
    for (size_t i = 0; i < EVENTS; i++)
      ch[i] = random_change(&seed);
    proj_state_t batched, single;
    assert_int_equal(proj_state_init(&batched), 0);
    assert_int_equal(proj_state_init(&single), 0);
    replica_t rb = {json_object(), json_object(), json_object()};
    replica_t rs = {json_object(), json_object(), json_object()};
    proj_effects_t e = {0};
    for (size_t i = 0; i < EVENTS;) {
      size_t n = 1 + (size_t)rand_r(&seed) % 20;
      if (n > EVENTS - i)
        n = EVENTS - i;
      assert_int_equal(proj_apply_batch(&batched, &def, ch + i, n, &e), 0);
      replica_apply(&rb, &e);
      proj_effects_clear(&e);
      i += n;
    }
    for (size_t i = 0; i < EVENTS; i++) {
      assert_int_equal(proj_apply_batch(&single, &def, ch + i, 1, &e), 0);
      replica_apply(&rs, &e);
      proj_effects_clear(&e);
    }
    json_t *index, *aggs, *fb = flat_aggs(&batched), *fs = flat_aggs(&single);
    recompute(single.docs, &index, &aggs);
    assert_json_equal(batched.docs, single.docs, "documents (batched, one by one)", round);
    assert_json_equal(rb.docs, single.docs, "documents (batched replica, one by one)", round);
    assert_json_equal(rs.docs, single.docs, "documents (one-by-one replica, state)", round);
    assert_json_equal(fb, aggs, "aggregates (batched, oracle)", round);
    assert_json_equal(fs, aggs, "aggregates (one by one, oracle)", round);
    assert_json_equal(rb.aggs, aggs, "aggregates (batched replica, oracle)", round);
    assert_json_equal(rs.aggs, aggs, "aggregates (one-by-one replica, oracle)", round);
    assert_json_equal(rb.index, index, "indexes (batched replica, oracle)", round);
    assert_json_equal(rs.index, index, "indexes (one-by-one replica, oracle)", round);
    /* A replay of the last event (an offset the sink already holds) yields no effect. */
    assert_int_equal(proj_apply_batch(&batched, &def, ch + EVENTS - 1, 1, &e), 0);
    if (e.n != 0)
      fail_msg("seed %u: the replayed last event produced %zu effects", round, e.n);
    json_decref(index);
    json_decref(aggs);
    json_decref(fb);
    json_decref(fs);
    json_decref(rb.docs), json_decref(rb.index), json_decref(rb.aggs);
    json_decref(rs.docs), json_decref(rs.index), json_decref(rs.aggs);
    proj_state_free(&batched);
    proj_state_free(&single);
    clear_changes(ch, EVENTS);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_map),
      cmocka_unit_test(test_collapse),
      cmocka_unit_test(test_replay_and_moves),
      cmocka_unit_test(test_property),
  };
  return cmocka_run_group_tests(tests, setup, teardown);
}
