/* The projector's Postgres schema `projector` (proj_schema.c): the versioned migrations of its
 * fixed tables (versions, current, offsets), and the per-version tables of each projection
 * (`projector."{P}_v{n}"` and `projector."{P}_v{n}_agg"`), created at start from the
 * definitions. Start-up only: everything here blocks (PQexec). */
#ifndef PROJ_SCHEMA_H
#define PROJ_SCHEMA_H

#include <stdbool.h>
#include <stddef.h>

#include "buf.h"
#include "errors.h"
#include "proj_def.h"

/* Applies the missing migrations. Returns 0 or BT_EIO with a message in errstr. */
int proj_schema_migrate(const char *dsn, char *errstr, size_t errsz) BT_MUSTCHECK;
int proj_schema_version(void);

/* The retired versions of one projection that a crash left undropped, oldest first
 * (malloc'd; v is NULL when n is 0). */
typedef struct proj_retired {
  int *v;
  size_t n;
} proj_retired_t;

/* For every definition: makes sure it has a live version (version 1, state live, in
 * projector.current, when it has none) and, when it writes to Postgres, that version's
 * tables exist with a column per indexed, ordered and aggregated field. versions[i] receives
 * the live version of defs->defs[i], building[i] the version a rebuild is building (0: none)
 * and retired[i] every retired version not yet dropped (a crash during a rebuild's grace
 * period or its drop leaves one; several crashes, several), to be freed with
 * proj_schema_retired_free. One transaction under the migration lock, so replicas starting
 * together agree. Returns 0 or BT_EIO (BT_ENOMEM) with errstr. */
int proj_schema_prepare(const char *dsn, const proj_def_set_t *defs, int *versions, int *building,
                        proj_retired_t *retired, char *errstr, size_t errsz) BT_MUSTCHECK;
/* Frees the lists of retired[0..n). */
void proj_schema_retired_free(proj_retired_t *retired, size_t n);

/* Rebuilds (blocking: run off the loop). begin_rebuild adds version max+1 in state building
 * with its tables (BT_ECONFLICT when one is building already; *version says which); switch
 * makes `to` the live version and `from` retired in one transaction; drop_version drops a
 * retired version's tables and offsets. Each returns 0 or BT_EIO with errstr. building[i]
 * (prepare) is the version under rebuild of defs->defs[i], 0 when none: it resumes. */
int proj_schema_begin_rebuild(const char *dsn, const proj_def_t *d, int *version, char *errstr,
                              size_t errsz) BT_MUSTCHECK;
int proj_schema_switch(const char *dsn, const char *projection, int from, int to, char *errstr,
                       size_t errsz) BT_MUSTCHECK;
int proj_schema_drop_version(const char *dsn, const char *projection, int version, char *errstr,
                             size_t errsz) BT_MUSTCHECK;

/* The document columns of d: every field an index names (field, order) or an aggregate reads
 * (group, sum), each once, in definition order. is_sum[i] is true for a summed field (a bigint
 * column); the others are text. Returns the count (at most max). Names are borrowed from d. */
size_t proj_schema_columns(const proj_def_t *d, const char **names, bool *is_sum, size_t max);

/* Appends s as a quoted SQL identifier (double quotes doubled). Returns 0 or BT_ENOMEM. */
int proj_schema_quote_ident(bt_buf_t *b, const char *s) BT_MUSTCHECK;

/* Writes the quoted table name projector."{P}_v{n}{suffix}" into out. */
void proj_schema_table(char *out, size_t outsz, const char *projection, int version,
                       const char *suffix);

#endif
