# it_projector_restarts stops and restarts the stack's Redis and Postgres: no other test may
# run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE)
