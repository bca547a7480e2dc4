/* bt_sha1 against the FIPS 180 example vectors, and against the system's sha1sum for every
 * length around the padding boundaries (55/56 and 63/64 bytes are where a second padding
 * block appears). */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "sha1.h"
#include "testsupport.h"

static void hex_of(const char *s, size_t len, char out[41]) { bt_sha1_hex(s, len, out); }

static void test_fips_vectors(void **state) {
  char h[41];
  hex_of("abc", 3, h);
  assert_string_equal(h, "a9993e364706816aba3e25717850c26c9cd0d89d");
  hex_of("", 0, h);
  assert_string_equal(h, "da39a3ee5e6b4b0d3255bfef95601890afd80709");
  const char *two = "abcdbcdecdefdefgefghfghighijhijkijkljklmklmnlmnomnopnopq";
  hex_of(two, strlen(two), h);
  assert_string_equal(h, "84983e441c3bd26ebaae4aa1f95129e5e54670f1");
  char *million = malloc(1000000);
  assert_non_null(million);
  memset(million, 'a', 1000000);
  hex_of(million, 1000000, h);
  free(million);
  assert_string_equal(h, "34aa973cd4c4daa4f61eeb2bdbad27316534016f");
}

/* sha1sum is an implementation independent of ours: the oracle for every length 0..130. */
static void test_against_sha1sum(void **state) {
  char data[131];
  for (size_t i = 0; i < sizeof data; i++)
    data[i] = (char)('a' + i % 26);
  for (size_t len = 0; len < sizeof data; len++) {
    char cmd[256], want[41] = "", got[41];
    snprintf(cmd, sizeof cmd, "printf '%%s' '%.*s' | sha1sum", (int)len, data);
    FILE *f = popen(cmd, "r");
    assert_non_null(f);
    assert_int_equal(fscanf(f, "%40s", want), 1);
    pclose(f);
    hex_of(data, len, got);
    if (strcmp(want, got) != 0)
      fail_msg("length %zu: sha1sum %s, bt_sha1 %s", len, want, got);
  }
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_fips_vectors),
                                     cmocka_unit_test(test_against_sha1sum)};
  return cmocka_run_group_tests(tests, NULL, NULL);
}
