//! Generated gRPC code for every order-saga API, one module per versioned proto package, plus the
//! encoded descriptor set that each server registers for gRPC server reflection (so `grpcurl`
//! and `buf curl` work without the `.proto` files).
//!
//! Nothing here is hand-written logic: the services convert these types to their own domain
//! types at the gRPC edge, so prost types never reach a database layer.

#![allow(missing_docs, clippy::all)]

/// `order.v1`: the public ordering API and the operator API.
pub mod order {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("order.v1");
    }
}

/// `reservation.v1`: the internal participant protocol served by store and delivery.
pub mod reservation {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("reservation.v1");
    }
}

/// `store.v1`: catalogue, availability and restocking.
pub mod store {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("store.v1");
    }
}

/// `delivery.v1`: agents and zones.
pub mod delivery {
    /// Version 1.
    pub mod v1 {
        tonic::include_proto!("delivery.v1");
    }
}

/// Encoded `FileDescriptorSet` of every order-saga proto, for tonic-reflection.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("order_saga_descriptor");
