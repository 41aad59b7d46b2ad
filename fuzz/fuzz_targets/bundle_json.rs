//! JSON bundles, as `fleetgate validate` reads `*.json` files.

#![no_main]

use fleetgate_shared::bundle::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fleetgate_fuzz::bundle(data, Format::Json));
