//! The one HTTP server of the project's small endpoints (the relay's metrics, the operator's
//! `/metrics`, `/healthz` and `/readyz`), bounded against whoever can reach their port: any pod
//! of the cluster, unless a NetworkPolicy says otherwise.
//!
//! `axum::serve` has no limits of its own: a peer could hold any number of connections, each
//! with a request head trickled in for ever and up to hyper's ~400 KiB read buffer. Here:
//! at most [`Limits::connections`] at once (the others wait in the kernel's backlog), a request
//! head in [`Limits::header_read_timeout`] and [`Limits::max_buffer_bytes`], and every
//! connection closed after [`Limits::connection_timeout`], whatever it does. So the server
//! holds at most `connections x max_buffer_bytes` of what peers send.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio::task::JoinSet;
use tracing::debug;

/// What one server grants its peers.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limits {
    /// Connections served at once.
    pub connections: usize,
    /// Time for a request's head (request line and headers) to arrive whole.
    pub header_read_timeout: Duration,
    /// The largest read buffer of a connection, so the largest request head (hyper's minimum
    /// is 8 KiB).
    pub max_buffer_bytes: usize,
    /// How long one connection may live, however many requests it carries.
    pub connection_timeout: Duration,
}

/// For endpoints that Prometheus, the kubelet's probes and an operator scrape: a few peers,
/// small GET requests.
pub const LIMITS: Limits = Limits {
    connections: 32,
    header_read_timeout: Duration::from_secs(5),
    max_buffer_bytes: 16 * 1024,
    connection_timeout: Duration::from_secs(30),
};

/// How long connections in progress may finish once `shutdown` resolves.
const DRAIN: Duration = Duration::from_secs(1);

/// Serves `router` on `listener` within `limits` until `shutdown` resolves. An accept error
/// (no file descriptor left, a connection reset before it was taken) is logged and the loop
/// goes on: the endpoint never stops for good.
pub async fn serve(
    listener: TcpListener,
    router: axum::Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let permits = Arc::new(Semaphore::new(limits.connections));
    let mut connections = JoinSet::new();
    tokio::pin!(shutdown);
    loop {
        // A permit before the accept: past the limit, peers wait in the backlog.
        let permit = tokio::select! {
            () = &mut shutdown => break,
            permit = permits.clone().acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break,
            },
        };
        let (stream, peer) = tokio::select! {
            () = &mut shutdown => break,
            accepted = listener.accept() => match accepted {
                Ok(accepted) => accepted,
                Err(e) => {
                    debug!(error = %e, "accept failed");
                    // EMFILE and the like: give the process a moment rather than spin.
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
        };
        while connections.try_join_next().is_some() {}
        let service = TowerToHyperService::new(router.clone());
        connections.spawn(async move {
            let _permit = permit;
            let conn = hyper::server::conn::http1::Builder::new()
                .timer(TokioTimer::new())
                .header_read_timeout(limits.header_read_timeout)
                .max_buf_size(limits.max_buffer_bytes)
                .serve_connection(TokioIo::new(stream), service);
            match tokio::time::timeout(limits.connection_timeout, conn).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => debug!(%peer, error = %e, "connection ended"),
                Err(_) => debug!(%peer, "connection closed after its time"),
            }
        });
    }
    let _ = tokio::time::timeout(DRAIN, async {
        while connections.join_next().await.is_some() {}
    })
    .await;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    use tokio::net::TcpStream;

    const SMALL: Limits = Limits {
        connections: 2,
        header_read_timeout: Duration::from_millis(300),
        max_buffer_bytes: 8 * 1024,
        connection_timeout: Duration::from_secs(5),
    };

    async fn server(limits: Limits) -> (std::net::SocketAddr, tokio::sync::oneshot::Sender<()>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("addr");
        let router = axum::Router::new().route("/", axum::routing::get(|| async { "ok" }));
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        tokio::spawn(serve(listener, router, limits, async {
            let _ = stopped.await;
        }));
        (addr, stop)
    }

    async fn get(addr: std::net::SocketAddr) -> String {
        let mut s = TcpStream::connect(addr).await.expect("connect");
        s.write_all(b"GET / HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
            .await
            .expect("write");
        let mut out = String::new();
        let _ = s.read_to_string(&mut out).await;
        out
    }

    /// Reads until the server closes the connection; what it sent, or `None` when it kept the
    /// connection open for 10 s.
    async fn until_closed(s: &mut TcpStream) -> Option<String> {
        let mut out = Vec::new();
        match tokio::time::timeout(Duration::from_secs(10), s.read_to_end(&mut out)).await {
            Ok(_) => Some(String::from_utf8_lossy(&out).into_owned()),
            Err(_) => None,
        }
    }

    #[tokio::test]
    async fn a_request_head_trickled_in_is_cut_off() {
        let (addr, _stop) = server(SMALL).await;
        let mut slow = TcpStream::connect(addr).await.expect("connect");
        slow.write_all(b"GET / HTTP/1.1\r\nX-Slow: ")
            .await
            .expect("write");
        // The server gives up on it (a 408, or a close), instead of waiting for ever.
        let answer = until_closed(&mut slow).await.expect("closed by the server");
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 408"),
            "{answer}"
        );
        assert!(get(addr).await.ends_with("ok"), "and it still serves");
    }

    #[tokio::test]
    async fn a_request_head_too_large_is_refused() {
        let (addr, _stop) = server(SMALL).await;
        let mut big = TcpStream::connect(addr).await.expect("connect");
        let head = format!("GET / HTTP/1.1\r\nX-Big: {}\r\n\r\n", "a".repeat(64 * 1024));
        let _ = big.write_all(head.as_bytes()).await;
        let answer = until_closed(&mut big).await.unwrap_or_default();
        assert!(
            answer.is_empty() || answer.starts_with("HTTP/1.1 431"),
            "{answer}"
        );
    }

    #[tokio::test]
    async fn connections_past_the_limit_wait_and_are_served_in_turn() {
        let (addr, _stop) = server(SMALL).await;
        // Two idle connections hold both permits until their heads time out.
        let mut idle = Vec::new();
        for _ in 0..SMALL.connections {
            let mut s = TcpStream::connect(addr).await.expect("connect");
            s.write_all(b"G").await.expect("write");
            idle.push(s);
        }
        // A third is served once one of them is cut off, not refused.
        assert!(get(addr).await.ends_with("ok"));
        drop(idle);
    }

    #[tokio::test]
    async fn it_stops_when_told() {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let router = axum::Router::new();
        let served = serve(listener, router, SMALL, async {});
        tokio::time::timeout(Duration::from_secs(5), served)
            .await
            .expect("stops")
            .expect("cleanly");
    }
}
