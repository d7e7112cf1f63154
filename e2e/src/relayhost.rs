//! Scripted servers the relay talks to, for tests that count what it does: a relayhost whose
//! answers follow the recipient (and that can insist on an OAuth2 login), and an OAuth2 token
//! endpoint (RFC 6749) that issues short-lived tokens, rotates refresh tokens and refuses what
//! it should. Both bind an address of this machine: loopback, or the node IP for relay pods.

use std::collections::BTreeMap;
use std::net::{Ipv4Addr, SocketAddr};
use std::path::Path;
use std::sync::PoisonError;
use std::time::Duration;

use crate::mail::{bind_free_at, DEADLINE};

/// Decides an `AUTH XOAUTH2` login of [`ScriptedRelayhost`]: (user, bearer token) -> accepted.
pub type TokenCheck = std::sync::Arc<dyn Fn(&str, &str) -> bool + Send + Sync>;

/// A relayhost speaking enough SMTP to take mail, without STARTTLS. It answers
/// `RCPT TO` by the recipient's local part: `defer…` gets 451, `bounce…` 550, anything else
/// 250. Without a [`TokenCheck`] it offers AUTH and refuses every login; with one it takes
/// mail only after an `AUTH XOAUTH2` whose token the check accepts (and answers a refused one
/// as Microsoft and Google do: a 334 JSON challenge, then 535). It records every line it
/// receives and the recipients of every message it took. Dropping it stops it as a relayhost
/// that goes away: its open sessions are closed (a client's cached connection too), and
/// connections to its port are then refused.
pub struct ScriptedRelayhost {
    addr: SocketAddr,
    transcript: std::sync::Arc<std::sync::Mutex<String>>,
    delivered: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// The open sessions' sockets, closed on drop.
    sessions: std::sync::Arc<std::sync::Mutex<Vec<std::net::TcpStream>>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl ScriptedRelayhost {
    /// On loopback, refusing every login.
    ///
    /// # Panics
    ///
    /// When no port of loopback can be bound.
    pub fn start() -> ScriptedRelayhost {
        Self::start_with(None)
    }

    /// On loopback, with `check` deciding XOAUTH2 logins.
    ///
    /// # Panics
    ///
    /// When no port of loopback can be bound.
    pub fn start_with(check: Option<TokenCheck>) -> ScriptedRelayhost {
        Self::start_at(Ipv4Addr::LOCALHOST, check).unwrap_or_else(|e| panic!("{e}"))
    }

    /// On a free port of `ip`; `Err` when no port of `ip` can be bound.
    pub fn start_at(ip: Ipv4Addr, check: Option<TokenCheck>) -> Result<ScriptedRelayhost, String> {
        use std::sync::atomic::Ordering;
        let listener =
            bind_free_at(ip).map_err(|e| format!("binding the scripted relayhost on {ip}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let transcript = std::sync::Arc::new(std::sync::Mutex::new(String::new()));
        let delivered = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let session = Session {
            seen: transcript.clone(),
            delivered: delivered.clone(),
            check,
        };
        let stopping = stop.clone();
        let sessions = std::sync::Arc::new(std::sync::Mutex::new(Vec::new()));
        let open = sessions.clone();
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(Ordering::SeqCst) {
                    break;
                }
                if let Ok(stream) = stream {
                    if let Ok(kept) = stream.try_clone() {
                        open.lock()
                            .unwrap_or_else(PoisonError::into_inner)
                            .push(kept);
                    }
                    // One thread per session: Postfix opens several at once.
                    let session = session.clone();
                    std::thread::spawn(move || session.run(stream));
                }
            }
        });
        Ok(ScriptedRelayhost {
            addr,
            transcript,
            delivered,
            stop,
            sessions,
            thread: Some(thread),
        })
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    pub fn transcript(&self) -> String {
        self.transcript
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// The recipients of every message taken, in order.
    pub fn delivered(&self) -> Vec<String> {
        self.delivered
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for ScriptedRelayhost {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        // Wakes the accept loop, which then returns and closes the listener.
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
        for stream in self
            .sessions
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .drain(..)
        {
            let _ = stream.shutdown(std::net::Shutdown::Both);
        }
    }
}

#[derive(Clone)]
struct Session {
    seen: std::sync::Arc<std::sync::Mutex<String>>,
    delivered: std::sync::Arc<std::sync::Mutex<Vec<String>>>,
    check: Option<TokenCheck>,
}

impl Session {
    /// (user, token) of an XOAUTH2 initial response.
    fn xoauth2(b64: &str) -> Option<(String, String)> {
        use base64::Engine as _;
        let raw = base64::engine::general_purpose::STANDARD
            .decode(b64.trim())
            .ok()?;
        let text = String::from_utf8(raw).ok()?;
        let mut user = None;
        let mut token = None;
        for part in text.split('\u{1}') {
            if let Some(u) = part.strip_prefix("user=") {
                user = Some(u.to_string());
            } else if let Some(t) = part.strip_prefix("auth=Bearer ") {
                token = Some(t.to_string());
            }
        }
        Some((user?, token?))
    }

    fn run(&self, stream: std::net::TcpStream) {
        use std::io::{BufRead, BufReader, Write};
        let _ = stream.set_read_timeout(Some(DEADLINE));
        let Ok(mut out) = stream.try_clone() else {
            return;
        };
        let _ = out.write_all(b"220 scripted.test ESMTP\r\n");
        let (mut in_data, mut logged_in, mut refused_auth) = (false, false, false);
        let mut rcpts: Vec<String> = Vec::new();
        for line in BufReader::new(stream).lines() {
            let Ok(line) = line else { break };
            self.seen
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .push_str(&format!("{line}\n"));
            if in_data {
                if line == "." {
                    in_data = false;
                    self.delivered
                        .lock()
                        .unwrap_or_else(PoisonError::into_inner)
                        .append(&mut rcpts);
                    let _ = out.write_all(b"250 2.0.0 Ok: queued\r\n");
                }
                continue;
            }
            if refused_auth {
                // The client's (empty) answer to the error challenge.
                refused_auth = false;
                let _ = out.write_all(b"535 5.7.8 Authentication unsuccessful\r\n");
                continue;
            }
            let upper = line.to_ascii_uppercase();
            let verb = upper.split(' ').next().unwrap_or("");
            let local = upper
                .split_once("TO:<")
                .map_or("", |(_, to)| to.split('@').next().unwrap_or(""));
            let needs_login = self.check.is_some() && !logged_in;
            let answer: &[u8] = match verb {
                "EHLO" => b"250-scripted.test\r\n250-AUTH PLAIN LOGIN XOAUTH2\r\n250 8BITMIME\r\n",
                "AUTH" => match (&self.check, line.split(' ').nth(1), line.split(' ').nth(2)) {
                    (Some(check), Some(mech), Some(b64))
                        if mech.eq_ignore_ascii_case("XOAUTH2") =>
                    {
                        match Self::xoauth2(b64) {
                            Some((user, token)) if check(&user, &token) => {
                                logged_in = true;
                                b"235 2.7.0 Authentication successful\r\n"
                            }
                            _ => {
                                refused_auth = true;
                                // base64 of {"status":"401","schemes":"bearer","scope":"https://mail.google.com/"}
                                b"334 eyJzdGF0dXMiOiI0MDEiLCJzY2hlbWVzIjoiYmVhcmVyIiwic2NvcGUiOiJodHRwczovL21haWwuZ29vZ2xlLmNvbS8ifQ==\r\n"
                            }
                        }
                    }
                    _ => b"535 5.7.8 Authentication failed\r\n",
                },
                "MAIL" if needs_login => b"530 5.7.57 Client not authenticated to send mail\r\n",
                "RCPT" if local.starts_with("DEFER") => b"451 4.3.0 Try again later\r\n",
                "RCPT" if local.starts_with("BOUNCE") => b"550 5.1.1 No such user here\r\n",
                "RCPT" => {
                    rcpts.push(
                        line.split_once(':')
                            .map_or("", |(_, r)| r)
                            .trim_matches(['<', '>', ' '])
                            .to_string(),
                    );
                    b"250 2.1.5 Ok\r\n"
                }
                "RSET" => {
                    rcpts.clear();
                    b"250 2.0.0 Ok\r\n"
                }
                "DATA" => {
                    in_data = true;
                    b"354 End data with <CR><LF>.<CR><LF>\r\n"
                }
                "QUIT" => b"221 2.0.0 Bye\r\n",
                _ => b"250 2.0.0 Ok\r\n",
            };
            let _ = out.write_all(answer);
            if verb == "QUIT" {
                break;
            }
        }
        self.seen
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push_str("<closed>\n");
    }
}

/// What the token endpoint accepts and how it answers.
#[derive(Debug, Clone)]
pub struct TokenPolicy {
    pub client_id: String,
    pub client_secret: String,
    /// The refresh token it accepts now (delegated logins).
    pub refresh_token: String,
    /// A new refresh token with every refresh, the old one refused from then on.
    pub rotate: bool,
    /// Access tokens live this long.
    pub lifetime: Duration,
    /// How long the endpoint takes to answer (a slow identity provider).
    pub delay: Duration,
    /// A service account it knows (Google's JWT bearer grant, RFC 7523).
    pub service_account: Option<ServiceAccountCheck>,
}

/// A service account as a token endpoint knows it: its address, the public half of its key,
/// and the mailbox it may act for (domain-wide delegation).
#[derive(Debug, Clone)]
pub struct ServiceAccountCheck {
    pub client_email: String,
    /// The RSA public key, PKCS#1 DER (`openssl rsa -RSAPublicKey_out -outform DER`).
    pub public_key_der: Vec<u8>,
    pub subject: String,
    pub scope: String,
}

/// Checks a service account's assertion as Google's token endpoint does: an RS256 signature by
/// the account's key over header and claims, issued by the account for the delegated subject
/// and scope, for this endpoint (`aud`), unexpired. `Err` names what is wrong.
fn check_assertion(
    assertion: &str,
    account: &ServiceAccountCheck,
    audience: &str,
) -> Result<(), String> {
    use base64::Engine as _;
    let b64 = base64::engine::general_purpose::URL_SAFE_NO_PAD;
    let parts: Vec<&str> = assertion.split('.').collect();
    let [header, claims, signature] = parts[..] else {
        return Err("not a JWT".into());
    };
    let json = |part: &str| -> Result<serde_json::Value, String> {
        let bytes = b64.decode(part).map_err(|e| e.to_string())?;
        serde_json::from_slice(&bytes).map_err(|e| e.to_string())
    };
    if json(header)?["alg"] != "RS256" {
        return Err("alg is not RS256".into());
    }
    let signature = b64.decode(signature).map_err(|e| e.to_string())?;
    ring::signature::UnparsedPublicKey::new(
        &ring::signature::RSA_PKCS1_2048_8192_SHA256,
        &account.public_key_der,
    )
    .verify(format!("{header}.{claims}").as_bytes(), &signature)
    .map_err(|_| "the signature is not the account's".to_string())?;
    let c = json(claims)?;
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map_or(0, |d| d.as_secs());
    let expected = [
        ("iss", account.client_email.as_str()),
        ("sub", account.subject.as_str()),
        ("aud", audience),
        ("scope", account.scope.as_str()),
    ];
    for (claim, want) in expected {
        if c[claim] != want {
            return Err(format!("{claim} is {}, not {want}", c[claim]));
        }
    }
    let (iat, exp) = (
        c["iat"].as_u64().unwrap_or(0),
        c["exp"].as_u64().unwrap_or(0),
    );
    if iat > now + 60 || exp <= now || exp > iat + 3600 {
        return Err(format!("iat {iat} and exp {exp} do not hold now ({now})"));
    }
    Ok(())
}

#[derive(Default)]
struct TokenState {
    issued: Vec<(String, std::time::Instant)>,
    requests: Vec<String>,
    /// Why each refused service account assertion was refused.
    refusals: Vec<String>,
    /// The endpoint's own URL: a service account assertion's audience.
    url: String,
}

/// The token endpoint: issues access tokens to the client it knows, and tells a relayhost
/// whether a token is one of its own, unexpired ([`TokenServer::check`]).
pub struct TokenServer {
    pub addr: SocketAddr,
    url: String,
    policy: std::sync::Arc<std::sync::Mutex<TokenPolicy>>,
    state: std::sync::Arc<std::sync::Mutex<TokenState>>,
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl TokenServer {
    /// Plain HTTP on loopback (the relay allows plain HTTP to loopback only).
    ///
    /// # Panics
    ///
    /// When no port of loopback can be bound.
    pub fn start(policy: TokenPolicy) -> TokenServer {
        Self::start_at(Ipv4Addr::LOCALHOST, policy, None).unwrap_or_else(|e| panic!("{e}"))
    }

    /// On a free port of `ip`; HTTPS with `tls` (certificate chain and key, PEM files).
    pub fn start_at(
        ip: Ipv4Addr,
        policy: TokenPolicy,
        tls: Option<(&Path, &Path)>,
    ) -> Result<TokenServer, String> {
        let tls = tls.map(|(cert, key)| server_tls(cert, key)).transpose()?;
        let listener =
            bind_free_at(ip).map_err(|e| format!("binding the token endpoint on {ip}: {e}"))?;
        let addr = listener.local_addr().map_err(|e| e.to_string())?;
        let scheme = if tls.is_some() { "https" } else { "http" };
        let url = format!("{scheme}://{addr}/oauth2/v2.0/token");
        let policy = std::sync::Arc::new(std::sync::Mutex::new(policy));
        let state = std::sync::Arc::new(std::sync::Mutex::new(TokenState {
            url: url.clone(),
            ..TokenState::default()
        }));
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (p, st, stopping) = (policy.clone(), state.clone(), stop.clone());
        let thread = std::thread::spawn(move || {
            for stream in listener.incoming() {
                if stopping.load(std::sync::atomic::Ordering::SeqCst) {
                    break;
                }
                let Ok(stream) = stream else { continue };
                let _ = stream.set_read_timeout(Some(DEADLINE));
                match &tls {
                    None => token_request(stream, &p, &st),
                    Some(config) => {
                        let Ok(conn) = rustls::ServerConnection::new(config.clone()) else {
                            continue;
                        };
                        token_request(rustls::StreamOwned::new(conn, stream), &p, &st);
                    }
                }
            }
        });
        Ok(TokenServer {
            addr,
            url,
            policy,
            state,
            stop,
            thread: Some(thread),
        })
    }

    pub fn url(&self) -> String {
        self.url.clone()
    }

    /// Accepts `token` when this endpoint issued it and it has not expired.
    pub fn check(&self) -> TokenCheck {
        let state = self.state.clone();
        std::sync::Arc::new(move |_user: &str, token: &str| {
            let now = std::time::Instant::now();
            state
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .issued
                .iter()
                .any(|(t, expires)| t == token && *expires > now)
        })
    }

    /// Access tokens issued so far.
    pub fn issued(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .issued
            .iter()
            .map(|(t, _)| t.clone())
            .collect()
    }

    /// Each request's grant type, or the error it was answered with.
    pub fn requests(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .requests
            .clone()
    }

    /// Why each refused service account assertion was refused.
    pub fn refusals(&self) -> Vec<String> {
        self.state
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .refusals
            .clone()
    }

    pub fn policy(&self) -> TokenPolicy {
        self.policy
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for TokenServer {
    fn drop(&mut self) {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let _ = std::net::TcpStream::connect(self.addr);
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

/// The TLS side of an HTTPS token endpoint.
fn server_tls(cert: &Path, key: &Path) -> Result<std::sync::Arc<rustls::ServerConfig>, String> {
    use rustls::pki_types::pem::PemObject as _;
    use rustls::pki_types::{CertificateDer, PrivateKeyDer};
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| format!("{}: {e}", cert.display()))?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| format!("{}: {e}", key.display()))?;
    rustls::ServerConfig::builder_with_provider(std::sync::Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .and_then(|b| b.with_no_client_auth().with_single_cert(chain, key))
    .map(std::sync::Arc::new)
    .map_err(|e| e.to_string())
}

/// One HTTP request to the token endpoint, answered and closed.
fn token_request<S: std::io::Read + std::io::Write>(
    mut stream: S,
    policy: &std::sync::Mutex<TokenPolicy>,
    state: &std::sync::Mutex<TokenState>,
) {
    use std::io::{BufRead, BufReader, Read};
    let mut reader = BufReader::new(&mut stream);
    let mut length = 0;
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 {
            return;
        }
        let line = line.trim_end();
        if line.is_empty() {
            break;
        }
        if let Some((name, value)) = line.split_once(':') {
            if name.eq_ignore_ascii_case("content-length") {
                length = value.trim().parse().unwrap_or(0);
            }
        }
    }
    let mut body = vec![0; length];
    if reader.read_exact(&mut body).is_err() {
        return;
    }
    drop(reader);
    let form: BTreeMap<String, String> = url::form_urlencoded::parse(&body).into_owned().collect();
    let (status, json) = token_answer(&form, policy, state);
    let _ = write!(
        stream,
        "HTTP/1.1 {status}\r\nContent-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n{json}",
        json.len()
    );
}

fn token_answer(
    form: &BTreeMap<String, String>,
    policy: &std::sync::Mutex<TokenPolicy>,
    state: &std::sync::Mutex<TokenState>,
) -> (&'static str, String) {
    let delay = policy.lock().unwrap_or_else(PoisonError::into_inner).delay;
    std::thread::sleep(delay);
    let mut policy = policy.lock().unwrap_or_else(PoisonError::into_inner);
    let mut state = state.lock().unwrap_or_else(PoisonError::into_inner);
    let field = |k: &str| form.get(k).map(String::as_str).unwrap_or_default();
    let grant = field("grant_type").to_string();
    let refused = |error: &str| {
        (
            if error == "invalid_client" {
                "401 Unauthorized"
            } else {
                "400 Bad Request"
            },
            format!(r#"{{"error":"{error}","error_description":"the test endpoint refused it"}}"#),
        )
    };
    const JWT_BEARER: &str = "urn:ietf:params:oauth:grant-type:jwt-bearer";
    let (answer, label) = if grant == JWT_BEARER {
        let verdict = match &policy.service_account {
            Some(account) => check_assertion(field("assertion"), account, &state.url),
            None => Err("no service account known".into()),
        };
        match verdict {
            Ok(()) => {
                let n = state.issued.len();
                let token = format!("at-{n}-{}", std::process::id());
                state
                    .issued
                    .push((token.clone(), std::time::Instant::now() + policy.lifetime));
                let json = serde_json::json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": policy.lifetime.as_secs(),
                });
                (("200 OK", json.to_string()), "service_account".to_string())
            }
            Err(why) => {
                state.refusals.push(why);
                (refused("invalid_grant"), "invalid_grant".to_string())
            }
        }
    } else if field("client_id") != policy.client_id {
        (refused("invalid_client"), "invalid_client".to_string())
    } else {
        match grant.as_str() {
            "client_credentials" if field("client_secret") != policy.client_secret => {
                (refused("invalid_client"), "invalid_client".into())
            }
            "refresh_token" if field("refresh_token") != policy.refresh_token => {
                (refused("invalid_grant"), "invalid_grant".into())
            }
            "client_credentials" | "refresh_token" => {
                let n = state.issued.len();
                let token = format!("at-{n}-{}", std::process::id());
                state
                    .issued
                    .push((token.clone(), std::time::Instant::now() + policy.lifetime));
                let mut json = serde_json::json!({
                    "access_token": token,
                    "token_type": "Bearer",
                    "expires_in": policy.lifetime.as_secs(),
                });
                if grant == "refresh_token" && policy.rotate {
                    policy.refresh_token = format!("rotated-refresh-{n}-{}", std::process::id());
                    json["refresh_token"] = policy.refresh_token.clone().into();
                }
                (("200 OK", json.to_string()), grant.clone())
            }
            _ => (
                refused("unsupported_grant_type"),
                "unsupported_grant_type".into(),
            ),
        }
    };
    state.requests.push(label);
    answer
}
