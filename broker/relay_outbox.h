/* The service-outbox source of the relay (relay_outbox.c): a service's `outbox` table, drained
 * below the oldest running transaction and emptied as Kafka acknowledges. */
#ifndef BROKER_RELAY_OUTBOX_H
#define BROKER_RELAY_OUTBOX_H

#include "relay_worker.h"

/* Initialises w (zeroed) as an outbox relay on pool (connected to the service's database),
 * which it takes over. `name` ("outbox0", ...) names the lease row and the metrics label.
 * Returns 0 or BT_ENOMEM. */
int relay_outbox_init(relay_worker_t *w, broker_t *b, bt_pg_pool_t *pool,
                      const char *name) BT_MUSTCHECK;

#endif
