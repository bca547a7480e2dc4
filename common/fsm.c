/* Table-driven state checks shared by every runtime object with a lifecycle. */
#include "fsm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "errors.h"

const char *bt_fsm_name(const bt_fsm_def_t *def, unsigned s) {
  return s < def->nstates ? def->names[s] : "?";
}

/* The metric names made by bt_fsm_register, kept reachable (for LeakSanitizer) even after
 * bt_metrics_reset() drops the registry in tests. */
static char *fsm_metric_names[64][BT_FSM_MAX_STATES];

void bt_fsm_register(bt_fsm_def_t *def, const char *metric, const char *help) {
  BT_ASSERT(def->nstates <= BT_FSM_MAX_STATES);
  /* The registry borrows names for the life of the process; a NULL first byte marks "not yet
   * registered" so that each definition registers once however many objects use it. */
  static const bt_fsm_def_t *done[64];
  static unsigned ndone;
  for (unsigned i = 0; i < ndone; i++)
    if (done[i] == def)
      return;
  BT_ASSERT(ndone < BT_ARRAY_LEN(done));
  unsigned slot = ndone++;
  done[slot] = def;
  for (unsigned s = 0; s < def->nstates; s++) {
    size_t len = strlen(metric) + strlen(def->names[s]) + 16;
    char *name = malloc(len); /* lives as long as the process, never freed */
    if (!name)
      bt_fatal("out of memory registering %s", metric);
    fsm_metric_names[slot][s] = name;
    snprintf(name, len, "%s{state=\"%s\"}", metric, def->names[s]);
    bt_metrics_gauge(&def->gauges[s], name, help);
  }
}

void bt_fsm_enter(bt_fsm_def_t *def, unsigned initial) {
  BT_ASSERT(initial < def->nstates);
  bt_gauge_add(&def->gauges[initial], 1);
}

void bt_fsm_leave(bt_fsm_def_t *def, unsigned state) {
  BT_ASSERT(state < def->nstates);
  bt_gauge_add(&def->gauges[state], -1);
}

void bt_fsm_move(bt_fsm_def_t *def, unsigned from, unsigned to, const char *who) {
  if (from >= def->nstates || to >= def->nstates || !(def->legal[from] & BT_FSM_BIT(to)))
    bt_fatal("%s%s%s: illegal transition %s -> %s", def->kind, who ? " " : "", who ? who : "",
             bt_fsm_name(def, from), bt_fsm_name(def, to));
  bt_gauge_add(&def->gauges[from], -1);
  bt_gauge_add(&def->gauges[to], 1);
}
