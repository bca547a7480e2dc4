# The broker it starts also runs the store relay, which is one leader per database: no other
# test may run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
