//! Configure Postfix as a relay restricted to one domain, and run it.
//!
//! The modules in layers, under the binary (`main.rs`): each module imports only modules
//! listed below it, test code included, and modules on one line import none of each other.
//!
//! - `run`: the supervisor: applies the inputs, runs Postfix and the tasks beside it
//! - `sasl`, `drain`, `liveness`: the SASL users' database; the drain on SIGTERM; the liveness
//!   check
//! - `revision`: which configuration revision a pod runs, and its last good copy; the pod's
//!   downward-API annotations
//! - `inputs` (`file` above `env` above `inputs` itself): environment variables or the
//!   config file, turned into `settings::Settings`
//! - `validate`: syntax checks of input values
//! - `postfix`: `instance` above `relay_guard`, `main_cf`, `master_cf`, `restrictions`,
//!   `types`, `layout`, in this order
//! - `oauth2` (above its `rotation`): OAuth2 tokens for the relayhost login
//! - `kube_api`: the one Secret a pod reads and writes itself
//! - `metrics`: from the mail log and the spool
//! - `mail_log`: what a line of Postfix's mail log says (also read by the kubectl plugin)
//! - `http_client`, `http_server`: bounded HTTPS client and HTTP server
//! - `config_file`: `relay.yaml`, the file the operator writes
//! - `settings`: the plain nouns (modes, TLS levels, the relayhost, the OAuth2 login) and the
//!   validated `Settings`
//! - `json_error`, `error`, `smtp_client`, `guard`, `self_check`, `user_namespace` (and the
//!   test seam `created`): import nothing of the crate

pub mod config_file;
#[cfg(test)]
pub(crate) mod created;
pub mod drain;
pub mod error;
pub mod guard;
pub mod http_client;
pub mod http_server;
pub mod inputs;
pub mod json_error;
pub mod kube_api;
pub mod liveness;
pub mod local_socket;
pub mod mail_log;
pub mod metrics;
pub mod milter;
pub mod oauth2;
pub mod policy;
pub mod postfix;
pub mod revision;
pub mod run;
pub mod sasl;
pub mod self_check;
pub mod settings;
pub mod smtp_client;
pub mod user_namespace;
pub mod validate;
