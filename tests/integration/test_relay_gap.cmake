# it_relay_gap puts a test-only trigger on baton.events (every append passes through it) and
# the store relay is one leader per database: no other test may run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
