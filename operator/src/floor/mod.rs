//! The ground floor: the nouns every step shares and none owns. Nothing here calls the API.

pub mod contract;
pub mod crd;
pub mod error;
pub mod inputs;
pub mod owned;
pub mod running;
pub mod verdict;
