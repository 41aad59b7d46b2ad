//! Generates the Rust wire types from `proto/` with protox, a pure-Rust protobuf compiler, so
//! that building needs no `protoc` on the machine.

use std::error::Error;

/// The root the `.proto` files import each other from (`import "fleetgate/sync/v1/sync.proto"`).
const INCLUDE: &str = "proto";

/// Every file to generate code for; imports are followed from these.
const PROTOS: [&str; 3] = [
    "proto/fleetgate/sync/v1/sync.proto",
    "proto/fleetgate/admin/v1/admin.proto",
    "proto/fleetgate/raft/v1/raft.proto",
];

fn main() -> Result<(), Box<dyn Error>> {
    // A directory makes Cargo rerun this script when any file under it changes, including
    // files added later.
    println!("cargo:rerun-if-changed={INCLUDE}");
    println!("cargo:rerun-if-changed=build.rs");

    let fds = protox::compile(PROTOS, [INCLUDE])?;
    tonic_prost_build::configure()
        // Ordered maps: labels compare and iterate like the model's `BTreeMap`s, and encoding
        // the same message twice gives the same bytes.
        .btree_map(".")
        // A spec may hold private keys and credentials; `Debug` for `Resource` is written by
        // hand in `src/lib.rs` so that logging a message never prints them.
        // The same for `Enroll`, which carries a join token.
        .skip_debug([".fleetgate.sync.v1.Resource", ".fleetgate.sync.v1.Enroll"])
        .compile_fds(fds)?;
    Ok(())
}
