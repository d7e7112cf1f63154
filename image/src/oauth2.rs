//! OAuth2 login to the relayhost (XOAUTH2), for Microsoft 365 and Google, which no longer take
//! passwords. The supervisor mints access tokens itself and keeps one fresh; Postfix's smtp
//! client asks for it at every login through a socketmap on a unix socket (as the password of
//! `smtp_sasl_password_maps`), and the relay's own Cyrus mechanism (`image/sasl-xoauth2`)
//! sends it. Tokens live in memory, in that socket's answers, and (a rotated refresh token
//! only) in a 0600 file: never in a log, a config file or a command line.
//!
//! Three grants, picked by what is configured:
//! - client credentials (Microsoft 365 app-only; generic providers): client id and secret;
//! - a delegated refresh token (any provider): the refresh token, a client id and maybe a
//!   secret; a provider that rotates it gets the new one back at every refresh, kept on the
//!   pod's volume and shared with the other replicas ([`rotation`]);
//! - a Google service account with domain-wide delegation: a JWT signed with its key, for the
//!   mailbox to send as.

use std::fmt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Deserialize;

use crate::metrics::Metrics;

pub mod rotation;

/// A secret value: compared and cloned like a string, never printed.
#[derive(Clone, PartialEq, Eq)]
pub struct Secret(pub String);

impl fmt::Debug for Secret {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("<redacted>")
    }
}

/// How an access token is obtained.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Grant {
    ClientCredentials {
        client_id: String,
        client_secret: Secret,
    },
    RefreshToken {
        client_id: String,
        client_secret: Option<Secret>,
        refresh_token: Secret,
    },
    /// A Google service account key: its e-mail address and its PKCS#8 private key (PEM).
    ServiceAccount {
        client_email: String,
        private_key: Secret,
    },
}

impl Grant {
    fn name(&self) -> &'static str {
        match self {
            Grant::ClientCredentials { .. } => "client_credentials",
            Grant::RefreshToken { .. } => "refresh_token",
            Grant::ServiceAccount { .. } => "service_account",
        }
    }
}

/// The OAuth2 login, validated.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct OAuth2Settings {
    /// The mailbox to send as: XOAUTH2's `user=`, and a service account's subject.
    pub user: String,
    pub token_endpoint: String,
    pub scope: Option<String>,
    pub grant: Grant,
    /// A CA bundle trusted besides the system's (the relayhost's, when one is given: a private
    /// PKI usually serves both).
    pub ca_file: Option<PathBuf>,
    /// The Secret (in the pod's namespace) where the replicas share a rotated refresh token.
    pub shared_refresh_token_secret: Option<String>,
}

impl OAuth2Settings {
    /// The same login but for the refresh token: a rotated token coming back through the
    /// configured file (the operator writes it back) is no reason to refresh early.
    fn same_but_refresh_token(&self, other: &OAuth2Settings) -> bool {
        let strip = |s: &OAuth2Settings| {
            let mut s = s.clone();
            if let Grant::RefreshToken { refresh_token, .. } = &mut s.grant {
                refresh_token.0.clear();
            }
            s
        };
        strip(self) == strip(other)
    }
}

/// The fields of a Google service account key file the relay uses.
#[derive(Deserialize)]
pub struct ServiceAccountKey {
    pub client_email: String,
    pub private_key: String,
    #[serde(default)]
    pub token_uri: Option<String>,
}

/// Why a token could not be had; [`TokenError::code`] is its bounded metric label.
#[derive(Debug, thiserror::Error)]
pub enum TokenError {
    #[error("the token endpoint cannot be reached: {0}")]
    Unreachable(String),
    #[error("the token endpoint refused: HTTP {status}, {error}{}", description.as_deref().map(|d| format!(": {d}")).unwrap_or_default())]
    Refused {
        status: u16,
        error: String,
        description: Option<String>,
    },
    #[error("the token endpoint's answer is not a token: {0}")]
    BadResponse(String),
    #[error("the service account key cannot sign: {0}")]
    BadKey(String),
}

/// OAuth2's error codes (RFC 6749, 5.2), then ours: every value [`TokenError::code`] gives.
pub const TOKEN_ERRORS: [&str; 10] = [
    "invalid_request",
    "invalid_client",
    "invalid_grant",
    "unauthorized_client",
    "unsupported_grant_type",
    "invalid_scope",
    "refused",
    "unreachable",
    "bad_response",
    "bad_key",
];

impl TokenError {
    /// A label from a fixed set.
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Unreachable(_) => "unreachable",
            TokenError::Refused { error, .. } => TOKEN_ERRORS[..6]
                .iter()
                .copied()
                .find(|c| c == error)
                .unwrap_or("refused"),
            TokenError::BadResponse(_) => "bad_response",
            TokenError::BadKey(_) => "bad_key",
        }
    }
}

/// An access token and when it expires.
#[derive(Clone)]
pub struct Token {
    pub access_token: Secret,
    pub expires_at: SystemTime,
}

#[derive(Deserialize)]
struct TokenResponse {
    access_token: String,
    #[serde(default)]
    expires_in: Option<u64>,
    #[serde(default)]
    refresh_token: Option<String>,
}

#[derive(Deserialize)]
struct ErrorResponse {
    error: String,
    #[serde(default)]
    error_description: Option<String>,
}

/// An HTTP client for token endpoints: TLS with the system's CA bundle and `ca_file` (ring, as
/// elsewhere in the relay).
pub fn http_client(ca_file: Option<&Path>) -> Result<reqwest::Client, TokenError> {
    use rustls::pki_types::pem::PemObject as _;
    let mut roots = rustls::RootCertStore::empty();
    for cert in rustls_native_certs::load_native_certs().certs {
        let _ = roots.add(cert);
    }
    if let Some(path) = ca_file {
        let certs = rustls::pki_types::CertificateDer::pem_file_iter(path)
            .map_err(|e| TokenError::Unreachable(format!("{}: {e}", path.display())))?;
        for cert in certs.flatten() {
            let _ = roots.add(cert);
        }
    }
    https_client(roots, Duration::from_secs(30)).map_err(TokenError::Unreachable)
}

/// The relay's HTTPS client (ring, as elsewhere in the relay) trusting `roots` alone.
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
        .user_agent(concat!("smtp-relay/", env!("CARGO_PKG_VERSION")))
        .build()
        .map_err(|e| e.to_string())
}

/// The signed assertion of a service account (RFC 7523), for `sub` over `scope`.
fn service_account_assertion(
    client_email: &str,
    private_key_pem: &str,
    sub: &str,
    scope: &str,
    audience: &str,
    now: u64,
) -> Result<String, TokenError> {
    let der = pem_body(private_key_pem).ok_or_else(|| {
        TokenError::BadKey("private_key is not a PEM \"PRIVATE KEY\" (PKCS#8)".into())
    })?;
    let key = ring::signature::RsaKeyPair::from_pkcs8(&der)
        .map_err(|e| TokenError::BadKey(e.to_string()))?;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let header = b64.encode(br#"{"alg":"RS256","typ":"JWT"}"#);
    let claims = b64.encode(
        serde_json::json!({
            "iss": client_email,
            "sub": sub,
            "scope": scope,
            "aud": audience,
            "iat": now,
            "exp": now + 3600,
        })
        .to_string(),
    );
    let signed = format!("{header}.{claims}");
    let mut signature = vec![0; key.public().modulus_len()];
    key.sign(
        &ring::signature::RSA_PKCS1_SHA256,
        &ring::rand::SystemRandom::new(),
        signed.as_bytes(),
        &mut signature,
    )
    .map_err(|e| TokenError::BadKey(e.to_string()))?;
    Ok(format!("{signed}.{}", b64.encode(signature)))
}

/// The DER inside a PEM `PRIVATE KEY` block.
pub fn pem_body(pem: &str) -> Option<Vec<u8>> {
    let body = pem
        .split("-----BEGIN PRIVATE KEY-----")
        .nth(1)?
        .split("-----END PRIVATE KEY-----")
        .next()?;
    let joined: String = body.split_whitespace().collect();
    base64::engine::general_purpose::STANDARD
        .decode(joined)
        .ok()
}

/// One token request; a rotated refresh token comes back with the token.
pub async fn request_token(
    http: &reqwest::Client,
    settings: &OAuth2Settings,
    refresh_token: Option<&Secret>,
) -> Result<(Token, Option<Secret>), TokenError> {
    let now = SystemTime::now();
    let scope = settings.scope.clone().unwrap_or_default();
    let mut form: Vec<(&str, String)> = Vec::new();
    match &settings.grant {
        Grant::ClientCredentials {
            client_id,
            client_secret,
        } => {
            form.push(("grant_type", "client_credentials".into()));
            form.push(("client_id", client_id.clone()));
            form.push(("client_secret", client_secret.0.clone()));
        }
        Grant::RefreshToken {
            client_id,
            client_secret,
            refresh_token: configured,
        } => {
            form.push(("grant_type", "refresh_token".into()));
            form.push(("client_id", client_id.clone()));
            if let Some(secret) = client_secret {
                form.push(("client_secret", secret.0.clone()));
            }
            let token = refresh_token.unwrap_or(configured);
            form.push(("refresh_token", token.0.clone()));
        }
        Grant::ServiceAccount {
            client_email,
            private_key,
        } => {
            let iat = now.duration_since(UNIX_EPOCH).map_or(0, |d| d.as_secs());
            form.push((
                "grant_type",
                "urn:ietf:params:oauth:grant-type:jwt-bearer".into(),
            ));
            form.push((
                "assertion",
                service_account_assertion(
                    client_email,
                    &private_key.0,
                    &settings.user,
                    &scope,
                    &settings.token_endpoint,
                    iat,
                )?,
            ));
        }
    }
    if !scope.is_empty() && !matches!(settings.grant, Grant::ServiceAccount { .. }) {
        form.push(("scope", scope));
    }
    let resp = http
        .post(&settings.token_endpoint)
        .form(&form)
        .send()
        .await
        .map_err(|e| TokenError::Unreachable(without_url(&e)))?;
    let status = resp.status();
    let body = resp
        .bytes()
        .await
        .map_err(|e| TokenError::Unreachable(without_url(&e)))?;
    if !status.is_success() {
        let refused: Option<ErrorResponse> = serde_json::from_slice(&body).ok();
        return Err(TokenError::Refused {
            status: status.as_u16(),
            error: refused
                .as_ref()
                .map_or_else(|| "no OAuth2 error".into(), |r| r.error.clone()),
            description: refused.and_then(|r| r.error_description),
        });
    }
    let token: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| TokenError::BadResponse(format!("{e}")))?;
    if token.access_token.is_empty() {
        return Err(TokenError::BadResponse("an empty access_token".into()));
    }
    // Without expires_in, an hour (the providers' usual lifetime).
    let lifetime = Duration::from_secs(token.expires_in.unwrap_or(3600));
    Ok((
        Token {
            access_token: Secret(token.access_token),
            expires_at: now + lifetime,
        },
        token.refresh_token.map(Secret),
    ))
}

/// reqwest's errors name the URL; the endpoint is not secret, but keep errors short.
fn without_url(e: &reqwest::Error) -> String {
    let mut text = e.to_string();
    if let Some(url) = e.url() {
        text = text.replace(&format!(" ({url})"), "");
    }
    text
}

/// When to refresh a token that lives `lifetime`: five minutes before it expires, or at three
/// quarters of a short life.
pub fn refresh_after(lifetime: Duration) -> Duration {
    if lifetime > Duration::from_secs(20 * 60) {
        lifetime - Duration::from_secs(5 * 60)
    } else {
        lifetime * 3 / 4
    }
}

/// The current token, shared between the refresher and the socketmap.
#[derive(Clone, Default)]
pub struct Current(Arc<RwLock<Option<(String, Token)>>>);

impl Current {
    /// `user:token` while the token is valid.
    pub fn lookup(&self) -> Option<String> {
        let guard = self.0.read().unwrap_or_else(|e| e.into_inner());
        let (user, token) = guard.as_ref()?;
        (token.expires_at > SystemTime::now()).then(|| format!("{user}:{}", token.access_token.0))
    }

    fn set(&self, value: Option<(String, Token)>) {
        *self.0.write().unwrap_or_else(|e| e.into_inner()) = value;
    }
}

/// Keeps a token fresh for the settings `settings` holds (they change on reload), until the
/// task is dropped.
pub async fn keep_fresh(
    mut settings: tokio::sync::watch::Receiver<Option<OAuth2Settings>>,
    current: Current,
    metrics: Metrics,
    rotated_token_file: PathBuf,
) {
    let mut store = rotation::Store {
        file: rotated_token_file,
        shared: None,
    };
    let mut last: Option<OAuth2Settings> = None;
    let mut next_refresh = tokio::time::Instant::now();
    loop {
        let wanted = settings.borrow_and_update().clone();
        let Some(oauth2) = wanted else {
            current.set(None);
            metrics.oauth2_token(None);
            last = None;
            if settings.changed().await.is_err() {
                return;
            }
            continue;
        };
        let shared = oauth2.shared_refresh_token_secret.clone();
        if store.shared.as_ref().map(|s| &s.name) != shared.as_ref() {
            store.shared = shared.map(|name| rotation::SharedSecret { name, api: None });
        }
        // Only the refresh token changed (written back by the operator, or a new consent): the
        // current access token stays good; the next refresh picks the newest refresh token.
        let keep_schedule = last
            .as_ref()
            .is_some_and(|l| l.same_but_refresh_token(&oauth2))
            && current.lookup().is_some();
        if !keep_schedule || tokio::time::Instant::now() >= next_refresh {
            let wait = match http_client(oauth2.ca_file.as_deref()) {
                Ok(http) => refresh_once(&http, &oauth2, &current, &metrics, &mut store).await,
                Err(e) => {
                    tracing::error!(error = %e, "no HTTP client for the OAuth2 token endpoint");
                    Duration::from_secs(60)
                }
            };
            next_refresh = tokio::time::Instant::now() + wait;
        }
        last = Some(oauth2);
        tokio::select! {
            () = tokio::time::sleep_until(next_refresh) => {}
            changed = settings.changed() => if changed.is_err() { return },
        }
    }
}

/// Backoff after failed refreshes: 1 s, doubling, at most a minute.
fn backoff(failures: u32) -> Duration {
    Duration::from_secs(1u64 << failures.min(6)).min(Duration::from_secs(60))
}

/// One refresh; how long until the next.
async fn refresh_once(
    http: &reqwest::Client,
    oauth2: &OAuth2Settings,
    current: &Current,
    metrics: &Metrics,
    store: &mut rotation::Store,
) -> Duration {
    let result = match &oauth2.grant {
        Grant::RefreshToken { refresh_token, .. } => {
            request_delegated(http, oauth2, refresh_token, store).await
        }
        _ => request_token(http, oauth2, None)
            .await
            .map(|(token, _)| token),
    };
    match result {
        Ok(token) => {
            let lifetime = token
                .expires_at
                .duration_since(SystemTime::now())
                .unwrap_or_default();
            tracing::info!(
                grant = oauth2.grant.name(),
                expires_in = lifetime.as_secs(),
                "OAuth2 access token obtained"
            );
            metrics.oauth2_token(Some(&token));
            metrics.oauth2_refreshed(None);
            current.set(Some((oauth2.user.clone(), token)));
            refresh_after(lifetime).max(Duration::from_secs(1))
        }
        Err(e) => {
            let failures = metrics.oauth2_refreshed(Some(e.code()));
            tracing::warn!(grant = oauth2.grant.name(), error = %e, "OAuth2 token refresh failed; the current token (if any) is used until it expires");
            backoff(failures)
        }
    }
}

/// A token for a delegated login, from the newest refresh token there is (configured, shared
/// by the replicas, or the pod's own); the one a rotating provider sends back is kept. A
/// refusal of a token that another replica rotated away meanwhile is no failure: the newer one
/// is tried at once.
async fn request_delegated(
    http: &reqwest::Client,
    oauth2: &OAuth2Settings,
    configured: &Secret,
    store: &mut rotation::Store,
) -> Result<Token, TokenError> {
    let mut retried = false;
    loop {
        let loaded = store.load().await;
        let (used, chain) = loaded.newest(configured);
        match request_token(http, oauth2, Some(used)).await {
            Ok((token, new_refresh)) => {
                if let Some(new) = new_refresh.filter(|new| new != used) {
                    let rotated = rotation::Rotated::after(chain, used, new);
                    store.save(&loaded, &rotated).await;
                }
                return Ok(token);
            }
            Err(e) if !retried && e.code() == "invalid_grant" => {
                if store.load().await.newest(configured).0 == used {
                    return Err(e);
                }
                tracing::info!(
                    "another replica rotated the refresh token meanwhile; using the newer one"
                );
                retried = true;
            }
            Err(e) => return Err(e),
        }
    }
}

/// Serves Postfix's socketmap lookups (`socketmap:unix:PATH:xoauth2`) on `path`: every key
/// gets `OK user:token` while a token is valid, `TEMP` otherwise (Postfix then defers the mail
/// and tries again: nothing is sent without a login).
pub async fn serve_socketmap(path: PathBuf, current: Current) -> std::io::Result<()> {
    let _ = std::fs::remove_file(&path);
    let listener = tokio::net::UnixListener::bind(&path)?;
    restrict_to_postfix(&path)?;
    loop {
        let (stream, _) = listener.accept().await?;
        let current = current.clone();
        tokio::spawn(async move {
            if let Err(e) = socketmap_session(stream, current).await {
                tracing::debug!(error = %e, "socketmap session ended");
            }
        });
    }
}

/// Only Postfix (and root) may ask for the token.
fn restrict_to_postfix(path: &Path) -> std::io::Result<()> {
    use std::os::unix::fs::PermissionsExt as _;
    if nix::unistd::geteuid().is_root() {
        if let Ok(Some(user)) = nix::unistd::User::from_name("postfix") {
            nix::unistd::chown(path, Some(user.uid), Some(user.gid))
                .map_err(std::io::Error::from)?;
        }
    }
    std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600))
}

async fn socketmap_session(
    stream: tokio::net::UnixStream,
    current: Current,
) -> std::io::Result<()> {
    use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
    let (mut reader, mut writer) = stream.into_split();
    let mut buf = Vec::new();
    let mut chunk = [0u8; 4096];
    loop {
        while let Some((request, used)) = netstring(&buf) {
            let reply = socketmap_reply(&request, &current);
            buf.drain(..used);
            writer
                .write_all(format!("{}:{reply},", reply.len()).as_bytes())
                .await?;
        }
        if buf.len() > 100_000 {
            return Err(std::io::Error::other("socketmap request too long"));
        }
        let n = reader.read(&mut chunk).await?;
        if n == 0 {
            return Ok(());
        }
        buf.extend_from_slice(&chunk[..n]);
    }
}

/// One netstring at the start of `buf` (`LEN:DATA,`), and the bytes it takes.
fn netstring(buf: &[u8]) -> Option<(String, usize)> {
    let colon = buf.iter().position(|b| *b == b':')?;
    let len: usize = std::str::from_utf8(&buf[..colon]).ok()?.parse().ok()?;
    let end = colon + 1 + len;
    (buf.get(end) == Some(&b',')).then(|| {
        (
            String::from_utf8_lossy(&buf[colon + 1..end]).into_owned(),
            end + 1,
        )
    })
}

/// The answer to `name key`.
fn socketmap_reply(request: &str, current: &Current) -> String {
    match request.split_once(' ') {
        Some(("xoauth2", _)) => match current.lookup() {
            Some(value) => format!("OK {value}"),
            None => "TEMP no valid OAuth2 access token yet".into(),
        },
        _ => "NOTFOUND ".into(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn netstrings_are_read_whole_or_not_at_all() {
        assert_eq!(
            netstring(b"20:xoauth2 [smtp.x]:587,rest"),
            Some(("xoauth2 [smtp.x]:587".into(), 24))
        );
        assert_eq!(netstring(b"20:xoauth2 [smtp"), None);
        assert_eq!(netstring(b"3:abcd,"), None);
    }

    #[test]
    fn the_socketmap_answers_only_with_a_valid_token() {
        let current = Current::default();
        assert!(socketmap_reply("xoauth2 [h]:587", &current).starts_with("TEMP "));
        current.set(Some((
            "me@example.net".into(),
            Token {
                access_token: Secret("tok".into()),
                expires_at: SystemTime::now() + Duration::from_secs(60),
            },
        )));
        assert_eq!(
            socketmap_reply("xoauth2 [h]:587", &current),
            "OK me@example.net:tok"
        );
        assert_eq!(socketmap_reply("other k", &current), "NOTFOUND ");
        current.set(Some((
            "me@example.net".into(),
            Token {
                access_token: Secret("old".into()),
                expires_at: SystemTime::now() - Duration::from_secs(1),
            },
        )));
        assert!(socketmap_reply("xoauth2 [h]:587", &current).starts_with("TEMP "));
    }

    #[test]
    fn tokens_are_refreshed_well_before_they_expire() {
        assert_eq!(
            refresh_after(Duration::from_secs(3600)),
            Duration::from_secs(3300)
        );
        assert_eq!(
            refresh_after(Duration::from_secs(8)),
            Duration::from_secs(6)
        );
        assert_eq!(backoff(0), Duration::from_secs(1));
        assert_eq!(backoff(10), Duration::from_secs(60));
    }

    #[test]
    fn secrets_are_never_printed() {
        let s = OAuth2Settings {
            user: "me@example.net".into(),
            token_endpoint: "https://login.example/token".into(),
            scope: None,
            grant: Grant::ClientCredentials {
                client_id: "id".into(),
                client_secret: Secret("hunter2".into()),
            },
            ca_file: None,
            shared_refresh_token_secret: None,
        };
        assert!(!format!("{s:?}").contains("hunter2"));
    }

    #[test]
    fn a_service_account_assertion_is_a_signed_jwt() {
        // A throwaway 2048-bit key made with `openssl genpkey -algorithm RSA`.
        let out = std::process::Command::new("openssl")
            .args([
                "genpkey",
                "-algorithm",
                "RSA",
                "-pkeyopt",
                "rsa_keygen_bits:2048",
            ])
            .output()
            .expect("openssl");
        let pem = String::from_utf8(out.stdout).unwrap();
        let jwt = service_account_assertion(
            "relay@project.iam.gserviceaccount.com",
            &pem,
            "sender@example.net",
            "https://mail.google.com/",
            "https://oauth2.googleapis.com/token",
            1_800_000_000,
        )
        .unwrap();
        let parts: Vec<&str> = jwt.split('.').collect();
        assert_eq!(parts.len(), 3);
        let claims = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[1])
            .unwrap();
        let claims: serde_json::Value = serde_json::from_slice(&claims).unwrap();
        assert_eq!(claims["sub"], "sender@example.net");
        assert_eq!(claims["exp"], 1_800_003_600u64);
        // The signature, checked by another implementation (OpenSSL) with the public key
        // alone, as the token endpoint checks it; and refused once the claims are altered.
        let dir = tempfile::tempdir().unwrap();
        let file = |name: &str, content: &[u8]| {
            let path = dir.path().join(name);
            std::fs::write(&path, content).unwrap();
            path
        };
        let key = file("key.pem", pem.as_bytes());
        let public = dir.path().join("public.pem");
        let status = std::process::Command::new("openssl")
            .args(["pkey", "-pubout", "-in"])
            .arg(&key)
            .arg("-out")
            .arg(&public)
            .status()
            .unwrap();
        assert!(status.success());
        let signature = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .decode(parts[2])
            .unwrap();
        let signature = file("signature", &signature);
        let verify = |signed: &str| {
            let data = file("signed", signed.as_bytes());
            let out = std::process::Command::new("openssl")
                .args(["dgst", "-sha256", "-verify"])
                .arg(&public)
                .arg("-signature")
                .arg(&signature)
                .arg(&data)
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).trim().to_string()
        };
        assert_eq!(verify(&format!("{}.{}", parts[0], parts[1])), "Verified OK");
        let altered = base64::engine::general_purpose::URL_SAFE_NO_PAD
            .encode(serde_json::json!({"sub": "someone-else@example.net"}).to_string());
        assert_eq!(
            verify(&format!("{}.{altered}", parts[0])),
            "Verification failure"
        );
        assert!(matches!(
            service_account_assertion("a", "not a key", "b", "c", "d", 0),
            Err(TokenError::BadKey(_))
        ));
    }
}
