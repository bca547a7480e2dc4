/* Mapping and batch application. The batch is first collapsed per key (each key's changes
 * applied in Kafka order to a working copy), and only then compared with the old documents:
 * a put then a delete of one key is a delete, a delete then a put is the put, and the sink
 * never sees an intermediate state that could be applied out of order (redis-kafka-connect
 * #47). Deltas come from old and new contributions, not from the events, so that a replayed
 * event, or a document moving between groups or out of a where filter, stays exact. */
#include "proj_apply.h"

#include <inttypes.h>
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

/* Room for an index value or an aggregate group rendered as text. Longer values do not index
 * or aggregate: they would make unbounded Redis keys. */
#define VALUE_MAX 512

static void path_text(const proj_value_t *v, char *buf, size_t len) {
  size_t o = (size_t)snprintf(buf, len, "$");
  for (size_t i = 0; i < v->npath && o < len; i++)
    o += (size_t)snprintf(buf + o, len - o, ".%s", v->path[i]);
}

static int eval(const proj_value_t *v, json_t *doc, json_t **out, const char *rule,
                const char *field, char *reason, size_t rlen) {
  switch (v->kind) {
  case PROJ_VAL_LITERAL:
    *out = json_incref(v->literal);
    return 0;
  case PROJ_VAL_PATH: {
    json_t *j = proj_value_resolve_path(v, doc);
    if (!j) {
      char p[256];
      path_text(v, p, sizeof p);
      snprintf(reason, rlen, "on.%s: field %s: %s is not in the event", rule, field, p);
      return BT_EINVAL;
    }
    *out = json_incref(j);
    return 0;
  }
  case PROJ_VAL_ARRAY: {
    json_t *a = json_array();
    for (size_t i = 0; a && i < v->nitems; i++) {
      json_t *item;
      int rc = eval(&v->items[i], doc, &item, rule, field, reason, rlen);
      if (rc || json_array_append_new(a, item)) {
        json_decref(a);
        return rc ? rc : BT_ENOMEM;
      }
    }
    *out = a;
    return a ? 0 : BT_ENOMEM;
  }
  }
  return BT_EINVAL;
}

/* Text form of a scalar used as a key, index value or group: strings as they are, integers
 * in decimal. Anything else has no text form. */
static bool scalar_text(json_t *j, char *buf, size_t len) {
  int n;
  if (json_is_string(j))
    n = snprintf(buf, len, "%s", json_string_value(j));
  else if (json_is_integer(j))
    n = snprintf(buf, len, "%" JSON_INTEGER_FORMAT, json_integer_value(j));
  else
    return false;
  return n > 0 && (size_t)n < len;
}

int proj_map(const proj_def_t *d, const proj_event_t *ev, proj_change_t *out, char *reason,
             size_t reasonlen) {
  memset(out, 0, sizeof *out);
  const proj_rule_t *r = proj_def_rule(d, ev->type);
  if (!r) {
    snprintf(reason, reasonlen, "no rule in on for event type '%s'", ev->type);
    return BT_EINVAL;
  }
  char key[VALUE_MAX], p[256];
  if (!scalar_text(proj_value_resolve_path(&d->key, ev->doc), key, sizeof key) || !key[0]) {
    path_text(&d->key, p, sizeof p);
    snprintf(reason, reasonlen, "key: %s is missing, empty, too long or not a string or integer", p);
    return BT_EINVAL;
  }
  out->op = r->op;
  if (!(out->key = strdup(key)))
    return BT_ENOMEM;
  if (r->op == PROJ_OP_DELETE)
    return 0;
  if (!(out->fields = json_object())) {
    proj_change_clear(out);
    return BT_ENOMEM;
  }
  for (size_t i = 0; i < r->nfields; i++) {
    json_t *v;
    int rc = eval(&r->fields[i].value, ev->doc, &v, r->event_type, r->fields[i].name, reason, reasonlen);
    if (!rc && json_object_set_new(out->fields, r->fields[i].name, v))
      rc = BT_ENOMEM;
    if (rc) {
      proj_change_clear(out);
      return rc;
    }
  }
  return 0;
}

void proj_change_clear(proj_change_t *c) {
  free(c->key);
  json_decref(c->fields);
  memset(c, 0, sizeof *c);
}

int proj_state_init(proj_state_t *s) {
  s->docs = json_object();
  s->aggs = json_object();
  if (s->docs && s->aggs)
    return 0;
  proj_state_free(s);
  return BT_ENOMEM;
}

void proj_state_free(proj_state_t *s) {
  json_decref(s->docs);
  json_decref(s->aggs);
  s->docs = s->aggs = NULL;
}

static bool where_holds(const proj_where_t *w, size_t n, json_t *doc) {
  for (size_t i = 0; i < n; i++) {
    json_t *v = json_object_get(doc, w[i].field);
    if (!v || !json_equal(v, w[i].equals))
      return false;
  }
  return true;
}

bool proj_index_member(const proj_index_t *ix, json_t *doc, char *buf, size_t buflen, json_t **order) {
  *order = NULL;
  if (!doc || !where_holds(ix->where, ix->nwhere, doc) ||
      !scalar_text(json_object_get(doc, ix->field), buf, buflen))
    return false;
  if (ix->order)
    *order = json_object_get(doc, ix->order);
  return true;
}

bool proj_aggregate_contribution(const proj_aggregate_t *ag, json_t *doc, char *buf, size_t buflen,
                                 int64_t *amount) {
  *amount = 0;
  if (!doc || !where_holds(ag->where, ag->nwhere, doc) ||
      !scalar_text(json_object_get(doc, ag->group), buf, buflen))
    return false;
  if (ag->count) {
    *amount = 1;
  } else {
    /* Sums are exact integers (cents). A missing or non-integral value adds nothing rather
     * than poisoning a document that is otherwise fine. */
    json_t *v = json_object_get(doc, ag->sum);
    if (json_is_integer(v))
      *amount = json_integer_value(v);
    else if (json_is_real(v) && json_real_value(v) == floor(json_real_value(v)) &&
             fabs(json_real_value(v)) < 9e15)
      *amount = (int64_t)json_real_value(v);
  }
  return true;
}

static void effect_free(proj_effect_t *x) {
  free(x->key);
  free(x->value);
  free(x->group);
  json_decref(x->doc);
  json_decref(x->order);
}

static proj_effect_t *push(proj_effects_t *e, proj_effect_kind_t kind, const char *key) {
  if (e->n == e->cap) {
    size_t cap = e->cap ? e->cap * 2 : 16;
    proj_effect_t *v = realloc(e->v, cap * sizeof *v);
    if (!v)
      return NULL;
    e->v = v;
    e->cap = cap;
  }
  proj_effect_t *x = &e->v[e->n];
  memset(x, 0, sizeof *x);
  x->kind = kind;
  if (key && !(x->key = strdup(key)))
    return NULL;
  e->n++;
  return x;
}

static int emit_index(proj_effects_t *out, const proj_def_t *d, const char *key, json_t *old, json_t *cur) {
  for (size_t i = 0; i < d->nindexes; i++) {
    char ov[VALUE_MAX], nv[VALUE_MAX];
    json_t *oo, *no;
    bool was = proj_index_member(&d->indexes[i], old, ov, sizeof ov, &oo);
    bool is = proj_index_member(&d->indexes[i], cur, nv, sizeof nv, &no);
    if (was == is && (!was || (strcmp(ov, nv) == 0 && (oo == no || (oo && no && json_equal(oo, no))))))
      continue;
    proj_effect_t *x;
    if (was) {
      if (!(x = push(out, PROJ_EFFECT_INDEX_REMOVE, key)) || !(x->value = strdup(ov)))
        return BT_ENOMEM;
      x->index = i;
      /* The old order names the member to remove where members embed their sort key. */
      x->order = json_incref(oo);
    }
    if (is) {
      if (!(x = push(out, PROJ_EFFECT_INDEX_ADD, key)) || !(x->value = strdup(nv)))
        return BT_ENOMEM;
      x->index = i;
      x->order = json_incref(no);
    }
  }
  return 0;
}

/* Adds amount to totals[agg][group], creating what is missing. */
static int add_total(json_t *totals, const char *agg, const char *group, int64_t amount) {
  json_t *g = json_object_get(totals, agg);
  if (!g && (json_object_set_new(totals, agg, json_object()) || !(g = json_object_get(totals, agg))))
    return BT_ENOMEM;
  json_t *v = json_object_get(g, group);
  int64_t sum = (v ? json_integer_value(v) : 0) + amount;
  return json_object_set_new(g, group, json_integer(sum)) ? BT_ENOMEM : 0;
}

static int collect_deltas(json_t *deltas, const proj_def_t *d, json_t *old, json_t *cur) {
  for (size_t i = 0; i < d->naggregates; i++) {
    char og[VALUE_MAX], ng[VALUE_MAX];
    int64_t oa, na;
    int rc = 0;
    if (proj_aggregate_contribution(&d->aggregates[i], old, og, sizeof og, &oa))
      rc = add_total(deltas, d->aggregates[i].name, og, -oa);
    if (!rc && proj_aggregate_contribution(&d->aggregates[i], cur, ng, sizeof ng, &na))
      rc = add_total(deltas, d->aggregates[i].name, ng, na);
    if (rc)
      return rc;
  }
  return 0;
}

/* Runs one key's changes from the batch over a working copy. Documents in the state are
 * never modified in place: each step makes a new object, so old stays as it was. */
static json_t *step(json_t *cur, const proj_change_t *c) {
  switch (c->op) {
  case PROJ_OP_DELETE:
    return NULL;
  case PROJ_OP_UPSERT:
    return json_copy(c->fields);
  case PROJ_OP_MERGE: {
    /* A merge onto a missing document creates it from the merged fields, as HSET would. */
    json_t *n = cur ? json_copy(cur) : json_object();
    if (n && json_object_update(n, c->fields)) {
      json_decref(n);
      return NULL;
    }
    return n;
  }
  }
  return NULL;
}

int proj_apply_batch(proj_state_t *s, const proj_def_t *d, const proj_change_t *changes, size_t n,
                     proj_effects_t *out) {
  /* final: key -> the key's document after the batch (JSON null once deleted), in the order
   * keys first appear, which is also the order of their effects. */
  json_t *final = json_object(), *deltas = json_object();
  size_t out_n0 = out->n;
  int rc = final && deltas ? 0 : BT_ENOMEM;
  for (size_t i = 0; !rc && i < n; i++) {
    json_t *cur = json_object_get(final, changes[i].key);
    if (!cur)
      cur = json_object_get(s->docs, changes[i].key);
    json_t *next = step(json_is_null(cur) ? NULL : cur, &changes[i]);
    if (!next && changes[i].op != PROJ_OP_DELETE)
      rc = BT_ENOMEM;
    else if (json_object_set_new(final, changes[i].key, next ? next : json_null()))
      rc = BT_ENOMEM;
  }
  const char *key;
  json_t *cur;
  json_object_foreach(final, key, cur) {
    if (rc)
      break;
    json_t *old = json_object_get(s->docs, key);
    json_t *now = json_is_null(cur) ? NULL : cur;
    proj_effect_t *x;
    if (!now && old) {
      if (!push(out, PROJ_EFFECT_DOC_DELETE, key))
        rc = BT_ENOMEM;
    } else if (now && !(old && json_equal(old, now))) {
      if (!(x = push(out, PROJ_EFFECT_DOC_PUT, key)))
        rc = BT_ENOMEM;
      else
        x->doc = json_incref(now);
    }
    if (!rc)
      rc = emit_index(out, d, key, old, now);
    if (!rc)
      rc = collect_deltas(deltas, d, old, now);
  }
  const char *agg;
  json_t *groups;
  json_object_foreach(deltas, agg, groups) {
    size_t ai = 0;
    while (strcmp(d->aggregates[ai].name, agg) != 0)
      ai++;
    const char *group;
    json_t *v;
    json_object_foreach(groups, group, v) {
      if (rc || json_integer_value(v) == 0)
        continue;
      proj_effect_t *x = push(out, PROJ_EFFECT_AGG_DELTA, NULL);
      if (!x || !(x->group = strdup(group))) {
        rc = BT_ENOMEM;
        continue;
      }
      x->aggregate = ai;
      x->delta = json_integer_value(v);
    }
  }
  /* The state changes only once every effect exists, so a failure leaves it as it was. */
  if (!rc) {
    json_object_foreach(final, key, cur) {
      if (json_is_null(cur))
        json_object_del(s->docs, key);
      else
        json_object_set(s->docs, key, cur);
    }
    for (size_t i = out_n0; i < out->n; i++) {
      proj_effect_t *x = &out->v[i];
      if (x->kind != PROJ_EFFECT_AGG_DELTA)
        continue;
      const char *name = d->aggregates[x->aggregate].name;
      /* Out of memory here leaves a total behind; the state is a cache of what the sinks hold
       * and is reloaded from them, so this is not where exactness lives. */
      (void)add_total(s->aggs, name, x->group, x->delta);
      json_t *g = json_object_get(s->aggs, name);
      if (json_integer_value(json_object_get(g, x->group)) == 0)
        json_object_del(g, x->group);
    }
  } else {
    for (size_t i = out_n0; i < out->n; i++)
      effect_free(&out->v[i]);
    out->n = out_n0;
  }
  json_decref(final);
  json_decref(deltas);
  return rc;
}

void proj_effects_clear(proj_effects_t *e) {
  for (size_t i = 0; i < e->n; i++)
    effect_free(&e->v[i]);
  free(e->v);
  memset(e, 0, sizeof *e);
}
