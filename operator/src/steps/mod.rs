//! The reconcile's steps, one file (or folder) each, called in this order by
//! [`crate::controller::reconcile`].

pub mod apply;
pub mod build;
pub mod certificate;
pub mod deletion;
pub mod drain;
pub mod judge;
pub mod report;
pub mod resolve;
pub mod rollout;
pub mod writeback;
