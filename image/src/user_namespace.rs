//! Whether root in this container is root on the node: read from `/proc/self/uid_map`, which
//! the kernel writes for the user namespace the process runs in. A pod with `hostUsers: false`
//! on a runtime that supports it maps its root to an unprivileged range of the node's UIDs; a
//! runtime that ignores the setting leaves the node's own map (`0 0 4294967295`), and the
//! relay reports it instead of assuming (issue 32).

/// Where the kernel shows this process's UID map.
pub const UID_MAP: &str = "/proc/self/uid_map";

/// The UID on the node (in the user namespace of the runtime that started the container) that
/// UID 0 in the container is, from the text of a `uid_map`: 0 when root is the node's root.
/// `None` when no line maps UID 0 (or the text is not a map).
pub fn root_node_uid(uid_map: &str) -> Option<u32> {
    uid_map.lines().find_map(|line| {
        let mut fields = line.split_whitespace().map(str::parse::<u64>);
        let (Some(Ok(inside)), Some(Ok(outside)), Some(Ok(count)), None) =
            (fields.next(), fields.next(), fields.next(), fields.next())
        else {
            return None;
        };
        // Lines map [inside, inside + count) to [outside, outside + count).
        (inside == 0 && count > 0)
            .then_some(outside)
            .and_then(|uid| u32::try_from(uid).ok())
    })
}

/// [`root_node_uid`] of this process, logged; `None` when the map cannot be read.
pub fn own_root_node_uid() -> Option<u32> {
    let uid = std::fs::read_to_string(UID_MAP)
        .ok()
        .as_deref()
        .and_then(root_node_uid);
    match uid {
        Some(0) => tracing::warn!("root in this container is the node's root: the pod shares the node's users (hostUsers: true, or a runtime that ignored hostUsers: false)"),
        Some(uid) => tracing::info!(uid, "root in this container is an unprivileged UID on the node: the pod has its own user namespace"),
        None => tracing::warn!(map = UID_MAP, "cannot read which node UID root in this container is"),
    }
    uid
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_nodes_own_map_makes_root_the_nodes_root() {
        assert_eq!(root_node_uid("         0          0 4294967295\n"), Some(0));
    }

    #[test]
    fn a_user_namespace_maps_root_to_its_range() {
        // As containerd 2 with runc writes it for a pod with hostUsers: false.
        assert_eq!(
            root_node_uid("         0 2465529856      65536\n"),
            Some(2_465_529_856)
        );
        // Several ranges: the one that holds UID 0.
        assert_eq!(root_node_uid("1000 5000 10\n0 70000 1000\n"), Some(70_000));
    }

    #[test]
    fn a_map_without_root_or_not_a_map_says_nothing() {
        assert_eq!(root_node_uid("1 100000 65535\n"), None);
        assert_eq!(root_node_uid(""), None);
        assert_eq!(root_node_uid("0 x 1\n"), None);
        assert_eq!(root_node_uid("0 0 0\n"), None);
        assert_eq!(root_node_uid("0 0 1 2\n"), None);
    }
}
