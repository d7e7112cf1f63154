//! Where a relay instance keeps its files. Tests run several instances side by side, so every
//! path derives from the four directories given at start-up.

use std::path::PathBuf;

/// Where the relay's policy service listens, relative to the spool (Postfix's
/// `queue_directory`, where smtpd resolves a relative `unix:` path): the same for every
/// instance, so main.cf names it without knowing the layout. Its directory is root's
/// ([`Layout::sockets_dir`]), unlike Postfix's `private`, which the postfix user owns and
/// could swap a socket in while root binds and hands it over.
pub const POLICY_SOCKET: &str = "smtp-relay-sockets/policy";
/// Where the relay's milter listens, as [`POLICY_SOCKET`].
pub const MILTER_SOCKET: &str = "smtp-relay-sockets/milter";

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Layout {
    /// Postfix `config_directory`: main.cf, master.cf and the maps we generate.
    pub config_dir: PathBuf,
    /// Postfix `queue_directory`: the mail spool, kept on a persistent volume.
    pub spool_dir: PathBuf,
    /// The SASL user database and Postfix's `data_directory`.
    pub data_dir: PathBuf,
    /// Address and port smtpd listens on, as Postfix writes a service name (`host:port`).
    pub listen: String,
}

/// Where the relay's own Cyrus SASL plugins are installed (the image puts its XOAUTH2 client
/// mechanism there); `RELAY_SASL_PLUGIN_DIR` points tests at their build.
pub fn sasl_plugin_dir() -> PathBuf {
    std::env::var_os("RELAY_SASL_PLUGIN_DIR")
        .map_or_else(|| PathBuf::from("/usr/lib/smtp-relay/sasl2"), PathBuf::from)
}

/// Debian's Cyrus SASL plugins (PLAIN, LOGIN, ...).
pub const SYSTEM_SASL_PLUGIN_DIR: &str = "/usr/lib/x86_64-linux-gnu/sasl2";

impl Layout {
    pub fn main_cf(&self) -> PathBuf {
        self.config_dir.join("main.cf")
    }
    pub fn master_cf(&self) -> PathBuf {
        self.config_dir.join("master.cf")
    }
    /// Relayhost credentials, a `texthash:` map.
    pub fn relayhost_passwd(&self) -> PathBuf {
        self.config_dir.join("relayhost_passwd")
    }
    /// Rejects sender-specified routing in recipient addresses.
    pub fn routing_table(&self) -> PathBuf {
        self.config_dir.join("recipient_routing.regexp")
    }
    /// The checks of headers leaving the relay (`smtp_header_checks`).
    pub fn header_checks(&self) -> PathBuf {
        self.config_dir.join("smtp_header_checks.regexp")
    }
    /// The senders any client may use (`check_sender_access`).
    pub fn sender_access(&self) -> PathBuf {
        self.config_dir.join("sender_access.regexp")
    }
    /// The recipients the relay sends to (`check_recipient_access`).
    pub fn recipient_access(&self) -> PathBuf {
        self.config_dir.join("recipient_access.regexp")
    }
    /// The SASL logins each bound sender belongs to (`smtpd_sender_login_maps`).
    pub fn sender_logins(&self) -> PathBuf {
        self.config_dir.join("sender_logins.regexp")
    }
    /// The SASL users bound to their senders (`check_sasl_access`).
    pub fn bound_logins(&self) -> PathBuf {
        self.config_dir.join("bound_logins.regexp")
    }
    /// The sandbox's header of each original recipient (`check_recipient_access`).
    pub fn sandbox_table(&self) -> PathBuf {
        self.config_dir.join("sandbox_recipients.regexp")
    }
    /// Cyrus SASL configuration directory (holds smtpd.conf).
    pub fn sasl_config_dir(&self) -> PathBuf {
        self.config_dir.join("sasl")
    }
    /// Where a rotated OAuth2 refresh token is kept: on the spool's volume, which outlives the
    /// pod like the mail does (a directory of ours beside Postfix's queues).
    pub fn oauth2_refresh_token(&self) -> PathBuf {
        self.spool_dir
            .join("smtp-relay")
            .join("oauth2-refresh-token")
    }
    /// The last configuration that passed the self-check in this pod, with its revision: on
    /// the spool's volume, beside the refresh token, so a restarted pod finds it.
    pub fn last_good_config(&self) -> PathBuf {
        self.spool_dir.join("smtp-relay").join("last-good.yaml")
    }
    /// The socketmap where Postfix asks the supervisor for the current OAuth2 token.
    pub fn oauth2_socket(&self) -> PathBuf {
        self.data_dir.join("oauth2.sock")
    }
    /// The relay's policy service ([`crate::policy`]): [`POLICY_SOCKET`] in the spool.
    pub fn policy_socket(&self) -> PathBuf {
        self.spool_dir.join(POLICY_SOCKET)
    }
    /// The relay's milter ([`crate::milter`]): [`MILTER_SOCKET`] in the spool.
    pub fn milter_socket(&self) -> PathBuf {
        self.spool_dir.join(MILTER_SOCKET)
    }
    /// The root-owned directory of the supervisor's sockets in the spool.
    pub fn sockets_dir(&self) -> PathBuf {
        self.policy_socket()
            .parent()
            .map_or_else(|| self.spool_dir.clone(), PathBuf::from)
    }
    pub fn sasldb(&self) -> PathBuf {
        self.data_dir.join("sasldb2")
    }
    pub fn postfix_data_dir(&self) -> PathBuf {
        self.data_dir.join("postfix")
    }
    pub fn master_pid(&self) -> PathBuf {
        self.spool_dir.join("pid").join("master.pid")
    }
    /// Touched by the supervisor on every check of its inputs; read by `probe --liveness`.
    pub fn heartbeat(&self) -> PathBuf {
        self.config_dir.join("supervisor.heartbeat")
    }
}
