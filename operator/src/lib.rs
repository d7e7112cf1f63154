//! smtp-relay-operator: turns one `SmtpRelay` resource into a running, secure, durable Postfix
//! relay (ConfigMap, owned Secrets, StatefulSet, Services, PodDisruptionBudget).
//!
//! # The reconcile, from the CRD to `main.cf`
//! [`watch`] runs the controller: its watches and caches decide when a relay is looked at,
//! and [`controller::reconcile`] (the driver) calls the steps in [`steps`], in this order:
//! 0. unchanged: [`watch::fingerprint`] hashes what the reconcile would read, from the
//!    watches' caches; when nothing changed, no request is made;
//! 1. read what runs: the StatefulSet and its pods (a relay being deleted goes to
//!    [`steps::deletion`], which drains it before its volumes go);
//! 2. [`steps::resolve`] reads the referenced Secrets and ConfigMaps (the only API reads
//!    before apply) into [`floor::inputs::Resolved`];
//! 3. [`steps::judge`] checks the spec, renders the relay's config file
//!    ([`steps::judge::relay_config`]) and has the relay image's own rules judge it: a
//!    `Validated` is the builders' only input;
//! 4. [`steps::build`] are pure functions from it to the children
//!    ([`floor::verdict::Desired`]);
//! 5. [`steps::drain`] keeps replicas being scaled away until they delivered their queues;
//! 6. [`steps::apply`] writes what changed or drifted and prunes what is no longer wanted
//!    ([`steps::writeback`] hands a rotated OAuth2 token on);
//! 7. [`steps::report`] computes status from what runs and publishes the Events of what
//!    changed; then the driver says when to look again.
//!
//! Every step shares the nouns of [`floor`] and owns none of them: the resource types
//! ([`floor::crd`]), the relay pod's contract ([`floor::contract`]: names, labels, ports,
//! which key becomes which file), what was read ([`floor::inputs`]), what runs
//! ([`floor::running`]), the verdict ([`floor::verdict`]: the children, or the
//! [`floor::verdict::Outcome`] to report) and the errors ([`floor::error`]). [`context`] is what the reconciles share;
//! [`runtime`] is the process around them (metrics, endpoints, leadership, signals).
//! Postfix itself is the image's business: the operator writes the relay's config file
//! (`smtp_relay::config_file`), and the image turns it into `main.cf`.
//!
//! **One field, end to end** (`spec.tlsMinVersion`): [`floor::crd`] declares it (the README's "regenerate the CRD"
//! command then rewrites `crds/`, the chart's copy and `deploy/`);
//! [`steps::judge::relay_config`] writes it into the relay's config file, whose type is
//! `image/src/config_file.rs`; `image/src/inputs/file.rs` reads it into the relay's settings
//! and `image/src/postfix/main_cf.rs` renders the Postfix parameters; [`steps::report::status`]
//! computes the condition that says what is in force; the golden files under
//! `operator/tests/golden` and `image/tests` show both sides.
//!
//! **One child kind, end to end** (the PodDisruptionBudget): [`steps::build::pdb`] builds it
//! and a field of [`floor::verdict::Desired`] carries it; [`steps::apply`] applies and prunes
//! it (its `Owned` impl); [`watch`] watches it and [`watch::fingerprint`] caches it; the
//! chart's RBAC (`charts/smtp-relay-operator/templates`, held by `e2e/tests/chart.rs`) grants
//! it, and `e2e/tests/operator_lifecycle.rs` lists it among the kinds the operator writes.
//!
//! # Floors
//! Each module imports only from floors below its own; the pure floors never touch an API
//! client. `tests/architecture.rs` reads this table and holds the code to it, so a change of
//! layout is a change here.
//!
//! | floor | kind | modules | what they are |
//! |---|---|---|---|
//! | 1 | pure | `floor::crd`, `floor::error` | the resource types; the errors |
//! | 2 | pure | `floor::contract` | the relay pod's contract |
//! | 3 | pure | `floor::inputs`, `floor::running`, `floor::verdict` | what was read, what runs, the verdict |
//! | 4 | pure | `steps::certificate`, `steps::judge::relay_config`, `steps::report::status`, `watch::mapping`, `crdgen` | first derivations |
//! | 5 | pure | `steps::judge`, `steps::build::*`, `steps::report::events` | judge, builders, Events |
//! | 6 | pure | `steps::build` | the children of a relay |
//! | 7 | api | `runtime::backoff`, `runtime::leader`, `runtime::metrics`, `runtime::shutdown`, `runtime::telemetry`, `watch::scrape` | the process's parts; reading a pod's queue |
//! | 8 | api | `runtime::http`, `watch::fingerprint` | endpoints; the watches' caches |
//! | 9 | api | `context` | what the reconciles share |
//! | 10 | api | `steps::resolve`, `steps::apply`, `steps::report` | steps that read or write |
//! | 11 | api | `steps::writeback`, `steps::drain` | |
//! | 12 | api | `steps::deletion`, `watch::queue` | |
//! | 13 | api | `controller` | the driver |
//! | 14 | api | `watch`, `runtime` | the controller's run; the process |
//!
//! Tests (`fixtures`, `golden`, `parity` and every `mod tests`) may reach any floor.

pub mod context;
pub mod controller;
pub mod crdgen;
#[cfg(test)]
mod fixtures;
pub mod floor;
#[cfg(test)]
mod golden;
#[cfg(test)]
mod parity;
pub mod runtime;
pub mod steps;
pub mod watch;

pub use floor::error::{Error, Result};
