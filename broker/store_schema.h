/* The event store's schema (store_schema.c): versioned migrations applied under an advisory
 * lock. broker_store_migrate() itself is declared in broker.h. */
#ifndef BROKER_STORE_SCHEMA_H
#define BROKER_STORE_SCHEMA_H

/* The version the last known migration brings the schema to. */
int broker_store_schema_version(void);

#endif
