/* The Postgres sink: a projection version's rows in projector."{P}_v{n}" (key, the document as
 * jsonb, and a real column per indexed, ordered and aggregated field, filled from the document
 * by the INSERT itself), its totals in projector."{P}_v{n}_agg", and its offsets in
 * projector.offsets. A batch is ONE transaction: projector.advance() first moves and locks the
 * batch's partitions' offset rows, raising 40001 if another writer moved them since this one
 * read (then nothing is written and the runner reloads), then the rows, deletes and aggregate
 * upserts follow in the same pipeline. Every value travels as one jsonb parameter, so a batch
 * costs five statements whatever its size. */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "buf.h"
#include "log.h"
#include "pg_sqlstate.h"
#include "proj_schema.h"
#include "proj_sink.h"
#include "projector.h"

typedef struct sink_pg {
  proj_sink_t base;
  char table[300], agg[300];
  char *sql_offsets, *sql_fetch, *sql_upsert, *sql_delete, *sql_agg, *sql_agg_zero;
  char version_text[16];
} sink_pg_t;


static int failed(sink_pg_t *s, const bt_pg_result_t *r, const char *what) {
  snprintf(s->base.errstr, sizeof s->base.errstr, "%s: %s", what, r->errmsg);
  s->base.loaded = false;
  /* 40001 is advance()'s refusal (or a real serialization failure): reload and retry. */
  return bt_pg_result_class(r) == BT_PG_RETRY && r->err == BT_EIO ? BT_ECONFLICT
         : r->err ? r->err : BT_EIO;
}

static void on_offsets(const bt_pg_result_t *r, void *arg) {
  proj_sink_op_t *o = arg;
  sink_pg_t *s = (sink_pg_t *)o->s;
  int rc = r->err ? failed(s, r, "read offsets") : 0;
  if (!rc) {
    const PGresult *res = r->res[0];
    proj_offsets_clear(&s->base.offsets);
    for (int i = 0; !rc && i < PQntuples(res); i++)
      rc = proj_sink_set_offset(&s->base, PQgetvalue(res, i, 0),
                                (int32_t)atoi(PQgetvalue(res, i, 1)),
                                strtoll(PQgetvalue(res, i, 2), NULL, 10));
    s->base.loaded = rc == 0;
  }
  o->cb(&s->base, rc, o->arg);
  free(o);
}

static int load_offsets(proj_sink_t *base, proj_sink_cb cb, void *arg) {
  sink_pg_t *s = (sink_pg_t *)base;
  proj_sink_op_t *o = proj_sink_op_new(&s->base, cb, NULL, arg);
  if (!o)
    return BT_ENOMEM;
  const char *v[] = {base->def->name, s->version_text};
  bt_pg_query_t q = {.sql = s->sql_offsets, .nparams = 2, .values = v};
  int rc = bt_pg_pool_exec(base->p->pg, &q, on_offsets, o);
  if (rc) {
    snprintf(base->errstr, sizeof base->errstr, "read offsets: %s", bt_strerror(rc));
    free(o);
  }
  return rc;
}

static void on_docs(const bt_pg_result_t *r, void *arg) {
  proj_sink_op_t *o = arg;
  sink_pg_t *s = (sink_pg_t *)o->s;
  int rc = r->err ? failed(s, r, "read documents") : 0;
  json_t *docs = rc ? NULL : json_object();
  if (!rc && !docs)
    rc = BT_ENOMEM;
  for (int i = 0; !rc && i < PQntuples(r->res[0]); i++) {
    json_t *doc = json_loads(PQgetvalue(r->res[0], i, 1), 0, NULL);
    if (!doc || json_object_set_new(docs, PQgetvalue(r->res[0], i, 0), doc))
      rc = BT_ENOMEM;
  }
  o->docs_cb(&s->base, rc, rc ? NULL : docs, o->arg);
  json_decref(docs);
  free(o);
}

static int fetch(proj_sink_t *base, json_t *keys, proj_sink_docs_cb cb, void *arg) {
  sink_pg_t *s = (sink_pg_t *)base;
  char *text = json_dumps(keys, JSON_COMPACT);
  proj_sink_op_t *o = text ? proj_sink_op_new(&s->base, NULL, cb, arg) : NULL;
  int rc = o ? 0 : BT_ENOMEM;
  if (!rc) {
    const char *v[] = {text};
    bt_pg_query_t q = {.sql = s->sql_fetch, .nparams = 1, .values = v};
    rc = bt_pg_pool_exec(base->p->pg, &q, on_docs, o);
    if (rc) {
      snprintf(base->errstr, sizeof base->errstr, "read documents: %s", bt_strerror(rc));
      free(o);
    }
  }
  free(text);
  return rc;
}

/* The batch as the jsonb parameters of the write's statements. */
typedef struct params {
  json_t *moves, *puts, *dels, *aggs;
} params_t;

static int build_params(sink_pg_t *s, const proj_sink_batch_t *b, params_t *p) {
  const proj_def_t *d = s->base.def;
  p->moves = json_array();
  p->puts = json_array();
  p->dels = json_array();
  p->aggs = json_array();
  if (!p->moves || !p->puts || !p->dels || !p->aggs)
    return BT_ENOMEM;
  int rc = 0;
  for (size_t i = 0; !rc && i < b->nmoves; i++)
    rc = json_array_append_new(p->moves,
                               json_pack("{s:s, s:i, s:I, s:I}", "t", b->moves[i].topic, "p",
                                         (int)b->moves[i].partition, "from",
                                         (json_int_t)b->moves[i].from, "to",
                                         (json_int_t)b->moves[i].to));
  for (size_t i = 0; !rc && i < b->effects->n; i++) {
    const proj_effect_t *x = &b->effects->v[i];
    if (x->kind == PROJ_EFFECT_DOC_PUT)
      rc = json_array_append_new(p->puts, json_pack("{s:s, s:O}", "key", x->key, "doc", x->doc));
    else if (x->kind == PROJ_EFFECT_DOC_DELETE)
      rc = json_array_append_new(p->dels, json_string(x->key));
    else if (x->kind == PROJ_EFFECT_AGG_DELTA)
      rc = json_array_append_new(p->aggs,
                                 json_pack("{s:s, s:s, s:I}", "a", d->aggregates[x->aggregate].name,
                                           "g", x->group, "d", (json_int_t)x->delta));
  }
  return rc ? BT_ENOMEM : 0;
}

static void params_free(params_t *p) {
  json_decref(p->moves);
  json_decref(p->puts);
  json_decref(p->dels);
  json_decref(p->aggs);
}

static void on_write(const bt_pg_result_t *r, void *arg) {
  proj_sink_op_t *o = arg;
  sink_pg_t *s = (sink_pg_t *)o->s;
  int rc = r->err ? failed(s, r, "write batch") : 0;
  o->cb(&s->base, rc, o->arg);
  free(o);
}

static int write_batch(proj_sink_t *base, const proj_sink_batch_t *b, proj_sink_cb cb, void *arg) {
  sink_pg_t *s = (sink_pg_t *)base;
  params_t p = {0};
  char *texts[4] = {0};
  int rc = build_params(s, b, &p);
  json_t *arrays[4] = {p.moves, p.puts, p.dels, p.aggs};
  for (int i = 0; !rc && i < 4; i++)
    if (!(texts[i] = json_dumps(arrays[i], JSON_COMPACT)))
      rc = BT_ENOMEM;
  proj_sink_op_t *o = rc ? NULL : proj_sink_op_new(&s->base, cb, NULL, arg);
  if (!rc && !o)
    rc = BT_ENOMEM;
  if (!rc) {
    const char *adv[] = {base->def->name, s->version_text, texts[0]};
    const char *puts[] = {texts[1]}, *dels[] = {texts[2]}, *aggs[] = {texts[3]};
    bt_pg_query_t qs[5];
    size_t n = 0;
    qs[n++] = (bt_pg_query_t){.sql = "SELECT projector.advance($1, $2::int, $3::jsonb)",
                              .nparams = 3, .values = adv};
    if (json_array_size(p.puts))
      qs[n++] = (bt_pg_query_t){.sql = s->sql_upsert, .nparams = 1, .values = puts};
    if (json_array_size(p.dels))
      qs[n++] = (bt_pg_query_t){.sql = s->sql_delete, .nparams = 1, .values = dels};
    if (json_array_size(p.aggs)) {
      qs[n++] = (bt_pg_query_t){.sql = s->sql_agg, .nparams = 1, .values = aggs};
      qs[n++] = (bt_pg_query_t){.sql = s->sql_agg_zero, .nparams = 1, .values = aggs};
    }
    rc = bt_pg_pool_submit(base->p->pg, qs, n, 0, on_write, o);
    if (rc) {
      snprintf(base->errstr, sizeof base->errstr, "write batch: %s", bt_strerror(rc));
      free(o);
    }
  }
  for (int i = 0; i < 4; i++)
    free(texts[i]);
  params_free(&p);
  if (rc)
    base->loaded = false;
  return rc;
}

static void sink_free(proj_sink_t *base) {
  sink_pg_t *s = (sink_pg_t *)base;
  free(s->sql_offsets);
  free(s->sql_fetch);
  free(s->sql_upsert);
  free(s->sql_delete);
  free(s->sql_agg);
  free(s->sql_agg_zero);
  proj_offsets_clear(&base->offsets);
  free(s);
}

static const proj_sink_ops_t ops = {"postgres", load_offsets, fetch, write_batch, sink_free};

/* Appends the expression extracting document field f as its column's type. A summed field is
 * bigint when the value is an integral JSON number of at most 18 digits, else NULL, so a
 * value no column can hold never fails the transaction (which would stop the projection). */
static int column_expr(bt_buf_t *b, const char *f, bool is_sum) {
  /* f as a SQL string literal (quotes doubled). */
  bt_buf_t lit_sql;
  bt_buf_init(&lit_sql, 0);
  int rc = bt_buf_append(&lit_sql, "'", 1);
  for (const char *c = f; !rc && *c; c++)
    rc = *c == '\'' ? bt_buf_append(&lit_sql, "''", 2) : bt_buf_append(&lit_sql, c, 1);
  if (!rc)
    rc = bt_buf_append(&lit_sql, "'", 1);
  if (!rc && is_sum)
    rc = bt_buf_appendf(b,
                        "CASE WHEN jsonb_typeof(x.doc->%s) = 'number' AND "
                        "(x.doc->>%s) ~ '^-?[0-9]{1,18}$' THEN (x.doc->>%s)::bigint END",
                        lit_sql.data, lit_sql.data, lit_sql.data);
  else if (!rc)
    rc = bt_buf_appendf(b, "x.doc->>%s", lit_sql.data);
  bt_buf_free(&lit_sql);
  return rc;
}

static char *upsert_sql(sink_pg_t *s) {
  const char *cols[64];
  bool is_sum[64];
  size_t nc = proj_schema_columns(s->base.def, cols, is_sum, 64);
  bt_buf_t b;
  bt_buf_init(&b, 0);
  int rc = bt_buf_appendf(&b, "INSERT INTO %s AS t (key, doc", s->table);
  for (size_t i = 0; !rc && i < nc; i++) {
    rc = bt_buf_append(&b, ", ", 2);
    if (!rc) rc = proj_schema_quote_ident(&b, cols[i]);
  }
  if (!rc) rc = bt_buf_appendf(&b, ") SELECT x.key, x.doc");
  for (size_t i = 0; !rc && i < nc; i++) {
    rc = bt_buf_append(&b, ", ", 2);
    if (!rc) rc = column_expr(&b, cols[i], is_sum[i]);
  }
  if (!rc)
    rc = bt_buf_appendf(&b, " FROM jsonb_to_recordset($1::jsonb) AS x(key text, doc jsonb) "
                            "ON CONFLICT (key) DO UPDATE SET doc = excluded.doc");
  for (size_t i = 0; !rc && i < nc; i++) {
    rc = bt_buf_append(&b, ", ", 2);
    if (!rc) rc = proj_schema_quote_ident(&b, cols[i]);
    if (!rc) rc = bt_buf_append(&b, " = excluded.", 12);
    if (!rc) rc = proj_schema_quote_ident(&b, cols[i]);
  }
  if (rc) {
    bt_buf_free(&b);
    return NULL;
  }
  return b.data;
}

/* f with its one %s replaced by a table name. */
static char *with_table(const char *f, const char *table) {
  const char *at = strstr(f, "%s");
  size_t n = strlen(f) + strlen(table) + 1;
  char *s = malloc(n);
  if (s)
    snprintf(s, n, "%.*s%s%s", (int)(at - f), f, table, at + 2);
  return s;
}

int proj_sink_pg_new(proj_sink_t **out, projector_t *p, const proj_def_t *d, int version) {
  sink_pg_t *s = calloc(1, sizeof *s);
  if (!s)
    return BT_ENOMEM;
  proj_sink_init(&s->base, &ops, p, d, version);
  snprintf(s->version_text, sizeof s->version_text, "%d", version);
  proj_schema_table(s->table, sizeof s->table, d->name, version, "");
  proj_schema_table(s->agg, sizeof s->agg, d->name, version, "_agg");
  s->sql_offsets = strdup("SELECT topic, partition, next_offset FROM projector.offsets "
                          "WHERE projection = $1 AND version = $2::int");
  s->sql_fetch = with_table("SELECT key, doc::text FROM %s WHERE key IN "
                     "(SELECT jsonb_array_elements_text($1::jsonb))",
                     s->table);
  s->sql_upsert = upsert_sql(s);
  s->sql_delete = with_table("DELETE FROM %s WHERE key IN (SELECT jsonb_array_elements_text($1::jsonb))"
                      "",
                      s->table);
  s->sql_agg = with_table("INSERT INTO %s AS a (aggregate, grp, total) SELECT x.a, x.g, x.d FROM "
                   "jsonb_to_recordset($1::jsonb) AS x(a text, g text, d bigint) "
                   "ON CONFLICT (aggregate, grp) DO UPDATE SET total = a.total + excluded.total"
                   "",
                   s->agg);
  s->sql_agg_zero = with_table("DELETE FROM %s AS a USING jsonb_to_recordset($1::jsonb) AS x(a text, "
                        "g text) WHERE a.aggregate = x.a AND a.grp = x.g AND a.total = 0",
                        s->agg);
  if (!s->sql_offsets || !s->sql_fetch || !s->sql_upsert || !s->sql_delete || !s->sql_agg ||
      !s->sql_agg_zero) {
    sink_free(&s->base);
    return BT_ENOMEM;
  }
  *out = &s->base;
  return 0;
}
