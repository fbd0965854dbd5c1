//! MQTT decoder: arbitrary streams at every protocol level; packets that decode must
//! round-trip. The input layout and the checks are in `shardmq::mqtt::check`.
#![no_main]

libfuzzer_sys::fuzz_target!(|data: &[u8]| shardmq::fuzzing::mqtt_decode_check(data));
