//! Backing up one disk: the worker that runs a backup from mount to unmount
//! on its own thread, the scripts it runs, and the words it shares with the
//! history, the mail reports and the events ([`report`]).

pub mod drill;
pub mod identity;
pub mod report;
pub mod scripts;
mod worker;

pub use worker::{hostname, mount_known, run, Cancel, Progress};
