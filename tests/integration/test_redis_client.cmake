# it_redis_client restarts Redis through ./dev: no other test may use Redis meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE)
