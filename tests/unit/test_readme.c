/* The README's configuration reference must match the config tables: every row that
 * `baton-broker --help` prints (generated from the table) must appear verbatim in README.md. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "testsupport.h"

static char *slurp(const char *path) {
  FILE *f = fopen(path, "r");
  if (!f)
    return NULL;
  fseek(f, 0, SEEK_END);
  long n = ftell(f);
  fseek(f, 0, SEEK_SET);
  char *s = malloc((size_t)n + 1);
  size_t got = fread(s, 1, (size_t)n, f);
  s[got] = '\0';
  fclose(f);
  return s;
}

static void check_help_rows_in_readme(const char *binary) {
  char path[1024];
  snprintf(path, sizeof path, "%s/README.md", getenv("BATON_SOURCE_DIR"));
  char *readme = slurp(path);
  assert_non_null(readme);
  char cmd[1200];
  snprintf(cmd, sizeof cmd, "%s --help", bt_test_bin(binary));
  FILE *p = popen(cmd, "r");
  assert_non_null(p);
  char line[2048];
  int rows = 0;
  while (fgets(line, sizeof line, p)) {
    if (strncmp(line, "| `BATON_", 9) != 0)
      continue;
    rows++;
    if (!strstr(readme, line))
      fail_msg("README.md lacks this row of `%s --help` (regenerate the table):\n%s", binary, line);
  }
  assert_int_equal(pclose(p), 0);
  assert_true(rows > 10);
  free(readme);
}

static void test_broker_config_table(void **state) { check_help_rows_in_readme("baton-broker"); }
static void test_saga_config_table(void **state) { check_help_rows_in_readme("baton-saga"); }
static void test_projector_config_table(void **state) {
  check_help_rows_in_readme("baton-projector");
}
static void test_participant_config_table(void **state) {
  check_help_rows_in_readme("baton-inventory");
}

int main(void) {
  const struct CMUnitTest tests[] = {cmocka_unit_test(test_broker_config_table),
                                     cmocka_unit_test(test_saga_config_table),
                                     cmocka_unit_test(test_projector_config_table),
                                     cmocka_unit_test(test_participant_config_table)};
  return cmocka_run_group_tests_name("readme", tests, NULL, NULL);
}
