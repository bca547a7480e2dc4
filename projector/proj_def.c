/* Projection definitions: YAML (libyaml's document API, which keeps each node's position) to
 * a validated proj_def_t. Validation is strict: an unknown key or a field nothing sets is an
 * error at start, because at run time it would silently project nothing. */
#include "proj_def.h"

#include <dirent.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

typedef struct ctx {
  const char *file;
  yaml_document_t *doc;
  char *err;
  size_t errlen;
} ctx_t;

static int fail(ctx_t *c, const yaml_node_t *n, const char *field, const char *fmt, ...)
    BT_PRINTF(4, 5);

static int fail(ctx_t *c, const yaml_node_t *n, const char *field, const char *fmt, ...) {
  char msg[256];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  snprintf(c->err, c->errlen, "%s:%zu:%zu: %s: %s", c->file, n ? n->start_mark.line + 1 : 1,
           n ? n->start_mark.column + 1 : 1, field, msg);
  return BT_EINVAL;
}

static yaml_node_t *node(ctx_t *c, int id) { return yaml_document_get_node(c->doc, id); }

static const char *scalar(const yaml_node_t *n) {
  return n && n->type == YAML_SCALAR_NODE ? (const char *)n->data.scalar.value : NULL;
}

/* For keys already checked to be scalars by check_keys. */
static const char *key_text(const yaml_node_t *n) {
  const char *s = scalar(n);
  return s ? s : "?";
}

static const char *kind_name(const yaml_node_t *n) {
  switch (n->type) {
  case YAML_SCALAR_NODE: return "a scalar";
  case YAML_SEQUENCE_NODE: return "a list";
  case YAML_MAPPING_NODE: return "a mapping";
  default: return "empty";
  }
}

static int want(ctx_t *c, const yaml_node_t *n, yaml_node_type_t t, const char *field) {
  if (n->type == t)
    return 0;
  const char *w = t == YAML_SCALAR_NODE ? "a scalar" : t == YAML_SEQUENCE_NODE ? "a list" : "a mapping";
  return fail(c, n, field, "expected %s, found %s", w, kind_name(n));
}


/* Names end up in Redis keys and Postgres identifiers, so they are held to what both accept
 * without quoting. */
static bool is_ident(const char *s) {
  if (!s || !*s || strlen(s) > 63 || !((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || *s == '_'))
    return false;
  for (; *s; s++)
    if (!((*s >= 'a' && *s <= 'z') || (*s >= 'A' && *s <= 'Z') || (*s >= '0' && *s <= '9') || *s == '_'))
      return false;
  return true;
}

/* Checks a mapping's keys against the allowed set and for duplicates (libyaml keeps both). */
static int check_keys(ctx_t *c, yaml_node_t *map, const char *field, const char *const *allowed) {
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++) {
    yaml_node_t *k = node(c, p->key);
    const char *ks = scalar(k);
    if (!ks)
      return fail(c, k, field, "keys must be scalars");
    if (allowed) {
      bool ok = false;
      for (const char *const *a = allowed; *a; a++)
        ok = ok || strcmp(*a, ks) == 0;
      if (!ok)
        return fail(c, k, field, "unknown key '%s'", ks);
    }
    for (yaml_node_pair_t *q = map->data.mapping.pairs.start; q < p; q++)
      if (strcmp(key_text(node(c, q->key)), ks) == 0)
        return fail(c, k, field, "duplicate key '%s'", ks);
  }
  return 0;
}

static yaml_node_t *get(ctx_t *c, yaml_node_t *map, const char *key) {
  for (yaml_node_pair_t *p = map->data.mapping.pairs.start; p < map->data.mapping.pairs.top; p++)
    if (strcmp(key_text(node(c, p->key)), key) == 0)
      return node(c, p->value);
  return NULL;
}

static int require(ctx_t *c, yaml_node_t *map, const char *key, const char *field, yaml_node_t **out) {
  *out = get(c, map, key);
  if (!*out)
    return fail(c, map, field, "missing required key '%s'", key);
  return 0;
}

static int get_ident(ctx_t *c, yaml_node_t *n, const char *field, char **out) {
  int rc = want(c, n, YAML_SCALAR_NODE, field);
  if (rc)
    return rc;
  if (!is_ident(scalar(n)))
    return fail(c, n, field, "'%s' is not a name ([A-Za-z_][A-Za-z0-9_]*, at most 63)", scalar(n));
  *out = strdup(scalar(n));
  return *out ? 0 : BT_ENOMEM;
}

static bool is_true(const yaml_node_t *n) {
  const char *s = scalar(n);
  return s && n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && strcmp(s, "true") == 0;
}

/* A plain scalar is typed as YAML 1.2's core schema would (null, bool, int, float); a quoted
 * one is always a string, so `"123"` stays text. */
static json_t *literal(const yaml_node_t *n) {
  const char *s = scalar(n);
  if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE) {
    if (strcmp(s, "null") == 0 || strcmp(s, "~") == 0)
      return json_null();
    if (strcmp(s, "true") == 0)
      return json_true();
    if (strcmp(s, "false") == 0)
      return json_false();
    char *end;
    errno = 0;
    long long i = strtoll(s, &end, 10);
    if (*s && !*end && errno == 0)
      return json_integer(i);
    double d = strtod(s, &end);
    if (*s && !*end && errno == 0)
      return json_real(d);
  }
  return json_string(s);
}

static int parse_path(ctx_t *c, yaml_node_t *n, const char *field, const char *s, proj_value_t *v) {
  v->kind = PROJ_VAL_PATH;
  if (strcmp(s, "$") == 0)
    return 0;
  if (strncmp(s, "$.", 2) != 0)
    return fail(c, n, field, "bad path '%s': expected $ or $.field.field", s);
  size_t segs = 1;
  for (const char *p = s + 2; *p; p++)
    segs += *p == '.';
  v->path = calloc(segs, sizeof *v->path);
  if (!v->path)
    return BT_ENOMEM;
  const char *p = s + 2;
  while (v->npath < segs) {
    size_t len = strcspn(p, ".");
    for (size_t i = 0; i < len; i++)
      if (!((p[i] >= 'a' && p[i] <= 'z') || (p[i] >= 'A' && p[i] <= 'Z') ||
            (p[i] >= '0' && p[i] <= '9') || p[i] == '_' || p[i] == '-'))
        return fail(c, n, field, "bad path '%s': segment has '%c'", s, p[i]);
    if (len == 0)
      return fail(c, n, field, "bad path '%s': empty segment", s);
    if (!(v->path[v->npath++] = strndup(p, len)))
      return BT_ENOMEM;
    p += len + (p[len] == '.');
  }
  return 0;
}

static int parse_scalar_value(ctx_t *c, yaml_node_t *n, const char *field, proj_value_t *v) {
  const char *s = scalar(n);
  if (n->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && s[0] == '$')
    return parse_path(c, n, field, s, v);
  v->kind = PROJ_VAL_LITERAL;
  v->literal = literal(n);
  return v->literal ? 0 : BT_ENOMEM;
}

static int parse_value(ctx_t *c, yaml_node_t *n, const char *field, proj_value_t *v) {
  if (n->type == YAML_SCALAR_NODE)
    return parse_scalar_value(c, n, field, v);
  if (n->type != YAML_SEQUENCE_NODE)
    return fail(c, n, field, "expected a path, a literal or a list of them, found %s", kind_name(n));
  v->kind = PROJ_VAL_ARRAY;
  size_t cnt = (size_t)(n->data.sequence.items.top - n->data.sequence.items.start);
  v->items = calloc(cnt ? cnt : 1, sizeof *v->items);
  if (!v->items)
    return BT_ENOMEM;
  for (yaml_node_item_t *it = n->data.sequence.items.start; it < n->data.sequence.items.top; it++) {
    yaml_node_t *e = node(c, *it);
    if (e->type != YAML_SCALAR_NODE)
      return fail(c, e, field, "arrays hold paths and literals only (one level), found %s", kind_name(e));
    int rc = parse_scalar_value(c, e, field, &v->items[v->nitems++]);
    if (rc)
      return rc;
  }
  return 0;
}

static int parse_rule(ctx_t *c, yaml_node_t *k, yaml_node_t *v, proj_rule_t *r) {
  char field[160];
  snprintf(field, sizeof field, "on.%s", key_text(k));
  int rc = want(c, v, YAML_MAPPING_NODE, field);
  if (rc)
    return rc;
  if (!(r->event_type = strdup(key_text(k))))
    return BT_ENOMEM;
  size_t nops = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
  if (nops != 1)
    return fail(c, v, field, "needs exactly one of upsert, merge or delete, found %zu keys", nops);
  yaml_node_t *opk = node(c, v->data.mapping.pairs.start->key);
  yaml_node_t *body = node(c, v->data.mapping.pairs.start->value);
  const char *op = scalar(opk);
  if (!op)
    return fail(c, opk, field, "keys must be scalars");
  if (strcmp(op, "delete") == 0) {
    r->op = PROJ_OP_DELETE;
    if (!is_true(body))
      return fail(c, body, field, "delete takes `true`");
    return 0;
  }
  if (strcmp(op, "upsert") == 0)
    r->op = PROJ_OP_UPSERT;
  else if (strcmp(op, "merge") == 0)
    r->op = PROJ_OP_MERGE;
  else
    return fail(c, opk, field, "unknown operation '%s' (expected upsert, merge or delete)", op);
  snprintf(field, sizeof field, "on.%s.%s", key_text(k), op);
  if ((rc = want(c, body, YAML_MAPPING_NODE, field)) || (rc = check_keys(c, body, field, NULL)))
    return rc;
  size_t nf = (size_t)(body->data.mapping.pairs.top - body->data.mapping.pairs.start);
  if (nf == 0)
    return fail(c, body, field, "%s needs at least one field", op);
  if (!(r->fields = calloc(nf, sizeof *r->fields)))
    return BT_ENOMEM;
  for (yaml_node_pair_t *p = body->data.mapping.pairs.start; p < body->data.mapping.pairs.top; p++) {
    proj_field_t *f = &r->fields[r->nfields++];
    char ffield[224];
    snprintf(ffield, sizeof ffield, "%s.%s", field, key_text(node(c, p->key)));
    if ((rc = get_ident(c, node(c, p->key), ffield, &f->name)) ||
        (rc = parse_value(c, node(c, p->value), ffield, &f->value)))
      return rc;
  }
  return 0;
}

static bool rules_set(const proj_def_t *d, const char *field) {
  for (size_t i = 0; i < d->nrules; i++)
    for (size_t j = 0; j < d->rules[i].nfields; j++)
      if (strcmp(d->rules[i].fields[j].name, field) == 0)
        return true;
  return false;
}

/* A field an index or aggregate reads must be written by some rule, or it would stay empty. */
static int doc_field(ctx_t *c, const proj_def_t *d, yaml_node_t *n, const char *field, char **out) {
  int rc = get_ident(c, n, field, out);
  if (!rc && !rules_set(d, *out))
    return fail(c, n, field, "field '%s' is not set by any rule in on", *out);
  return rc;
}

static int parse_where(ctx_t *c, const proj_def_t *d, yaml_node_t *n, const char *field,
                       proj_where_t **out, size_t *nout) {
  int rc;
  if ((rc = want(c, n, YAML_MAPPING_NODE, field)) || (rc = check_keys(c, n, field, NULL)))
    return rc;
  size_t cnt = (size_t)(n->data.mapping.pairs.top - n->data.mapping.pairs.start);
  if (!(*out = calloc(cnt ? cnt : 1, sizeof **out)))
    return BT_ENOMEM;
  for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    proj_where_t *w = &(*out)[(*nout)++];
    yaml_node_t *v = node(c, p->value);
    char wfield[224];
    snprintf(wfield, sizeof wfield, "%s.%s", field, key_text(node(c, p->key)));
    if ((rc = doc_field(c, d, node(c, p->key), wfield, &w->field)))
      return rc;
    if (v->type != YAML_SCALAR_NODE)
      return fail(c, v, wfield, "where compares with a literal, found %s", kind_name(v));
    if (v->data.scalar.style == YAML_PLAIN_SCALAR_STYLE && scalar(v)[0] == '$')
      return fail(c, v, wfield, "where compares document fields with literals, not paths");
    if (!(w->equals = literal(v)))
      return BT_ENOMEM;
  }
  return 0;
}

static int check_unique_name(ctx_t *c, yaml_node_t *n, const char *field, const char *name,
                             const char *prev, const char *what) {
  if (prev && strcmp(prev, name) == 0)
    return fail(c, n, field, "duplicate %s name '%s'", what, name);
  return 0;
}

static int parse_indexes(ctx_t *c, proj_def_t *d, yaml_node_t *seq) {
  static const char *const keys[] = {"name", "field", "where", "order", NULL};
  int rc = want(c, seq, YAML_SEQUENCE_NODE, "indexes");
  if (rc)
    return rc;
  size_t cnt = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
  if (!(d->indexes = calloc(cnt ? cnt : 1, sizeof *d->indexes)))
    return BT_ENOMEM;
  for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
    yaml_node_t *m = node(c, *it), *v;
    char field[96];
    snprintf(field, sizeof field, "indexes[%zu]", d->nindexes);
    proj_index_t *ix = &d->indexes[d->nindexes++];
    if ((rc = want(c, m, YAML_MAPPING_NODE, field)) || (rc = check_keys(c, m, field, keys)) ||
        (rc = require(c, m, "name", field, &v)) || (rc = get_ident(c, v, field, &ix->name)))
      return rc;
    snprintf(field, sizeof field, "indexes.%s", ix->name);
    for (size_t i = 0; i + 1 < d->nindexes; i++)
      if ((rc = check_unique_name(c, v, field, ix->name, d->indexes[i].name, "index")))
        return rc;
    char sub[160];
    snprintf(sub, sizeof sub, "%s.field", field);
    if ((rc = require(c, m, "field", field, &v)) || (rc = doc_field(c, d, v, sub, &ix->field)))
      return rc;
    snprintf(sub, sizeof sub, "%s.order", field);
    if ((v = get(c, m, "order")) && (rc = doc_field(c, d, v, sub, &ix->order)))
      return rc;
    snprintf(sub, sizeof sub, "%s.where", field);
    if ((v = get(c, m, "where")) && (rc = parse_where(c, d, v, sub, &ix->where, &ix->nwhere)))
      return rc;
  }
  return 0;
}

static int parse_aggregates(ctx_t *c, proj_def_t *d, yaml_node_t *seq) {
  static const char *const keys[] = {"name", "group", "sum", "count", "where", NULL};
  int rc = want(c, seq, YAML_SEQUENCE_NODE, "aggregates");
  if (rc)
    return rc;
  size_t cnt = (size_t)(seq->data.sequence.items.top - seq->data.sequence.items.start);
  if (!(d->aggregates = calloc(cnt ? cnt : 1, sizeof *d->aggregates)))
    return BT_ENOMEM;
  for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
    yaml_node_t *m = node(c, *it), *v, *sum, *count;
    char field[96], sub[160];
    snprintf(field, sizeof field, "aggregates[%zu]", d->naggregates);
    proj_aggregate_t *ag = &d->aggregates[d->naggregates++];
    if ((rc = want(c, m, YAML_MAPPING_NODE, field)) || (rc = check_keys(c, m, field, keys)) ||
        (rc = require(c, m, "name", field, &v)) || (rc = get_ident(c, v, field, &ag->name)))
      return rc;
    snprintf(field, sizeof field, "aggregates.%s", ag->name);
    for (size_t i = 0; i + 1 < d->naggregates; i++)
      if ((rc = check_unique_name(c, v, field, ag->name, d->aggregates[i].name, "aggregate")))
        return rc;
    snprintf(sub, sizeof sub, "%s.group", field);
    if ((rc = require(c, m, "group", field, &v)) || (rc = doc_field(c, d, v, sub, &ag->group)))
      return rc;
    sum = get(c, m, "sum");
    count = get(c, m, "count");
    if (sum && count)
      return fail(c, m, field, "give either sum or count, not both");
    if (!sum && !count)
      return fail(c, m, field, "needs sum: FIELD or count: true");
    snprintf(sub, sizeof sub, "%s.sum", field);
    if (sum && (rc = doc_field(c, d, sum, sub, &ag->sum)))
      return rc;
    if (count && !is_true(count))
      return fail(c, count, field, "count takes `true`");
    ag->count = count != NULL;
    snprintf(sub, sizeof sub, "%s.where", field);
    if ((v = get(c, m, "where")) && (rc = parse_where(c, d, v, sub, &ag->where, &ag->nwhere)))
      return rc;
  }
  return 0;
}

static int parse_source(ctx_t *c, proj_def_t *d, yaml_node_t *src) {
  static const char *const keys[] = {"topics", "format", NULL};
  yaml_node_t *topics, *fmt;
  int rc;
  if ((rc = want(c, src, YAML_MAPPING_NODE, "source")) || (rc = check_keys(c, src, "source", keys)) ||
      (rc = require(c, src, "topics", "source", &topics)) ||
      (rc = require(c, src, "format", "source", &fmt)) ||
      (rc = want(c, topics, YAML_SEQUENCE_NODE, "source.topics")) ||
      (rc = want(c, fmt, YAML_SCALAR_NODE, "source.format")))
    return rc;
  size_t cnt = (size_t)(topics->data.sequence.items.top - topics->data.sequence.items.start);
  if (cnt == 0)
    return fail(c, topics, "source.topics", "needs at least one topic");
  if (!(d->topics = calloc(cnt, sizeof *d->topics)))
    return BT_ENOMEM;
  for (yaml_node_item_t *it = topics->data.sequence.items.start; it < topics->data.sequence.items.top; it++) {
    yaml_node_t *t = node(c, *it);
    if ((rc = want(c, t, YAML_SCALAR_NODE, "source.topics")))
      return rc;
    if (!*scalar(t))
      return fail(c, t, "source.topics", "empty topic name");
    for (size_t i = 0; i < d->ntopics; i++)
      if (strcmp(d->topics[i], scalar(t)) == 0)
        return fail(c, t, "source.topics", "duplicate topic '%s'", scalar(t));
    if (!(d->topics[d->ntopics++] = strdup(scalar(t))))
      return BT_ENOMEM;
  }
  const char *f = scalar(fmt);
  if (strcmp(f, "debezium-json") == 0)
    d->format = PROJ_FMT_DEBEZIUM_JSON;
  else if (strcmp(f, "cloudevents-json") == 0)
    d->format = PROJ_FMT_CLOUDEVENTS_JSON;
  else if (strcmp(f, "protobuf") == 0)
    d->format = PROJ_FMT_PROTOBUF;
  else
    return fail(c, fmt, "source.format",
                "unknown format '%s' (expected debezium-json, cloudevents-json or protobuf)", f);
  return 0;
}

static int parse_sinks(ctx_t *c, proj_def_t *d, yaml_node_t *seq) {
  int rc = want(c, seq, YAML_SEQUENCE_NODE, "sinks");
  if (rc)
    return rc;
  for (yaml_node_item_t *it = seq->data.sequence.items.start; it < seq->data.sequence.items.top; it++) {
    yaml_node_t *s = node(c, *it);
    if ((rc = want(c, s, YAML_SCALAR_NODE, "sinks")))
      return rc;
    unsigned bit = strcmp(scalar(s), "redis") == 0      ? PROJ_SINK_REDIS
                   : strcmp(scalar(s), "postgres") == 0 ? PROJ_SINK_POSTGRES
                                                        : 0;
    if (!bit)
      return fail(c, s, "sinks", "unknown sink '%s' (expected redis or postgres)", scalar(s));
    if (d->sinks & bit)
      return fail(c, s, "sinks", "duplicate sink '%s'", scalar(s));
    d->sinks |= bit;
  }
  if (!d->sinks)
    return fail(c, seq, "sinks", "needs at least one sink");
  return 0;
}

static int parse_root(ctx_t *c, proj_def_t *d, yaml_node_t *root) {
  static const char *const keys[] = {"projection", "source", "key", "on", "indexes",
                                     "aggregates", "sinks", NULL};
  yaml_node_t *v;
  int rc;
  if (!root)
    return fail(c, NULL, "projection", "the file is empty");
  if ((rc = want(c, root, YAML_MAPPING_NODE, "(top)")) || (rc = check_keys(c, root, "(top)", keys)) ||
      (rc = require(c, root, "projection", "(top)", &v)) ||
      (rc = get_ident(c, v, "projection", &d->name)) ||
      (rc = require(c, root, "source", "(top)", &v)) || (rc = parse_source(c, d, v)) ||
      (rc = require(c, root, "key", "(top)", &v)) || (rc = want(c, v, YAML_SCALAR_NODE, "key")))
    return rc;
  /* `key: invoice_id` is shorthand for `key: $.invoice_id`. */
  if (scalar(v)[0] == '$') {
    if ((rc = parse_path(c, v, "key", scalar(v), &d->key)))
      return rc;
    if (d->key.npath == 0)
      return fail(c, v, "key", "the key must name a field of the event, not $");
  } else {
    char buf[160];
    snprintf(buf, sizeof buf, "$.%s", scalar(v));
    if ((rc = parse_path(c, v, "key", buf, &d->key)))
      return rc;
  }
  if ((rc = require(c, root, "on", "(top)", &v)) || (rc = want(c, v, YAML_MAPPING_NODE, "on")) ||
      (rc = check_keys(c, v, "on", NULL)))
    return rc;
  size_t cnt = (size_t)(v->data.mapping.pairs.top - v->data.mapping.pairs.start);
  if (cnt == 0)
    return fail(c, v, "on", "needs at least one event type");
  if (!(d->rules = calloc(cnt, sizeof *d->rules)))
    return BT_ENOMEM;
  for (yaml_node_pair_t *p = v->data.mapping.pairs.start; p < v->data.mapping.pairs.top; p++)
    if ((rc = parse_rule(c, node(c, p->key), node(c, p->value), &d->rules[d->nrules++])))
      return rc;
  if ((v = get(c, root, "indexes")) && (rc = parse_indexes(c, d, v)))
    return rc;
  if ((v = get(c, root, "aggregates")) && (rc = parse_aggregates(c, d, v)))
    return rc;
  if ((rc = require(c, root, "sinks", "(top)", &v)) || (rc = parse_sinks(c, d, v)))
    return rc;
  return 0;
}

int proj_def_parse(proj_def_t *out, const char *name, const char *text, size_t len, char *err,
                   size_t errlen) {
  memset(out, 0, sizeof *out);
  yaml_parser_t parser;
  yaml_document_t doc;
  ctx_t c = {name, &doc, err, errlen};
  if (!yaml_parser_initialize(&parser))
    return BT_ENOMEM;
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  if (!yaml_parser_load(&parser, &doc)) {
    snprintf(err, errlen, "%s:%zu:%zu: (yaml): %s%s%s", name, parser.problem_mark.line + 1,
             parser.problem_mark.column + 1, parser.problem ? parser.problem : "syntax error",
             parser.context ? " " : "", parser.context ? parser.context : "");
    yaml_parser_delete(&parser);
    return BT_EINVAL;
  }
  int rc = (out->file = strdup(name)) ? parse_root(&c, out, yaml_document_get_root_node(&doc)) : BT_ENOMEM;
  if (rc == BT_ENOMEM)
    snprintf(err, errlen, "%s: out of memory", name);
  yaml_document_delete(&doc);
  yaml_parser_delete(&parser);
  if (rc)
    proj_def_free(out);
  return rc;
}

static int by_name(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static bool is_yaml_name(const char *n) {
  size_t l = strlen(n);
  return n[0] != '.' && ((l > 5 && strcmp(n + l - 5, ".yaml") == 0) || (l > 4 && strcmp(n + l - 4, ".yml") == 0));
}

static int read_file(const char *path, size_t max, char **text, size_t *len, char *err, size_t errlen) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(err, errlen, "%s: %s", path, strerror(errno));
    return BT_EINVAL;
  }
  *text = malloc(max + 1);
  *len = *text ? fread(*text, 1, max + 1, f) : 0;
  int bad = ferror(f);
  fclose(f);
  if (!*text)
    return BT_ENOMEM;
  if (bad || *len > max) {
    snprintf(err, errlen, "%s: %s", path, bad ? "read error" : "larger than the definition file limit");
    free(*text);
    return BT_EINVAL;
  }
  return 0;
}

int proj_def_load_dir(proj_def_set_t *out, const char *dir, size_t max_file_bytes, char *err,
                      size_t errlen) {
  memset(out, 0, sizeof *out);
  size_t max = max_file_bytes ? max_file_bytes : PROJ_DEF_MAX_FILE_BYTES_DEFAULT;
  DIR *dh = opendir(dir);
  if (!dh) {
    snprintf(err, errlen, "%s: %s", dir, strerror(errno));
    return BT_EINVAL;
  }
  char **names = NULL;
  size_t n = 0, cap = 0;
  int rc = 0;
  for (struct dirent *e; (e = readdir(dh));) {
    if (!is_yaml_name(e->d_name))
      continue;
    if (n == cap) {
      char **nn = realloc(names, (cap = cap ? cap * 2 : 8) * sizeof *names);
      if (!nn) {
        rc = BT_ENOMEM;
        break;
      }
      names = nn;
    }
    if (!(names[n] = strdup(e->d_name))) {
      rc = BT_ENOMEM;
      break;
    }
    n++;
  }
  closedir(dh);
  if (!rc && n == 0) {
    snprintf(err, errlen, "%s: no projection definitions (*.yaml, *.yml)", dir);
    rc = BT_EINVAL;
  }
  if (n)
    qsort(names, n, sizeof *names, by_name);
  if (!rc && !(out->defs = calloc(n, sizeof *out->defs)))
    rc = BT_ENOMEM;
  for (size_t i = 0; !rc && i < n; i++) {
    char path[4096], *text;
    size_t len;
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    if ((rc = read_file(path, max, &text, &len, err, errlen)))
      break;
    rc = proj_def_parse(&out->defs[out->ndefs], path, text, len, err, errlen);
    free(text);
    if (rc)
      break;
    out->ndefs++;
    for (size_t j = 0; j + 1 < out->ndefs; j++)
      if (strcmp(out->defs[j].name, out->defs[out->ndefs - 1].name) == 0) {
        snprintf(err, errlen, "%s: projection: duplicate projection name '%s' (also in %s)", path,
                 out->defs[j].name, out->defs[j].file);
        rc = BT_EINVAL;
      }
  }
  for (size_t i = 0; i < n; i++)
    free(names[i]);
  free(names);
  if (rc)
    proj_def_set_free(out);
  return rc;
}

const proj_rule_t *proj_def_rule(const proj_def_t *d, const char *event_type) {
  for (size_t i = 0; i < d->nrules; i++)
    if (strcmp(d->rules[i].event_type, event_type) == 0)
      return &d->rules[i];
  return NULL;
}

json_t *proj_value_resolve_path(const proj_value_t *v, json_t *event) {
  json_t *cur = event;
  for (size_t i = 0; cur && i < v->npath; i++)
    cur = json_is_object(cur) ? json_object_get(cur, v->path[i]) : NULL;
  return cur;
}

const char *proj_format_name(proj_format_t f) {
  switch (f) {
  case PROJ_FMT_DEBEZIUM_JSON: return "debezium-json";
  case PROJ_FMT_CLOUDEVENTS_JSON: return "cloudevents-json";
  case PROJ_FMT_PROTOBUF: return "protobuf";
  }
  return "?";
}

static void value_free(proj_value_t *v) {
  for (size_t i = 0; i < v->npath; i++)
    free(v->path[i]);
  free(v->path);
  json_decref(v->literal);
  for (size_t i = 0; i < v->nitems; i++)
    value_free(&v->items[i]);
  free(v->items);
}

static void where_free(proj_where_t *w, size_t n) {
  for (size_t i = 0; i < n; i++) {
    free(w[i].field);
    json_decref(w[i].equals);
  }
  free(w);
}

void proj_def_free(proj_def_t *d) {
  free(d->file);
  free(d->name);
  for (size_t i = 0; i < d->ntopics; i++)
    free(d->topics[i]);
  free(d->topics);
  value_free(&d->key);
  for (size_t i = 0; i < d->nrules; i++) {
    free(d->rules[i].event_type);
    for (size_t j = 0; j < d->rules[i].nfields; j++) {
      free(d->rules[i].fields[j].name);
      value_free(&d->rules[i].fields[j].value);
    }
    free(d->rules[i].fields);
  }
  free(d->rules);
  for (size_t i = 0; i < d->nindexes; i++) {
    free(d->indexes[i].name);
    free(d->indexes[i].field);
    free(d->indexes[i].order);
    where_free(d->indexes[i].where, d->indexes[i].nwhere);
  }
  free(d->indexes);
  for (size_t i = 0; i < d->naggregates; i++) {
    free(d->aggregates[i].name);
    free(d->aggregates[i].group);
    free(d->aggregates[i].sum);
    where_free(d->aggregates[i].where, d->aggregates[i].nwhere);
  }
  free(d->aggregates);
  memset(d, 0, sizeof *d);
}

void proj_def_set_free(proj_def_set_t *s) {
  for (size_t i = 0; i < s->ndefs; i++)
    proj_def_free(&s->defs[i]);
  free(s->defs);
  memset(s, 0, sizeof *s);
}
