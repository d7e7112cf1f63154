//! Everything that knows Postfix: which senders and recipients are accepted (`access`), which parameters the settings become (`main_cf`), which
//! services run (`master_cf`), what each relay mode means (`restrictions`), where a sandbox sends mail (`sandbox`), what may never open
//! the relay (`relay_guard`), which parameters Postfix knows and how it reads their values
//! (`types`), and how an instance is laid out on disk (`layout`) and controlled (`instance`).

pub mod access;
pub mod instance;
pub mod layout;
pub mod main_cf;
pub mod master_cf;
pub mod relay_guard;
pub mod restrictions;
pub mod sandbox;
pub mod types;
