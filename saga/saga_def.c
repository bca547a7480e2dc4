/* Saga definitions: YAML (libyaml's document API) to validated plans, and plans to JSON and
 * back. Validation collects every error of every file before giving up, so one run of
 * `baton-saga check` shows an operator everything to fix, each with file, line, column and
 * the field at fault. */
#include "saga_def.h"

#include <dirent.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <yaml.h>

#include "buf.h"
#include "config.h"

/* Largest definition file we read; a ConfigMap is at most 1 MiB anyway. */
#define MAX_FILE_BYTES (1u << 20)
/* Error text kept for one load; beyond it messages are dropped (the first ones matter). */
#define MAX_ERR_BYTES (256u << 10)
#define MAX_ATTEMPTS_LIMIT 1000

typedef struct loader {
  saga_defs_t *defs;
  const char *file;
  yaml_document_t *doc;
  bt_buf_t errs;
  unsigned nerr;
} loader_t;

static void errf(loader_t *ld, const yaml_node_t *at, const char *field, const char *fmt, ...)
    BT_PRINTF(4, 5);
static void errf(loader_t *ld, const yaml_node_t *at, const char *field, const char *fmt, ...) {
  char msg[512];
  va_list ap;
  va_start(ap, fmt);
  vsnprintf(msg, sizeof msg, fmt, ap);
  va_end(ap);
  size_t line = at ? at->start_mark.line + 1 : 1, col = at ? at->start_mark.column + 1 : 1;
  ld->nerr++;
  /* A full buffer drops the message; nerr still counts it, so the load fails anyway. */
  if (bt_buf_appendf(&ld->errs, "%s:%zu:%zu: %s: %s\n", ld->file, line, col, field, msg) != 0)
    return;
}

static char *xstrdup(const char *s) {
  char *d = strdup(s);
  if (!d)
    bt_fatal("out of memory loading saga definitions");
  return d;
}

bool saga_topic_name_valid(const char *t) {
  size_t n = strlen(t);
  static const char ok[] = "abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ0123456789._-";
  return n > 0 && n <= 249 && strspn(t, ok) == n && strcmp(t, ".") != 0 && strcmp(t, "..") != 0;
}

/* Saga and step names travel in ce_id ("<saga>/<step>/<attempt>/<kind>") and ce_source, so
 * they may not hold '/' or anything a header or URL would need to escape. */
static bool name_valid(const char *s) {
  return strlen(s) <= SAGA_MAX_NAME && saga_topic_name_valid(s);
}

/* ---- typed readers on YAML nodes -------------------------------------------------------- */

static const char *scalar(loader_t *ld, const yaml_node_t *n, const char *field) {
  if (n->type != YAML_SCALAR_NODE) {
    errf(ld, n, field, "expected a single value, not a %s",
         n->type == YAML_MAPPING_NODE ? "mapping" : "list");
    return NULL;
  }
  return (const char *)n->data.scalar.value;
}

static bool read_name(loader_t *ld, const yaml_node_t *n, const char *field, char **out) {
  const char *s = scalar(ld, n, field);
  if (!s)
    return false;
  if (!name_valid(s)) {
    errf(ld, n, field, "\"%s\" is not a valid name (1-%d of [a-zA-Z0-9._-])", s, SAGA_MAX_NAME);
    return false;
  }
  *out = xstrdup(s);
  return true;
}

static bool read_uint(loader_t *ld, const yaml_node_t *n, const char *field, uint64_t min,
                      uint64_t max, uint64_t *out) {
  const char *s = scalar(ld, n, field);
  if (!s)
    return false;
  char *end;
  unsigned long long v = strtoull(s, &end, 10);
  if (*s < '0' || *s > '9' || *end || v < min || v > max) {
    errf(ld, n, field, "must be an integer from %llu to %llu, got \"%s\"",
         (unsigned long long)min, (unsigned long long)max, s);
    return false;
  }
  *out = v;
  return true;
}

/* Durations need a unit: a bare "5" would be read as milliseconds by the config parser, and a
 * definition author who meant seconds would get a saga that times out at once. */
static bool read_duration(loader_t *ld, const yaml_node_t *n, const char *field, uint64_t *out) {
  const char *s = scalar(ld, n, field);
  if (!s)
    return false;
  int64_t ms = 0;
  char err[256];
  bt_config_var_t v = {field, BT_CFG_DURATION, NULL, 1, (int64_t)30 * 24 * 3600 * 1000, 0,
                       NULL, NULL, &ms};
  if (strspn(s, "0123456789") == strlen(s) || bt_config_parse_value(&v, s, err, sizeof err) != 0) {
    errf(ld, n, field,
         "bad duration \"%s\": write a number with ms, s, m or h (e.g. 250ms, 5s), from 1ms to 30 "
         "days",
         s);
    return false;
  }
  *out = (uint64_t)ms;
  return true;
}

static bool read_bool(loader_t *ld, const yaml_node_t *n, const char *field, bool *out) {
  const char *s = scalar(ld, n, field);
  if (!s)
    return false;
  if (strcmp(s, "true") == 0 || strcmp(s, "false") == 0) {
    *out = s[0] == 't';
    return true;
  }
  errf(ld, n, field, "must be true or false, got \"%s\"", s);
  return false;
}

/* ---- mappings with a fixed set of keys --------------------------------------------------- */

/* The values of a mapping's known keys, in the order of `keys`; NULL when absent. Unknown and
 * duplicate keys are reported here, so each reader only checks values. */
static bool mapping(loader_t *ld, const yaml_node_t *n, const char *path, const char *const *keys,
                    size_t nkeys, yaml_node_t **vals) {
  for (size_t k = 0; k < nkeys; k++)
    vals[k] = NULL;
  if (n->type != YAML_MAPPING_NODE) {
    errf(ld, n, *path ? path : "(document)", "expected a mapping of %s: ...", keys[0]);
    return false;
  }
  bool ok = true;
  for (yaml_node_pair_t *p = n->data.mapping.pairs.start; p < n->data.mapping.pairs.top; p++) {
    yaml_node_t *kn = yaml_document_get_node(ld->doc, p->key);
    yaml_node_t *vn = yaml_document_get_node(ld->doc, p->value);
    char field[256];
    if (kn->type != YAML_SCALAR_NODE) {
      errf(ld, kn, path, "keys must be plain words");
      ok = false;
      continue;
    }
    const char *key = (const char *)kn->data.scalar.value;
    snprintf(field, sizeof field, "%s%s%s", path, *path ? "." : "", key);
    size_t k = 0;
    while (k < nkeys && strcmp(keys[k], key) != 0)
      k++;
    if (k == nkeys) {
      char known[256] = "";
      for (size_t j = 0; j < nkeys; j++)
        snprintf(known + strlen(known), sizeof known - strlen(known), "%s%s", j ? ", " : "",
                 keys[j]);
      errf(ld, kn, field, "unknown key (known keys: %s)", known);
      ok = false;
    } else if (vals[k]) {
      errf(ld, kn, field, "duplicate key");
      ok = false;
    } else {
      vals[k] = vn;
    }
  }
  return ok;
}

static bool required(loader_t *ld, const yaml_node_t *map, const char *path, const char *key,
                     const yaml_node_t *val) {
  if (val)
    return true;
  char field[256];
  snprintf(field, sizeof field, "%s%s%s", path, *path ? "." : "", key);
  errf(ld, map, field, "missing (required)");
  return false;
}

enum { R_MAX_ATTEMPTS, R_BACKOFF, R_INITIAL, R_MAX, R_JITTER, R_NKEYS };
static const char *const retry_keys[] = {"max_attempts", "backoff", "initial", "max", "jitter"};

static bool read_retry(loader_t *ld, const yaml_node_t *n, const char *path, saga_retry_t *r) {
  yaml_node_t *v[R_NKEYS];
  char f[256];
  bool ok = mapping(ld, n, path, retry_keys, R_NKEYS, v);
  uint64_t u;
#define FIELD(k) (snprintf(f, sizeof f, "%s.%s", path, retry_keys[k]), f)
  if (v[R_MAX_ATTEMPTS] && (ok &= read_uint(ld, v[R_MAX_ATTEMPTS], FIELD(R_MAX_ATTEMPTS), 1,
                                            MAX_ATTEMPTS_LIMIT, &u)))
    r->max_attempts = (uint32_t)u;
  if (v[R_BACKOFF]) {
    const char *s = scalar(ld, v[R_BACKOFF], FIELD(R_BACKOFF));
    if (s && strcmp(s, "fixed") == 0)
      r->backoff = SAGA_BACKOFF_FIXED;
    else if (s && strcmp(s, "exponential") == 0)
      r->backoff = SAGA_BACKOFF_EXPONENTIAL;
    else {
      if (s)
        errf(ld, v[R_BACKOFF], f, "\"%s\" is not one of fixed, exponential", s);
      ok = false;
    }
  }
  if (v[R_INITIAL])
    ok &= read_duration(ld, v[R_INITIAL], FIELD(R_INITIAL), &r->initial_ms);
  if (v[R_MAX])
    ok &= read_duration(ld, v[R_MAX], FIELD(R_MAX), &r->max_ms);
  if (v[R_JITTER])
    ok &= read_bool(ld, v[R_JITTER], FIELD(R_JITTER), &r->jitter);
  if (ok && r->max_ms < r->initial_ms) {
    errf(ld, v[R_MAX] ? v[R_MAX] : n, FIELD(R_MAX), "must be at least initial (%llu ms)",
         (unsigned long long)r->initial_ms);
    ok = false;
  }
#undef FIELD
  return ok;
}

/* Defaults, written where a definition author would look for them (docs/architecture.md):
 * a step's attempt times out after 30 s and is tried 3 times, exponential backoff from 200 ms
 * to 5 s with jitter; a compensation is tried 5 times with the same backoff. */
static const saga_retry_t default_retry = {3, SAGA_BACKOFF_EXPONENTIAL, 200, 5000, true};
static const saga_retry_t default_comp_retry = {5, SAGA_BACKOFF_EXPONENTIAL, 200, 5000, true};
#define DEFAULT_TIMEOUT_MS 30000

enum { S_NAME, S_TOPIC, S_COMMAND, S_COMPENSATION, S_TIMEOUT, S_RETRY, S_COMP_RETRY, S_NKEYS };
static const char *const step_keys[] = {"name",    "topic", "command",           "compensation",
                                        "timeout", "retry", "compensation_retry"};

static bool read_step(loader_t *ld, const yaml_node_t *n, size_t i, saga_step_t *s) {
  char path[32], f[256];
  snprintf(path, sizeof path, "steps[%zu]", i);
  yaml_node_t *v[S_NKEYS];
  bool ok = mapping(ld, n, path, step_keys, S_NKEYS, v);
  if (n->type != YAML_MAPPING_NODE)
    return false;
  s->timeout_ms = DEFAULT_TIMEOUT_MS;
  s->retry = default_retry;
  s->comp_retry = default_comp_retry;
#define FIELD(k) (snprintf(f, sizeof f, "%s.%s", path, step_keys[k]), f)
  ok &= required(ld, n, path, "name", v[S_NAME]) &&
        read_name(ld, v[S_NAME], FIELD(S_NAME), &s->name);
  if (required(ld, n, path, "topic", v[S_TOPIC])) {
    const char *t = scalar(ld, v[S_TOPIC], FIELD(S_TOPIC));
    if (t && saga_topic_name_valid(t))
      s->topic = xstrdup(t);
    else {
      if (t)
        errf(ld, v[S_TOPIC], f, "\"%s\" is not a valid Kafka topic name (1-249 of [a-zA-Z0-9._-])",
             t);
      ok = false;
    }
  } else
    ok = false;
  ok &= required(ld, n, path, "command", v[S_COMMAND]) &&
        read_name(ld, v[S_COMMAND], FIELD(S_COMMAND), &s->command);
  if (v[S_COMPENSATION])
    ok &= read_name(ld, v[S_COMPENSATION], FIELD(S_COMPENSATION), &s->compensation);
  if (v[S_TIMEOUT])
    ok &= read_duration(ld, v[S_TIMEOUT], FIELD(S_TIMEOUT), &s->timeout_ms);
  if (v[S_RETRY])
    ok &= read_retry(ld, v[S_RETRY], FIELD(S_RETRY), &s->retry);
  if (v[S_COMP_RETRY]) {
    FIELD(S_COMP_RETRY);
    if (!v[S_COMPENSATION]) {
      errf(ld, v[S_COMP_RETRY], f, "set without a compensation");
      ok = false;
    } else
      ok &= read_retry(ld, v[S_COMP_RETRY], f, &s->comp_retry);
  }
#undef FIELD
  return ok;
}

static void step_clear(saga_step_t *s) {
  free(s->name);
  free(s->topic);
  free(s->command);
  free(s->compensation);
}

void saga_plan_free(saga_plan_t *p) {
  if (!p)
    return;
  for (size_t i = 0; i < p->nsteps; i++)
    step_clear(&p->steps[i]);
  free(p->steps);
  free(p->name);
  free(p->reply_topic);
  free(p->file);
  free(p);
}

enum { P_SAGA, P_VERSION, P_DEADLINE, P_REPLY_TOPIC, P_ENCODING, P_STEPS, P_NKEYS };
static const char *const plan_keys[] = {"saga",        "version",  "deadline",
                                        "reply_topic", "encoding", "steps"};

static void defs_add(saga_defs_t *d, saga_plan_t *p) {
  saga_plan_t **np = realloc(d->plans, (d->n + 1) * sizeof *np);
  if (!np)
    bt_fatal("out of memory loading saga definitions");
  d->plans = np;
  d->plans[d->n++] = p;
}

static void read_plan(loader_t *ld, const yaml_node_t *root) {
  yaml_node_t *v[P_NKEYS];
  bool ok = mapping(ld, root, "", plan_keys, P_NKEYS, v);
  if (root->type != YAML_MAPPING_NODE)
    return;
  saga_plan_t *p = calloc(1, sizeof *p);
  if (!p)
    bt_fatal("out of memory loading saga definitions");
  uint64_t u = 0;
  ok &= required(ld, root, "", "saga", v[P_SAGA]) && read_name(ld, v[P_SAGA], "saga", &p->name);
  ok &= required(ld, root, "", "version", v[P_VERSION]) &&
        read_uint(ld, v[P_VERSION], "version", 1, UINT32_MAX, &u);
  p->version = (uint32_t)u;
  if (v[P_DEADLINE])
    ok &= read_duration(ld, v[P_DEADLINE], "deadline", &p->deadline_ms);
  if (v[P_REPLY_TOPIC]) {
    const char *t = scalar(ld, v[P_REPLY_TOPIC], "reply_topic");
    if (t && saga_topic_name_valid(t))
      p->reply_topic = xstrdup(t);
    else {
      if (t)
        errf(ld, v[P_REPLY_TOPIC], "reply_topic",
             "\"%s\" is not a valid Kafka topic name (1-249 of [a-zA-Z0-9._-])", t);
      ok = false;
    }
  }
  if (v[P_ENCODING]) {
    const char *s = scalar(ld, v[P_ENCODING], "encoding");
    if (s && strcmp(s, "json") == 0)
      p->encoding = SAGA_ENCODING_JSON;
    else if (s && strcmp(s, "protobuf") == 0)
      p->encoding = SAGA_ENCODING_PROTOBUF;
    else {
      if (s)
        errf(ld, v[P_ENCODING], "encoding", "\"%s\" is not one of json, protobuf", s);
      ok = false;
    }
  }
  const yaml_node_t *steps = v[P_STEPS];
  if (!required(ld, root, "", "steps", steps)) {
    ok = false;
  } else if (steps->type != YAML_SEQUENCE_NODE) {
    errf(ld, steps, "steps", "expected a list of steps");
    ok = false;
  } else {
    size_t n = (size_t)(steps->data.sequence.items.top - steps->data.sequence.items.start);
    if (n == 0 || n > SAGA_MAX_STEPS) {
      errf(ld, steps, "steps", "must list from 1 to %d steps, not %zu", SAGA_MAX_STEPS, n);
      ok = false;
    } else {
      p->steps = calloc(n, sizeof *p->steps);
      if (!p->steps)
        bt_fatal("out of memory loading saga definitions");
      p->nsteps = n;
      const yaml_node_t *nodes[SAGA_MAX_STEPS];
      for (size_t i = 0; i < n; i++) {
        nodes[i] = yaml_document_get_node(ld->doc, steps->data.sequence.items.start[i]);
        ok &= read_step(ld, nodes[i], i, &p->steps[i]);
        for (size_t j = 0; j < i && p->steps[i].name; j++) {
          if (p->steps[j].name && strcmp(p->steps[i].name, p->steps[j].name) == 0) {
            char f[64];
            snprintf(f, sizeof f, "steps[%zu].name", i);
            errf(ld, nodes[i], f, "duplicate step name \"%s\" (also steps[%zu], line %zu)",
                 p->steps[i].name, j, (size_t)nodes[j]->start_mark.line + 1);
            ok = false;
          }
        }
      }
      saga_step_t *last = &p->steps[n - 1];
      if (last->compensation) {
        char f[64];
        snprintf(f, sizeof f, "steps[%zu].compensation", n - 1);
        errf(ld, nodes[n - 1], f,
             "the last step's compensation \"%s\" can never run: once the last step succeeds the "
             "saga is COMPLETED, and no later step can fail; remove it",
             last->compensation);
        ok = false;
      }
    }
  }
  if (ok && !p->reply_topic) {
    char t[SAGA_MAX_NAME + 16];
    snprintf(t, sizeof t, "%s.replies", p->name);
    p->reply_topic = xstrdup(t);
  }
  if (ok) {
    const saga_plan_t *dup = saga_defs_find(ld->defs, p->name, p->version);
    if (dup) {
      errf(ld, v[P_VERSION], "version", "saga \"%s\" version %u is already defined in %s",
           p->name, p->version, dup->file);
      ok = false;
    }
  }
  if (!ok) {
    saga_plan_free(p);
    return;
  }
  p->file = xstrdup(ld->file);
  defs_add(ld->defs, p);
}

static char *take_errs(loader_t *ld) {
  if (ld->nerr == 0) {
    bt_buf_free(&ld->errs);
    return NULL;
  }
  char *s = strndup(ld->errs.data ? ld->errs.data : "", ld->errs.len);
  bt_buf_free(&ld->errs);
  return s;
}

/* Appends a load's messages to *errs (malloc'd, growing). */
static void append_errs(char **errs, char *more) {
  if (!more)
    return;
  if (!*errs) {
    *errs = more;
    return;
  }
  size_t a = strlen(*errs), b = strlen(more);
  char *s = realloc(*errs, a + b + 1);
  if (!s)
    bt_fatal("out of memory loading saga definitions");
  memcpy(s + a, more, b + 1);
  free(more);
  *errs = s;
}

static unsigned load_text(saga_defs_t *defs, const char *name, const char *text, size_t len,
                          char **errs) {
  loader_t ld = {.defs = defs, .file = name};
  bt_buf_init(&ld.errs, MAX_ERR_BYTES);
  yaml_parser_t parser;
  if (!yaml_parser_initialize(&parser))
    bt_fatal("out of memory initialising the YAML parser");
  yaml_parser_set_input_string(&parser, (const unsigned char *)text, len);
  unsigned docs = 0;
  for (;;) {
    yaml_document_t doc;
    if (!yaml_parser_load(&parser, &doc)) {
      yaml_node_t at = {.start_mark = parser.problem_mark};
      errf(&ld, &at, "yaml", "%s%s%s", parser.problem ? parser.problem : "syntax error",
           parser.context ? " " : "", parser.context ? parser.context : "");
      break;
    }
    yaml_node_t *root = yaml_document_get_root_node(&doc);
    if (!root) {
      yaml_document_delete(&doc);
      break;
    }
    ld.doc = &doc;
    docs++;
    read_plan(&ld, root);
    yaml_document_delete(&doc);
  }
  yaml_parser_delete(&parser);
  if (docs == 0 && ld.nerr == 0)
    errf(&ld, NULL, "saga", "the file defines no saga");
  unsigned n = ld.nerr;
  append_errs(errs, take_errs(&ld));
  return n;
}

static int cmp_plan(const void *a, const void *b) {
  const saga_plan_t *x = *(saga_plan_t *const *)a, *y = *(saga_plan_t *const *)b;
  int c = strcmp(x->name, y->name);
  return c ? c : (x->version > y->version) - (x->version < y->version);
}

int saga_defs_load_text(saga_defs_t *defs, const char *name, const char *text, size_t len,
                        char **errs) {
  *errs = NULL;
  if (load_text(defs, name, text, len, errs) != 0)
    return BT_EINVAL;
  qsort(defs->plans, defs->n, sizeof *defs->plans, cmp_plan);
  return 0;
}

static bool is_yaml_name(const char *n) {
  size_t l = strlen(n);
  return n[0] != '.' && ((l > 5 && strcmp(n + l - 5, ".yaml") == 0) ||
                         (l > 4 && strcmp(n + l - 4, ".yml") == 0));
}

static int cmp_str(const void *a, const void *b) {
  return strcmp(*(char *const *)a, *(char *const *)b);
}

static char *read_file(const char *path, size_t *len, char *why, size_t whysz) {
  FILE *f = fopen(path, "rb");
  if (!f) {
    snprintf(why, whysz, "cannot open: %s", strerror(errno));
    return NULL;
  }
  char *buf = malloc(MAX_FILE_BYTES + 1);
  if (!buf)
    bt_fatal("out of memory loading saga definitions");
  *len = fread(buf, 1, MAX_FILE_BYTES + 1, f);
  bool bad = ferror(f) != 0;
  fclose(f);
  if (bad || *len > MAX_FILE_BYTES) {
    snprintf(why, whysz, bad ? "cannot read" : "larger than %u bytes", MAX_FILE_BYTES);
    free(buf);
    return NULL;
  }
  buf[*len] = '\0';
  return buf;
}

int saga_defs_load(saga_defs_t *defs, const char *dir, char **errs) {
  *errs = NULL;
  memset(defs, 0, sizeof *defs);
  DIR *d = opendir(dir);
  if (!d) {
    char msg[1024];
    snprintf(msg, sizeof msg, "%s: BATON_SAGA_DEFINITIONS: cannot open the directory: %s\n", dir,
             strerror(errno));
    *errs = xstrdup(msg);
    return BT_EINVAL;
  }
  char **names = NULL;
  size_t n = 0;
  for (struct dirent *e; (e = readdir(d));) {
    if (!is_yaml_name(e->d_name))
      continue;
    char **nn = realloc(names, (n + 1) * sizeof *nn);
    if (!nn)
      bt_fatal("out of memory loading saga definitions");
    names = nn;
    names[n++] = xstrdup(e->d_name);
  }
  closedir(d);
  /* Sorted, so messages and "already defined in" name files in a stable order. */
  qsort(names, n, sizeof *names, cmp_str);
  unsigned nerr = 0;
  for (size_t i = 0; i < n; i++) {
    char path[4096], why[128];
    snprintf(path, sizeof path, "%s/%s", dir, names[i]);
    size_t len = 0;
    char *text = read_file(path, &len, why, sizeof why);
    if (!text) {
      char msg[4300];
      snprintf(msg, sizeof msg, "%s:1:1: file: %s\n", path, why);
      append_errs(errs, xstrdup(msg));
      nerr++;
    } else {
      nerr += load_text(defs, path, text, len, errs);
      free(text);
    }
    free(names[i]);
  }
  free(names);
  if (nerr == 0 && defs->n == 0) {
    char msg[4200];
    snprintf(msg, sizeof msg, "%s: BATON_SAGA_DEFINITIONS: no *.yaml or *.yml file in the directory\n",
             dir);
    append_errs(errs, xstrdup(msg));
    nerr++;
  }
  if (nerr) {
    saga_defs_free(defs);
    return BT_EINVAL;
  }
  qsort(defs->plans, defs->n, sizeof *defs->plans, cmp_plan);
  return 0;
}

void saga_defs_free(saga_defs_t *defs) {
  for (size_t i = 0; i < defs->n; i++)
    saga_plan_free(defs->plans[i]);
  free(defs->plans);
  defs->plans = NULL;
  defs->n = 0;
}

const saga_plan_t *saga_defs_find(const saga_defs_t *defs, const char *name, uint32_t version) {
  const saga_plan_t *best = NULL;
  for (size_t i = 0; i < defs->n; i++) {
    const saga_plan_t *p = defs->plans[i];
    if (strcmp(p->name, name) != 0)
      continue;
    if (version ? p->version == version : (!best || p->version > best->version))
      best = p;
  }
  return best;
}

int saga_plan_step_index(const saga_plan_t *p, const char *name) {
  for (size_t i = 0; i < p->nsteps; i++)
    if (strcmp(p->steps[i].name, name) == 0)
      return (int)i;
  return -1;
}

/* ---- JSON ---------------------------------------------------------------------------------
 * The persisted form: durations in milliseconds, every default written out, so reading it
 * back never depends on the defaults of the binary that reads it. */

static json_t *retry_to_json(const saga_retry_t *r) {
  return json_pack("{s:I, s:s, s:I, s:I, s:b}", "max_attempts", (json_int_t)r->max_attempts,
                   "backoff", r->backoff == SAGA_BACKOFF_FIXED ? "fixed" : "exponential",
                   "initial_ms", (json_int_t)r->initial_ms, "max_ms", (json_int_t)r->max_ms,
                   "jitter", r->jitter);
}

json_t *saga_plan_to_json(const saga_plan_t *p) {
  json_t *steps = json_array();
  for (size_t i = 0; steps && i < p->nsteps; i++) {
    const saga_step_t *s = &p->steps[i];
    json_t *js = json_pack("{s:s, s:s, s:s, s:I, s:o, s:o}", "name", s->name, "topic", s->topic,
                           "command", s->command, "timeout_ms", (json_int_t)s->timeout_ms,
                           "retry", retry_to_json(&s->retry), "compensation_retry",
                           retry_to_json(&s->comp_retry));
    if (js && s->compensation)
      json_object_set_new(js, "compensation", json_string(s->compensation));
    if (!js || json_array_append_new(steps, js) != 0) {
      json_decref(steps);
      return NULL;
    }
  }
  if (!steps)
    return NULL;
  return json_pack("{s:s, s:I, s:I, s:s, s:s, s:o}", "saga", p->name, "version",
                   (json_int_t)p->version, "deadline_ms", (json_int_t)p->deadline_ms,
                   "reply_topic", p->reply_topic, "encoding",
                   p->encoding == SAGA_ENCODING_PROTOBUF ? "protobuf" : "json", "steps", steps);
}

static bool retry_from_json(const json_t *j, saga_retry_t *r) {
  json_int_t ma, ini, max;
  const char *bo;
  int jit;
  if (json_unpack((json_t *)j, "{s:I, s:s, s:I, s:I, s:b}", "max_attempts", &ma, "backoff", &bo,
                  "initial_ms", &ini, "max_ms", &max, "jitter", &jit) != 0 ||
      ma < 1 || ini < 0 || max < ini || (strcmp(bo, "fixed") != 0 && strcmp(bo, "exponential") != 0))
    return false;
  r->max_attempts = (uint32_t)ma;
  r->backoff = strcmp(bo, "fixed") == 0 ? SAGA_BACKOFF_FIXED : SAGA_BACKOFF_EXPONENTIAL;
  r->initial_ms = (uint64_t)ini;
  r->max_ms = (uint64_t)max;
  r->jitter = jit != 0;
  return true;
}

saga_plan_t *saga_plan_from_json(const json_t *j, char *err, size_t errsz) {
  const char *name, *rt, *enc;
  json_int_t ver, dl;
  json_t *steps;
  json_error_t je;
  if (json_unpack_ex((json_t *)j, &je, 0, "{s:s, s:I, s:I, s:s, s:s, s:o}", "saga", &name,
                     "version", &ver, "deadline_ms", &dl, "reply_topic", &rt, "encoding", &enc,
                     "steps", &steps) != 0) {
    snprintf(err, errsz, "stored plan: %s", je.text);
    return NULL;
  }
  size_t n = json_is_array(steps) ? json_array_size(steps) : 0;
  if (n == 0 || n > SAGA_MAX_STEPS || ver < 1 || ver > UINT32_MAX || dl < 0 ||
      (strcmp(enc, "json") != 0 && strcmp(enc, "protobuf") != 0)) {
    snprintf(err, errsz, "stored plan of \"%s\": bad steps, version, deadline or encoding", name);
    return NULL;
  }
  saga_plan_t *p = calloc(1, sizeof *p);
  if (!p || !(p->steps = calloc(n, sizeof *p->steps)))
    bt_fatal("out of memory reading a saga plan");
  p->name = xstrdup(name);
  p->version = (uint32_t)ver;
  p->deadline_ms = (uint64_t)dl;
  p->reply_topic = xstrdup(rt);
  p->encoding = strcmp(enc, "protobuf") == 0 ? SAGA_ENCODING_PROTOBUF : SAGA_ENCODING_JSON;
  p->nsteps = n;
  for (size_t i = 0; i < n; i++) {
    saga_step_t *s = &p->steps[i];
    const char *sn, *tp, *cmd, *comp = NULL;
    json_int_t to;
    json_t *r, *cr;
    if (json_unpack_ex(json_array_get(steps, i), &je, 0, "{s:s, s:s, s:s, s?s, s:I, s:o, s:o}",
                       "name", &sn, "topic", &tp, "command", &cmd, "compensation", &comp,
                       "timeout_ms", &to, "retry", &r, "compensation_retry", &cr) != 0 ||
        to < 1 || !retry_from_json(r, &s->retry) || !retry_from_json(cr, &s->comp_retry)) {
      snprintf(err, errsz, "stored plan of \"%s\": step %zu is malformed", name, i);
      saga_plan_free(p);
      return NULL;
    }
    s->name = xstrdup(sn);
    s->topic = xstrdup(tp);
    s->command = xstrdup(cmd);
    s->compensation = comp ? xstrdup(comp) : NULL;
    s->timeout_ms = (uint64_t)to;
  }
  return p;
}
