//! YAML bundles, as `fleetgate validate` and the manager's Apply read them.

#![no_main]

use fleetgate_shared::bundle::Format;
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fleetgate_fuzz::bundle(data, Format::Yaml));
