/* The read API's pure helpers, reached through its statics: cursors are base64url of raw
 * index members (which hold a NUL) and must round-trip byte for byte at every length; a
 * cursor that is not base64url, or does not fit, is refused rather than misread; integer
 * parameters take plain decimal only. The HTTP behaviour is it_projector_read's. */
#include "proj_read.c"

#include "testsupport.h"

static void test_cursor_roundtrip(void **state) {
  char member[64], out[64];
  for (size_t n = 0; n < sizeof member; n++) {
    for (size_t i = 0; i < n; i++)
      member[i] = (char)(i * 37 + n); /* includes NUL and bytes >= 0x80 */
    bt_buf_t b;
    bt_buf_init(&b, 0);
    assert_int_equal(b64url_encode(&b, member, n), 0);
    assert_int_equal(bt_buf_append(&b, "", 1), 0);
    /* Only the URL-safe alphabet, no padding: it goes into a query string as is. */
    assert_int_equal(strspn(b.data, B64), strlen(b.data));
    assert_int_equal(strlen(b.data), (n * 4 + 2) / 3);
    assert_int_equal(b64url_decode(b.data, out, sizeof out), (long)n);
    assert_memory_equal(out, member, n);
    bt_buf_free(&b);
  }
  /* A known value: "s2024-01-08\0inv-1". */
  const char m[] = "s2024-01-08\0inv-1";
  bt_buf_t b;
  bt_buf_init(&b, 0);
  assert_int_equal(b64url_encode(&b, m, sizeof m - 1), 0);
  assert_int_equal(bt_buf_append(&b, "", 1), 0);
  assert_string_equal(b.data, "czIwMjQtMDEtMDgAaW52LTE");
  bt_buf_free(&b);
}

static void test_cursor_refused(void **state) {
  char out[8];
  assert_int_equal(b64url_decode("ab+c", out, sizeof out), -1);  /* base64, not base64url */
  assert_int_equal(b64url_decode("ab/c", out, sizeof out), -1);
  assert_int_equal(b64url_decode("abc=", out, sizeof out), -1);  /* no padding */
  assert_int_equal(b64url_decode("abcde", out, sizeof out), -1); /* 5 mod 4 == 1: no such length */
  assert_int_equal(b64url_decode("AAAAAAAAAAAAAAAA", out, sizeof out), -1); /* 12 bytes > 8 */
  assert_int_equal(b64url_decode("AAAAAAAAAAA", out, sizeof out), 8);
}

static void test_parse_i64(void **state) {
  int64_t v;
  assert_true(parse_i64("0", 0, 10, &v) && v == 0);
  assert_true(parse_i64("9223372036854775807", 0, INT64_MAX, &v) && v == INT64_MAX);
  assert_true(parse_i64("-5", -10, 10, &v) && v == -5);
  assert_false(parse_i64("", 0, 10, &v));
  assert_false(parse_i64("+1", 0, 10, &v));
  assert_false(parse_i64(" 1", 0, 10, &v));
  assert_false(parse_i64("1x", 0, 10, &v));
  assert_false(parse_i64("11", 0, 10, &v));
  assert_false(parse_i64("-1", 0, 10, &v));
  assert_false(parse_i64("99999999999999999999", 0, INT64_MAX, &v));
}

int main(void) {
  const struct CMUnitTest tests[] = {
      cmocka_unit_test(test_cursor_roundtrip),
      cmocka_unit_test(test_cursor_refused),
      cmocka_unit_test(test_parse_i64),
  };
  return cmocka_run_group_tests(tests, NULL, NULL);
}
