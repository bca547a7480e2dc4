/* Chunked bump allocator. Small requests share 16 KiB chunks; a large one gets its own chunk,
 * so a big body does not waste a chunk's tail. */
#include "arena.h"

#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#define CHUNK_SIZE 16384

struct bt_arena_chunk {
  bt_arena_chunk_t *next;
  size_t size, off;
  _Alignas(16) unsigned char data[];
};

void bt_arena_init(bt_arena_t *a, size_t limit) {
  a->chunks = NULL;
  a->used = 0;
  a->limit = limit;
}

void *bt_arena_alloc(bt_arena_t *a, size_t n) {
  n = (n + 15) & ~(size_t)15;
  if (n == 0)
    n = 16;
  if (a->limit && a->used + n > a->limit)
    return NULL;
  bt_arena_chunk_t *c = a->chunks;
  if (!c || c->size - c->off < n) {
    size_t size = n > CHUNK_SIZE / 4 ? n : CHUNK_SIZE;
    c = malloc(sizeof *c + size);
    if (!c)
      return NULL;
    c->size = size;
    c->off = 0;
    if (size == n && a->chunks) {
      /* A dedicated chunk goes behind the current one, which keeps its free tail. */
      c->next = a->chunks->next;
      a->chunks->next = c;
    } else {
      c->next = a->chunks;
      a->chunks = c;
    }
  }
  void *p = c->data + c->off;
  c->off += n;
  a->used += n;
  return p;
}

char *bt_arena_strndup(bt_arena_t *a, const char *s, size_t n) {
  char *p = bt_arena_alloc(a, n + 1);
  if (p) {
    memcpy(p, s, n);
    p[n] = '\0';
  }
  return p;
}

char *bt_arena_strdup(bt_arena_t *a, const char *s) { return bt_arena_strndup(a, s, strlen(s)); }

void bt_arena_reset(bt_arena_t *a) {
  for (bt_arena_chunk_t *c = a->chunks, *next; c; c = next) {
    next = c->next;
    free(c);
  }
  a->chunks = NULL;
  a->used = 0;
}
