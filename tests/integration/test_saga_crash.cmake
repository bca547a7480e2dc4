# Kills engine replicas every 0.5 s (85 kills seen) while it starts 2,000 sagas (about 90 s on
# a loaded 2-core machine): alone on the machine, so that other tests' load does not stretch
# it, and with room for the settling phase.
set_tests_properties(${TEST_NAME} PROPERTIES RUN_SERIAL TRUE TIMEOUT 300)
