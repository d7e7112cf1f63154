//! What the resolve step read from the referenced Secrets and ConfigMaps, validated: the
//! judge's and the builders' input. `Debug` never prints a secret value.

use std::collections::BTreeMap;

use std::fmt;

use crate::floor::contract::{CLIENT_ID, CLIENT_SECRET, REFRESH_TOKEN, SERVICE_ACCOUNT};

/// Relayhost login. `Debug` never prints the password.
#[derive(Clone, PartialEq, Eq)]
pub struct RelayhostLogin {
    pub username: String,
    pub password: Vec<u8>,
}

/// The keys of an OAuth2 login's Secret (as given: the relay judges the combination with its
/// own rules, see `validate`). `Debug` prints only which keys there are.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct OAuth2Keys {
    pub client_id: Option<Vec<u8>>,
    pub client_secret: Option<Vec<u8>>,
    pub refresh_token: Option<Vec<u8>>,
    pub service_account: Option<Vec<u8>>,
}

impl OAuth2Keys {
    /// A delegated login: the relay logs in with a refresh token (no service account key, a
    /// refresh token and a client id), and the replicas share the newest one.
    pub fn delegated(&self) -> bool {
        self.service_account.is_none() && self.refresh_token.is_some() && self.client_id.is_some()
    }

    /// (file name in the relay pods, value) of each key given.
    pub fn files(&self) -> Vec<(&'static str, &Vec<u8>)> {
        [
            (CLIENT_ID.file, &self.client_id),
            (CLIENT_SECRET.file, &self.client_secret),
            (REFRESH_TOKEN.file, &self.refresh_token),
            (SERVICE_ACCOUNT.file, &self.service_account),
        ]
        .into_iter()
        .filter_map(|(file, v)| v.as_ref().map(|v| (file, v)))
        .collect()
    }
}

/// Certificate and key offered to clients.
#[derive(Clone, PartialEq, Eq)]
pub struct TlsPair {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// A certificate authority: its certificate and key, PEM.
#[derive(Clone, PartialEq, Eq)]
pub struct CaPair {
    pub cert: Vec<u8>,
    pub key: Vec<u8>,
}

/// The relay's own CA, which signs the certificate the operator issues
/// (`steps::certificate`), as kept in the never-mounted `<name>-ca-key` Secret. `Debug` never
/// prints a key.
#[derive(Clone, PartialEq, Eq)]
pub struct Authority {
    /// The CA that signs the serving certificates.
    pub signing: CaPair,
    /// Its successor, published beside it ahead of the day it signs.
    pub next: Option<CaPair>,
    /// Certificates (PEM, concatenated) of earlier CAs, published until they expire, as
    /// certificates they signed may still be served.
    pub retired: Vec<u8>,
}

impl fmt::Debug for Authority {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Authority")
            .field("next", &self.next.is_some())
            .field("retired", &!self.retired.is_empty())
            .finish_non_exhaustive()
    }
}

/// Everything read from referenced objects, validated.
#[derive(Clone, PartialEq, Eq, Default)]
pub struct Resolved {
    pub relayhost_login: Option<RelayhostLogin>,
    pub relayhost_oauth2: Option<OAuth2Keys>,
    pub relayhost_ca: Option<Vec<u8>>,
    /// User name → password; `None` when the relay has no `saslUsersSecretRef`.
    pub sasl_users: Option<BTreeMap<String, Vec<u8>>>,
    pub inbound_tls: Option<TlsPair>,
    /// The CA that signed `inbound_tls`, when the operator issued it.
    pub issued_ca: Option<Authority>,
}

impl fmt::Debug for Resolved {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Resolved")
            .field(
                "relayhost_login",
                &self.relayhost_login.as_ref().map(|l| l.username.as_str()),
            )
            .field(
                "relayhost_oauth2",
                &self
                    .relayhost_oauth2
                    .as_ref()
                    .map(|k| k.files().into_iter().map(|(f, _)| f).collect::<Vec<_>>()),
            )
            .field("relayhost_ca", &self.relayhost_ca.is_some())
            .field(
                "sasl_users",
                &self
                    .sasl_users
                    .as_ref()
                    .map(|u| u.keys().collect::<Vec<_>>()),
            )
            .field("inbound_tls", &self.inbound_tls.is_some())
            .field("issued_ca", &self.issued_ca.is_some())
            .finish()
    }
}

/// Length of the per-relay [`HashKey`] in bytes.
pub const HASH_KEY_LEN: usize = 32;

/// The per-relay secret key of the config hash (`steps::build::hash::config_hash`). It lives in the owned, never-mounted
/// `<name>-hash-key` Secret; `Debug` never prints it.
#[derive(Clone, PartialEq, Eq)]
pub struct HashKey([u8; HASH_KEY_LEN]);

impl HashKey {
    pub fn from_bytes(bytes: [u8; HASH_KEY_LEN]) -> Self {
        HashKey(bytes)
    }

    /// A key read back from the owned Secret: exactly [`HASH_KEY_LEN`] bytes, else `None`.
    pub fn from_slice(bytes: &[u8]) -> Option<Self> {
        bytes.try_into().ok().map(HashKey)
    }

    /// A fresh key from the operating system's random source.
    pub fn generate() -> Result<Self, getrandom::Error> {
        let mut k = [0u8; HASH_KEY_LEN];
        getrandom::fill(&mut k)?;
        Ok(HashKey(k))
    }

    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }
}

impl fmt::Debug for HashKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("HashKey(..)")
    }
}
