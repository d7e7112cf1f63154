//! The few Kubernetes API calls a relay pod makes itself, with its own ServiceAccount: read and
//! compare-and-swap one Secret (the refresh token the replicas share, see
//! [`crate::oauth2::rotation`]). HTTPS to the API server with the cluster's CA only; the
//! ServiceAccount token is read again for every request (the kubelet rotates it).

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::Duration;

use base64::Engine as _;

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
}

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
        let http = crate::oauth2::https_client(roots, Duration::from_secs(15))
            .map_err(KubeApiError::Unreachable)?;
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
                    .map_err(|e| KubeApiError::Refused {
                        status: 200,
                        message: format!("data.{k} is not base64: {e}"),
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

/// The JSON body of a successful answer; the API server's message otherwise (a Status object,
/// which never holds a Secret's data).
async fn checked(resp: reqwest::Response) -> Result<serde_json::Value, KubeApiError> {
    let status = resp.status();
    let body: serde_json::Value = resp
        .json()
        .await
        .map_err(|e| KubeApiError::Unreachable(e.without_url().to_string()))?;
    if status.is_success() {
        Ok(body)
    } else {
        Err(KubeApiError::Refused {
            status: status.as_u16(),
            message: body["message"].as_str().unwrap_or("no message").to_string(),
        })
    }
}
