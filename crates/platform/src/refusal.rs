//! Answering a request the server refuses (busy, or no valid token) without resetting its
//! stream.
//!
//! A server that answers before the client has sent its whole body must end the stream with
//! `RST_STREAM(NO_ERROR)` (RFC 9113, section 8.1), and under load that goes wrong:
//!
//! - the client, still writing, may fail with a broken pipe (`UNKNOWN: transport error`)
//!   instead of reading the answer (the fuzzer saw 29 in 30,000 refusals);
//! - h2 remembers only the last 50 streams it reset. The message of a forgotten one, already
//!   on its way, arrives on a closed stream and is answered with a second reset
//!   (`STREAM_CLOSED`): 4,000 refusals cost 7,850 resets in the overload test's raw HTTP/2
//!   case. Both ends of a connection bound the resets they make for the other's errors
//!   (the server at `server::MAX_LOCAL_ERROR_RESETS`) and past that close the connection
//!   under every request on it: in CI one connection of the overload test lost 131 requests
//!   at once (`UNKNOWN`, and one `RESOURCE_EXHAUSTED`: h2's `ENHANCE_YOUR_CALM`).
//!
//! So a refusal first reads what is left of the body, bounded in bytes and time. A unary gRPC
//! request is one small frame that is already on its way, so this costs nothing; a huge or
//! stalled body is cut off and reset as before.

use std::time::Duration;

/// The most of a refused request's body read before answering.
const DRAIN_LIMIT: usize = 64 * 1024;
/// The longest a refusal waits for the rest of the body.
const DRAIN_WAIT: Duration = Duration::from_millis(200);

/// Answers a refused request with `status` once its body has been read (see the module docs).
pub(crate) async fn refuse<B: http_body::Body>(
    request: http::Request<B>,
    status: tonic::Status,
) -> http::Response<tonic::body::Body> {
    drain(request.into_body()).await;
    status.into_http()
}

/// Reads (and drops) a body, up to [`DRAIN_LIMIT`] bytes and [`DRAIN_WAIT`].
async fn drain<B: http_body::Body>(body: B) {
    let mut body = std::pin::pin!(body);
    let mut read = 0;
    let reading = async {
        while let Some(Ok(frame)) = std::future::poll_fn(|cx| body.as_mut().poll_frame(cx)).await {
            if let Some(data) = frame.data_ref() {
                read += bytes::Buf::remaining(data);
                if read > DRAIN_LIMIT {
                    return;
                }
            }
        }
    };
    let _ = tokio::time::timeout(DRAIN_WAIT, reading).await;
}

#[cfg(test)]
pub(crate) mod tests {
    use std::{
        pin::Pin,
        sync::{
            Arc,
            atomic::{AtomicBool, Ordering},
        },
        task::{Context, Poll},
    };

    use bytes::Bytes;
    use http_body::Frame;
    use tokio::sync::oneshot;

    use super::*;

    /// A request body whose one frame arrives when the test sends it, and which records that
    /// it was read to its end.
    pub(crate) struct LateBody {
        frame: Option<oneshot::Receiver<Bytes>>,
        pub(crate) ended: Arc<AtomicBool>,
    }

    impl LateBody {
        pub(crate) fn new() -> (Self, oneshot::Sender<Bytes>, Arc<AtomicBool>) {
            let (send, frame) = oneshot::channel();
            let ended = Arc::new(AtomicBool::new(false));
            let body = Self {
                frame: Some(frame),
                ended: ended.clone(),
            };
            (body, send, ended)
        }
    }

    impl http_body::Body for LateBody {
        type Data = Bytes;
        type Error = std::convert::Infallible;

        fn poll_frame(
            mut self: Pin<&mut Self>,
            cx: &mut Context<'_>,
        ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
            let Some(frame) = self.frame.as_mut() else {
                self.ended.store(true, Ordering::SeqCst);
                return Poll::Ready(None);
            };
            match Pin::new(frame).poll(cx) {
                Poll::Pending => Poll::Pending,
                Poll::Ready(data) => {
                    self.frame = None;
                    Poll::Ready(data.ok().map(|d| Ok(Frame::data(d))))
                }
            }
        }
    }

    #[tokio::test]
    async fn a_refusal_waits_for_the_rest_of_the_body() {
        let (body, send, ended) = LateBody::new();
        let request = http::Request::new(body);
        let answer = tokio::spawn(refuse(request, tonic::Status::unavailable("busy")));
        tokio::time::sleep(Duration::from_millis(20)).await;
        assert!(!answer.is_finished(), "answered before the body arrived");
        send.send(Bytes::from_static(b"\0\0\0\0\x02ab"))
            .expect("body read");
        let response = answer.await.expect("answer");
        assert!(ended.load(Ordering::SeqCst), "the body was read to its end");
        let status = tonic::Status::from_header_map(response.headers()).expect("grpc-status");
        assert_eq!(status.code(), tonic::Code::Unavailable);
    }

    #[tokio::test]
    async fn a_stalled_body_does_not_hold_the_refusal() {
        let (body, _send, ended) = LateBody::new();
        let refusing = refuse(http::Request::new(body), tonic::Status::unavailable("busy"));
        let response = tokio::time::timeout(DRAIN_WAIT * 5, refusing)
            .await
            .expect("answered once the drain wait is over");
        assert!(!ended.load(Ordering::SeqCst));
        assert!(tonic::Status::from_header_map(response.headers()).is_some());
    }
}
