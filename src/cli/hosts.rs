//! `hosts` (list, `key`, `trust`, `check`) and `pull`: the site's other
//! machines, pulled over SSH with rsync.

use std::collections::HashSet;
use std::io::{BufRead, IsTerminal, Write};
use std::path::PathBuf;
use std::process::{Command, ExitCode};
use std::time::Instant;

use anyhow::{bail, Result};
use clap::{Args, Subcommand};

use super::engines::EXIT_PARTIAL;

/// Exit code of `pull` when a host failed (the others were pulled): not 1,
/// which says the pull itself could not run.
pub const EXIT_HOST_FAILED: u8 = 6;
use crate::config::{Config, Host};
use crate::engine::human;
use crate::engine::journal::Pulled;
use crate::engine::snapshot::LinkDest;
use crate::hosts::pull;
use crate::hosts::ssh::{self, Offered, Ssh};
use crate::store::history::History;

#[derive(Args, Debug, PartialEq)]
pub struct HostsArgs {
    #[command(subcommand)]
    pub command: Option<HostsCommand>,
}

#[derive(Subcommand, Debug, PartialEq)]
pub enum HostsCommand {
    /// Print our public key, and the authorized_keys line to put on each host
    #[command(after_help = "Example:\n  tetras-back hosts key\n\n\
        The key pair (ed25519) is made the first time, in <state_dir>/ssh/. A host without \
        `before` commands gets a line limited to `rrsync -ro /`: read-only, no shell.")]
    Key,
    /// Connect to a host and pin the host key it shows (asks first)
    #[command(after_help = "Examples:\n  tetras-back hosts trust web1\n  \
        tetras-back hosts trust web1 --fingerprint SHA256:2r9mJc...\n  \
        tetras-back hosts trust web1 --replace\n\n\
        Compare the fingerprint with the host's own (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` \
        there). A jump host's key is pinned at the same time. A host whose key changed (reinstalled) \
        is trusted again with --replace; without it a changed key is refused.")]
    Trust {
        /// A host of [[hosts]]
        name: String,
        /// Pin without asking if the host's key has this fingerprint (repeat it for a jump host's)
        #[arg(long, value_name = "SHA256:...")]
        fingerprint: Vec<String>,
        /// Forget the key pinned for this host first (it was reinstalled)
        #[arg(long)]
        replace: bool,
    },
    /// Connect and say what is wrong: unreachable, host key, our key, rsync, the paths
    #[command(after_help = "Examples:\n  tetras-back hosts check web1\n  tetras-back hosts check\n\n\
        Without a name, every host is checked. Exit code 1: something is wrong (said on the host's line).")]
    Check {
        /// A host of [[hosts]] (default: all)
        name: Option<String>,
    },
}

#[derive(Args, Debug, PartialEq)]
pub struct PullArgs {
    /// Hosts of [[hosts]] to pull
    #[arg(value_name = "NAME", required_unless_present = "all")]
    names: Vec<String>,
    /// Every host of [[hosts]]
    #[arg(long, conflicts_with = "names")]
    all: bool,
    /// The backup folder: each host goes into DIR/NAME (written as NAME.partial, renamed when complete)
    #[arg(long, value_name = "DIR")]
    dest: PathBuf,
    /// Hard-link files unchanged since this backup folder's DIR/NAME; `auto`: the
    /// newest complete one among the dated folders beside DIR
    #[arg(long, value_name = "PREV|auto")]
    link_dest: Option<PathBuf>,
    /// Hosts pulled at the same time
    #[arg(short, long, value_name = "N", default_value_t = 2)]
    jobs: usize,
    /// Only estimate the bytes that would be written (`needed_bytes`)
    #[arg(short = 'n', long)]
    dry_run: bool,
    /// Print the summary as JSON
    #[arg(long)]
    json: bool,
}

/// `confine`: what `pull` runs rsync under (hidden).
#[derive(Args, Debug, PartialEq)]
pub struct ConfineArgs {
    /// May write anything beneath this folder
    #[arg(long, value_name = "DIR")]
    write: Vec<PathBuf>,
    /// May read, and hard-link from, beneath this folder
    #[arg(long, value_name = "DIR")]
    link_from: Vec<PathBuf>,
    /// May read this file
    #[arg(long, value_name = "FILE")]
    read: Vec<PathBuf>,
    /// The command
    #[arg(last = true, required = true, value_name = "COMMAND")]
    command: Vec<std::ffi::OsString>,
}

pub fn confine(a: ConfineArgs) -> Result<ExitCode> {
    let allowed = crate::hosts::confine::Allowed { write: &a.write, link_from: &a.link_from, read: &a.read };
    crate::hosts::confine::exec(&allowed, &a.command)?;
    unreachable!("exec returns only on failure")
}

pub fn hosts(config: &Config, a: HostsArgs) -> Result<ExitCode> {
    let ssh = Ssh::new(config);
    match a.command {
        None => list(config, &ssh),
        Some(HostsCommand::Key) => key(config, &ssh),
        Some(HostsCommand::Trust { name, fingerprint, replace }) => {
            trust(&ssh, config.host(&name).map_err(anyhow::Error::msg)?, &fingerprint, replace)
        }
        Some(HostsCommand::Check { name }) => {
            let hosts: Vec<&Host> = match &name {
                Some(n) => vec![config.host(n).map_err(anyhow::Error::msg)?],
                None => config.hosts.iter().collect(),
            };
            if hosts.is_empty() {
                bail!("{}", no_hosts(config));
            }
            ssh.write_config(&config.hosts)?;
            let mut ok = true;
            for h in hosts {
                match check(&ssh, h) {
                    Ok(line) => println!("{}: ok: {line}", h.name),
                    Err(why) => {
                        ok = false;
                        println!("{}: {why}", h.name);
                    }
                }
            }
            Ok(if ok { ExitCode::SUCCESS } else { ExitCode::FAILURE })
        }
    }
}

fn no_hosts(config: &Config) -> String {
    match &config.source {
        Some(f) => format!("{} has no [[hosts]]", f.display()),
        None => "there is no configuration file, so no [[hosts]]".into(),
    }
}

fn list(config: &Config, ssh: &Ssh) -> Result<ExitCode> {
    if config.hosts.is_empty() {
        println!("No hosts: {} (see `[[hosts]]` in tetras-back.toml(5)).", no_hosts(config));
        return Ok(ExitCode::SUCCESS);
    }
    let pulls = match History::open_read_only(&config.history_path()) {
        Ok(Some(h)) => h.last_pulls()?,
        Ok(None) => Vec::new(),
        Err(e) => return Err(e),
    };
    println!("{:<16} {:<32} {:<8} LAST PULL", "HOST", "ADDRESS", "TRUSTED");
    for h in &config.hosts {
        let mut address = format!("{}@{}", h.user, h.known_as());
        if let Some(j) = &h.jump {
            address.push_str(&format!(" via {j}"));
        }
        let trusted = if ssh.pinned(&h.known_as()).is_empty() { "no" } else { "yes" };
        let last = match pulls.iter().find(|(_, _, p)| p.name == h.name) {
            None => "never".to_owned(),
            Some((when, disk, p)) => format!(
                "{} onto {disk}: {}",
                when.format("%Y-%m-%d %H:%M"),
                crate::logging::printable(&crate::store::report::host_lines(p, crate::lang::Language::En).0)
            ),
        };
        println!("{:<16} {:<32} {:<8} {last}", h.name, address, trusted);
        println!("{:<16} paths: {}", "", h.paths.join(" "));
    }
    Ok(ExitCode::SUCCESS)
}

fn key(config: &Config, ssh: &Ssh) -> Result<ExitCode> {
    let public = ssh.ensure_key()?;
    println!("Our public key ({}.pub):\n{public}\n", ssh.key.display());
    if config.hosts.is_empty() {
        println!("No [[hosts]] yet: {}.", no_hosts(config));
        return Ok(ExitCode::SUCCESS);
    }
    println!("On each host, add this line to ~USER/.ssh/authorized_keys:");
    let mut jumps: Vec<(String, String)> = Vec::new();
    for h in &config.hosts {
        println!();
        if h.before.is_empty() {
            println!(
                "{} ({}@{}): read-only, no shell (rrsync ships with Debian's rsync):",
                h.name, h.user, h.address
            );
            println!("restrict,command=\"rrsync -ro /\" {public}");
        } else {
            println!(
                "{} ({}@{}): its `before` commands need a shell, so this key cannot be limited to rrsync \
                 (restricted to no forwarding and no terminal):",
                h.name, h.user, h.address
            );
            println!("restrict {public}");
        }
        if let Some(j) = &h.jump {
            for hop in j.split(',') {
                jumps.push((hop.to_owned(), format!("{}:{}", h.address, h.port)));
            }
        }
    }
    for (hop, target) in jumps {
        println!(
            "\nJump host {hop}: only forwarding to {target}, no shell:\n\
             restrict,port-forwarding,permitopen=\"{target}\",command=\"/bin/false\" {public}"
        );
    }
    println!("\nThen pin each host's key: tetras-back hosts trust NAME");
    Ok(ExitCode::SUCCESS)
}

fn trust(ssh: &Ssh, host: &Host, fingerprints: &[String], replace: bool) -> Result<ExitCode> {
    let confirm = |offered: &[Offered]| -> Result<bool> {
        for o in offered {
            println!("{} offers the {} host key {}", o.host, o.kind, o.fingerprint);
        }
        if !fingerprints.is_empty() {
            let given: HashSet<&str> = fingerprints.iter().map(|f| f.trim()).collect();
            if let Some(o) = offered.iter().find(|o| !given.contains(o.fingerprint.as_str())) {
                bail!(
                    "{} offers {}, which is not a fingerprint given ({}): nothing was written",
                    o.host,
                    o.fingerprint,
                    fingerprints.join(", ")
                );
            }
            return Ok(true);
        }
        if !std::io::stdin().is_terminal() {
            bail!(
                "not on a terminal: compare the fingerprint with the host's own \
                 (`ssh-keygen -lf /etc/ssh/ssh_host_ed25519_key.pub` there) and give it with --fingerprint"
            );
        }
        print!("Is this {}'s key (compare it on the host)? Trust it [y/N] ", host.name);
        std::io::stdout().flush()?;
        let mut answer = String::new();
        std::io::stdin().lock().read_line(&mut answer)?;
        Ok(matches!(answer.trim(), "y" | "Y" | "yes"))
    };
    let pinned = ssh.trust(host, replace, confirm)?;
    println!(
        "pinned {} key{} in {}; check the connection with `tetras-back hosts check {}`",
        pinned.len(),
        if pinned.len() == 1 { "" } else { "s" },
        ssh.known_hosts.display(),
        host.name
    );
    Ok(ExitCode::SUCCESS)
}

/// Connects to `host` as a pull would: what works, or the first thing that does not.
fn check(s: &Ssh, host: &Host) -> Result<String, String> {
    if s.public_key().map_err(|e| e.to_string())?.is_none() {
        return Err("no SSH key yet: run `tetras-back hosts key`".into());
    }
    // Not pinned yet: the connection says whether it is reachable at all.
    let pinned = s.pinned(&host.known_as());
    let deadline = Instant::now() + ssh::CONNECT_TIMEOUT * 3;
    let mut cmd = Command::new("rsync");
    cmd.env("LC_ALL", "C")
        .arg("-e")
        .arg(Ssh::rsync_shell(&["-F".into(), s.config.display().to_string()]))
        .args(["--list-only", "-d"]);
    for p in &host.paths {
        cmd.arg(format!("{}:{p}", ssh::alias(host)));
    }
    let ran = crate::hosts::run(cmd, deadline).map_err(|e| format!("{e:#}"))?;
    match ran.code() {
        Some(0) => {}
        Some(23) => {
            let missing: Vec<&str> =
                ran.stderr.iter().filter(|l| l.starts_with("rsync: ")).map(|l| l.as_str()).collect();
            return Err(format!("connected, but some paths cannot be read there: {}", missing.join("; ")));
        }
        _ => return Err(s.reason(host, &ran)),
    }
    if !host.before.is_empty() {
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&s.config).arg(ssh::alias(host)).arg("true");
        let ran = crate::hosts::run(cmd, deadline).map_err(|e| format!("{e:#}"))?;
        if !ran.success() {
            let why = if ran.stderr.iter().any(|l| l.contains("does not run rsync")) {
                "our key there is limited to rrsync".to_owned()
            } else {
                s.reason(host, &ran)
            };
            return Err(format!("rsync works, but its `before` commands cannot run: {why}"));
        }
    }
    Ok(format!(
        "{}@{} answers with the pinned key {}; rsync reads its {} path{}{}",
        host.user,
        host.known_as(),
        pinned.join(", "),
        host.paths.len(),
        if host.paths.len() == 1 { "" } else { "s" },
        if host.before.is_empty() { "" } else { "; its `before` commands can run" }
    ))
}

pub fn pull(config: &Config, a: PullArgs) -> Result<ExitCode> {
    let hosts: Vec<Host> = if a.all {
        if config.hosts.is_empty() {
            bail!("{}", no_hosts(config));
        }
        config.hosts.clone()
    } else {
        a.names.iter().map(|n| config.host(n).cloned().map_err(anyhow::Error::msg)).collect::<Result<_>>()?
    };
    let link_dest =
        a.link_dest.map(|p| if p.as_os_str() == "auto" { LinkDest::Auto } else { LinkDest::Path(p) });
    let opts = pull::Options { dest: a.dest, link_dest, jobs: a.jobs, dry_run: a.dry_run };
    let s = pull::run_all(&Ssh::new(config), &config.hosts, &hosts, &opts)?;
    if a.json {
        println!("{}", serde_json::to_string(&s)?);
    } else if s.dry_run {
        println!("would write about {} for {} host(s)", human(s.needed_bytes), s.hosts.len());
    } else {
        let pulled = s.hosts.iter().filter(|h| h.outcome != Pulled::Failed).count();
        println!(
            "pulled {pulled} of {} host(s) into {} in {:.0}s",
            s.hosts.len(),
            s.dest.display(),
            s.seconds
        );
    }
    if s.dry_run {
        return Ok(ExitCode::SUCCESS);
    }
    if s.failed() > 0 {
        eprintln!("tetras-back: {} host(s) failed (said above); the others are complete", s.failed());
        return Ok(ExitCode::from(EXIT_HOST_FAILED));
    }
    if s.partial() {
        eprintln!("tetras-back: some files could not be read on the hosts (named above); the rest is saved");
        return Ok(ExitCode::from(EXIT_PARTIAL));
    }
    Ok(ExitCode::SUCCESS)
}
