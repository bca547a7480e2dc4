# Kills engine replicas 24 times and runs 400 sagas: alone on the machine, so that other
# tests' load does not stretch it, and with room for the settling phase.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
