# it_relay_deadletter injects Produce errors into devkafka (every producer of the suite would
# see them) and the store relay is one leader per database: no other test may run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
