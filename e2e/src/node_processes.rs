//! What the node sees of a container's processes, read from `/proc` on the host: the UID each
//! runs as, its effective capabilities and its user namespace. The real-node tests check with
//! it that root in a relay pod is an unprivileged UID on the node (issue 32).

use std::fs;
use std::path::Path;

/// One process of a container, as the host sees it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NodeProcess {
    pub pid: u32,
    /// `/proc/PID/comm`.
    pub name: String,
    /// The real UID on the node (the first field of `Uid:` in `/proc/PID/status`).
    pub uid: u32,
    /// `CapEff:` of `/proc/PID/status`: the capabilities it holds, in its own user namespace.
    pub effective_capabilities: u64,
    /// The user namespace it runs in (`/proc/PID/ns/user`, e.g. `user:[4026531837]`).
    pub user_namespace: String,
}

/// The processes whose cgroup names the container `container_id` (the kubelet's cgroup paths
/// end with it, with either cgroup driver).
pub fn of_container(container_id: &str) -> Vec<NodeProcess> {
    let Ok(entries) = fs::read_dir("/proc") else {
        return Vec::new();
    };
    let mut found: Vec<NodeProcess> = entries
        .flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<u32>().ok())
        .filter(|pid| {
            fs::read_to_string(format!("/proc/{pid}/cgroup"))
                .is_ok_and(|cgroup| cgroup.contains(container_id))
        })
        .filter_map(|pid| read(pid, Path::new(&format!("/proc/{pid}"))))
        .collect();
    found.sort_by_key(|p| p.pid);
    found
}

/// The user namespace of this process: the node's, for a test run by the node's root.
pub fn own_user_namespace() -> String {
    fs::read_link("/proc/self/ns/user")
        .map(|l| l.display().to_string())
        .unwrap_or_default()
}

/// One process, `None` when it ended while being read.
fn read(pid: u32, dir: &Path) -> Option<NodeProcess> {
    let status = fs::read_to_string(dir.join("status")).ok()?;
    let field = |name: &str| {
        status
            .lines()
            .find_map(|l| l.strip_prefix(name))
            .map(str::trim)
    };
    Some(NodeProcess {
        pid,
        name: fs::read_to_string(dir.join("comm"))
            .ok()?
            .trim()
            .to_string(),
        uid: field("Uid:")?.split_whitespace().next()?.parse().ok()?,
        effective_capabilities: u64::from_str_radix(field("CapEff:")?, 16).ok()?,
        user_namespace: fs::read_link(dir.join("ns/user"))
            .ok()?
            .display()
            .to_string(),
    })
}

/// The bit of each capability (`linux/capability.h`) among those a relay keeps.
pub fn capability_bits(names: &[&str]) -> u64 {
    names
        .iter()
        .map(|name| match *name {
            "CHOWN" => 1 << 0,
            "DAC_OVERRIDE" => 1 << 1,
            "FOWNER" => 1 << 3,
            "KILL" => 1 << 5,
            "SETGID" => 1 << 6,
            "SETUID" => 1 << 7,
            "NET_BIND_SERVICE" => 1 << 10,
            other => panic!("no bit known for capability {other}"),
        })
        .fold(0, |all, bit| all | bit)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn this_process_is_read_as_the_kernel_shows_it() {
        let me = read(std::process::id(), Path::new("/proc/self")).expect("readable");
        assert_eq!(me.user_namespace, own_user_namespace());
        assert!(!me.name.is_empty());
    }

    #[test]
    fn the_relays_capabilities_are_the_bits_the_kernel_shows() {
        // As /proc/PID/status showed for a relay's master on the real node.
        assert_eq!(
            capability_bits(&smtp_relay_operator::steps::build::statefulset::CAPABILITIES),
            0x4eb
        );
    }
}
