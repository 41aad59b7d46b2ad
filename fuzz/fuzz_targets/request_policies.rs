//! A client's request (method, target, headers, body) through every request policy's chain,
//! as the agent runs it.

#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    fleetgate_fuzz::requests::run(data);
});
