# it_broker_startup holds the store's migration lock (every broker starting meanwhile would
# wait) and runs the store relay, one leader per database: no other test may run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
