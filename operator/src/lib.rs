//! smtp-relay-operator: turns one `SmtpRelay` resource into a running, secure, durable Postfix
//! relay (ConfigMap, owned Secrets, StatefulSet, Services, PodDisruptionBudget).
//!
//! # The reconcile, from the CRD to `main.cf`
//! [`watch`] runs the controller: its watches (and [`observe`], their caches) decide when a
//! relay is looked at,
//! and [`controller::reconcile`] (the driver) calls the steps in [`steps`], in this order:
//! 0. unchanged: [`observe::fingerprint`] hashes what the reconcile would read, from the
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
//!    [`steps::rollout`] sends a new configuration to one pod first, the others once its
//!    Postfix passed the self-check;
//! 6. [`steps::apply`] writes what changed or drifted and prunes what is no longer wanted
//!    ([`steps::writeback`] hands a rotated OAuth2 token on);
//! 7. [`steps::report`] computes status from what runs and publishes the Events of what
//!    changed; then the driver says when to look again.
//!
//! Every step shares the nouns of [`floor`] and owns none of them: the resource types
//! ([`floor::crd`]), the relay pod's contract ([`floor::contract`]: names, labels, ports,
//! which key of which owned Secret becomes which file), the kinds a relay owns
//! ([`floor::owned`]), what was read ([`floor::inputs`]), what runs ([`floor::running`]),
//! the verdict ([`floor::verdict`]: a `Plan`, the children to apply or the `Outcome` to
//! report) and the errors ([`floor::error`]: each wrapped with the step that failed).
//! [`context`] is what the reconciles share; [`observe`] what they see of the cluster
//! between reconciles; [`runtime`] the process around them (metrics, endpoints, leadership,
//! signals).
//! Postfix itself is the image's business: the operator writes the relay's config file
//! (`smtp_relay::config_file`), and the image turns it into `main.cf`.
//!
//! **One field, end to end** (`spec.tlsMinVersion`): [`floor::crd`] declares it (the
//! README's "regenerate the CRD" command then rewrites `crds/`, the chart's copy and
//! `deploy/`); [`steps::judge::relay_config`] writes it into the relay's config file, whose
//! type is `image/src/config_file.rs`; `image/src/inputs/file.rs` reads it into the relay's
//! settings and `image/src/postfix/main_cf.rs` renders the Postfix parameters;
//! [`steps::report::status`] computes the condition that says what is in force; the golden
//! files under `operator/tests/golden` and `image/tests` show both sides.
//!
//! **One child kind, end to end** (the PodDisruptionBudget): its variant of
//! [`floor::owned::OwnedKind`] says what the operator does to it (watched or not, deleted or
//! not, so its RBAC verbs); [`steps::build::pdb`] builds it and a field of
//! [`floor::verdict::Desired`] carries it; the compiler then asks for its `Owned` impl in
//! [`steps::apply`] (apply, drift, prune) and its arms in [`observe::fingerprint`]; [`watch`]
//! takes its selector from the list; the chart's RBAC (held by `e2e/tests/chart.rs`) and the
//! lifecycle's audit (`e2e/tests/operator_lifecycle.rs`) read the list too.
//!
//! # Floors
//! Each module imports only from floors below its own; the pure floors never touch an API
//! client. `tests/architecture.rs` reads this table and holds the code to it, so a change of
//! layout is a change here.
//!
//! | floor | kind | modules | what they are |
//! |---|---|---|---|
//! | 1 | pure | `floor::error` | the errors |
//! | 2 | pure | `floor::crd` | the resource types |
//! | 3 | pure | `floor::contract`, `floor::owned` | the relay pod's contract; the kinds it owns |
//! | 4 | pure | `floor::inputs`, `floor::running`, `floor::verdict` | what was read, what runs, the verdict |
//! | 5 | api | `runtime::backoff`, `runtime::leader`, `runtime::metrics`, `runtime::shutdown`, `runtime::telemetry`, `crdgen` | the process's parts |
//! | 5 | pure | `observe::mapping`, `observe::scrape` | which relays an object concerns; a pod's queue |
//! | 6 | api | `runtime::http`, `runtime::crd_upgrade` | the process's endpoints; the CRD's upgrade at startup |
//! | 6 | pure | `observe::fingerprint` | the watches' caches, and what changed |
//! | 7 | api | `runtime`, `context` | the process; what the reconciles share |
//! | 8 | pure | `steps::certificate`, `steps::judge::relay_config`, `steps::report::status` | first derivations |
//! | 9 | pure | `steps::judge`, `steps::build::*`, `steps::report::events` | the judge, the builders, the Events |
//! | 10 | pure | `steps::build` | the children of a relay |
//! | 11 | api | `steps::resolve`, `steps::apply`, `steps::report` | steps that read or write |
//! | 11 | pure | `steps::rollout` | the canary of a new configuration: the StatefulSet's partition |
//! | 12 | api | `steps::writeback`, `steps::drain` | steps over what was applied |
//! | 13 | api | `steps::deletion`, `watch::queue` | the drain on deletion; the queue observer |
//! | 14 | api | `controller` | the driver |
//! | 15 | api | `watch` | the controller's watches and run |
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
pub mod observe;
#[cfg(test)]
mod parity;
pub mod runtime;
pub mod steps;
pub mod watch;
