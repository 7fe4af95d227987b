//! Nothing here: the crate holds the integration tests (`tests/`) and the
//! benchmarks (`benches/`) of the engine over both storages.
