/* saga_def: saga definitions. Loads the YAML files of a directory (BATON_SAGA_DEFINITIONS)
 * into validated, immutable plans, and serialises one plan to JSON and back: the plan is
 * persisted with each saga instance, so an instance finishes on the version it started with
 * whatever the loaded definitions say later. */
#ifndef SAGA_DEF_H
#define SAGA_DEF_H

#include <jansson.h>
#include <stdbool.h>
#include <stddef.h>
#include <stdint.h>

#include "errors.h"

/* A plan has at most this many steps: the instance keeps its completed and to-compensate
 * steps as 64-bit sets, which is what makes the compensation order cheap to persist. */
#define SAGA_MAX_STEPS 64
/* Longest saga or step name, command name (bytes). Topic names follow Kafka (249). */
#define SAGA_MAX_NAME 128

typedef enum { SAGA_BACKOFF_FIXED, SAGA_BACKOFF_EXPONENTIAL } saga_backoff_kind_t;
typedef enum { SAGA_ENCODING_JSON, SAGA_ENCODING_PROTOBUF } saga_encoding_t;

/* How an attempt is retried. Vocabulary of CNCF Serverless Workflow / Step Functions. */
typedef struct saga_retry {
  uint32_t max_attempts;       /* attempts in all, the first included (>= 1) */
  saga_backoff_kind_t backoff; /* fixed: always `initial`; exponential: doubling up to max */
  uint64_t initial_ms, max_ms;
  bool jitter;
} saga_retry_t;

typedef struct saga_step {
  char *name, *topic, *command;
  char *compensation;        /* NULL: the step has nothing to undo */
  uint64_t timeout_ms;       /* per attempt, commands and compensations alike */
  saga_retry_t retry;        /* the command's attempts */
  saga_retry_t comp_retry;   /* the compensation's attempts; exhausted -> FAILED */
} saga_step_t;

typedef struct saga_plan {
  char *name;
  uint32_t version;
  uint64_t deadline_ms; /* the whole saga; 0 = none */
  char *reply_topic;    /* where participants answer; default "<name>.replies" */
  saga_encoding_t encoding;
  saga_step_t *steps;
  size_t nsteps;
  char *file; /* where it was loaded from, for messages; NULL when read back from JSON */
} saga_plan_t;

/* Every definition loaded from a directory. */
typedef struct saga_defs {
  saga_plan_t **plans; /* sorted by name, then version */
  size_t n;
} saga_defs_t;

/* Loads every *.yaml / *.yml file of `dir` (a file may hold several documents, one saga
 * each). On any error returns BT_EINVAL, leaves *defs empty and puts every message, one per
 * line, in `errs` (malloc'd, the caller frees; NULL when there are none). Each message reads
 * "<file>:<line>:<column>: <field>: <what is wrong>". */
int saga_defs_load(saga_defs_t *defs, const char *dir, char **errs) BT_MUSTCHECK;
/* Loads one YAML text as if it were file `name` (tests, and the loader itself). Plans are
 * appended to defs; duplicates of (saga, version) already in defs are errors. errs as above. */
int saga_defs_load_text(saga_defs_t *defs, const char *name, const char *text, size_t len,
                        char **errs) BT_MUSTCHECK;
void saga_defs_free(saga_defs_t *defs);
/* The plan of (name, version); version 0 asks for the latest. Borrowed from defs. */
const saga_plan_t *saga_defs_find(const saga_defs_t *defs, const char *name, uint32_t version);

/* The plan as a JSON object (new reference; NULL only when out of memory). */
json_t *saga_plan_to_json(const saga_plan_t *p);
/* Reads a plan written by saga_plan_to_json. Returns a new plan (free with saga_plan_free) or
 * NULL with a message in err. */
saga_plan_t *saga_plan_from_json(const json_t *j, char *err, size_t errsz);
void saga_plan_free(saga_plan_t *p);
/* Index of the step called `name`, or -1. */
int saga_plan_step_index(const saga_plan_t *p, const char *name);

/* Kafka's topic rule: 1-249 of [a-zA-Z0-9._-], not "." or "..". */
bool saga_topic_name_valid(const char *t);

#endif
