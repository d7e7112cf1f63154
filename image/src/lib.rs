//! Configure Postfix as a relay restricted to one domain, and run it.

pub mod config_file;
pub mod drain;
pub mod error;
pub mod guard;
pub mod http_server;
pub mod inputs;
pub mod kube_api;
pub mod liveness;
pub mod metrics;
pub mod oauth2;
pub mod postfix;
pub mod run;
pub mod sasl;
pub mod settings;
pub mod smtp_client;
pub mod validate;
