/* The Redis sink: a projection version's documents, index zsets, aggregate hashes and offsets
 * under bt:proj:{P}:v{n}: (proj_layout.h). A batch is ONE Lua script (EVALSHA through
 * redis_script, every key it touches passed in KEYS), so Redis applies all of it or none: it first checks that every partition's
 * stored offset is the one the batch was computed after and that every key's document is
 * still the one the effects were computed from, then writes the documents, index members,
 * aggregate increments, the offsets and the meta hash. A failed check changes nothing and
 * answers which guard refused; the runner reloads and computes again. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "log.h"
#include "proj_layout.h"
#include "proj_sink.h"
#include "projector.h"
#include "redis_script.h"

/* Every key the script touches comes in KEYS (Redis requires it: a cluster routes the script
 * by its keys, and scripts that compute key names are outside the documented contract); all
 * are under bt:proj:{P}:, one hash tag, so one slot. The script walks KEYS with a cursor in
 * step with ARGV, one key per old document and one per effect (a key may repeat).
 * KEYS: 1 the off hash, 2 the meta hash, 3 `current`, then the doc key of each old entry,
 * then the key of each effect (doc, index zset or aggregate hash).
 * ARGV: 1 version, 2 newest event time (ms, -1 none), 3 state to record (live|building),
 * 4 created_at (RFC 3339, kept from the first write), then: nmoves, (field, from, to)*;
 * nold, (present 0|1, doc)*; neffects, effects: P doc | D | R member | A member |
 * G group delta. */
static const char script_src[] =
    "local off, meta, cur_key = KEYS[1], KEYS[2], KEYS[3]\n"
    "local version, etime, state, created = ARGV[1], tonumber(ARGV[2]), ARGV[3], ARGV[4]\n"
    "local i, k = 5, 4\n"
    "local nm = tonumber(ARGV[i]); i = i + 1\n"
    "local moves = i\n"
    "for m = 1, nm do\n"
    "  local held = tonumber(redis.call('HGET', off, ARGV[i]) or '0')\n"
    "  if held ~= tonumber(ARGV[i + 1]) then return {'offset', ARGV[i], tostring(held)} end\n"
    "  i = i + 3\n"
    "end\n"
    "local no = tonumber(ARGV[i]); i = i + 1\n"
    "for o = 1, no do\n"
    "  local v = redis.call('GET', KEYS[k])\n"
    "  if ARGV[i] == '1' then\n"
    "    if v ~= ARGV[i + 1] then return {'conflict', KEYS[k]} end\n"
    "  elseif v then return {'conflict', KEYS[k]} end\n"
    "  i = i + 2; k = k + 1\n"
    "end\n"
    "local ne = tonumber(ARGV[i]); i = i + 1\n"
    "for e = 1, ne do\n"
    "  local op, key = ARGV[i], KEYS[k]\n"
    "  if op == 'P' then redis.call('SET', key, ARGV[i + 1]); i = i + 2\n"
    "  elseif op == 'D' then redis.call('DEL', key); i = i + 1\n"
    "  elseif op == 'R' then redis.call('ZREM', key, ARGV[i + 1]); i = i + 2\n"
    "  elseif op == 'A' then redis.call('ZADD', key, 0, ARGV[i + 1]); i = i + 2\n"
    "  elseif op == 'G' then\n"
    "    if redis.call('HINCRBY', key, ARGV[i + 1], ARGV[i + 2]) == 0 then\n"
    "      redis.call('HDEL', key, ARGV[i + 1])\n"
    "    end\n"
    "    i = i + 3\n"
    "  else return redis.error_reply('projector: bad effect ' .. tostring(op)) end\n"
    "  k = k + 1\n"
    "end\n"
    "for m = 1, nm do\n"
    "  redis.call('HSET', off, ARGV[moves], ARGV[moves + 2]); moves = moves + 3\n"
    "end\n"
    "redis.call('HSETNX', meta, 'created_at', created)\n"
    "redis.call('HSET', meta, 'state', state)\n"
    "if etime >= 0 and etime > tonumber(redis.call('HGET', meta, 'event_time_ms') or '-1') then\n"
    "  redis.call('HSET', meta, 'event_time_ms', ARGV[2])\n"
    "end\n"
    "if state == 'live' and tonumber(redis.call('GET', cur_key) or '0') < tonumber(version) then\n"
    "  redis.call('SET', cur_key, version)\n"
    "end\n"
    "return {'ok'}\n";

typedef struct sink_redis {
  proj_sink_t base;
  bt_redis_script_t *script;
  char prefix[300];            /* bt:proj:{P}:v{n}: */
  char current[300];           /* bt:proj:{P}:current */
  /* key -> the stored text of the documents the last fetch returned: the write compares
   * these exact bytes (a re-encoded document could differ in a number's spelling). */
  json_t *raw;
} sink_redis_t;


static void note_error(sink_redis_t *s, int err, const redisReply *reply, const char *what) {
  if (err)
    snprintf(s->base.errstr, sizeof s->base.errstr, "%s: %s (%s)", what, bt_strerror(err),
             bt_redis_errstr(s->base.p->redis));
  else
    snprintf(s->base.errstr, sizeof s->base.errstr, "%s: %.*s", what,
             reply && reply->str ? (int)reply->len : 0, reply && reply->str ? reply->str : "");
}

static void on_offsets(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  (void)r;
  proj_sink_op_t *o = arg;
  sink_redis_t *s = (sink_redis_t *)o->s;
  int rc = err;
  if (!rc && (!reply || reply->type != REDIS_REPLY_ARRAY || reply->elements % 2)) {
    note_error(s, 0, reply, "HGETALL off");
    rc = BT_EIO;
  } else if (rc) {
    note_error(s, err, NULL, "HGETALL off");
  }
  if (!rc) {
    proj_offsets_clear(&s->base.offsets);
    for (size_t i = 0; !rc && i + 1 < reply->elements; i += 2) {
      const char *field = reply->element[i]->str;
      const char *colon = strrchr(field, ':');
      if (!colon)
        continue; /* not ours: the layout's fields are always topic:partition */
      char topic[256];
      snprintf(topic, sizeof topic, "%.*s", (int)(colon - field), field);
      rc = proj_sink_set_offset(&s->base, topic, (int32_t)atoi(colon + 1),
                                strtoll(reply->element[i + 1]->str, NULL, 10));
    }
    s->base.loaded = rc == 0;
  }
  o->cb(&s->base, rc, o->arg);
  free(o);
}

static int load_offsets(proj_sink_t *base, proj_sink_cb cb, void *arg) {
  sink_redis_t *s = (sink_redis_t *)base;
  proj_sink_op_t *o = proj_sink_op_new(&s->base, cb, NULL, arg);
  if (!o)
    return BT_ENOMEM;
  int rc = bt_redis_command(base->p->redis, on_offsets, o, "HGETALL %soff", s->prefix);
  if (rc) {
    note_error(s, rc, NULL, "HGETALL off");
    free(o);
  }
  return rc;
}

static void on_docs(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  (void)r;
  proj_sink_op_t *o = arg;
  sink_redis_t *s = (sink_redis_t *)o->s;
  int rc = err;
  json_t *docs = NULL;
  if (rc) {
    note_error(s, err, NULL, "MGET");
  } else if (!reply || reply->type != REDIS_REPLY_ARRAY ||
             reply->elements != json_array_size(o->keys)) {
    note_error(s, 0, reply, "MGET");
    rc = BT_EIO;
  } else if (!(docs = json_object())) {
    rc = BT_ENOMEM;
  } else {
    json_decref(s->raw);
    if (!(s->raw = json_object()))
      rc = BT_ENOMEM;
  }
  for (size_t i = 0; !rc && i < reply->elements; i++) {
    const redisReply *e = reply->element[i];
    if (e->type != REDIS_REPLY_STRING)
      continue;
    json_error_t jerr;
    json_t *doc = json_loadb(e->str, e->len, 0, &jerr);
    if (!doc) {
      /* Not ours or damaged: the write's compare-and-set would refuse it for ever. */
      snprintf(s->base.errstr, sizeof s->base.errstr, "document %s is not JSON: %s",
               json_string_value(json_array_get(o->keys, i)), jerr.text);
      rc = BT_EIO;
    } else if (json_object_set_new(docs, json_string_value(json_array_get(o->keys, i)), doc) ||
               json_object_set_new(s->raw, json_string_value(json_array_get(o->keys, i)),
                                   json_stringn(e->str, e->len))) {
      rc = BT_ENOMEM;
    }
  }
  o->docs_cb(&s->base, rc, rc ? NULL : docs, o->arg);
  json_decref(docs);
  json_decref(o->keys);
  free(o);
}

static int fetch(proj_sink_t *base, json_t *keys, proj_sink_docs_cb cb, void *arg) {
  sink_redis_t *s = (sink_redis_t *)base;
  size_t n = json_array_size(keys);
  proj_sink_op_t *o = proj_sink_op_new(&s->base, NULL, cb, arg);
  char **argv = calloc(n + 1, sizeof *argv);
  int rc = o && argv ? 0 : BT_ENOMEM;
  argv && (argv[0] = "MGET");
  for (size_t i = 0; !rc && i < n; i++) {
    const char *k = json_string_value(json_array_get(keys, i));
    size_t len = strlen(s->prefix) + 4 + strlen(k) + 1;
    if (!(argv[i + 1] = malloc(len)))
      rc = BT_ENOMEM;
    else
      snprintf(argv[i + 1], len, "%sdoc:%s", s->prefix, k);
  }
  if (!rc) {
    o->keys = json_incref(keys);
    rc = bt_redis_command_argv(base->p->redis, on_docs, o, (int)n + 1, (const char *const *)argv,
                               NULL);
    if (rc) {
      note_error(s, rc, NULL, "MGET");
      json_decref(o->keys);
    }
  }
  for (size_t i = 1; argv && i <= n; i++)
    free(argv[i]);
  free(argv);
  if (rc)
    free(o);
  return rc;
}

/* The script's arguments: bytes in one buffer, then pointers into it. */
typedef struct args {
  bt_buf_t bytes;
  size_t *offs, *lens;
  size_t n, cap;
} args_t;

static int arg_add(args_t *a, const void *p, size_t len) {
  if (a->n == a->cap) {
    size_t cap = a->cap ? a->cap * 2 : 256;
    size_t *o = realloc(a->offs, cap * sizeof *o);
    if (!o)
      return BT_ENOMEM;
    a->offs = o;
    size_t *l = realloc(a->lens, cap * sizeof *l);
    if (!l)
      return BT_ENOMEM;
    a->lens = l;
    a->cap = cap;
  }
  a->offs[a->n] = a->bytes.len;
  a->lens[a->n] = len;
  a->n++;
  return bt_buf_append(&a->bytes, p, len);
}

static int arg_str(args_t *a, const char *s) { return arg_add(a, s, strlen(s)); }

static int arg_int(args_t *a, int64_t v) {
  char b[32];
  int n = snprintf(b, sizeof b, "%" PRId64, v);
  return arg_add(a, b, (size_t)n);
}

/* Adds the JSON text of doc (compact, keys in insertion order). */
static int arg_json(args_t *a, json_t *doc) {
  char *text = json_dumps(doc, JSON_COMPACT);
  if (!text)
    return BT_ENOMEM;
  int rc = arg_str(a, text);
  free(text);
  return rc;
}

static int arg_member(args_t *a, json_t *order, const char *key) {
  bt_buf_t m;
  bt_buf_init(&m, 0);
  int rc = proj_layout_member(&m, order, key);
  if (!rc)
    rc = arg_add(a, m.data, m.len);
  bt_buf_free(&m);
  return rc;
}

/* Adds the key prefix + kind + name (+ ":" + value when value is not NULL). */
static int key_add(args_t *k, const char *prefix, const char *kind, const char *name,
                   const char *value) {
  bt_buf_t key;
  bt_buf_init(&key, 0);
  int rc = bt_buf_appendf(&key, "%s%s%s%s%s", prefix, kind, name, value ? ":" : "",
                          value ? value : "");
  if (!rc)
    rc = arg_add(k, key.data, key.len);
  bt_buf_free(&key);
  return rc;
}

/* The script's keys into k and its other arguments into a (see script_src). */
static int build_args(sink_redis_t *s, const proj_sink_batch_t *b, args_t *k, args_t *a) {
  const proj_def_t *d = s->base.def;
  char ts[40];
  time_t now = time(NULL);
  struct tm tm;
  gmtime_r(&now, &tm);
  strftime(ts, sizeof ts, "%Y-%m-%dT%H:%M:%SZ", &tm);
  int rc = key_add(k, s->prefix, "off", "", NULL);
  if (!rc) rc = key_add(k, s->prefix, "meta", "", NULL);
  if (!rc) rc = arg_str(k, s->current);
  if (!rc) rc = arg_int(a, s->base.version);
  if (!rc) rc = arg_int(a, b->event_time_ms);
  if (!rc) rc = arg_str(a, s->base.building ? "building" : "live");
  if (!rc) rc = arg_str(a, ts);
  if (!rc) rc = arg_int(a, (int64_t)b->nmoves);
  for (size_t i = 0; !rc && i < b->nmoves; i++) {
    char field[300];
    snprintf(field, sizeof field, "%s:%d", b->moves[i].topic, (int)b->moves[i].partition);
    rc = arg_str(a, field);
    if (!rc) rc = arg_int(a, b->moves[i].from);
    if (!rc) rc = arg_int(a, b->moves[i].to);
  }
  size_t nkeys = json_array_size(b->keys);
  if (!rc) rc = arg_int(a, (int64_t)nkeys);
  for (size_t i = 0; !rc && i < nkeys; i++) {
    const char *key = json_string_value(json_array_get(b->keys, i));
    json_t *old = json_object_get(s->raw, key);
    rc = key_add(k, s->prefix, "doc:", key, NULL);
    if (!rc) rc = arg_str(a, old ? "1" : "0");
    if (!rc) rc = old ? arg_add(a, json_string_value(old), json_string_length(old)) : arg_str(a, "");
  }
  const proj_effects_t *e = b->effects;
  if (!rc) rc = arg_int(a, (int64_t)e->n);
  for (size_t i = 0; !rc && i < e->n; i++) {
    const proj_effect_t *x = &e->v[i];
    switch (x->kind) {
    case PROJ_EFFECT_DOC_PUT:
      rc = key_add(k, s->prefix, "doc:", x->key, NULL);
      if (!rc) rc = arg_str(a, "P");
      if (!rc) rc = arg_json(a, x->doc);
      break;
    case PROJ_EFFECT_DOC_DELETE:
      rc = key_add(k, s->prefix, "doc:", x->key, NULL);
      if (!rc) rc = arg_str(a, "D");
      break;
    case PROJ_EFFECT_INDEX_REMOVE:
    case PROJ_EFFECT_INDEX_ADD:
      rc = key_add(k, s->prefix, "idx:", d->indexes[x->index].name, x->value);
      if (!rc) rc = arg_str(a, x->kind == PROJ_EFFECT_INDEX_ADD ? "A" : "R");
      if (!rc) rc = arg_member(a, d->indexes[x->index].order ? x->order : NULL, x->key);
      break;
    case PROJ_EFFECT_AGG_DELTA:
      rc = key_add(k, s->prefix, "agg:", d->aggregates[x->aggregate].name, NULL);
      if (!rc) rc = arg_str(a, "G");
      if (!rc) rc = arg_str(a, x->group);
      if (!rc) rc = arg_int(a, x->delta);
      break;
    }
  }
  return rc;
}

static void on_write(bt_redis_t *r, int err, const redisReply *reply, void *arg) {
  (void)r;
  proj_sink_op_t *o = arg;
  sink_redis_t *s = (sink_redis_t *)o->s;
  int rc = err;
  if (rc) {
    note_error(s, err, NULL, "batch script");
  } else if (reply && reply->type == REDIS_REPLY_ARRAY && reply->elements >= 1 &&
             reply->element[0]->type == REDIS_REPLY_STRING) {
    const char *what = reply->element[0]->str;
    if (strcmp(what, "ok") != 0) {
      snprintf(s->base.errstr, sizeof s->base.errstr, "guard refused the batch: %s %s %s", what,
               reply->elements > 1 ? reply->element[1]->str : "",
               reply->elements > 2 ? reply->element[2]->str : "");
      rc = BT_ECONFLICT;
    }
  } else {
    note_error(s, 0, reply, "batch script");
    rc = BT_EIO;
  }
  if (rc)
    s->base.loaded = false;
  o->cb(&s->base, rc, o->arg);
  free(o);
}

static void args_free(args_t *a) {
  free(a->offs);
  free(a->lens);
  bt_buf_free(&a->bytes);
}

static int write_batch(proj_sink_t *base, const proj_sink_batch_t *b, proj_sink_cb cb, void *arg) {
  sink_redis_t *s = (sink_redis_t *)base;
  args_t k = {0}, a = {0};
  bt_buf_init(&k.bytes, (size_t)1 << 30);
  bt_buf_init(&a.bytes, (size_t)1 << 30);
  proj_sink_op_t *o = proj_sink_op_new(&s->base, cb, NULL, arg);
  int rc = o ? build_args(s, b, &k, &a) : BT_ENOMEM;
  size_t n = k.n + a.n;
  const char **argv = rc ? NULL : malloc(n * sizeof *argv);
  size_t *lens = rc ? NULL : malloc(n * sizeof *lens);
  if (!rc && (!argv || !lens))
    rc = BT_ENOMEM;
  if (!rc) {
    /* The keys first, then the other arguments, as EVALSHA takes them. */
    for (size_t i = 0; i < n; i++) {
      const args_t *from = i < k.n ? &k : &a;
      size_t j = i < k.n ? i : i - k.n;
      argv[i] = from->bytes.data + from->offs[j];
      lens[i] = from->lens[j];
    }
    rc = bt_redis_script_run(s->script, base->p->redis, on_write, o, (int)k.n, (int)n, argv,
                             lens);
    if (rc)
      note_error(s, rc, NULL, "batch script");
  }
  free(argv);
  free(lens);
  args_free(&k);
  args_free(&a);
  if (rc) {
    free(o);
    base->loaded = false;
  }
  return rc;
}

static void sink_free(proj_sink_t *base) {
  sink_redis_t *s = (sink_redis_t *)base;
  bt_redis_script_free(s->script);
  json_decref(s->raw);
  proj_offsets_clear(&base->offsets);
  free(s);
}

static const proj_sink_ops_t ops = {"redis", load_offsets, fetch, write_batch, sink_free};

int proj_sink_redis_new(proj_sink_t **out, projector_t *p, const proj_def_t *d, int version) {
  sink_redis_t *s = calloc(1, sizeof *s);
  if (!s)
    return BT_ENOMEM;
  if (bt_redis_script_new(&s->script, script_src, sizeof script_src - 1) != 0) {
    free(s);
    return BT_ENOMEM;
  }
  proj_sink_init(&s->base, &ops, p, d, version);
  proj_layout_version_prefix(s->prefix, sizeof s->prefix, d->name, version);
  proj_layout_projection_prefix(s->current, sizeof s->current, d->name);
  strncat(s->current, "current", sizeof s->current - strlen(s->current) - 1);
  *out = &s->base;
  return 0;
}
