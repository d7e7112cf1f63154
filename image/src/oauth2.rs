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

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine as _;
use serde::Deserialize;

use crate::http_client::{bounded, https_client, read_capped, redirect_origin, BodyError};
use crate::json_error::{json_kind, json_position, json_problem};
use crate::metrics::{Metrics, TOKEN_ERRORS};
// The old path of the noun, which the operator uses: `settings::Secret` is its home.
pub use crate::settings::Secret;
use crate::settings::{Grant, OAuth2Settings};

pub mod rotation;

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
    /// A 3xx answer: redirects are never followed (the request carries the client secret, the
    /// refresh token or a signed assertion, and a redirect may lead off HTTPS).
    #[error("the token endpoint redirected (HTTP {status}{}); redirects are not followed: set tokenEndpoint to the final https:// URL", to.as_deref().map(|to| format!(" to {to}")).unwrap_or_default())]
    Redirected {
        status: u16,
        /// The origin (scheme, host, port) of the `Location`, when it names one.
        to: Option<String>,
    },
    #[error("the token endpoint's answer is not a token: {0}")]
    BadResponse(String),
    #[error("the service account key cannot sign: {0}")]
    BadKey(String),
}

impl TokenError {
    /// A label from a fixed set, [`TOKEN_ERRORS`].
    pub fn code(&self) -> &'static str {
        match self {
            TokenError::Unreachable(_) => "unreachable",
            TokenError::Redirected { .. } => "refused",
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

/// The most of a token endpoint's answer that is read: a token response is a few KiB.
pub const TOKEN_ANSWER_CAP: usize = 64 * 1024;

/// The longest lifetime a token is trusted for, whatever `expires_in` says (providers give an
/// hour or two).
pub const MAX_LIFETIME: Duration = Duration::from_secs(24 * 3600);

/// The lifetime assumed when the endpoint gives none (or 0): the providers' usual hour.
const DEFAULT_LIFETIME: Duration = Duration::from_secs(3600);

/// How long a token lives, from its `expires_in`: none or 0 is the usual hour, anything past
/// [`MAX_LIFETIME`] is that.
pub fn lifetime(expires_in: Option<u64>) -> Duration {
    match expires_in {
        None | Some(0) => DEFAULT_LIFETIME,
        Some(secs) => Duration::from_secs(secs).min(MAX_LIFETIME),
    }
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
            "exp": now.saturating_add(3600),
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
    if status.is_redirection() {
        return Err(TokenError::Redirected {
            status: status.as_u16(),
            to: redirect_origin(&resp),
        });
    }
    let body = read_capped(resp, TOKEN_ANSWER_CAP)
        .await
        .map_err(|e| match e {
            BodyError::TooLarge { .. } => TokenError::BadResponse(e.to_string()),
            BodyError::Read(_) => TokenError::Unreachable(e.to_string()),
        })?;
    if !status.is_success() {
        let refused: Option<ErrorResponse> = serde_json::from_slice(&body).ok();
        return Err(TokenError::Refused {
            status: status.as_u16(),
            error: refused
                .as_ref()
                .map_or_else(|| "no OAuth2 error".into(), |r| bounded(&r.error)),
            description: refused.and_then(|r| r.error_description.as_deref().map(bounded)),
        });
    }
    let token: TokenResponse =
        serde_json::from_slice(&body).map_err(|e| bad_token_answer(&body, &e))?;
    if token.access_token.is_empty() {
        return Err(TokenError::BadResponse("an empty access_token".into()));
    }
    let expires_at = now
        .checked_add(lifetime(token.expires_in))
        .ok_or_else(|| TokenError::BadResponse("the clock cannot count to its expiry".into()))?;
    Ok((
        Token {
            access_token: Secret(token.access_token),
            expires_at,
        },
        token.refresh_token.map(Secret),
    ))
}

/// What is wrong with a token answer that is not one: serde_json's category and position, and
/// the field at fault, never a value. serde_json's own message quotes the value it stumbled on
/// (`invalid type: string "…"`), and that may be the token itself (a body that is the token as
/// a JSON string, a token that is a number).
fn bad_token_answer(body: &[u8], e: &serde_json::Error) -> TokenError {
    let mut text = format!("{}{}", json_problem(e), json_position(e));
    if let Some(field) = serde_json::from_slice(body)
        .ok()
        .and_then(|value| token_field_problem(&value))
    {
        text.push_str(": ");
        text.push_str(&field);
    }
    TokenError::BadResponse(text)
}

/// Which field of a token answer [`TokenResponse`] cannot take, by the kinds of the values.
fn token_field_problem(value: &serde_json::Value) -> Option<String> {
    use serde_json::Value;
    let Some(fields) = value.as_object() else {
        return Some(format!(
            "the answer is a JSON {}, not an object",
            json_kind(value)
        ));
    };
    match fields.get("access_token") {
        None => return Some("access_token is missing".into()),
        Some(Value::String(_)) => {}
        Some(other) => return Some(format!("access_token is {}, not a string", a_kind(other))),
    }
    match fields.get("expires_in") {
        None | Some(Value::Null) => {}
        Some(Value::Number(n)) if n.is_u64() => {}
        Some(Value::Number(_)) => {
            return Some("expires_in is not a whole number of seconds".into());
        }
        Some(other) => {
            return Some(format!(
                "expires_in is {}, not a number of seconds",
                a_kind(other)
            ))
        }
    }
    match fields.get("refresh_token") {
        None | Some(Value::Null | Value::String(_)) => None,
        Some(other) => Some(format!("refresh_token is {}, not a string", a_kind(other))),
    }
}

/// The kind of a JSON value with its article (`a string`, `an object`, `null`).
fn a_kind(value: &serde_json::Value) -> String {
    match json_kind(value) {
        "null" => "null".into(),
        kind @ ("array" | "object") => format!("an {kind}"),
        kind => format!("a {kind}"),
    }
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
        lifetime.saturating_sub(Duration::from_secs(5 * 60))
    } else {
        lifetime.saturating_sub(lifetime / 4)
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
            .is_some_and(|l| same_but_refresh_token(l, &oauth2))
            && current.lookup().is_some();
        if !keep_schedule || tokio::time::Instant::now() >= next_refresh {
            let wait = match http_client(oauth2.ca_file.as_deref()) {
                Ok(http) => refresh_once(&http, &oauth2, &current, &metrics, &mut store).await,
                Err(e) => {
                    tracing::error!(error = %e, "no HTTP client for the OAuth2 token endpoint");
                    Duration::from_secs(60)
                }
            };
            let now = tokio::time::Instant::now();
            next_refresh = now.checked_add(wait).unwrap_or_else(|| now + MAX_LIFETIME);
        }
        last = Some(oauth2);
        tokio::select! {
            () = tokio::time::sleep_until(next_refresh) => {}
            changed = settings.changed() => if changed.is_err() { return },
        }
    }
}

/// The same login but for the refresh token: a rotated token coming back through the
/// configured file (the operator writes it back) is no reason to refresh early.
fn same_but_refresh_token(a: &OAuth2Settings, b: &OAuth2Settings) -> bool {
    let strip = |s: &OAuth2Settings| {
        let mut s = s.clone();
        if let Grant::RefreshToken { refresh_token, .. } = &mut s.grant {
            refresh_token.0.clear();
        }
        s
    };
    strip(a) == strip(b)
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
            metrics.oauth2_token(Some(token.expires_at));
            metrics.oauth2_refreshed(None);
            current.set(Some((oauth2.user.clone(), token)));
            refresh_after(lifetime.min(MAX_LIFETIME)).max(Duration::from_secs(1))
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

/// The relayhost of the configuration Postfix runs with, as its `relayhost` holds it
/// (`[host]:port`, or `host:port` with MX lookups): the one lookup key the socketmap answers
/// with the token. `None` until a configuration went live.
static RELAYHOST: RwLock<Option<String>> = RwLock::new(None);

/// Makes `nexthop` (the `relayhost` value of the configuration going live) the one destination
/// the socketmap gives the token to. Called by `postfix::instance::write_config` once it
/// installed a configuration.
pub fn serve_relayhost(nexthop: String) {
    *RELAYHOST.write().unwrap_or_else(|e| e.into_inner()) = Some(nexthop);
}

fn served_relayhost() -> Option<String> {
    RELAYHOST.read().unwrap_or_else(|e| e.into_inner()).clone()
}

/// Serves Postfix's socketmap lookups (`socketmap:unix:PATH:xoauth2`, its
/// `smtp_sasl_password_maps`) on `path`. Only the relayhost gets the login: its key (the
/// nexthop [`serve_relayhost`] was last given) is answered `OK user:token` while a token is
/// valid, `TEMP` otherwise (Postfix then defers the mail and tries again: nothing is sent to
/// it without a login); any other key is `NOTFOUND`, and Postfix sends that server no login.
pub async fn serve_socketmap(path: PathBuf, current: Current) -> std::io::Result<()> {
    let listener = crate::local_socket::bind_out_of_reach(&path)?;
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
            let reply = socketmap_reply(&request, &current, served_relayhost().as_deref());
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

/// The answer to `name key`, with `relayhost` the relayhost of the live configuration.
///
/// Postfix's smtp client looks its login up (`smtp_sasl_password_maps`, smtp_sasl_glue.c) by
/// the sender when `smtp_sender_dependent_authentication` is on (the address, its local part,
/// `@domain`), then by the host name of the server it connected to, then by the nexthop as
/// written (`[host]:port`, `host:port`, `host`), the first found winning; a `NOTFOUND` for all
/// of them means no login at all. Any route a `postconf` entry can make (`transport_maps`,
/// `default_transport`, `relay_transport`, `smtp_fallback_relay`,
/// `sender_dependent_relayhost_maps`, ...) reaches a server through those same lookups, so
/// only the relayhost's nexthop exactly, as `relayhost` writes it, is answered with the token
/// (host names without regard to case), as the password map of a password login holds that
/// one key. Its bare host name is not: another port of that host, an MX that names it, a
/// sender whose local part spells it would then get the token too.
fn socketmap_reply(request: &str, current: &Current, relayhost: Option<&str>) -> String {
    let Some(("xoauth2", key)) = request.split_once(' ') else {
        return "NOTFOUND ".into();
    };
    let Some(relayhost) = relayhost else {
        return "TEMP the relayhost is not known yet".into();
    };
    if !key.eq_ignore_ascii_case(relayhost) {
        return "NOTFOUND ".into();
    }
    match current.lookup() {
        Some(value) => format!("OK {value}"),
        None => "TEMP no valid OAuth2 access token yet".into(),
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

    fn token(value: &str, valid_for: i64) -> Option<(String, Token)> {
        let now = SystemTime::now();
        let offset = Duration::from_secs(valid_for.unsigned_abs());
        let expires_at = if valid_for >= 0 {
            now + offset
        } else {
            now - offset
        };
        Some((
            "me@example.net".into(),
            Token {
                access_token: Secret(value.into()),
                expires_at,
            },
        ))
    }

    #[test]
    fn the_socketmap_answers_only_with_a_valid_token() {
        let relayhost = Some("[h]:587");
        let current = Current::default();
        assert!(socketmap_reply("xoauth2 [h]:587", &current, relayhost).starts_with("TEMP "));
        current.set(token("tok", 60));
        assert_eq!(
            socketmap_reply("xoauth2 [h]:587", &current, relayhost),
            "OK me@example.net:tok"
        );
        assert_eq!(
            socketmap_reply("other [h]:587", &current, relayhost),
            "NOTFOUND "
        );
        current.set(token("old", -1));
        assert!(socketmap_reply("xoauth2 [h]:587", &current, relayhost).starts_with("TEMP "));
    }

    /// Postfix asks `smtp_sasl_password_maps` for the login of every server it delivers to:
    /// the sender (with `smtp_sender_dependent_authentication`), then the server's host name,
    /// then the nexthop as written. Only the relayhost's nexthop, as `relayhost` holds it, gets
    /// the token; every other destination a `postconf` route could name (`transport_maps`,
    /// `default_transport`, `smtp_fallback_relay`, `sender_dependent_relayhost_maps`, ...)
    /// gets NOTFOUND, so Postfix sends it no login at all, whether a token is there or not.
    #[test]
    fn the_socketmap_gives_the_token_to_the_relayhost_alone() {
        let current = Current::default();
        current.set(token("tok", 60));
        for relayhost in ["[smtp.example.net]:587", "smtp.example.net:587"] {
            let answer =
                |key: &str| socketmap_reply(&format!("xoauth2 {key}"), &current, Some(relayhost));
            assert_eq!(answer(relayhost), "OK me@example.net:tok", "{relayhost}");
            assert_eq!(
                answer(&relayhost.to_ascii_uppercase()),
                "OK me@example.net:tok",
                "{relayhost}: host names know no case"
            );
            for other in [
                "smtp.example.net",
                "[smtp.example.net]:25",
                "[smtp.example.net]",
                "[smtp.example.net]:5870",
                "smtp.example.net:25",
                "[evil.example]:587",
                "evil.example",
                "[127.0.0.1]:587",
                "me@example.net",
                "@example.net",
                "me",
                "",
            ] {
                if other.eq_ignore_ascii_case(relayhost) {
                    continue;
                }
                assert_eq!(answer(other), "NOTFOUND ", "{relayhost}: {other}");
            }
        }
        // No token yet: the relayhost waits (TEMP), the others still get no login.
        let empty = Current::default();
        let relayhost = Some("[smtp.example.net]:587");
        assert!(
            socketmap_reply("xoauth2 [smtp.example.net]:587", &empty, relayhost)
                .starts_with("TEMP ")
        );
        assert_eq!(
            socketmap_reply("xoauth2 [evil.example]:25", &empty, relayhost),
            "NOTFOUND "
        );
        // Before a configuration went live, the relayhost is not known: nothing is answered
        // with a login, and mail waits.
        assert!(
            socketmap_reply("xoauth2 [smtp.example.net]:587", &current, None).starts_with("TEMP ")
        );
    }

    /// The socket that hands out the token is never reachable by anyone but root, not even
    /// for a moment: it is bound inside a directory only root may enter (whatever the umask
    /// made of the socket's own mode), and appears at its path only once it is 0600 (and the
    /// postfix user's). A stale socket of an earlier run is replaced.
    #[tokio::test]
    async fn the_socket_is_bound_out_of_reach_then_put_in_place() {
        use std::os::unix::fs::{FileTypeExt as _, MetadataExt as _, PermissionsExt as _};
        let dir = tempfile::tempdir().unwrap();
        std::fs::set_permissions(dir.path(), std::fs::Permissions::from_mode(0o755)).unwrap();
        let path = dir.path().join("oauth2.sock");
        drop(std::os::unix::net::UnixListener::bind(&path).unwrap());
        crate::created::take();
        let current = Current::default();
        let server = tokio::spawn(serve_socketmap(path.clone(), current));
        let mut connected = None;
        for _ in 0..200 {
            if let Ok(stream) = tokio::net::UnixStream::connect(&path).await {
                connected = Some(stream);
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        let mut stream = connected.expect("the socketmap answers");
        {
            use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
            stream.write_all(b"9:other key,").await.unwrap();
            let mut answer = [0u8; 12];
            stream.read_exact(&mut answer).await.unwrap();
            assert_eq!(&answer, b"9:NOTFOUND ,");
        }
        let created = crate::created::take();
        assert_eq!(created.len(), 1, "{created:?}");
        let root = nix::unistd::geteuid().as_raw();
        assert!(
            created[0].dir_mode & 0o077 == 0 && created[0].dir_uid == root,
            "bound in a directory others may enter: {:?}",
            created[0]
        );
        let meta = std::fs::metadata(&path).unwrap();
        assert!(meta.file_type().is_socket());
        assert_eq!(meta.mode() & 0o7777, 0o600);
        let left: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(left, ["oauth2.sock"]);
        server.abort();
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

    const SECRET: &str = "client-secret-never-in-clear";

    fn client_credentials(token_endpoint: String) -> OAuth2Settings {
        OAuth2Settings {
            user: "me@example.net".into(),
            token_endpoint,
            scope: Some("https://outlook.office365.com/.default".into()),
            grant: Grant::ClientCredentials {
                client_id: "id".into(),
                client_secret: Secret(SECRET.into()),
            },
            ca_file: None,
            shared_refresh_token_secret: None,
        }
    }

    fn block_on<F: std::future::Future>(f: F) -> F::Output {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
            .block_on(f)
    }

    /// A `307` or `308` (which keep the method and the body) from the HTTPS token endpoint to
    /// a plain-HTTP address is not followed: the client secret never crosses the network in
    /// clear, and the refresh fails saying the endpoint redirected.
    #[test]
    fn a_token_endpoint_redirect_is_not_followed() {
        use crate::http_client::fake_endpoint::{json, Endpoint};
        for status in ["307 Temporary Redirect", "308 Permanent Redirect"] {
            let plain = Endpoint::http(|w| {
                w.write_all(&json(
                    "200 OK",
                    r#"{"access_token":"after-a-redirect","expires_in":3600}"#,
                ))
            });
            let location = plain.url("/token");
            let endpoint = Endpoint::https(move |w| {
                write!(
                    w,
                    "HTTP/1.1 {status}\r\nLocation: {location}\r\nContent-Length: 0\r\nConnection: close\r\n\r\n"
                )
            });
            let mut settings = client_credentials(endpoint.url("/token"));
            settings.ca_file = endpoint.ca.as_ref().map(|(path, _)| path.clone());
            let http = http_client(settings.ca_file.as_deref()).unwrap();
            let result = block_on(request_token(&http, &settings, None));
            let requests = endpoint.requests();
            assert_eq!(requests.len(), 1, "{status}");
            assert!(requests[0].contains(SECRET), "the secret went over HTTPS");
            assert_eq!(
                plain.connections(),
                0,
                "{status}: the plain-HTTP address was contacted: {:?}",
                plain.requests()
            );
            let error = result.err().expect("a redirect is no token").to_string();
            let code = &status[..3];
            assert!(
                error.contains("redirected") && error.contains(code),
                "{status}: {error}"
            );
            assert!(!error.contains(SECRET), "{error}");
        }
    }

    /// A token endpoint that answers without end, successfully or not: the relay reads 64 KiB
    /// at most, fails at once with an error that says so, and hangs up. An answer announcing a
    /// larger length is not read at all.
    #[test]
    fn an_endless_token_answer_is_cut_at_the_cap() {
        use crate::http_client::fake_endpoint::{endless, Endpoint};
        use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
        let http = http_client(None).unwrap();
        for status in ["200 OK", "400 Bad Request"] {
            let (sent, done) = (
                Arc::new(AtomicUsize::new(0)),
                Arc::new(AtomicBool::new(false)),
            );
            let endpoint = Endpoint::http(endless(
                status,
                r#"{"access_token":""#,
                b'a',
                sent.clone(),
                done.clone(),
            ));
            let settings = client_credentials(endpoint.url("/token"));
            let started = std::time::Instant::now();
            let result = block_on(request_token(&http, &settings, None));
            let elapsed = started.elapsed();
            let error = result.err().expect("no token").to_string();
            assert!(error.contains("larger than 64 KiB"), "{status}: {error}");
            assert!(elapsed < Duration::from_secs(10), "{status}: {elapsed:?}");
            // The relay hung up: the endpoint could send no more than what the sockets'
            // buffers hold beyond what was read.
            let deadline = std::time::Instant::now() + Duration::from_secs(10);
            while !done.load(Ordering::SeqCst) && std::time::Instant::now() < deadline {
                std::thread::sleep(Duration::from_millis(20));
            }
            assert!(
                done.load(Ordering::SeqCst),
                "{status}: the relay still reads"
            );
            let sent = sent.load(Ordering::SeqCst);
            assert!(sent < 32 << 20, "{status}: {sent} bytes sent");
        }
        let endpoint = Endpoint::http(|w| {
            w.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 1073741824\r\n\r\n")?;
            std::thread::sleep(Duration::from_secs(20));
            Ok(())
        });
        let started = std::time::Instant::now();
        let result = block_on(request_token(
            &http,
            &client_credentials(endpoint.url("/token")),
            None,
        ));
        let error = result.err().expect("no token").to_string();
        assert!(error.contains("larger than 64 KiB"), "{error}");
        assert!(started.elapsed() < Duration::from_secs(10));
    }

    /// A token answer that is not one is described by what is wrong and where (serde_json's
    /// category, line and column) and the field, never by the value: serde_json's own message
    /// quotes it (`invalid type: string "…"`), and a body that is the token as a JSON string,
    /// or a token that is a number, would be logged at every retry.
    #[test]
    fn a_bad_token_answer_is_described_without_its_values() {
        use crate::http_client::fake_endpoint::{json, Endpoint};
        const TOKEN: &str = "eyJ0eXAiOiJKV1QiLCJhbGciOiJSUzI1NiJ9";
        const NUMBER: &str = "987654321987654321";
        let http = http_client(None).unwrap();
        for (body, says, secret) in [
            (
                format!(r#""{TOKEN}""#),
                "a JSON string, not an object",
                TOKEN,
            ),
            (
                format!(r#"{{"access_token":{NUMBER},"expires_in":3600}}"#),
                "access_token is a number, not a string",
                NUMBER,
            ),
            (
                format!(r#"{{"access_token":"tok","refresh_token":{NUMBER}}}"#),
                "refresh_token is a number, not a string",
                NUMBER,
            ),
            (
                format!(r#"{{"access_token":"tok","expires_in":"{TOKEN}"}}"#),
                "expires_in is a string, not a number of seconds",
                TOKEN,
            ),
            (
                format!(r#"{{"token":"{TOKEN}"}}"#),
                "access_token is missing",
                TOKEN,
            ),
            (
                format!(r#"{{"access_token":"{TOKEN}\q"}}"#),
                "not valid JSON",
                TOKEN,
            ),
        ] {
            let endpoint = Endpoint::http(move |w| w.write_all(&json("200 OK", &body)));
            let error = block_on(request_token(
                &http,
                &client_credentials(endpoint.url("/token")),
                None,
            ))
            .err()
            .expect("no token");
            assert_eq!(error.code(), "bad_response");
            let text = error.to_string();
            assert!(text.contains(says), "{says}: {text}");
            assert!(text.contains(" at line 1, column "), "{says}: {text}");
            assert!(!text.contains(&secret[..8]), "{says}: {text}");
        }
    }

    /// A refusal's own words (OAuth2 `error` and `error_description`) are logged at every
    /// retry: they are cut short, and hold no line break.
    #[test]
    fn a_refusal_is_told_in_a_short_line() {
        use crate::http_client::fake_endpoint::{json, Endpoint};
        let description = format!("line one\nline two {}", "x".repeat(60_000));
        let body = serde_json::json!({"error": "invalid_client", "error_description": description})
            .to_string();
        let endpoint = Endpoint::http(move |w| w.write_all(&json("401 Unauthorized", &body)));
        let http = http_client(None).unwrap();
        let error = block_on(request_token(
            &http,
            &client_credentials(endpoint.url("/token")),
            None,
        ))
        .err()
        .expect("refused");
        assert_eq!(error.code(), "invalid_client");
        let text = error.to_string();
        assert!(text.len() < 1000, "{} bytes", text.len());
        assert!(
            text.contains("line one line two xxx") && !text.contains('\n'),
            "{text}"
        );
    }

    /// `expires_in` is the endpoint's to say, within reason: u64::MAX (which overflowed the
    /// clock and killed the refresh task) and anything past a day is a day, 0 is no lifetime
    /// given (an hour). The refresh task serves the token and schedules the next refresh.
    #[test]
    fn a_lifetime_beyond_reason_is_clamped() {
        use crate::http_client::fake_endpoint::{json, Endpoint};
        let day = Duration::from_secs(24 * 3600);
        let http = http_client(None).unwrap();
        for (expires_in, lifetime) in [
            ("18446744073709551615", day),
            ("9223372036854775808", day),
            ("86401", day),
            ("0", Duration::from_secs(3600)),
            ("600", Duration::from_secs(600)),
        ] {
            let body = format!(r#"{{"access_token":"tok","expires_in":{expires_in}}}"#);
            let endpoint = Endpoint::http(move |w| w.write_all(&json("200 OK", &body)));
            let settings = client_credentials(endpoint.url("/token"));
            let dir = tempfile::tempdir().unwrap();
            let metrics = Metrics::new(dir.path());
            let current = Current::default();
            let mut store = rotation::Store {
                file: dir.path().join("oauth2-refresh-token"),
                shared: None,
            };
            let wait = block_on(refresh_once(
                &http, &settings, &current, &metrics, &mut store,
            ));
            assert_eq!(
                current.lookup().as_deref(),
                Some("me@example.net:tok"),
                "{expires_in}"
            );
            let expires_at = current.0.read().unwrap().as_ref().unwrap().1.expires_at;
            let left = expires_at.duration_since(SystemTime::now()).unwrap();
            assert!(
                left <= lifetime && left + Duration::from_secs(60) > lifetime,
                "{expires_in}: {left:?}"
            );
            let planned = refresh_after(lifetime);
            assert!(
                wait <= planned && wait + Duration::from_secs(60) > planned,
                "{expires_in}: {wait:?}"
            );
        }
    }
}
