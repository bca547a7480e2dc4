/* The event-store source of the relay (relay_store.c): baton.events after a durable cursor. */
#ifndef BROKER_RELAY_STORE_H
#define BROKER_RELAY_STORE_H

#include "relay_route.h"
#include "relay_worker.h"

/* Initialises w (zeroed) as the store relay (label and lease "store") on its own pool, which
 * it takes over; routes and budget are borrowed and must outlive the relay. Returns 0 or
 * BT_ENOMEM. */
int relay_store_init(bt_outbox_relay_t *w, broker_t *b, bt_pg_pool_t *pool,
                     const broker_relay_routes_t *routes, bt_outbox_relay_budget_t *budget)
    BT_MUSTCHECK;

#endif
