/* baton-payment: the example participant that authorizes a payment (AuthorizePayment) and
 * voids it (VoidPayment). The authorization id is new for every saga and comes back to the
 * orchestrator in the reply; the ledger refuses a VoidPayment whose `results` do not carry it,
 * which is how the tests see that a compensation gets what its step returned. */
#include <stdio.h>

#include "backoff.h"
#include "participant.h"

static json_t *authorize(const participant_cmd_t *c) {
  json_t *amount = json_object_get(json_object_get(c->value, "input"), "amount");
  char id[48];
  snprintf(id, sizeof id, "auth-%08llx%08llx", (unsigned long long)bt_random_below(1ull << 32),
           (unsigned long long)bt_random_below(1ull << 32));
  return json_pack("{s:s, s:O}", "authorization_id", id, "amount",
                   amount ? amount : json_null());
}

static const participant_role_t role = {
    .name = "payment",
    .topic = "payment.commands",
    .command = "AuthorizePayment",
    .compensation = "VoidPayment",
    .lock_key = "7061727401000002",
    .port = "8092",
    .result = authorize,
};

int main(int argc, char **argv) { return participant_main(&role, argc, argv); }
