//! Sync protocol messages, as an agent reads `ManagerMessage`s and a manager reads
//! `AgentMessage`s off a QUIC stream.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fleetgate_fuzz::wire_messages(data));
