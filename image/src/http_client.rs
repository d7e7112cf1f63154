//! The relay's bounded HTTPS client, for the OAuth2 token endpoint and the Kubernetes API
//! server: TLS with ring and the roots given, no redirect ever followed, answers read up to a
//! cap, and a server's own words cut short before they reach a log line or an error.

use std::sync::Arc;
use std::time::Duration;

/// The relay's HTTPS client (ring, as elsewhere in the relay) trusting `roots` alone. It
/// follows no redirect: a 3xx is the answer, and the request (with its secrets) goes nowhere
/// else.
pub fn https_client(
    roots: rustls::RootCertStore,
    timeout: Duration,
) -> Result<reqwest::Client, String> {
    let tls = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .map_err(|e| e.to_string())?
    .with_root_certificates(roots)
    .with_no_client_auth();
    reqwest::Client::builder()
        .tls_backend_preconfigured(tls)
        .timeout(timeout)
        .redirect(reqwest::redirect::Policy::none())
        .user_agent(concat!("smtp-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// The most of a server's own words (an OAuth2 error, its description, where a redirect points)
/// kept in an error.
pub const ENDPOINT_TEXT_CAP: usize = 300;

/// Why an answer's body was not read whole.
#[derive(Debug, thiserror::Error)]
pub enum BodyError {
    #[error("the answer is larger than {}; the rest of it was not read", human_size(*.cap))]
    TooLarge { cap: usize },
    #[error("reading the answer: {0}")]
    Read(String),
}

fn human_size(bytes: usize) -> String {
    if bytes >= 1 << 20 && bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{} KiB", bytes.div_ceil(1024))
    }
}

/// The body of `resp`, chunk by chunk, refused as soon as it would exceed `cap` bytes (or
/// announces it will): no more than `cap` bytes of it are ever kept.
pub async fn read_capped(mut resp: reqwest::Response, cap: usize) -> Result<Vec<u8>, BodyError> {
    if resp
        .content_length()
        .is_some_and(|len| len > u64::try_from(cap).unwrap_or(u64::MAX))
    {
        return Err(BodyError::TooLarge { cap });
    }
    let mut body = Vec::new();
    while let Some(chunk) = resp
        .chunk()
        .await
        .map_err(|e| BodyError::Read(e.without_url().to_string()))?
    {
        if chunk.len() > cap - body.len() {
            return Err(BodyError::TooLarge { cap });
        }
        body.extend_from_slice(&chunk);
    }
    Ok(body)
}

/// Where a redirect points, as its origin alone (`https://host:port`): enough to see what it
/// is, nothing of its path or query.
pub fn redirect_origin(resp: &reqwest::Response) -> Option<String> {
    let location = resp
        .headers()
        .get(reqwest::header::LOCATION)?
        .to_str()
        .ok()?;
    let to = resp.url().join(location).ok()?;
    Some(bounded(&to.origin().ascii_serialization()))
}

/// Text from a server, fit for a log line: control characters replaced, at most
/// [`ENDPOINT_TEXT_CAP`] characters.
pub fn bounded(text: &str) -> String {
    let mut out: String = text
        .chars()
        .take(ENDPOINT_TEXT_CAP)
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect();
    if text.chars().nth(ENDPOINT_TEXT_CAP).is_some() {
        out.push_str("...");
    }
    out
}

/// Local HTTP(S) endpoints on 127.0.0.1 that answer as a test scripts them: redirects,
/// endless bodies, odd tokens (the token endpoint of `smtp_relay_e2e` answers only as a
/// well-behaved provider does).
#[cfg(test)]
pub(crate) mod fake_endpoint {
    use std::io::{BufRead as _, BufReader, Read, Write};
    use std::net::{Ipv4Addr, TcpListener};
    use std::path::PathBuf;
    use std::sync::atomic::{AtomicUsize, Ordering};
    use std::sync::{Arc, Mutex};

    /// How a connection is answered, once its request was read.
    pub type Answer = dyn Fn(&mut dyn Write) -> std::io::Result<()> + Send + Sync;

    pub struct Endpoint {
        pub base: String,
        connections: Arc<AtomicUsize>,
        requests: Arc<Mutex<Vec<String>>>,
        /// The CA that signed an HTTPS endpoint's certificate, and its PEM.
        pub ca: Option<(PathBuf, Vec<u8>)>,
        _certs: Option<tempfile::TempDir>,
    }

    impl Endpoint {
        /// Plain HTTP on 127.0.0.1.
        pub fn http(
            answer: impl Fn(&mut dyn Write) -> std::io::Result<()> + Send + Sync + 'static,
        ) -> Endpoint {
            start(false, Arc::new(answer))
        }

        /// HTTPS on 127.0.0.1, with a certificate of a test CA ([`Endpoint::ca`]).
        pub fn https(
            answer: impl Fn(&mut dyn Write) -> std::io::Result<()> + Send + Sync + 'static,
        ) -> Endpoint {
            start(true, Arc::new(answer))
        }

        pub fn url(&self, path: &str) -> String {
            format!("{}{path}", self.base)
        }

        /// Connections accepted so far (whether or not a request came on them).
        pub fn connections(&self) -> usize {
            self.connections.load(Ordering::SeqCst)
        }

        /// Each request received: its head and body, as text.
        pub fn requests(&self) -> Vec<String> {
            self.requests.lock().unwrap().clone()
        }
    }

    fn start(tls: bool, answer: Arc<Answer>) -> Endpoint {
        let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).unwrap();
        let addr = listener.local_addr().unwrap();
        let (certs, server) = if tls {
            let dir = tempfile::tempdir().unwrap();
            let (ca, cert, key) =
                smtp_relay_e2e::mail::ca_signed_cert_for(dir.path(), Ipv4Addr::LOCALHOST).unwrap();
            (Some((dir, ca)), Some(server_tls(&cert, &key)))
        } else {
            (None, None)
        };
        let connections = Arc::new(AtomicUsize::new(0));
        let requests = Arc::new(Mutex::new(Vec::new()));
        let (counted, recorded) = (connections.clone(), requests.clone());
        // Detached: it lives as long as the test binary.
        std::thread::spawn(move || {
            for stream in listener.incoming() {
                let Ok(stream) = stream else { continue };
                counted.fetch_add(1, Ordering::SeqCst);
                let _ = stream.set_read_timeout(Some(std::time::Duration::from_secs(10)));
                let (answer, recorded, server) = (answer.clone(), recorded.clone(), server.clone());
                std::thread::spawn(move || match server {
                    None => serve(stream, &*answer, &recorded),
                    Some(config) => {
                        let conn = rustls::ServerConnection::new(config).unwrap();
                        let mut tls = rustls::StreamOwned::new(conn, stream);
                        serve(&mut tls, &*answer, &recorded);
                        tls.conn.send_close_notify();
                        let _ = tls.flush();
                    }
                });
            }
        });
        let scheme = if tls { "https" } else { "http" };
        Endpoint {
            base: format!("{scheme}://{addr}"),
            connections,
            requests,
            ca: certs
                .as_ref()
                .map(|(_, ca)| (ca.clone(), std::fs::read(ca).unwrap())),
            _certs: certs.map(|(dir, _)| dir),
        }
    }

    fn server_tls(cert: &std::path::Path, key: &std::path::Path) -> Arc<rustls::ServerConfig> {
        use rustls::pki_types::pem::PemObject as _;
        use rustls::pki_types::{CertificateDer, PrivateKeyDer};
        let chain = CertificateDer::pem_file_iter(cert)
            .unwrap()
            .collect::<Result<Vec<_>, _>>()
            .unwrap();
        let key = PrivateKeyDer::from_pem_file(key).unwrap();
        Arc::new(
            rustls::ServerConfig::builder_with_provider(Arc::new(
                rustls::crypto::ring::default_provider(),
            ))
            .with_safe_default_protocol_versions()
            .unwrap()
            .with_no_client_auth()
            .with_single_cert(chain, key)
            .unwrap(),
        )
    }

    /// Reads one request (head, and a body of its Content-Length), records it, answers.
    fn serve<S: Read + Write>(mut stream: S, answer: &Answer, recorded: &Mutex<Vec<String>>) {
        let mut reader = BufReader::new(&mut stream);
        let mut request = String::new();
        let mut length = 0;
        loop {
            let mut line = String::new();
            if reader.read_line(&mut line).unwrap_or(0) == 0 {
                return;
            }
            request.push_str(&line);
            if let Some((name, value)) = line.trim_end().split_once(':') {
                if name.eq_ignore_ascii_case("content-length") {
                    length = value.trim().parse().unwrap_or(0);
                }
            }
            if line.trim_end().is_empty() {
                break;
            }
        }
        let mut body = vec![0; length];
        if reader.read_exact(&mut body).is_err() {
            return;
        }
        drop(reader);
        request.push_str(&String::from_utf8_lossy(&body));
        recorded.lock().unwrap().push(request);
        let _ = answer(&mut stream);
        let _ = stream.flush();
    }

    /// A complete answer with a JSON body.
    pub fn json(status: &str, body: &str) -> Vec<u8> {
        format!(
            "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{body}",
            body.len()
        )
        .into_bytes()
    }

    /// An answer that never ends: `start`, then bytes of `filler` until the client hangs up (or,
    /// to keep a client that reads it all from exhausting the machine, 256 MiB). `sent` counts
    /// the body's bytes written, `done` is set once the answer ended.
    pub fn endless(
        status: &'static str,
        start: &'static str,
        filler: u8,
        sent: Arc<AtomicUsize>,
        done: Arc<std::sync::atomic::AtomicBool>,
    ) -> impl Fn(&mut dyn Write) -> std::io::Result<()> + Send + Sync + 'static {
        move |w: &mut dyn Write| {
            let result = (|| {
                w.write_all(
                    format!("HTTP/1.1 {status}\r\nContent-Type: application/json\r\nConnection: close\r\n\r\n{start}")
                        .as_bytes(),
                )?;
                let chunk = [filler; 16 * 1024];
                while sent.load(Ordering::SeqCst) < 256 << 20 {
                    w.write_all(&chunk)?;
                    sent.fetch_add(chunk.len(), Ordering::SeqCst);
                }
                Ok(())
            })();
            done.store(true, Ordering::SeqCst);
            result
        }
    }
}
