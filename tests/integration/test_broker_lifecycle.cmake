# Stops Postgres and takes Kafka down and slows it: no other test may run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 240)
