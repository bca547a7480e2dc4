/* Writes a baton.v1.EventBatch of N events (~200 bytes each) to stdout, for bench/publish.sh. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "baton/v1/event.pb-c.h"

int main(int argc, char **argv) {
  int n = argc > 1 ? atoi(argv[1]) : 100;
  const char *data = argc > 2 ? argv[2] : "{}";
  Baton__V1__Event *evs = calloc((size_t)n, sizeof *evs), **ptrs = calloc((size_t)n, sizeof *ptrs);
  char (*ids)[32] = calloc((size_t)n, 32), (*subjects)[32] = calloc((size_t)n, 32);
  for (int i = 0; i < n; i++) {
    baton__v1__event__init(&evs[i]);
    snprintf(ids[i], 32, "ev-%d", i);
    snprintf(subjects[i], 32, "order-%d", i);
    evs[i].id = ids[i];
    evs[i].source = "/bench";
    evs[i].type = "order.placed";
    evs[i].specversion = "1.0";
    evs[i].subject = subjects[i];
    evs[i].datacontenttype = "application/json";
    evs[i].data.data = (uint8_t *)data;
    evs[i].data.len = strlen(data);
    ptrs[i] = &evs[i];
  }
  Baton__V1__EventBatch b = BATON__V1__EVENT_BATCH__INIT;
  b.n_events = (size_t)n;
  b.events = ptrs;
  size_t len = baton__v1__event_batch__get_packed_size(&b);
  uint8_t *buf = malloc(len);
  baton__v1__event_batch__pack(&b, buf);
  fwrite(buf, 1, len, stdout);
  return 0;
}
