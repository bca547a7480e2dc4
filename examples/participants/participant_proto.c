/* The protobuf encoding between the orchestrator and a participant (issue 8 §2, `encoding:
 * protobuf` in a saga definition): the command is a baton.v1.SagaCommand whose payload is the
 * same {"input":..,"results":..} JSON as the JSON encoding, and the answer is a
 * baton.v1.SagaReply. Only the value changes; the ce_ headers of the command are still there. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/v1/saga.pb-c.h"
#include "participant.h"

int participant_proto_decode(participant_cmd_t *c, const void *value, size_t len, char *why,
                             size_t whysz) {
  Baton__V1__SagaCommand *m = value ? baton__v1__saga_command__unpack(NULL, len, value) : NULL;
  if (!m) {
    snprintf(why, whysz, "the value is not a baton.v1.SagaCommand message");
    return BT_EINVAL;
  }
  /* The headers name the step (the ledger and the input rules use its name), the message
   * numbers it (the reply must): both must describe the same command, or one of them lies. */
  char attempt[16];
  snprintf(attempt, sizeof attempt, "%u", m->attempt);
  const char *kind = m->kind == BATON__V1__SAGA_COMMAND__KIND__COMMAND        ? "command"
                     : m->kind == BATON__V1__SAGA_COMMAND__KIND__COMPENSATION ? "compensation"
                                                                              : "?";
  const char *field = strcmp(m->saga_id, c->saga_id) != 0                          ? "saga_id"
                      : strcmp(attempt, c->attempt) != 0                           ? "attempt"
                      : strcmp(kind, c->kind) != 0                                 ? "kind"
                      : strcmp(m->command_type, c->type) != 0                      ? "command_type"
                      : *m->reply_topic && strcmp(m->reply_topic, c->replyto) != 0 ? "reply_topic"
                                                                                   : NULL;
  int rc = 0;
  json_error_t je;
  if (field) {
    snprintf(why, whysz, "SagaCommand.%s disagrees with the record's ce_ headers", field);
    rc = BT_EINVAL;
  } else if (!(c->value = json_loadb((const char *)m->payload.data, m->payload.len, 0, &je)) ||
             !json_is_object(c->value)) {
    snprintf(why, whysz, "SagaCommand.payload is not a JSON object");
    rc = BT_EINVAL;
  } else {
    c->step_index = m->step;
    c->protobuf = true;
  }
  baton__v1__saga_command__free_unpacked(m, NULL);
  return rc;
}

void *participant_proto_reply(const participant_cmd_t *c, const char *outcome, const char *data,
                              size_t *len) {
  Baton__V1__SagaReply r = BATON__V1__SAGA_REPLY__INIT;
  r.saga_id = (char *)c->saga_id;
  r.step = c->step_index;
  r.attempt = (uint32_t)strtoul(c->attempt, NULL, 10); /* digits only: parse_command checked */
  r.kind = strcmp(c->kind, "compensation") == 0 ? BATON__V1__SAGA_COMMAND__KIND__COMPENSATION
                                                : BATON__V1__SAGA_COMMAND__KIND__COMMAND;
  r.outcome = strcmp(outcome, "failure") == 0 ? BATON__V1__SAGA_REPLY__OUTCOME__FAILURE
              : strcmp(outcome, "retry") == 0 ? BATON__V1__SAGA_REPLY__OUTCOME__RETRY
                                              : BATON__V1__SAGA_REPLY__OUTCOME__SUCCESS;
  if (data) {
    r.payload.data = (uint8_t *)data;
    r.payload.len = strlen(data);
  }
  /* A refusal's reason also goes to `error`, for readers that do not parse the payload. */
  json_t *d = data && r.outcome != BATON__V1__SAGA_REPLY__OUTCOME__SUCCESS
                  ? json_loads(data, JSON_DECODE_ANY, NULL)
                  : NULL;
  const char *err = json_string_value(json_object_get(d, "error"));
  r.error = err ? (char *)err : (char *)"";
  *len = baton__v1__saga_reply__get_packed_size(&r);
  uint8_t *buf = malloc(*len ? *len : 1);
  if (buf)
    baton__v1__saga_reply__pack(&r, buf);
  json_decref(d);
  return buf;
}
