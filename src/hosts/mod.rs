//! The site's other machines (`[[hosts]]`), pulled over SSH with rsync onto
//! the disk being backed up: our key and the host keys we trust
//! ([`ssh`]), and the `pull` engine ([`pull`]) that the shipped
//! `backup_hosts.sh` calls. OpenSSH and rsync do the work; this room only
//! says what they may do, and reads what they answer.
//!
//! May import: `config` (the hosts), `engine` (partial folders, the
//! manifest, the journal), `fault`, `logging` (escaping what hosts print),
//! `lang` (the report's words), `store` (atomic writes, private folders,
//! a host's line).

pub mod confine;
mod process;
pub mod pull;
pub mod ssh;

use std::process::Command;
use std::time::Instant;

pub use process::Ran;

/// Runs `ssh` or `rsync` until it exits or `deadline` passes (see [`process`]).
pub fn run(cmd: Command, deadline: Instant) -> anyhow::Result<Ran> {
    process::run(cmd, deadline, None)
}
