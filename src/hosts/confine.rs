//! `tetras-back confine`: runs a command (the receiving rsync of a pull,
//! and the ssh it starts) under a Landlock ruleset, so that it can reach
//! only the host's new folder and the previous one it hard-links from, the
//! system's programs and libraries, and the few files given: nothing else
//! of the server (its keys, /etc/shadow, /root, other disks' data).
//!
//! rsync follows symbolic links in the folders it links from: a host that
//! planted `srv/leak -> /var/lib/tetras-back/ssh` in its previous backup
//! would otherwise have the backup server's own files copied into its new
//! one. Where Landlock is not available (not in the kernel, or refused by a
//! seccomp filter: the daemon's unit allows its calls), the command runs as
//! it is and says so; `pull` then relies on its own check (see
//! `engine::index`).

use std::ffi::OsString;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::{bail, Context, Result};
use landlock::{
    path_beneath_rules, Access, AccessFs, Ruleset, RulesetAttr, RulesetCreatedAttr, RulesetStatus, ABI,
};

/// Programs and libraries: read and executed, never written.
const SYSTEM: &[&str] = &["/usr", "/bin", "/sbin", "/lib", "/lib64"];
/// Files of /etc that rsync and ssh read (names, libraries, time zone).
const ETC: &[&str] = &[
    "/etc/ld.so.cache",
    "/etc/passwd",
    "/etc/group",
    "/etc/nsswitch.conf",
    "/etc/localtime",
    "/etc/hosts",
    "/etc/host.conf",
    "/etc/resolv.conf",
    "/etc/gai.conf",
];

/// What a confined command may touch.
pub struct Allowed<'a> {
    /// Everything beneath (the new folder).
    pub write: &'a [PathBuf],
    /// Hard-linked from (the previous folder): the same rights as `write`.
    pub link_from: &'a [PathBuf],
    /// Files that may be read (ssh's config).
    pub read: &'a [PathBuf],
}

/// Restricts this process to `allowed`, then replaces it with `command`.
/// Returns only on failure.
pub fn exec(allowed: &Allowed, command: &[OsString]) -> Result<()> {
    let Some((program, args)) = command.split_first() else { bail!("no command to confine") };
    let abi = ABI::V5;
    let all = AccessFs::from_all(abi);
    let read = AccessFs::from_read(abi);
    let existing =
        |paths: &[&str]| -> Vec<PathBuf> { paths.iter().map(PathBuf::from).filter(|p| p.exists()).collect() };
    let restricted = (|| {
        Ruleset::default()
            .handle_access(all)?
            .create()?
            .add_rules(path_beneath_rules(existing(SYSTEM), read))?
            .add_rules(path_beneath_rules(existing(ETC), AccessFs::ReadFile))?
            .add_rules(path_beneath_rules(allowed.read, AccessFs::ReadFile))?
            .add_rules(path_beneath_rules(["/dev/null"], AccessFs::ReadFile | AccessFs::WriteFile))?
            // Landlock lets a file be linked only into a place that grants
            // no more than where it is: the folder linked from gets the
            // same rights as the new one (rsync only reads it).
            .add_rules(path_beneath_rules(allowed.link_from, all))?
            .add_rules(path_beneath_rules(allowed.write, all))?
            .restrict_self()
    })();
    match restricted.map(|s| s.ruleset) {
        Ok(RulesetStatus::FullyEnforced) => {}
        Ok(RulesetStatus::PartiallyEnforced) => {
            eprintln!("tetras-back: this kernel's Landlock is older: {} is partly confined", shown(program))
        }
        Ok(RulesetStatus::NotEnforced) => eprintln!(
            "tetras-back: Landlock is not available here (not in this kernel, or refused by a seccomp filter): {} \
             runs unconfined (pull checks the previous folder's links instead)",
            shown(program)
        ),
        // A seccomp filter that refuses Landlock's calls, a path that vanished.
        Err(e) => eprintln!(
            "tetras-back: cannot confine {} ({e}): it runs unconfined (pull checks the previous folder's links instead)",
            shown(program)
        ),
    }
    let e = Command::new(program).args(args).exec();
    Err(e).with_context(|| format!("cannot run {}", shown(program)))
}

fn shown(p: &OsString) -> String {
    Path::new(p).display().to_string()
}
