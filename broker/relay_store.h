/* The event-store source of the relay (relay_store.c): baton.events after a durable cursor. */
#ifndef BROKER_RELAY_STORE_H
#define BROKER_RELAY_STORE_H

#include "relay_route.h"
#include "relay_worker.h"

/* Initialises w (zeroed) as the store relay on its own pool, which it takes over; routes are
 * borrowed and must outlive the worker. Returns 0 or BT_ENOMEM. */
int relay_store_init(relay_worker_t *w, broker_t *b, bt_pg_pool_t *pool,
                     const broker_relay_routes_t *routes) BT_MUSTCHECK;

#endif
