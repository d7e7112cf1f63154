//! What the operator sees of the cluster between reconciles: the watches' metadata caches and
//! the fingerprint read from them, which relays an object concerns, and a relay pod's queue
//! read from its metrics endpoint. Nothing here writes.

pub mod fingerprint;
pub mod mapping;
pub mod scrape;
