/* baton-inventory: the example participant of the checkout saga's first step. It reserves
 * stock (ReserveInventory) and releases it (ReleaseInventory); the reservation names the saga,
 * so the release can find it whatever the orchestrator sends back. */
#include <stdio.h>

#include "participant.h"

static json_t *reserve(const participant_cmd_t *c) {
  json_t *input = json_object_get(c->value, "input");
  const char *sku = json_string_value(json_object_get(input, "sku"));
  json_t *qty = json_object_get(input, "quantity");
  char id[PARTICIPANT_MAX_NAME + 8];
  snprintf(id, sizeof id, "rsv-%s", c->saga_id);
  return json_pack("{s:s, s:s, s:I}", "reservation_id", id, "sku", sku ? sku : "sku-1",
                   "quantity", json_is_integer(qty) ? json_integer_value(qty) : (json_int_t)1);
}

static const participant_role_t role = {
    .name = "inventory",
    .topic = "inventory.commands",
    .command = "ReserveInventory",
    .compensation = "ReleaseInventory",
    .lock_key = "7061727401000001", /* "part" in ASCII, role 1 */
    .port = "8091",
    .result = reserve,
};

int main(int argc, char **argv) { return participant_main(&role, argc, argv); }
