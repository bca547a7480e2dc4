# it_projector_read_faults stops and starts the stack's Redis through ./dev: no other test may
# run meanwhile.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
