/* The saga orchestrator's Postgres schema `saga` (saga_schema.c): versioned migrations applied
 * at start under an advisory lock (common/pg_migrate.h). */
#ifndef SAGA_SCHEMA_H
#define SAGA_SCHEMA_H

#include <stddef.h>

#include "errors.h"

/* Applies the missing migrations. Start-up only (blocks). Returns 0 or BT_EIO with a message. */
int saga_schema_migrate(const char *dsn, char *errstr, size_t errsz) BT_MUSTCHECK;
/* The version the last known migration brings the schema to. */
int saga_schema_version(void);

#endif
