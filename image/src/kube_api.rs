//! The few Kubernetes API calls a relay pod makes itself, with its own ServiceAccount: read and
//! compare-and-swap one Secret (the refresh token the replicas share, see `oauth2::rotation`).
//! HTTPS to the API server with the cluster's CA only; the ServiceAccount token is read again
//! for every request (the kubelet rotates it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;

use crate::http_client::{https_client, read_capped, redirect_origin, BodyError};
use crate::json_error::{json_position, json_problem};

/// Where the kubelet mounts the pod's ServiceAccount token, CA and namespace.
pub const SERVICE_ACCOUNT_DIR: &str = "/var/run/secrets/kubernetes.io/serviceaccount";

#[derive(Debug, thiserror::Error)]
pub enum KubeApiError {
    #[error("not in a Kubernetes pod with a ServiceAccount: {0}")]
    NotInPod(String),
    #[error("the API server cannot be reached: {0}")]
    Unreachable(String),
    #[error("the API server answered HTTP {status}: {message}")]
    Refused { status: u16, message: String },
    /// A 3xx answer: redirects are never followed (the requests carry the ServiceAccount token
    /// and, when written, the refresh token).
    #[error("the API server redirected (HTTP {status}{}); redirects are not followed", to.as_deref().map(|to| format!(" to {to}")).unwrap_or_default())]
    Redirected { status: u16, to: Option<String> },
    #[error("the API server's answer cannot be read: {0}")]
    BadAnswer(String),
}

/// The most of an API server's answer that is read: a Secret holds at most 1 MiB of data, and
/// the shared one a refresh token and a hundred digests.
pub const API_ANSWER_CAP: usize = 1 << 20;

/// Whether a compare-and-swap wrote.
#[derive(Debug, PartialEq, Eq)]
pub enum Written {
    Yes,
    /// The object changed since the version given: nothing written.
    Conflict,
}

/// The API server as seen from inside a pod.
pub struct InCluster {
    http: reqwest::Client,
    base: String,
    namespace: String,
    token_file: PathBuf,
}

impl InCluster {
    /// From the pod's environment (`KUBERNETES_SERVICE_HOST`/`_PORT`) and its ServiceAccount
    /// mount.
    pub fn from_pod() -> Result<Self, KubeApiError> {
        let env = |k: &str| {
            std::env::var(k).map_err(|_| KubeApiError::NotInPod(format!("{k} is not set")))
        };
        let (host, port) = (
            env("KUBERNETES_SERVICE_HOST")?,
            env("KUBERNETES_SERVICE_PORT")?,
        );
        let host = if host.contains(':') {
            format!("[{host}]")
        } else {
            host
        };
        let dir = PathBuf::from(SERVICE_ACCOUNT_DIR);
        let read = |f: &str| {
            std::fs::read_to_string(dir.join(f))
                .map_err(|e| KubeApiError::NotInPod(format!("{}: {e}", dir.join(f).display())))
        };
        let namespace = read("namespace")?.trim().to_string();
        let ca = read("ca.crt")?;
        Self::new(
            format!("https://{host}:{port}"),
            &namespace,
            ca.as_bytes(),
            dir.join("token"),
        )
    }

    /// An API server at `base` (`https://host:port`) trusted through `ca_pem` alone.
    pub fn new(
        base: String,
        namespace: &str,
        ca_pem: &[u8],
        token_file: PathBuf,
    ) -> Result<Self, KubeApiError> {
        use rustls::pki_types::pem::PemObject as _;
        let mut roots = rustls::RootCertStore::empty();
        for cert in rustls::pki_types::CertificateDer::pem_slice_iter(ca_pem).flatten() {
            roots
                .add(cert)
                .map_err(|e| KubeApiError::NotInPod(format!("the cluster CA: {e}")))?;
        }
        if roots.is_empty() {
            return Err(KubeApiError::NotInPod(
                "the cluster CA holds no certificate".into(),
            ));
        }
        let http =
            https_client(roots, Duration::from_secs(15)).map_err(KubeApiError::Unreachable)?;
        Ok(InCluster {
            http,
            base,
            namespace: namespace.to_string(),
            token_file,
        })
    }

    fn url(&self, secret: &str) -> String {
        format!(
            "{}/api/v1/namespaces/{}/secrets/{secret}",
            self.base, self.namespace
        )
    }

    fn bearer(&self) -> Result<String, KubeApiError> {
        let token = std::fs::read_to_string(&self.token_file)
            .map_err(|e| KubeApiError::NotInPod(format!("{}: {e}", self.token_file.display())))?;
        Ok(format!("Bearer {}", token.trim()))
    }

    /// A Secret's data and resourceVersion; `None` when it does not exist.
    pub async fn get_secret(
        &self,
        name: &str,
    ) -> Result<Option<(BTreeMap<String, Vec<u8>>, String)>, KubeApiError> {
        let resp = self
            .http
            .get(self.url(name))
            .header("Authorization", self.bearer()?)
            .send()
            .await
            .map_err(|e| KubeApiError::Unreachable(e.without_url().to_string()))?;
        if resp.status().as_u16() == 404 {
            return Ok(None);
        }
        let body = checked(resp).await?;
        let version = body["metadata"]["resourceVersion"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let mut data = BTreeMap::new();
        if let Some(map) = body["data"].as_object() {
            for (k, v) in map {
                let value = base64::engine::general_purpose::STANDARD
                    .decode(v.as_str().unwrap_or_default())
                    .map_err(|e| {
                        KubeApiError::BadAnswer(format!(
                            "data.{k} is not base64 ({})",
                            base64_problem(&e)
                        ))
                    })?;
                data.insert(k.clone(), value);
            }
        }
        Ok(Some((data, version)))
    }

    /// Sets `data` keys of a Secret if it is still at `version` (a merge patch carrying the
    /// resourceVersion: the API server refuses it with 409 otherwise).
    pub async fn patch_secret(
        &self,
        name: &str,
        version: &str,
        data: &BTreeMap<String, Vec<u8>>,
    ) -> Result<Written, KubeApiError> {
        let data: serde_json::Map<String, serde_json::Value> = data
            .iter()
            .map(|(k, v)| {
                (
                    k.clone(),
                    base64::engine::general_purpose::STANDARD.encode(v).into(),
                )
            })
            .collect();
        let patch = serde_json::json!({
            "metadata": {"resourceVersion": version},
            "data": data,
        });
        let resp = self
            .http
            .patch(format!("{}?fieldManager=smtp-relay", self.url(name)))
            .header("Authorization", self.bearer()?)
            .header("Content-Type", "application/merge-patch+json")
            .body(patch.to_string())
            .send()
            .await
            .map_err(|e| KubeApiError::Unreachable(e.without_url().to_string()))?;
        if resp.status().as_u16() == 409 {
            return Ok(Written::Conflict);
        }
        checked(resp).await.map(|_| Written::Yes)
    }
}

/// What is wrong with a base64 value, by its kind alone: base64's own message quotes the
/// offending byte ("Invalid symbol 45, offset 3"), and the value is a Secret's (the refresh
/// token).
fn base64_problem(e: &base64::DecodeError) -> &'static str {
    match e {
        base64::DecodeError::InvalidByte(..) | base64::DecodeError::InvalidLastSymbol { .. } => {
            "a character outside its alphabet"
        }
        base64::DecodeError::InvalidLength(_) => "a length no base64 has",
        base64::DecodeError::InvalidPadding => "wrong padding",
    }
}

/// The JSON body of a successful answer, read up to [`API_ANSWER_CAP`]; the API server's
/// message otherwise (a Status object, which never holds a Secret's data).
async fn checked(resp: reqwest::Response) -> Result<serde_json::Value, KubeApiError> {
    let status = resp.status();
    if status.is_redirection() {
        return Err(KubeApiError::Redirected {
            status: status.as_u16(),
            to: redirect_origin(&resp),
        });
    }
    let body = read_capped(resp, API_ANSWER_CAP)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { .. } => KubeApiError::BadAnswer(e.to_string()),
            BodyError::Read(_) => KubeApiError::Unreachable(e.to_string()),
        })?;
    let body: serde_json::Value = serde_json::from_slice(&body).map_err(|e| {
        KubeApiError::BadAnswer(format!("{}{}", json_problem(&e), json_position(&e)))
    })?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(KubeApiError::Refused {
            status: status.as_u16(),
            message: body["message"].as_str().unwrap_or("no message").to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
    use std::sync::Arc;

    use super::*;
    use crate::http_client::fake_endpoint::{endless, json, Endpoint};

    const SA_TOKEN: &str = "service-account-token-never-in-clear";

    fn api(endpoint: &Endpoint) -> (InCluster, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        let token = dir.path().join("token");
        std::fs::write(&token, SA_TOKEN).unwrap();
        let (_, ca) = endpoint.ca.as_ref().unwrap();
        let api = InCluster::new(endpoint.base.clone(), "mail", ca, token).unwrap();
        (api, dir)
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// An API server answering `307` to a plain-HTTP address: neither the read nor the write
    /// of the shared Secret follows it (the patch carries the refresh token), and the error
    /// says the API server redirected.
    #[test]
    fn an_api_server_redirect_is_not_followed() {
        let plain = Endpoint::http(|w| {
            w.write_all(&json(
                "200 OK",
                r#"{"metadata":{"resourceVersion":"7"},"data":{}}"#,
            ))
        });
        let location = plain.url("/api/v1/namespaces/mail/secrets/shared");
        let server = Endpoint::https(move |w| {
            write!(
                w,
                "HTTP/1.1 307 Temporary Redirect\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
            )
        });
        let (api, _dir) = api(&server);
        let read = block_on(api.get_secret("shared"));
        let data = BTreeMap::from([("refreshToken".to_string(), b"rt-rotated".to_vec())]);
        let written = block_on(api.patch_secret("shared", "6", &data));
        assert_eq!(server.requests().len(), 2);
        assert_eq!(
            plain.connections(),
            0,
            "the plain-HTTP address was contacted: {:?}",
            plain.requests()
        );
        for error in [
            read.err().map(|e| e.to_string()),
            written.err().map(|e| e.to_string()),
        ] {
            let error = error.expect("a redirect is an error");
            assert!(
                error.contains("redirected") && error.contains("307"),
                "{error}"
            );
            assert!(!error.contains(SA_TOKEN) && !error.contains("rt-rotated"));
        }
    }

    /// A shared Secret whose data is not base64 (`-` and `~` are no symbols of it): the error
    /// names the key, never a byte of the value (base64's own message quotes the offending
    /// byte, "Invalid symbol 126, offset 2", and the value is a refresh token).
    #[test]
    fn a_value_that_is_not_base64_is_not_quoted() {
        const VALUE: &str = "rt~-secret";
        let server = Endpoint::https(|w| {
            w.write_all(&json(
                "200 OK",
                &format!(r#"{{"metadata":{{"resourceVersion":"7"}},"data":{{"refreshToken":"{VALUE}"}}}}"#),
            ))
        });
        let (api, _dir) = api(&server);
        let error = block_on(api.get_secret("shared"))
            .expect_err("not base64")
            .to_string();
        assert!(
            error.contains("data.refreshToken") && error.contains("base64"),
            "{error}"
        );
        for leak in ["126", "45", "~", "secret", "symbol", "offset"] {
            assert!(!error.contains(leak), "{leak:?} in {error}");
        }
    }

    /// An API server answering without end: 1 MiB is read at most, then the read fails.
    #[test]
    fn an_endless_api_answer_is_cut_at_the_cap() {
        let (sent, done) = (
            Arc::new(AtomicUsize::new(0)),
            Arc::new(AtomicBool::new(false)),
        );
        let server = Endpoint::https(endless(
            "200 OK",
            r#"{"metadata":{"resourceVersion":"7"},"data":{"refreshToken":""#,
            b'A',
            sent.clone(),
            done.clone(),
        ));
        let (api, _dir) = api(&server);
        let started = std::time::Instant::now();
        let error = block_on(api.get_secret("shared"))
            .expect_err("no Secret")
            .to_string();
        assert!(error.contains("larger than 1 MiB"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !done.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
            std::thread::sleep(Duration::from_millis(20));
        }
        assert!(done.load(Ordering::SeqCst), "the relay still reads");
        let sent = sent.load(Ordering::SeqCst);
        assert!(sent < 32 << 20, "{sent} bytes sent");
    }
}
