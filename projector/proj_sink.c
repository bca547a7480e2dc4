/* What both sinks share: the per-partition offsets map and its metrics. Partitions per
 * projection are few (tens), so the map is a small array searched linearly. */
#include "proj_sink.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "projector.h"

static proj_offset_t *find(const proj_offsets_t *o, const char *topic, int32_t partition) {
  for (size_t i = 0; i < o->n; i++)
    if (o->v[i].partition == partition && strcmp(o->v[i].topic, topic) == 0)
      return &o->v[i];
  return NULL;
}

int64_t proj_offsets_get(const proj_offsets_t *o, const char *topic, int32_t partition) {
  const proj_offset_t *x = find(o, topic, partition);
  return x ? x->next : 0;
}

int proj_offsets_set(proj_offsets_t *o, const char *topic, int32_t partition, int64_t next) {
  proj_offset_t *x = find(o, topic, partition);
  if (!x) {
    if (o->n == o->cap) {
      size_t cap = o->cap ? o->cap * 2 : 16;
      proj_offset_t *v = realloc(o->v, cap * sizeof *v);
      if (!v)
        return BT_ENOMEM;
      o->v = v;
      o->cap = cap;
    }
    x = &o->v[o->n];
    memset(x, 0, sizeof *x);
    if (!(x->topic = strdup(topic)))
      return BT_ENOMEM;
    x->partition = partition;
    o->n++;
  }
  x->next = next;
  return 0;
}

void proj_offsets_clear(proj_offsets_t *o) {
  for (size_t i = 0; i < o->n; i++)
    free(o->v[i].topic);
  free(o->v);
  memset(o, 0, sizeof *o);
}

void proj_sink_init(proj_sink_t *s, const proj_sink_ops_t *ops, projector_t *p, const proj_def_t *d,
                    int version) {
  s->ops = ops;
  s->p = p;
  s->def = d;
  s->version = version;
  s->offset_family = p->offset_family;
  snprintf(s->offset_label, sizeof s->offset_label, "%s:%s:", d->name, ops->name);
}

int proj_sink_set_offset(proj_sink_t *s, const char *topic, int32_t partition, int64_t next) {
  int rc = proj_offsets_set(&s->offsets, topic, partition, next);
  if (rc)
    return rc;
  proj_offset_t *x = find(&s->offsets, topic, partition);
  if (!x->gauge && s->offset_family) {
    char label[400];
    snprintf(label, sizeof label, "%s%s:%d", s->offset_label, topic, (int)partition);
    x->gauge = bt_metrics_family_gauge(s->offset_family, label);
  }
  if (x->gauge)
    bt_gauge_set(x->gauge, (double)next);
  return 0;
}

proj_sink_op_t *proj_sink_op_new(proj_sink_t *s, proj_sink_cb cb, proj_sink_docs_cb docs_cb,
                                 void *arg) {
  proj_sink_op_t *o = calloc(1, sizeof *o);
  if (o) {
    o->s = s;
    o->cb = cb;
    o->docs_cb = docs_cb;
    o->arg = arg;
  }
  return o;
}
