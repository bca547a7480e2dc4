# it_relay_replicas kills brokers with SIGKILL, and the store relay is one leader per
# database: no other test may run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
