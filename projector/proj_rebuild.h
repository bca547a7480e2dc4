/* proj_rebuild: version n+1 of a projection built beside the live version n, switched
 * atomically when caught up, n dropped after a grace period (see proj_rebuild.c). */
#ifndef PROJ_REBUILD_H
#define PROJ_REBUILD_H

#include "errors.h"
#include "proj_schema.h"

struct projector;
typedef struct proj_rebuild proj_rebuild_t;

/* Creates one rebuild slot per definition, resumes the rebuilds a crash interrupted
 * (building[i] > 0: that version of defs.defs[i]), drops the retired versions a crash left
 * (retired[i], taken over: the lists are left empty) after one grace period, and registers
 * POST /v1/projections/{name}/rebuild (202 with the new version; 404 unknown projection; 409
 * while one runs; 503 Postgres unavailable). Returns 0 or BT_ENOMEM. */
int proj_rebuild_start(struct projector *p, const int *building,
                       proj_retired_t *retired) BT_MUSTCHECK;
/* Frees the slots (after the loop ended). */
void proj_rebuild_free(struct projector *p);

#endif
