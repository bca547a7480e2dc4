/* proj_runner_t: one projection at work. It owns the projection's consumer (group
 * baton-projector-{P}), seeks every assigned partition to the lowest of its sinks' next
 * offsets, and moves batches through decode → map → dead letters → one write per sink, each
 * sink skipping what it already holds. Transient failures hold the batch and retry it with
 * backoff; nothing is released (and no offset moves) until every sink and the dead-letter
 * topic hold each event of it. */
#ifndef PROJ_RUNNER_H
#define PROJ_RUNNER_H

#include <stdbool.h>

#include "errors.h"
#include "proj_def.h"

struct projector;
typedef struct proj_runner proj_runner_t;

/* Creates the runner of d (borrowed; outlives it) at live version `version`, registers its
 * metrics and shutdown hooks, and starts it: it loads the sinks' offsets, then subscribes.
 * Returns 0 or a BT_E* code after logging why. */
int proj_runner_new(proj_runner_t **out, struct projector *p, const proj_def_t *d,
                    int version, bool building) BT_MUSTCHECK;
/* Frees the runner after the loop ended. */
void proj_runner_free(proj_runner_t *r);
/* Whether its sinks are reachable and it is not holding a batch for a sink error. */
bool proj_runner_ready(void *runner);

/* Rebuilds (proj_rebuild.c). A building runner writes version n+1 from the topics' start with
 * its own group and offsets, leaving `current` alone. caught_up: r's sinks hold at least
 * what live's sinks hold on every partition (live keeps applying, so this is checked again
 * until it holds). promote: r is the live version from now on. retire: r applies nothing
 * more (its batch in hand finishes; its consumer pauses once max_in_flight is kept). */
int proj_runner_version(const proj_runner_t *r);
bool proj_runner_caught_up(const proj_runner_t *r, const proj_runner_t *live);
void proj_runner_promote(proj_runner_t *r);
void proj_runner_retire(proj_runner_t *r);

#endif
