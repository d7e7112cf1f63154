//! Reading a relay pod's queue from its metrics endpoint: bounded in time, size and number at
//! once. The drain step and the queue observer both read pods this way.

use std::sync::OnceLock;
use std::time::Duration;

use bytes::Bytes;
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client as HttpClient;
use hyper_util::rt::TokioExecutor;
use k8s_openapi::api::core::v1::Pod;
use smtp_relay::metrics::QueueReport;

use crate::floor::contract::METRICS_PORT;

/// How long reading a pod's metrics may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(3);

/// Pods read at once, over all relays (one semaphore, whatever the replicas of each).
pub const SCRAPES_AT_ONCE: usize = 16;

/// The most of a metrics page that is read. A relay's is a few KiB; a pod that answers more
/// (an image of a tenant's choosing: `spec.image`) is refused, not buffered, so all the scrapes
/// at once hold at most [`SCRAPES_AT_ONCE`] times this.
pub const METRICS_BODY_CAP: usize = 256 * 1024;

/// The permits of [`SCRAPES_AT_ONCE`].
fn scrape_permits() -> &'static tokio::sync::Semaphore {
    static PERMITS: OnceLock<tokio::sync::Semaphore> = OnceLock::new();
    PERMITS.get_or_init(|| tokio::sync::Semaphore::new(SCRAPES_AT_ONCE))
}

/// One HTTP client for every scrape: its connection pool is shared.
fn http() -> &'static HttpClient<HttpConnector, Empty<Bytes>> {
    static CLIENT: OnceLock<HttpClient<HttpConnector, Empty<Bytes>>> = OnceLock::new();
    CLIENT.get_or_init(|| HttpClient::builder(TokioExecutor::new()).build_http())
}

/// The pod's queue, from its metrics endpoint; why not when it cannot be read.
pub async fn scrape(pod: &Pod) -> Result<QueueReport, String> {
    let ip = pod
        .status
        .as_ref()
        .and_then(|s| s.pod_ip.as_deref())
        .ok_or("no pod IP")?;
    let host = match ip.parse::<std::net::IpAddr>() {
        Ok(std::net::IpAddr::V6(v6)) => format!("[{v6}]"),
        Ok(std::net::IpAddr::V4(v4)) => v4.to_string(),
        Err(_) => return Err(format!("pod IP {ip:?}")),
    };
    let uri: http::Uri = format!("http://{host}:{METRICS_PORT}/metrics")
        .parse()
        .map_err(|e| format!("{e}"))?;
    scrape_uri(uri).await
}

/// Reads one metrics page: one of [`SCRAPES_AT_ONCE`] at a time, within [`SCRAPE_TIMEOUT`],
/// at most [`METRICS_BODY_CAP`] bytes of it.
async fn scrape_uri(uri: http::Uri) -> Result<QueueReport, String> {
    let _permit = scrape_permits()
        .acquire()
        .await
        .map_err(|_| "the scrapes are over".to_string())?;
    let read = async {
        let resp = http().get(uri).await.map_err(|e| format!("{e}"))?;
        if !resp.status().is_success() {
            return Err(format!("HTTP {}", resp.status()));
        }
        let body = http_body_util::Limited::new(resp.into_body(), METRICS_BODY_CAP)
            .collect()
            .await
            .map_err(
                |e| match e.downcast_ref::<http_body_util::LengthLimitError>() {
                    Some(_) => format!("a metrics page over {METRICS_BODY_CAP} bytes"),
                    None => format!("{e}"),
                },
            )?
            .to_bytes();
        QueueReport::parse(&String::from_utf8_lossy(&body))
            .ok_or_else(|| "not a relay's metrics".to_string())
    };
    tokio::time::timeout(SCRAPE_TIMEOUT, read)
        .await
        .map_err(|_| format!("no answer in {SCRAPE_TIMEOUT:?}"))?
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::{AsyncReadExt, AsyncWriteExt};

    #[tokio::test]
    async fn an_endless_metrics_page_is_cut_at_the_cap() {
        // A pod of a tenant's image that answers forever: the operator reads at most the cap.
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        let server = tokio::spawn(async move {
            let (mut conn, _) = listener.accept().await.expect("accept");
            let mut request = [0u8; 1024];
            let _ = conn.read(&mut request).await;
            let head =
                "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nTransfer-Encoding: chunked\r\n\r\n";
            conn.write_all(head.as_bytes()).await.expect("head");
            let chunk = format!(
                "{:x}\r\n{}\r\n",
                64 * 1024,
                "# x"
                    .repeat(64 * 1024 / 3 + 1)
                    .get(..64 * 1024)
                    .unwrap_or_default()
            );
            let mut sent = 0usize;
            // Until the operator hangs up (or far past the cap, for a failing test to end).
            while sent < 64 * 1024 * 1024 && conn.write_all(chunk.as_bytes()).await.is_ok() {
                sent += 64 * 1024;
            }
            sent
        });
        let uri: http::Uri = format!("http://{addr}/metrics").parse().expect("uri");
        let err = scrape_uri(uri).await.expect_err("refused");
        assert_eq!(err, format!("a metrics page over {METRICS_BODY_CAP} bytes"));
        let sent = server.await.expect("server");
        assert!(
            sent < 64 * 1024 * 1024,
            "the operator hung up: {sent} bytes sent"
        );
    }
}
