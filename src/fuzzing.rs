//! Entry points for the fuzz targets in `fuzz/` and the corpus replay test: each takes
//! arbitrary bytes and panics only when a decoder breaks its documented contract. Not a
//! stable API; the checks themselves live beside the code they check.

/// The MQTT decoder's check: see `mqtt::check` for the input layout and what is asserted.
pub fn mqtt_decode_check(data: &[u8]) {
    crate::mqtt::check::decode_check(data);
}

/// The WAL frame decoder's check: see `storage::check` for the input layout and what is
/// asserted.
pub fn wal_frame_check(data: &[u8]) {
    crate::storage::check::frame_check(data);
}

/// The Kafka request decoder's check: see `door::kafka::check`.
pub fn kafka_request_check(data: &[u8]) {
    crate::door::kafka::check::request_check(data);
}

/// Named inputs of one fuzz target.
pub type Seeds = Vec<(String, Vec<u8>)>;

/// The seed corpus of each fuzz target, by target name: named inputs built with the
/// encoders. `tests/fuzz_corpus.rs` keeps `fuzz/corpus/<target>/seed-*` equal to it.
pub fn seed_corpus() -> Vec<(&'static str, Seeds)> {
    vec![
        ("mqtt_decode", crate::mqtt::check::seeds()),
        ("wal_frame", crate::storage::check::seeds()),
        ("kafka_request", crate::door::kafka::check::seeds()),
    ]
}

/// The check of the fuzz target named `target`.
pub fn check_for(target: &str) -> Option<fn(&[u8])> {
    match target {
        "mqtt_decode" => Some(mqtt_decode_check),
        "wal_frame" => Some(wal_frame_check),
        "kafka_request" => Some(kafka_request_check),
        _ => None,
    }
}
