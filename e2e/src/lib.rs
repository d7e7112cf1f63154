//! Test harness for the end-to-end suite: locating the project's tools and running a real
//! control plane.
//!
//! The tools (`controlplane`, `kubectl`, `helm`) are built into `.cache/bin` by
//! `scripts/install-deps.sh`; [`tools::bin`] finds them. [`ControlPlane`] runs etcd,
//! kube-apiserver and kube-controller-manager (one process, built from Go modules in
//! `e2e/controlplane`) in a temporary directory and stops it when dropped;
//! [`ControlPlane::with_node`] adds a real node (containerd, kubelet, kube-proxy, CoreDNS,
//! scheduler) whose pods run images imported with [`ControlPlane::import_image`]. Suites whose
//! environment costs too much to start for every test run as named [`phases`] over one.
//!
//! ```no_run
//! use smtp_relay_e2e::ControlPlane;
//!
//! let cp = ControlPlane::start().expect("control plane");
//! cp.kubectl_ok(["create", "namespace", "demo"]);
//! let events = cp.audit_events().expect("audit log");
//! let writes = events.iter().filter(|e| e["verb"] == "create").count();
//! assert!(writes > 0);
//! ```

#![forbid(unsafe_code)]

pub mod controlplane;
pub mod operator;
pub mod phases;
pub mod tools;

pub use controlplane::{ControlPlane, Error};
pub mod doc_blocks;
pub mod host_perl;
pub mod mail;
pub mod node_processes;
pub mod plugin;
pub mod relayhost;
pub mod secret_volume;
pub mod user_path;
