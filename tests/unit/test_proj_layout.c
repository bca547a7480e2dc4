/* proj_layout: the key names of the storage contract, and index members whose byte order
 * (ZRANGEBYLEX) is the order of their sort values: integers numerically, negatives first,
 * strings by their bytes, members without order by key; the key after the NUL separator. */
#include <stdlib.h>
#include <string.h>

#include "proj_layout.h"
#include "testsupport.h"

static bt_buf_t member(json_t *order, const char *key) {
  bt_buf_t b;
  bt_buf_init(&b, 0);
  assert_int_equal(proj_layout_member(&b, order, key), 0);
  json_decref(order);
  return b;
}

/* memcmp order, shorter first on a common prefix: Redis's lexical order. */
static int lex(const bt_buf_t *a, const bt_buf_t *b) {
  size_t n = a->len < b->len ? a->len : b->len;
  int c = memcmp(a->data, b->data, n);
  return c ? c : (a->len > b->len) - (a->len < b->len);
}

static void test_key_names(void **state) {
  (void)state;
  char buf[128];
  proj_layout_projection_prefix(buf, sizeof buf, "invoices");
  assert_string_equal(buf, "bt:proj:{invoices}:");
  proj_layout_version_prefix(buf, sizeof buf, "invoices", 12);
  assert_string_equal(buf, "bt:proj:{invoices}:v12:");
}

static void test_integer_members_sort_numerically(void **state) {
  (void)state;
  const json_int_t values[] = {INT64_MIN, -1000000, -2, -1, 0, 1, 9, 10, 11, 100, 1000000,
                               INT64_MAX};
  size_t n = sizeof values / sizeof values[0];
  bt_buf_t prev = member(json_integer(values[0]), "k");
  assert_int_equal(prev.data[0], 'n');
  assert_int_equal(prev.len, 1 + 20 + 1 + 1);
  for (size_t i = 1; i < n; i++) {
    bt_buf_t cur = member(json_integer(values[i]), "k");
    if (lex(&prev, &cur) >= 0)
      fail_msg("member of %lld does not sort after %lld", (long long)values[i],
               (long long)values[i - 1]);
    bt_buf_free(&prev);
    prev = cur;
  }
  bt_buf_free(&prev);
  bt_buf_t zero = member(json_integer(0), "INV1");
  assert_memory_equal(zero.data, "n09223372036854775808\0INV1", zero.len);
  bt_buf_free(&zero);
}

static void test_string_and_no_order_members(void **state) {
  (void)state;
  bt_buf_t a = member(json_string("2027-01-09"), "I2"), b = member(json_string("2027-01-10"), "I1");
  assert_true(lex(&a, &b) < 0); /* ISO dates sort as dates */
  assert_memory_equal(a.data, "s2027-01-09\0I2", a.len);
  /* Equal sort values fall back to the key. */
  bt_buf_t c = member(json_string("2027-01-10"), "I0");
  assert_true(lex(&c, &b) < 0);
  bt_buf_t none = member(NULL, "K:with:colons");
  assert_int_equal(none.len, 1 + strlen("K:with:colons"));
  assert_int_equal(none.data[0], '\0');
  bt_buf_t real = member(json_real(1.5), "k");
  assert_memory_equal(real.data, "s1.5\0k", real.len);
  bt_buf_free(&a);
  bt_buf_free(&b);
  bt_buf_free(&c);
  bt_buf_free(&none);
  bt_buf_free(&real);
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_key_names),
      cmocka_unit_test(test_integer_members_sort_numerically),
      cmocka_unit_test(test_string_and_no_order_members),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
