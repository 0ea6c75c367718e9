//! Backing up one disk: the worker that runs a backup from mount to unmount
//! on its own thread, the scripts it runs (and the engines' children: the
//! restore drill), in the words of `store::report`.
//!
//! May import: `bus` (the inhibitor, power-off), `config`, `disk` (mount,
//! identity), `engine`, `fault`, `logging`, `store` (the report's words).

pub mod drill;
pub mod progress;
pub mod scripts;
mod worker;

pub use worker::{hostname, journal_path, mount_known, progress_path, run, Cancel, Progress};
