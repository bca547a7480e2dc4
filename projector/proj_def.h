/* proj_def_t: a projection definition loaded from YAML and validated at start, so that every
 * mistake is reported once with its file, line, column and field instead of surfacing as
 * poison events at run time. The loaded form is plain data that proj_map and proj_apply read. */
#ifndef PROJ_DEF_H
#define PROJ_DEF_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>

#include "errors.h"

typedef enum { PROJ_FMT_DEBEZIUM_JSON, PROJ_FMT_CLOUDEVENTS_JSON, PROJ_FMT_PROTOBUF } proj_format_t;
typedef enum { PROJ_OP_UPSERT, PROJ_OP_MERGE, PROJ_OP_DELETE } proj_op_t;
typedef enum { PROJ_VAL_PATH, PROJ_VAL_LITERAL, PROJ_VAL_ARRAY } proj_value_kind_t;
enum { PROJ_SINK_REDIS = 1u << 0, PROJ_SINK_POSTGRES = 1u << 1 };

/* A mapped value: a `$.a.b` path into the event, a literal, or a one-level array of both. */
typedef struct proj_value {
  proj_value_kind_t kind;
  char **path;                 /* PATH: segments after `$` (npath 0 means the whole event) */
  size_t npath;
  json_t *literal;             /* LITERAL: owned reference */
  struct proj_value *items;    /* ARRAY: paths or literals, never arrays */
  size_t nitems;
} proj_value_t;

typedef struct proj_field {
  char *name;                  /* top-level field of the document */
  proj_value_t value;
} proj_field_t;

/* What one event type does to the document named by the key. */
typedef struct proj_rule {
  char *event_type;
  proj_op_t op;
  proj_field_t *fields;        /* none for delete */
  size_t nfields;
} proj_rule_t;

/* Equality filters on document fields; all must hold. */
typedef struct proj_where {
  char *field;
  json_t *equals;              /* owned reference */
} proj_where_t;

typedef struct proj_index {
  char *name;
  char *field;                 /* document field whose value names the member set */
  proj_where_t *where;
  size_t nwhere;
  char *order;                 /* document field the members sort by, or NULL */
} proj_index_t;

typedef struct proj_aggregate {
  char *name;
  char *group;                 /* document field whose value names the group */
  char *sum;                   /* document field summed, or NULL when count */
  bool count;
  proj_where_t *where;
  size_t nwhere;
} proj_aggregate_t;

typedef struct proj_def {
  char *file;                  /* the path it was loaded from, for messages */
  char *name;
  char **topics;
  size_t ntopics;
  proj_format_t format;
  proj_value_t key;            /* a path into the event */
  proj_rule_t *rules;
  size_t nrules;
  proj_index_t *indexes;
  size_t nindexes;
  proj_aggregate_t *aggregates;
  size_t naggregates;
  unsigned sinks;              /* PROJ_SINK_* bits */
} proj_def_t;

/* Every definition of a directory, sorted by file name. */
typedef struct proj_def_set {
  proj_def_t *defs;
  size_t ndefs;
} proj_def_set_t;

/* Largest definition file read; bounds the memory a stray file can take. */
#define PROJ_DEF_MAX_FILE_BYTES_DEFAULT (1024 * 1024)

/* Loads and validates one YAML document held in text (name is used in messages). On error
 * returns BT_EINVAL (BT_ENOMEM) and writes "file:line:col: field: problem" into err. */
int proj_def_parse(proj_def_t *out, const char *name, const char *text, size_t len, char *err,
                   size_t errlen) BT_MUSTCHECK;

/* Loads every *.yaml / *.yml file of dir. Projection names must be unique across files. An
 * empty directory is an error: a projector with nothing to project is misconfigured.
 * max_file_bytes 0 means PROJ_DEF_MAX_FILE_BYTES_DEFAULT. */
int proj_def_load_dir(proj_def_set_t *out, const char *dir, size_t max_file_bytes, char *err,
                      size_t errlen) BT_MUSTCHECK;

/* The rule for an event type, or NULL when the definition does not map it. Borrowed. */
const proj_rule_t *proj_def_rule(const proj_def_t *d, const char *event_type);

/* Resolves a path against a JSON document. Returns a borrowed value or NULL if missing. */
json_t *proj_value_resolve_path(const proj_value_t *v, json_t *event);

const char *proj_format_name(proj_format_t f);

void proj_def_free(proj_def_t *d);
void proj_def_set_free(proj_def_set_t *s);

#endif
