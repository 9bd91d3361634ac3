//! A TCP fault proxy to put on a link (order -> store, store -> PostgreSQL, ...).
//!
//! It forwards bytes both ways and applies the current [`Fault`], which can be changed at any
//! moment while traffic flows: established connections react at once (a cut closes them, a
//! stall freezes them), new connections see the new fault when they are accepted.

use std::{net::SocketAddr, sync::Arc, time::Duration};

use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpListener, TcpStream},
    sync::watch,
    task::JoinHandle,
};

/// What the proxy does to traffic.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Fault {
    /// Forward everything.
    None,
    /// Delay every chunk, both ways.
    Latency(Duration),
    /// Accept connections but move no bytes (in either direction) until the fault changes.
    Stall,
    /// Reset connections: established ones at once, new ones on accept.
    Reset,
    /// Deliver requests but drop every byte coming back from the upstream.
    DropResponses,
    /// The link is down: close every connection, refuse new ones.
    Cut,
}

impl Fault {
    /// Short name for reports.
    pub fn kind(&self) -> &'static str {
        match self {
            Fault::None => "none",
            Fault::Latency(_) => "latency",
            Fault::Stall => "stall",
            Fault::Reset => "reset",
            Fault::DropResponses => "drop-responses",
            Fault::Cut => "cut",
        }
    }
}

/// A running proxy; stops when dropped.
#[derive(Debug)]
pub struct FaultProxy {
    addr: SocketAddr,
    fault: Arc<watch::Sender<Fault>>,
    accept: JoinHandle<()>,
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.accept.abort();
        // Closes established connections too.
        self.fault.send_replace(Fault::Cut);
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1 (port 0) and forwards to `upstream`.
    pub async fn start(upstream: SocketAddr) -> std::io::Result<Self> {
        Self::start_on(0, upstream).await
    }

    /// Listens on 127.0.0.1:`port` and forwards to `upstream`.
    pub async fn start_on(port: u16, upstream: SocketAddr) -> std::io::Result<Self> {
        let listener = TcpListener::bind(("127.0.0.1", port)).await?;
        let addr = listener.local_addr()?;
        let fault = Arc::new(watch::Sender::new(Fault::None));
        let accept = tokio::spawn(accept_loop(listener, upstream, fault.clone()));
        Ok(Self {
            addr,
            fault,
            accept,
        })
    }

    /// The address clients connect to.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The current fault.
    pub fn fault(&self) -> Fault {
        *self.fault.borrow()
    }

    /// Changes the fault; established connections react at once.
    pub fn set(&self, fault: Fault) {
        self.fault.send_replace(fault);
    }
}

async fn accept_loop(
    listener: TcpListener,
    upstream: SocketAddr,
    fault: Arc<watch::Sender<Fault>>,
) {
    loop {
        let Ok((client, _)) = listener.accept().await else {
            continue;
        };
        let rx = fault.subscribe();
        tokio::spawn(async move {
            let _ = handle(client, upstream, rx).await;
        });
    }
}

/// Closes a socket with a TCP reset rather than a FIN.
fn reset(stream: TcpStream) {
    // SO_LINGER with a zero timeout makes close() send RST at once; the deprecation is about
    // non-zero timeouts blocking the thread, which zero does not.
    #[allow(deprecated)]
    let _ = stream.set_linger(Some(Duration::ZERO));
    drop(stream);
}

async fn handle(
    client: TcpStream,
    upstream: SocketAddr,
    mut fault: watch::Receiver<Fault>,
) -> std::io::Result<()> {
    // Faults that act on accept.
    loop {
        let current = *fault.borrow_and_update();
        match current {
            Fault::Cut => return Ok(()),
            Fault::Reset => {
                reset(client);
                return Ok(());
            }
            Fault::Stall => {
                // Hold the connection without answering until the fault changes.
                if fault.changed().await.is_err() {
                    return Ok(());
                }
            }
            _ => break,
        }
    }
    let server = match TcpStream::connect(upstream).await {
        Ok(s) => s,
        Err(_) => return Ok(()), // upstream down: the client sees the connection close
    };
    let _ = client.set_nodelay(true);
    let _ = server.set_nodelay(true);
    let (client_read, client_write) = client.into_split();
    let (server_read, server_write) = server.into_split();
    let up = pump(client_read, server_write, fault.clone(), false);
    let down = pump(server_read, client_write, fault.clone(), true);
    let (up, down) = tokio::join!(up, down);
    // A reset fault asks for RST on both sides. `up` holds (client read, server write),
    // `down` holds (server read, client write).
    if let (Some(up), Some(down)) = (up.ok().flatten(), down.ok().flatten())
        && let (Ok(client), Ok(server)) = (up.0.reunite(down.1), down.0.reunite(up.1))
    {
        reset(client);
        reset(server);
    }
    Ok(())
}

type Halves = (
    tokio::net::tcp::OwnedReadHalf,
    tokio::net::tcp::OwnedWriteHalf,
);

/// Copies one direction, applying the fault to every chunk. Returns the halves when the link
/// must be reset, so the caller can send RSTs.
///
/// A TCP stream never loses bytes in the middle and carries on, so neither does the proxy: a
/// connection that dropped response bytes is closed when the fault ends (the caller saw a lost
/// response, then a dead connection), and a chunk caught by a stall is delivered after it.
/// Resuming a stream with a hole in it would desynchronise the protocol on top (PostgreSQL's
/// wire protocol would pair a query with another query's answer), which no real network does.
async fn pump(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    mut fault: watch::Receiver<Fault>,
    is_response: bool,
) -> std::io::Result<Option<Halves>> {
    let mut buf = vec![0u8; 16 * 1024];
    let mut dropped_bytes = false;
    loop {
        let current = *fault.borrow_and_update();
        match current {
            Fault::Cut => {
                let _ = to.shutdown().await;
                return Ok(None);
            }
            Fault::Reset => return Ok(Some((from, to))),
            Fault::Stall => {
                if fault.changed().await.is_err() {
                    return Ok(None);
                }
                continue;
            }
            _ if dropped_bytes && current != Fault::DropResponses => {
                let _ = to.shutdown().await;
                return Ok(None);
            }
            _ => {}
        }
        let n = tokio::select! {
            read = from.read(&mut buf) => read?,
            changed = fault.changed() => {
                if changed.is_err() {
                    return Ok(None);
                }
                continue;
            }
        };
        if n == 0 {
            let _ = to.shutdown().await;
            return Ok(None);
        }
        // A stall that began while we read holds the chunk until it ends.
        while *fault.borrow() == Fault::Stall {
            if fault.changed().await.is_err() {
                return Ok(None);
            }
        }
        let now = *fault.borrow();
        match now {
            Fault::Latency(d) => {
                tokio::time::sleep(d).await;
                to.write_all(&buf[..n]).await?;
            }
            Fault::DropResponses if is_response => dropped_bytes = true,
            Fault::Cut | Fault::Reset => {
                // The fault changed while we read: the link dies, the loop applies it.
            }
            _ if dropped_bytes => {
                // Healed after dropping: never resume a stream with a hole in it.
                let _ = to.shutdown().await;
                return Ok(None);
            }
            _ => to.write_all(&buf[..n]).await?,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn echo_server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            loop {
                let Ok((mut s, _)) = listener.accept().await else {
                    return;
                };
                tokio::spawn(async move {
                    let mut buf = [0u8; 1024];
                    while let Ok(n) = s.read(&mut buf).await {
                        if n == 0 || s.write_all(&buf[..n]).await.is_err() {
                            return;
                        }
                    }
                });
            }
        });
        addr
    }

    async fn round_trip(addr: SocketAddr, timeout: Duration) -> Option<Vec<u8>> {
        let attempt = async {
            let mut s = TcpStream::connect(addr).await.ok()?;
            s.write_all(b"ping").await.ok()?;
            let mut buf = [0u8; 4];
            s.read_exact(&mut buf).await.ok()?;
            Some(buf.to_vec())
        };
        tokio::time::timeout(timeout, attempt).await.ok().flatten()
    }

    #[tokio::test]
    async fn every_fault_does_what_it_says() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
        let short = Duration::from_millis(300);
        assert_eq!(
            round_trip(proxy.addr(), short).await.as_deref(),
            Some(&b"ping"[..])
        );

        proxy.set(Fault::Latency(Duration::from_millis(150)));
        let started = tokio::time::Instant::now();
        assert!(
            round_trip(proxy.addr(), Duration::from_secs(2))
                .await
                .is_some()
        );
        assert!(
            started.elapsed() >= Duration::from_millis(300),
            "delayed both ways"
        );

        for fault in [Fault::Stall, Fault::DropResponses, Fault::Cut, Fault::Reset] {
            proxy.set(fault);
            assert_eq!(round_trip(proxy.addr(), short).await, None, "{fault:?}");
        }
        proxy.set(Fault::None);
        assert!(round_trip(proxy.addr(), short).await.is_some(), "heals");
    }

    /// After dropping a response, the stream must not resume with a hole in it: the
    /// connection is closed when the fault ends, so a later answer is never read in place of
    /// the lost one.
    #[tokio::test]
    async fn a_connection_that_lost_a_response_is_closed_not_resumed() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        proxy.set(Fault::DropResponses);
        s.write_all(b"lost").await.expect("write");
        let mut buf = [0u8; 4];
        let lost = tokio::time::timeout(Duration::from_millis(300), s.read(&mut buf)).await;
        assert!(lost.is_err(), "the response was dropped");
        proxy.set(Fault::None);
        let _ = s.write_all(b"next").await;
        let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf))
            .await
            .expect("the proxy closes the connection");
        assert!(
            matches!(read, Ok(0) | Err(_)),
            "a later response was delivered on a stream that lost one: {read:?} {buf:?}"
        );
    }

    #[tokio::test]
    async fn a_cut_closes_established_connections() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        s.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        s.read_exact(&mut buf).await.expect("echo");
        proxy.set(Fault::Cut);
        let read = tokio::time::timeout(Duration::from_secs(2), s.read(&mut buf)).await;
        assert!(
            matches!(read, Ok(Ok(0)) | Ok(Err(_))),
            "connection closed: {read:?}"
        );
    }

    #[tokio::test]
    async fn a_stall_freezes_established_connections_until_it_clears() {
        let proxy = FaultProxy::start(echo_server().await).await.expect("proxy");
        let mut s = TcpStream::connect(proxy.addr()).await.expect("connect");
        proxy.set(Fault::Stall);
        tokio::time::sleep(Duration::from_millis(50)).await;
        s.write_all(b"ping").await.expect("write");
        let mut buf = [0u8; 4];
        let frozen = tokio::time::timeout(Duration::from_millis(300), s.read_exact(&mut buf)).await;
        assert!(frozen.is_err(), "no answer while stalled");
        proxy.set(Fault::None);
        tokio::time::timeout(Duration::from_secs(2), s.read_exact(&mut buf))
            .await
            .expect("answer once healed")
            .expect("read");
        assert_eq!(&buf, b"ping");
    }
}
