/* The service-outbox source of the relay (relay_outbox.c): a service's `outbox` table, drained
 * below the oldest running transaction and emptied as Kafka acknowledges. */
#ifndef BROKER_RELAY_OUTBOX_H
#define BROKER_RELAY_OUTBOX_H

#include "relay_worker.h"

/* The lease row's name in the service's outbox_lease table. The table lives next to the
 * outbox, so the name only has to tell outbox tables apart, never DSNs: every replica uses
 * it whatever its list looks like, and two replicas can never both lead one outbox. */
#define RELAY_OUTBOX_LEASE "outbox"

/* Initialises w (zeroed) as an outbox relay on pool (connected to the service's database),
 * which it takes over. `label` names it in logs and metrics. budget is borrowed. Returns 0 or
 * BT_ENOMEM. */
int relay_outbox_init(bt_outbox_relay_t *w, broker_t *b, bt_pg_pool_t *pool, const char *label,
                      bt_outbox_relay_budget_t *budget) BT_MUSTCHECK;

#endif
