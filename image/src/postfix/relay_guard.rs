//! The one place that decides what may never open the relay: which Postfix parameters only the
//! relay's own fields may set, which `networks` would trust everyone, and whether an effective
//! Postfix configuration lets an anonymous client from outside `networks` relay to an outside
//! domain. Both input paths and the operator use these functions; nothing else repeats them.

use ipnet::IpNet;

use crate::error::{ConfigError, ConfigResult};

/// Parameters that decide who may relay, with the field that owns each. `postconf` (and
/// `POSTCONF_*`) may not set them: one line there would silently undo what the fields say.
///
/// - `mynetworks`, `mynetworks_style`: who is trusted without a login (`networks`).
/// - `relay_domains`: where anyone may send (`relayDomains`).
/// - `smtpd_*_restrictions`: the access decisions themselves. Only `smtpd_relay_restrictions`
///   can open the relay, but the recipient list carries the sender-routing guard and the
///   sender list `strictSender`, and extra checks (RBLs, access tables) belong in
///   `customRestrictions`, which keeps its safety net.
/// - `smtpd_sasl_*`, `cyrus_sasl_config_path`: who counts as authenticated (the SASL users).
/// - `smtpd_tls_auth_only`: whether passwords may cross the network in clear text.
/// - `smtpd_authorized_xclient_hosts`: XCLIENT lets the listed hosts claim any client address,
///   one inside `networks` included.
/// - `smtpd_upstream_proxy_protocol`: with it, the client address comes from a header that
///   anyone who reaches the port can write.
const OWNED: &[(&str, &str)] = &[
    ("mynetworks", "networks"),
    ("mynetworks_style", "networks"),
    ("relay_domains", "relayDomains"),
    ("smtpd_tls_auth_only", "tlsSecretRef"),
    ("cyrus_sasl_config_path", "the SASL users"),
    (
        "smtpd_authorized_xclient_hosts",
        "no field: XCLIENT would let those hosts claim an address inside networks",
    ),
    (
        "smtpd_upstream_proxy_protocol",
        "proxyProtocolPort (RELAY_PROXY_PROTOCOL_PORT): a second port for the load balancer, so the SMTP port keeps trusting the real peer",
    ),
];

/// The field that owns `name`, when `postconf` may not set it.
pub fn owner(name: &str) -> Option<&'static str> {
    if let Some((_, owner)) = OWNED.iter().find(|(n, _)| *n == name) {
        return Some(owner);
    }
    if name.starts_with("smtpd_sasl_") {
        return Some("the SASL users (saslUsersSecretRef, or client_sasl_passwd)");
    }
    if name.starts_with("smtpd_") && name.ends_with("_restrictions") {
        return Some("mode or customRestrictions (and strictSender)");
    }
    None
}

/// Refuses a `postconf` entry that decides who may relay. `field` names the entry.
pub fn check_postconf(field: &str, name: &str) -> ConfigResult<()> {
    match owner(name) {
        None => Ok(()),
        Some(owner) => Err(ConfigError::invalid(
            field,
            format!("{name} decides who may relay and cannot be set here; it is set from {owner}"),
        )),
    }
}

/// The address families whose every address `networks` trusts (e.g. 0.0.0.0/0, or 0.0.0.0/1
/// with 128.0.0.0/1), as "IPv4" / "IPv6".
pub fn everyone_trusted(networks: &[IpNet]) -> Vec<&'static str> {
    IpNet::aggregate(&networks.to_vec())
        .into_iter()
        .filter(|n| n.prefix_len() == 0)
        .map(|n| match n {
            IpNet::V4(_) => "IPv4",
            IpNet::V6(_) => "IPv6",
        })
        .collect()
}

/// Refuses `networks` that trust every address of a family: an open relay.
pub fn check_networks(field: &str, networks: &[IpNet]) -> ConfigResult<()> {
    let all = everyone_trusted(networks);
    if all.is_empty() {
        return Ok(());
    }
    Err(ConfigError::invalid(
        field,
        format!(
            "the networks cover every {} address, so anyone could relay through this server; list only the client networks (e.g. the pod network 10.244.0.0/16)",
            all.join(" and ")
        ),
    ))
}

/// What Postfix actually runs with, as `postconf -x` prints it.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Effective {
    pub mynetworks: String,
    pub relay_restrictions: String,
    pub recipient_restrictions: String,
}

impl Effective {
    /// The parameters to ask `postconf -x` for, in the order [`Effective::from_postconf`] reads.
    pub const PARAMETERS: [&'static str; 3] = [
        "mynetworks",
        "smtpd_relay_restrictions",
        "smtpd_recipient_restrictions",
    ];

    /// Parses `name = value` lines.
    pub fn from_postconf(text: &str) -> Effective {
        let mut e = Effective::default();
        for line in text.lines() {
            let (name, value) = match line.split_once('=') {
                Some((n, v)) => (n.trim(), v.trim().to_string()),
                None => continue,
            };
            match name {
                "mynetworks" => e.mynetworks = value,
                "smtpd_relay_restrictions" => e.relay_restrictions = value,
                "smtpd_recipient_restrictions" => e.recipient_restrictions = value,
                _ => {}
            }
        }
        e
    }
}

/// Why an anonymous client outside `networks` could relay to an outside domain under `e`, or
/// `None` when it cannot. Access tables (`check_*_access`) and policy services are assumed not
/// to permit: they are explicit expert choices in `customRestrictions`.
pub fn open_relay(e: &Effective) -> Option<String> {
    let networks: Vec<IpNet> = list(&e.mynetworks).filter_map(parse_network).collect();
    // The worst client: when `networks` hold every address of a family, that family's clients
    // are all "inside"; otherwise some outside client exists.
    let everyone_inside = !everyone_trusted(&networks).is_empty();
    let relay = list(&e.relay_restrictions).collect::<Vec<_>>();
    let recipient = list(&e.recipient_restrictions).collect::<Vec<_>>();
    // Postfix checks both lists; an empty relay list means only the recipient list decides.
    let relay_permits = relay.is_empty() || permits(&relay, everyone_inside);
    if relay_permits && permits(&recipient, everyone_inside) {
        let why = if everyone_inside {
            format!("mynetworks ({}) holds every address", e.mynetworks)
        } else {
            format!(
                "smtpd_relay_restrictions ({}) and smtpd_recipient_restrictions ({}) permit it",
                e.relay_restrictions, e.recipient_restrictions
            )
        };
        return Some(format!(
            "an anonymous client outside the trusted networks could relay to any domain: {why}"
        ));
    }
    None
}

/// Whether a restriction list lets an anonymous client send to an outside domain.
fn permits(list: &[&str], in_networks: bool) -> bool {
    for token in list {
        match *token {
            "permit" => return true,
            "permit_mynetworks" if in_networks => return true,
            "reject"
            | "defer"
            | "defer_if_permit"
            | "reject_unauth_destination"
            | "defer_unauth_destination" => return false,
            _ => {}
        }
    }
    // A list that runs out permits.
    true
}

fn list(value: &str) -> impl Iterator<Item = &str> {
    value.split([',', ' ', '\t']).filter(|t| !t.is_empty())
}

/// A mynetworks entry as Postfix writes it (`10.0.0.0/8`, `[fd00::]/64`, `[::1]`); tables and
/// negations are not addresses.
fn parse_network(entry: &str) -> Option<IpNet> {
    let plain = entry.replace(['[', ']'], "");
    plain
        .parse::<IpNet>()
        .ok()
        .or_else(|| plain.parse::<std::net::IpAddr>().ok().map(IpNet::from))
        .map(|n| n.trunc())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn effective(networks: &str, relay: &str) -> Effective {
        Effective {
            mynetworks: networks.into(),
            relay_restrictions: relay.into(),
            recipient_restrictions: "check_recipient_access regexp:/x".into(),
        }
    }

    #[test]
    fn owned_parameters_name_their_field() {
        for (name, field) in [
            ("mynetworks", "networks"),
            ("relay_domains", "relayDomains"),
            ("smtpd_relay_restrictions", "customRestrictions"),
            ("smtpd_client_restrictions", "customRestrictions"),
            ("smtpd_sasl_auth_enable", "SASL users"),
            ("smtpd_tls_auth_only", "tlsSecretRef"),
        ] {
            let err = check_postconf("postconf", name).unwrap_err().to_string();
            assert!(err.contains(field), "{name}: {err}");
        }
        assert!(check_postconf("p", "message_size_limit").is_ok());
        assert!(check_postconf("p", "smtpd_tls_security_level").is_ok());
        assert!(check_postconf("p", "smtp_sasl_security_options").is_ok());
    }

    #[test]
    fn networks_trusting_everyone() {
        let nets = |s: &[&str]| s.iter().map(|n| n.parse().unwrap()).collect::<Vec<IpNet>>();
        assert!(check_networks("n", &nets(&["10.0.0.0/8", "fd00::/8"])).is_ok());
        assert!(check_networks("n", &nets(&["0.0.0.0/0"])).is_err());
        assert!(check_networks("n", &nets(&["::/0"])).is_err());
        let err = check_networks("n", &nets(&["0.0.0.0/1", "128.0.0.0/1"]))
            .unwrap_err()
            .to_string();
        assert!(err.contains("every IPv4 address"), "{err}");
    }

    #[test]
    fn the_modes_are_closed_and_permit_is_open() {
        use crate::postfix::restrictions::relay_restrictions;
        use crate::settings::Mode;
        for mode in Mode::ALL {
            let e = effective(
                "10.0.0.0/8, [fd00::]/64",
                &relay_restrictions(mode).join(", "),
            );
            assert_eq!(open_relay(&e), None, "{mode}");
        }
        assert!(open_relay(&effective("10.0.0.0/8", "permit")).is_some());
        assert!(open_relay(&effective("10.0.0.0/8", "permit_sasl_authenticated")).is_some());
        let everyone = effective("0.0.0.0/0", "permit_mynetworks, reject");
        assert!(open_relay(&everyone).unwrap().contains("every address"));
        let everyone6 = effective("[::]/0", "permit_mynetworks, reject_unauth_destination");
        assert!(open_relay(&everyone6).is_some());
        // Postfix's own default, and a list that ends without a decision.
        let default = effective(
            "127.0.0.0/8",
            "permit_mynetworks, permit_sasl_authenticated, defer_unauth_destination",
        );
        assert_eq!(open_relay(&default), None);
    }

    #[test]
    fn postconf_output_is_parsed() {
        let e = Effective::from_postconf(
            "mynetworks = [::1]/128, 127.0.0.2/32\nsmtpd_relay_restrictions = permit\nsmtpd_recipient_restrictions =\n",
        );
        assert_eq!(e.mynetworks, "[::1]/128, 127.0.0.2/32");
        assert_eq!(e.relay_restrictions, "permit");
        assert_eq!(e.recipient_restrictions, "");
    }
}
