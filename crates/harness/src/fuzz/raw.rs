//! gRPC calls with a body of raw bytes: a typed request encoded by the caller, or bytes that are
//! no valid message at all. The answer's body is discarded; only its status matters.

use bytes::{Buf, BufMut};
use tonic::{
    Status,
    codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder},
    metadata::{Ascii, MetadataValue},
    transport::Channel,
};

/// Sends `body` as the message of `rpc` (`/package.Service/Method`), with an `authorization`
/// header when given, and returns the answer's status (`Ok` for a success).
pub async fn call(
    channel: Channel,
    rpc: &str,
    body: Vec<u8>,
    authorization: Option<MetadataValue<Ascii>>,
) -> Result<(), Status> {
    let path: http::uri::PathAndQuery = rpc
        .parse()
        .map_err(|_| Status::invalid_argument(format!("bad RPC path {rpc}")))?;
    let mut grpc = tonic::client::Grpc::new(channel);
    grpc.ready()
        .await
        .map_err(|e| Status::unavailable(format!("channel not ready: {e}")))?;
    let mut request = tonic::Request::new(body);
    if let Some(value) = authorization {
        request.metadata_mut().insert("authorization", value);
    }
    // A deadline of our own, not sent to the server (which then answers within its own
    // request timeout): its passing is no answer from the server, and is counted apart.
    match tokio::time::timeout(super::CALL_TIMEOUT, grpc.unary(request, path, RawCodec)).await {
        Ok(answer) => answer.map(drop),
        Err(_) => Err(Status::deadline_exceeded(NO_ANSWER)),
    }
}

/// The message of the status [`call`] returns when no answer came within the deadline.
pub const NO_ANSWER: &str = "no answer within the fuzzer's deadline";

/// Encodes a `Vec<u8>` as it is; decodes any answer to `()`.
#[derive(Debug, Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = ();
    type Encoder = RawEncoder;
    type Decoder = RawDecoder;

    fn encoder(&mut self) -> Self::Encoder {
        RawEncoder
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawDecoder
    }
}

#[derive(Debug, Clone, Copy)]
struct RawEncoder;

impl Encoder for RawEncoder {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        dst.put_slice(&item);
        Ok(())
    }
}

#[derive(Debug, Clone, Copy)]
struct RawDecoder;

impl Decoder for RawDecoder {
    type Item = ();
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<()>, Status> {
        src.advance(src.remaining());
        Ok(Some(()))
    }
}
