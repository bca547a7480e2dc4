/* baton-shipping: the example participant of the checkout saga's last step (CreateShipment).
 * The last step has no compensation: once it succeeds the saga is complete. */
#include <stdio.h>

#include "backoff.h"
#include "participant.h"

static json_t *ship(const participant_cmd_t *c) {
  (void)c;
  char id[48];
  snprintf(id, sizeof id, "trk-%08llx", (unsigned long long)bt_random_below(1ull << 32));
  return json_pack("{s:s}", "tracking_id", id);
}

static const participant_role_t role = {
    .name = "shipping",
    .topic = "shipping.commands",
    .command = "CreateShipment",
    .compensation = NULL,
    .lock_key = "7061727401000003",
    .port = "8093",
    .result = ship,
};

int main(int argc, char **argv) { return participant_main(&role, argc, argv); }
