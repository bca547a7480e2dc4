/* PLACEHOLDER until the relay lands: replaced wholesale by its author. */
#include "broker.h"
#include "log.h"
int broker_relay_start(broker_t *b) { bt_log_warn("relay not built yet", NULL); return 0; }
void broker_relay_nudge(broker_t *b) {}
