//! Compiles `proto/` into Rust with a vendored `protoc`, so no system protoc is needed, and writes
//! one descriptor set that the servers register for gRPC reflection.

use std::{env, path::PathBuf};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let protoc = protoc_bin_vendored::protoc_bin_path()?;
    // SAFETY-free: build scripts are single-threaded, and this only informs prost-build.
    unsafe_free_set_protoc(&protoc);

    let root = PathBuf::from(env::var("CARGO_MANIFEST_DIR")?).join("../../proto");
    let files = [
        "order/v1/order.proto",
        "order/v1/order_admin.proto",
        "reservation/v1/reservation.proto",
        "store/v1/store.proto",
        "store/v1/store_admin.proto",
        "delivery/v1/delivery.proto",
        "delivery/v1/delivery_admin.proto",
    ]
    .map(|f| root.join(f));
    let out = PathBuf::from(env::var("OUT_DIR")?);

    tonic_prost_build::configure()
        .file_descriptor_set_path(out.join("order_saga_descriptor.bin"))
        .compile_protos(&files, std::slice::from_ref(&root))?;

    println!("cargo:rerun-if-changed={}", root.display());
    Ok(())
}

/// Points prost-build at the vendored protoc through its documented environment variable.
fn unsafe_free_set_protoc(path: &std::path::Path) {
    // `set_var` is unsafe in edition 2024 only because of other threads; a build script has none.
    #[allow(unsafe_code)]
    unsafe {
        env::set_var("PROTOC", path);
    }
}
