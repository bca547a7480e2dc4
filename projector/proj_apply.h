/* proj_apply: decoded events to read-model changes. proj_map turns one event into a change of
 * one key (or poison); proj_apply_batch collapses a batch's changes per key in Kafka order
 * and emits the effects a sink writes: document puts and deletes, index membership changes
 * and aggregate deltas, each computed from the document's old and new state so that a
 * replayed event yields no effect and aggregates stay exact. */
#ifndef PROJ_APPLY_H
#define PROJ_APPLY_H

#include <jansson.h>
#include <stdint.h>

#include "proj_decode.h"
#include "proj_def.h"

/* The change one event makes to one document. Owned by the change: proj_change_clear. */
typedef struct proj_change {
  char *key;
  proj_op_t op;
  json_t *fields;              /* upsert/merge: the mapped fields; delete: NULL */
} proj_change_t;

/* Maps ev through d. Returns 0, or BT_EINVAL when the event is poison (no rule for its type,
 * no usable key, a path the event lacks) with reason naming the rule and field; BT_ENOMEM. */
int proj_map(const proj_def_t *d, const proj_event_t *ev, proj_change_t *out, char *reason,
             size_t reasonlen) BT_MUSTCHECK;
void proj_change_clear(proj_change_t *c);

/* The read model as applied so far: the documents by key and each aggregate's totals by
 * group (a group whose total is 0 is absent). In the service this is what the sinks hold;
 * here it is the in-memory copy the deltas are computed against. */
typedef struct proj_state {
  json_t *docs;                /* key -> document */
  json_t *aggs;                /* aggregate name -> { group -> integer } */
} proj_state_t;

typedef enum {
  PROJ_EFFECT_DOC_PUT,         /* key, doc */
  PROJ_EFFECT_DOC_DELETE,      /* key */
  PROJ_EFFECT_INDEX_REMOVE,    /* index, value, key, order (the old membership; before its add) */
  PROJ_EFFECT_INDEX_ADD,       /* index, value, key, order (NULL when the index has none) */
  PROJ_EFFECT_AGG_DELTA,       /* aggregate, group, delta (never 0) */
} proj_effect_kind_t;

typedef struct proj_effect {
  proj_effect_kind_t kind;
  char *key;
  json_t *doc;
  size_t index;                /* into def->indexes */
  char *value;                 /* the index's member-set name: the field's value as text */
  json_t *order;
  size_t aggregate;            /* into def->aggregates */
  char *group;
  int64_t delta;
} proj_effect_t;

/* Effects of one batch, in order: per key in the order keys first appear in the batch, its
 * document, then its index changes; then the aggregate deltas summed per group. */
typedef struct proj_effects {
  proj_effect_t *v;
  size_t n, cap;
} proj_effects_t;

int proj_state_init(proj_state_t *s) BT_MUSTCHECK;
void proj_state_free(proj_state_t *s);

/* Applies n changes (in Kafka order; the caller bounds n by its batch limit) to s and appends
 * their effects to out. Returns 0 or BT_ENOMEM, in which case s is unchanged. */
int proj_apply_batch(proj_state_t *s, const proj_def_t *d, const proj_change_t *changes,
                     size_t n, proj_effects_t *out) BT_MUSTCHECK;

void proj_effects_clear(proj_effects_t *e);

/* What a document contributes: its index membership (value and order) and its aggregate
 * group and amount. Exposed for the sinks' rebuild checks and for tests' oracles. Returns
 * false when the document is not a member / does not contribute. value/group are written
 * into buf (buflen bytes). */
bool proj_index_member(const proj_index_t *ix, json_t *doc, char *buf, size_t buflen,
                       json_t **order);
bool proj_aggregate_contribution(const proj_aggregate_t *ag, json_t *doc, char *buf,
                                 size_t buflen, int64_t *amount);

#endif
