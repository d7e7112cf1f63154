//! Configure Postfix as a relay restricted to one domain, and run it.

pub mod config_file;
pub mod settings;
