/* bt_arena_t: per-request memory released as a whole (like h2o's mem pool). Allocations are
 * bump-allocated from chunks; nothing is freed individually. */
#ifndef BT_ARENA_H
#define BT_ARENA_H

#include <stddef.h>

typedef struct bt_arena_chunk bt_arena_chunk_t;

typedef struct bt_arena {
  bt_arena_chunk_t *chunks;
  size_t used;  /* bytes handed out, for limits */
  size_t limit; /* allocations past this fail (return NULL); 0 = unlimited */
} bt_arena_t;

void bt_arena_init(bt_arena_t *a, size_t limit);
/* Returns 16-byte aligned memory, or NULL when out of memory or past the limit. */
void *bt_arena_alloc(bt_arena_t *a, size_t n);
/* Copies n bytes and appends a NUL. */
char *bt_arena_strndup(bt_arena_t *a, const char *s, size_t n);
char *bt_arena_strdup(bt_arena_t *a, const char *s);
/* Frees every allocation. The arena can be reused afterwards. */
void bt_arena_reset(bt_arena_t *a);

#endif
