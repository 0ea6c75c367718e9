//! Our side of SSH: one key pair in `<state_dir>/ssh/` (made once), the host
//! keys we trust in `<state_dir>/ssh/known_hosts` (pinned by `hosts
//! trust`, never learned on the way), and one `ssh_config` written from
//! `[[hosts]]` that every connection uses, ProxyJump hops included (OpenSSH
//! passes `-F` on to them, not `-o`).
//!
//! Every connection is `BatchMode`, `StrictHostKeyChecking yes` against our
//! file only, with a connect timeout and keep-alives: no prompt can ever
//! block a backup, and a dead connection ends.

use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};

use super::process::{run, Ran};
use crate::config::{Config, Host};
use crate::store::state;

/// How long a connection may take to be set up.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(20);
/// Keep-alives: a connection silent for 4 × 15 s is dead.
const ALIVE_INTERVAL: u32 = 15;
const ALIVE_COUNT: u32 = 4;

/// The key pair and trust of this server.
pub struct Ssh {
    pub dir: PathBuf,
    pub key: PathBuf,
    pub known_hosts: PathBuf,
    /// Our ssh_config.
    pub config: PathBuf,
}

/// The name a host goes by in our ssh_config.
pub fn alias(host: &Host) -> String {
    format!("tetras-back--{}", host.name)
}

/// How a connection treats a host key it does not know.
#[derive(Clone, Copy, PartialEq)]
enum Unknown {
    /// Refused: every connection but `hosts trust`'s.
    Refuse,
    /// Written into the first known_hosts file, to be shown and confirmed.
    Learn,
}

impl Ssh {
    pub fn new(config: &Config) -> Ssh {
        let dir = config.ssh_dir();
        Ssh {
            key: dir.join("id_ed25519"),
            known_hosts: dir.join("known_hosts"),
            config: dir.join("ssh_config"),
            dir,
        }
    }

    /// Our public key line, made (ed25519, no passphrase, 0600 in a 0700
    /// folder) the first time.
    pub fn ensure_key(&self) -> Result<String> {
        state::private_dir("state_dir/ssh", &self.dir)?;
        if !self.key.exists() {
            let comment = format!("tetras-back@{}", nix::unistd::gethostname()?.to_string_lossy());
            let out = Command::new("ssh-keygen")
                .args(["-q", "-t", "ed25519", "-N", "", "-C", &comment, "-f"])
                .arg(&self.key)
                .output()
                .context("cannot run ssh-keygen (Debian: openssh-client)")?;
            if !out.status.success() {
                bail!("ssh-keygen failed: {}", String::from_utf8_lossy(&out.stderr).trim());
            }
        }
        self.public_key()?.context("the public key is missing")
    }

    /// Our public key line, if the key pair was made.
    pub fn public_key(&self) -> Result<Option<String>> {
        let public = self.key.with_extension("pub");
        match std::fs::read_to_string(&public) {
            Ok(t) => Ok(Some(t.trim().to_owned())),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
            Err(e) => Err(e).with_context(|| public.display().to_string()),
        }
    }

    /// Writes our ssh_config for `hosts` (rewritten at each use: it follows
    /// the configuration).
    pub fn write_config(&self, hosts: &[Host]) -> Result<&Path> {
        state::private_dir("state_dir/ssh", &self.dir)?;
        let text = self.config_text(hosts, Unknown::Refuse, &[&self.known_hosts]);
        state::write_atomic(&self.config, 0o600, text.as_bytes())
            .with_context(|| format!("cannot write {}", self.config.display()))?;
        Ok(&self.config)
    }

    fn config_text(&self, hosts: &[Host], unknown: Unknown, known_hosts: &[&Path]) -> String {
        let q = |p: &Path| format!("\"{}\"", p.display());
        let files: Vec<String> = known_hosts.iter().map(|p| q(p)).collect();
        let mut t = String::from("# Written by tetras-back from [[hosts]]; rewritten at each use.\n");
        for h in hosts {
            let _ = writeln!(
                t,
                "Host {}\n  HostName {}\n  Port {}\n  User {}",
                alias(h),
                h.address,
                h.port,
                h.user
            );
            if let Some(j) = &h.jump {
                let _ = writeln!(t, "  ProxyJump {j}");
            }
        }
        let strict = match unknown {
            Unknown::Refuse => "yes",
            Unknown::Learn => "accept-new",
        };
        let _ = write!(
            t,
            "Host *\n  BatchMode yes\n  StrictHostKeyChecking {strict}\n  UserKnownHostsFile {}\n  \
             GlobalKnownHostsFile /dev/null\n  UpdateHostKeys no\n  HashKnownHosts no\n  CheckHostIP no\n  \
             IdentityFile {}\n  IdentitiesOnly yes\n  IdentityAgent none\n  PasswordAuthentication no\n  \
             KbdInteractiveAuthentication no\n  ConnectTimeout {}\n  ConnectionAttempts 1\n  \
             ServerAliveInterval {ALIVE_INTERVAL}\n  ServerAliveCountMax {ALIVE_COUNT}\n  ForwardAgent no\n  \
             ForwardX11 no\n  ControlMaster no\n  ControlPath none\n  RequestTTY no\n",
            files.join(" "),
            q(&self.key),
            CONNECT_TIMEOUT.as_secs(),
        );
        t
    }

    /// `ssh ARGS...`, the remote shell of an rsync: each argument quoted
    /// for rsync's `-e`.
    pub fn rsync_shell<S: AsRef<str>>(args: &[S]) -> String {
        let quoted: Vec<String> =
            args.iter().map(|a| format!("'{}'", a.as_ref().replace('\'', "'\\''"))).collect();
        format!("ssh {}", quoted.join(" "))
    }

    /// The fingerprints pinned for `known_as` (`address` or `[address]:port`).
    pub fn pinned(&self, known_as: &str) -> Vec<String> {
        fingerprints(&self.known_hosts, Some(known_as))
    }

    /// Why a connection to `host` failed, from ssh's and rsync's words.
    pub fn reason(&self, host: &Host, ran: &Ran) -> String {
        if ran.timed_out() {
            let secs = std::time::Duration::from_secs(ran.ran_for.as_secs());
            return format!("timed out after {}", humantime::format_duration(secs));
        }
        let all = ran.stderr.join("\n");
        let has = |s: &str| all.contains(s);
        if has("REMOTE HOST IDENTIFICATION HAS CHANGED") {
            let offered = offered_fingerprint(&ran.stderr).unwrap_or_else(|| "another key".into());
            // "Host key for [127.0.0.1]:2222 has changed and ...": whose.
            let whose = ran.stderr.iter().find_map(|l| {
                l.split_once("Host key for ")?.1.split_once(" has changed").map(|(w, _)| w.trim().to_owned())
            });
            if let Some(jump) = whose.filter(|w| *w != host.known_as()) {
                let pinned = self.pinned(&jump);
                let pinned = if pinned.is_empty() { "the pinned key".into() } else { pinned.join(", ") };
                return format!(
                    "the host key of {jump}, the jump host on the way, changed: we trust {pinned}, it now offers \
                     {offered}; nothing was pulled. If it was reinstalled, check the new key there and run \
                     `tetras-back hosts trust {} --replace`",
                    host.name
                );
            }
            let pinned = self.pinned(&host.known_as());
            let pinned = if pinned.is_empty() { "the pinned key".into() } else { pinned.join(", ") };
            return format!(
                "its host key changed: we trust {pinned}, it now offers {offered}; nothing was pulled. If {} \
                 was reinstalled, check the new key there and run `tetras-back hosts trust {} --replace`",
                host.name, host.name
            );
        }
        if has("Host key verification failed")
            || has("No ED25519 host key is known")
            || has("host key is known for")
        {
            return format!(
                "its host key is not trusted yet (or a jump host's): run `tetras-back hosts trust {}`",
                host.name
            );
        }
        if has("Permission denied (") {
            return format!(
                "our key is refused by {}@{} (or by a jump host): add the line `tetras-back hosts key` prints \
                 to its authorized_keys",
                host.user, host.address
            );
        }
        if has("stdio forwarding failed") {
            let line = ran.stderr.iter().find(|l| l.contains("open failed")).map(|l| l.trim()).unwrap_or("");
            return format!("the jump host could not reach it: {line}");
        }
        for unreachable in [
            "Connection refused",
            "No route to host",
            "Network is unreachable",
            "Could not resolve hostname",
            "Name or service not known",
            "Connection timed out",
            "Operation timed out",
        ] {
            if has(unreachable) {
                let line =
                    ran.stderr.iter().find(|l| l.contains(unreachable)).map(|l| l.trim()).unwrap_or("");
                return format!("unreachable: {line}");
            }
        }
        if ran.code() == Some(127) || has("rsync: command not found") || has("rsync: not found") {
            return "rsync is not installed there (Debian: apt-get install rsync)".into();
        }
        if has("timeout waiting") || ran.code() == Some(30) {
            return "the connection stalled (no data for the I/O timeout)".into();
        }
        match (ran.last_error(), ran.code()) {
            (Some(line), Some(code)) => format!("exit {code}: {line}"),
            (Some(line), None) => line.to_owned(),
            (None, Some(code)) => format!("exit {code}"),
            (None, None) => "killed".into(),
        }
    }

    /// `hosts trust NAME`: connects once, learning the host key(s) offered
    /// (the jump hosts' too) into a scratch file; they are pinned only
    /// when `confirm` accepts their fingerprints. `replace`: the keys
    /// pinned for this host are forgotten first (a reinstalled host).
    pub fn trust(
        &self,
        host: &Host,
        replace: bool,
        confirm: impl Fn(&[Offered]) -> Result<bool>,
    ) -> Result<Vec<Offered>> {
        state::private_dir("state_dir/ssh", &self.dir)?;
        if !self.key.exists() {
            self.ensure_key()?;
        }
        let scratch = tempfile::Builder::new().prefix("trust.").tempdir_in(&self.dir)?;
        let learned = scratch.path().join("known_hosts");
        // What we trust, less this host's keys (and its jump hosts') with
        // --replace: only written back once the new keys are confirmed.
        let kept = scratch.path().join("known_hosts.kept");
        match std::fs::copy(&self.known_hosts, &kept) {
            Ok(_) => {}
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => std::fs::write(&kept, "")?,
            Err(e) => return Err(e).with_context(|| self.known_hosts.display().to_string()),
        }
        if replace {
            for name in std::iter::once(host.known_as()).chain(host.jump_known_as()) {
                let out = Command::new("ssh-keygen").arg("-R").arg(&name).arg("-f").arg(&kept).output()?;
                if !out.status.success() {
                    bail!("ssh-keygen -R {name}: {}", String::from_utf8_lossy(&out.stderr).trim());
                }
            }
        }
        let cfg = scratch.path().join("ssh_config");
        let text = self.config_text(std::slice::from_ref(host), Unknown::Learn, &[&learned, &kept]);
        std::fs::write(&cfg, text)?;
        let mut cmd = Command::new("ssh");
        cmd.arg("-F").arg(&cfg).arg(alias(host)).arg("exit");
        let ran = run(cmd, Instant::now() + CONNECT_TIMEOUT * 3, None)?;
        let offered: Vec<Offered> = fingerprints_full(&learned);
        if offered.is_empty() {
            let pinned = fingerprints(&kept, Some(&host.known_as()));
            let all = ran.stderr.join("\n");
            if all.contains("REMOTE HOST IDENTIFICATION HAS CHANGED") {
                bail!("{}", self.reason(host, &ran));
            }
            if !pinned.is_empty() && !all.contains("Host key verification failed") {
                bail!("{} is already trusted: {}", host.name, pinned.join(", "));
            }
            bail!("could not get {}'s host key: {}", host.name, self.reason(host, &ran));
        }
        if !confirm(&offered)? {
            bail!("not trusted: nothing was written");
        }
        let mut text = std::fs::read_to_string(&kept)?;
        if !text.is_empty() && !text.ends_with('\n') {
            text.push('\n');
        }
        text.push_str(&std::fs::read_to_string(&learned)?);
        state::write_atomic(&self.known_hosts, 0o600, text.as_bytes())
            .with_context(|| format!("cannot write {}", self.known_hosts.display()))?;
        Ok(offered)
    }
}

/// A host key offered at `hosts trust`.
#[derive(Debug, Clone, PartialEq)]
pub struct Offered {
    /// As known_hosts names it.
    pub host: String,
    /// `ED25519`, ...
    pub kind: String,
    /// `SHA256:...`
    pub fingerprint: String,
}

/// The keys of a known_hosts file, by `ssh-keygen -l`.
fn fingerprints_full(file: &Path) -> Vec<Offered> {
    let Ok(out) = Command::new("ssh-keygen").arg("-l").arg("-f").arg(file).output() else {
        return Vec::new();
    };
    // "256 SHA256:... [127.0.0.1]:2222 (ED25519)"
    String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| {
            let mut w = l.split_whitespace();
            let _bits = w.next()?;
            let fingerprint = w.next()?.to_owned();
            let host = w.next()?.to_owned();
            let kind = w.next()?.trim_matches(['(', ')']).to_owned();
            fingerprint.starts_with("SHA256:").then_some(Offered { host, kind, fingerprint })
        })
        .collect()
}

/// The fingerprints of `file`'s keys (for `known_as` only, when given).
fn fingerprints(file: &Path, known_as: Option<&str>) -> Vec<String> {
    fingerprints_full(file)
        .into_iter()
        .filter(|o| known_as.is_none_or(|k| o.host.split(',').any(|h| h == k)))
        .map(|o| o.fingerprint)
        .collect()
}

/// The fingerprint ssh says the host sent, when the key changed.
fn offered_fingerprint(stderr: &[String]) -> Option<String> {
    let at = stderr.iter().position(|l| l.contains("sent by the remote host is"))?;
    stderr[at..]
        .iter()
        .flat_map(|l| l.split_whitespace())
        .find(|w| w.starts_with("SHA256:"))
        .map(|w| w.trim_end_matches('.').to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_offered_fingerprint_is_read_from_ssh_s_warning() {
        let lines: Vec<String> = [
            "@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@@",
            "@    WARNING: REMOTE HOST IDENTIFICATION HAS CHANGED!     @",
            "The fingerprint for the ED25519 key sent by the remote host is",
            "SHA256:abcDEF123.",
        ]
        .map(String::from)
        .to_vec();
        assert_eq!(offered_fingerprint(&lines).as_deref(), Some("SHA256:abcDEF123"));
        assert_eq!(offered_fingerprint(&lines[..2]), None);
    }

    #[test]
    fn the_rsync_shell_is_quoted_for_rsync() {
        assert_eq!(
            Ssh::rsync_shell(&["-F", "/var/lib/t b/ssh_config", "it's"]),
            "ssh '-F' '/var/lib/t b/ssh_config' 'it'\\''s'"
        );
    }
}
