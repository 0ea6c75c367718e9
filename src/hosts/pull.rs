//! `pull`: each host's paths into `DIR/NAME/` with rsync over ssh, their
//! absolute paths kept (`DIR/web1/etc/nginx/...`), unchanged files
//! hard-linked to the same host's folder in the previous backup.
//!
//! A host is written as `NAME.partial` and renamed once complete, with the
//! manifest a snapshot has (see `engine::index`), so everything that reads
//! snapshots reads it. One host's failure never touches another's folder;
//! a failed host leaves nothing behind. Each host's outcome is journaled
//! for the report as soon as it is known.

use std::os::fd::AsFd;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use anyhow::Result;
use serde::Serialize;

use super::process::{run, Ran};
use super::ssh::{alias, Ssh};
use crate::config::{Host, HostSide};
use crate::engine::fsx::{self, Partial};
use crate::engine::journal::{self, HostPull, Pulled};
use crate::engine::snapshot::{self, LinkDest};
use crate::engine::{index, manifest, progress};
use crate::lang::Language;

/// Where a host declares more of what to back up.
pub const HOST_D: &str = "/etc/tetras-back/host.d/";
/// host.d files larger than this are not fetched; more than this many are not read.
const HOST_D_MAX_SIZE: &str = "64K";
const HOST_D_MAX_FILES: usize = 100;
/// rsync's I/O timeout: a transfer that moves no data this long ends.
const IO_TIMEOUT: Duration = Duration::from_secs(600);

pub struct Options {
    pub dest: PathBuf,
    pub link_dest: Option<LinkDest>,
    /// Hosts pulled at the same time.
    pub jobs: usize,
    /// Only estimate what would be written.
    pub dry_run: bool,
}

/// What a pull did (or, with `--dry-run`, would write).
#[derive(Debug, Default, Serialize)]
pub struct Summary {
    pub dest: PathBuf,
    pub dry_run: bool,
    /// Bytes the pulls would write (the files new or changed since each
    /// host's previous folder): what the scripts make room for.
    pub needed_bytes: u64,
    pub hosts: Vec<HostPull>,
    pub seconds: f64,
}

impl Summary {
    pub fn failed(&self) -> usize {
        self.hosts.iter().filter(|h| h.outcome == Pulled::Failed).count()
    }

    pub fn partial(&self) -> bool {
        self.hosts.iter().any(|h| h.outcome == Pulled::Partial)
    }
}

/// Pulls `hosts` (some of `all`, the configuration's: our ssh_config names
/// every one, whoever else uses it meanwhile), `opts.jobs` at a time.
pub fn run_all(ssh: &Ssh, all: &[Host], hosts: &[Host], opts: &Options) -> Result<Summary> {
    let started = Instant::now();
    if ssh.public_key()?.is_none() {
        anyhow::bail!("no SSH key yet: run `tetras-back hosts key` and put its line on the hosts");
    }
    let config = ssh.write_config(all)?.to_owned();
    let dest = std::path::absolute(&opts.dest).unwrap_or_else(|_| opts.dest.clone());
    let next = AtomicUsize::new(0);
    let done: Mutex<Vec<(usize, HostPull)>> = Mutex::new(Vec::new());
    // Each host's files count in the backup's progress once it is in the journal.
    let run = |work: &dyn Fn()| if opts.dry_run { work() } else { progress::phase("pull", work) };
    run(&|| {
        std::thread::scope(|s| {
            for _ in 0..opts.jobs.clamp(1, hosts.len().max(1)) {
                s.spawn(|| loop {
                    let i = next.fetch_add(1, Ordering::SeqCst);
                    let Some(host) = hosts.get(i) else { break };
                    let pull = Pull { ssh, config: &config, host, dest: &dest, opts };
                    let outcome = pull.run();
                    let said = match (opts.dry_run, outcome.outcome) {
                        (true, Pulled::Done) => format!(
                            "{}: would write about {} ({} files new or changed)",
                            outcome.name,
                            crate::engine::human(outcome.bytes_written),
                            outcome.files
                        ),
                        _ => format!(
                            "{}: {}",
                            outcome.name,
                            crate::store::report::host_lines(&outcome, Language::En).0
                        ),
                    };
                    eprintln!("tetras-back: {}", crate::logging::printable(&said));
                    if !opts.dry_run {
                        journal::record(&journal::Entry::Pull(outcome.clone()));
                    }
                    done.lock().unwrap().push((i, outcome));
                });
            }
        })
    });
    let mut done = done.into_inner().unwrap();
    done.sort_by_key(|(i, _)| *i);
    let hosts: Vec<HostPull> = done.into_iter().map(|(_, h)| h).collect();
    Ok(Summary {
        dest,
        dry_run: opts.dry_run,
        needed_bytes: if opts.dry_run { hosts.iter().map(|h| h.bytes_written).sum() } else { 0 },
        hosts,
        seconds: started.elapsed().as_secs_f64(),
    })
}

struct Pull<'a> {
    ssh: &'a Ssh,
    config: &'a Path,
    host: &'a Host,
    dest: &'a Path,
    opts: &'a Options,
}

/// A failure of one host, in words.
type Why = String;

/// One ssh connection to a host that every command of its pull goes
/// through (ssh's ControlMaster): one authentication, one place where
/// the connection's failure is read. Stopped when dropped.
struct Master {
    child: std::process::Child,
    /// The control socket, in a private scratch folder.
    socket: PathBuf,
    _dir: tempfile::TempDir,
}

impl Master {
    fn start(pull: &Pull, deadline: Instant) -> Result<Master, Why> {
        let dir = tempfile::Builder::new()
            .prefix("tetras-back-ssh.")
            .tempdir()
            .map_err(|e| format!("cannot make a scratch folder: {e}"))?;
        let socket = dir.path().join("master");
        let mut child = Command::new("ssh")
            .arg("-F")
            .arg(pull.config)
            .args(["-o", "ControlMaster=yes", "-o", "ControlPersist=no", "-o"])
            .arg(format!("ControlPath={}", socket.display()))
            .args(["-N", &alias(pull.host)])
            .stdin(std::process::Stdio::null())
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::piped())
            .spawn()
            .map_err(|e| format!("cannot run ssh (Debian: openssh-client): {e}"))?;
        let stderr = child.stderr.take().expect("piped");
        let lines = std::thread::spawn(move || {
            use std::io::BufRead;
            std::io::BufReader::new(stderr).lines().map_while(Result::ok).take(1000).collect::<Vec<String>>()
        });
        let began = Instant::now();
        let connect_by = deadline.min(began + super::ssh::CONNECT_TIMEOUT * 2);
        loop {
            // The socket appears once the host is authenticated.
            if socket.exists() {
                // Its later words are only echoed if it fails.
                std::thread::spawn(move || drop(lines.join()));
                return Ok(Master { child, socket, _dir: dir });
            }
            let status = child.try_wait().map_err(|e| e.to_string())?;
            if status.is_some() || Instant::now() >= connect_by {
                let timed_out = status.is_none();
                let _ = child.kill();
                let status = child.wait().ok();
                let ran = Ran {
                    status: if timed_out { None } else { status },
                    stderr: lines.join().unwrap_or_default(),
                    ran_for: began.elapsed(),
                    ..Ran::default()
                };
                if timed_out && Instant::now() < deadline {
                    return Err(format!("could not connect within {}s", began.elapsed().as_secs()));
                }
                return Err(pull.why(&ran));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// ssh through this connection: for `-e` and for commands.
    fn ssh_args(&self, config: &Path) -> Vec<String> {
        vec![
            "-F".into(),
            config.display().to_string(),
            "-o".into(),
            "ControlMaster=no".into(),
            "-o".into(),
            format!("ControlPath={}", self.socket.display()),
        ]
    }
}

impl Drop for Master {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let _ = self.child.wait();
    }
}

/// What one host's transfer copies: its paths and exclusions (its entry's
/// and its host.d's), and the folder it links from.
struct What {
    paths: Vec<String>,
    exclude: Vec<String>,
    prev: Option<PathBuf>,
}

/// How a transfer ended when it did not.
enum Transfer {
    Failed(Why),
    /// Folders of the new tree that are symbolic links in the previous
    /// folder: rsync may have followed them while linking.
    FollowedLinks(Vec<PathBuf>),
}

impl Pull<'_> {
    /// Why a step failed: stopped by the host's `timeout` (every step of
    /// its pull shares it), or what ssh and rsync said.
    fn why(&self, ran: &Ran) -> Why {
        if ran.timed_out() {
            return format!(
                "timed out: its timeout ({}) passed",
                humantime::format_duration(self.host.timeout)
            );
        }
        self.ssh.reason(self.host, ran)
    }

    fn run(&self) -> HostPull {
        let started = Instant::now();
        let mut out = HostPull {
            name: self.host.name.clone(),
            outcome: Pulled::Failed,
            dest: None,
            files: 0,
            bytes: 0,
            bytes_written: 0,
            seconds: 0.0,
            vanished: 0,
            unreadable: Vec::new(),
            error: None,
        };
        if let Err(why) = self.pull(started + self.host.timeout, &mut out) {
            out.outcome = Pulled::Failed;
            out.error = Some(why);
        }
        out.seconds = started.elapsed().as_secs_f64();
        out
    }

    fn pull(&self, deadline: Instant, out: &mut HostPull) -> Result<(), Why> {
        let master = Master::start(self, deadline)?;
        let side = self.host_side(&master, deadline)?;
        let mut paths = self.host.paths.clone();
        for p in side.paths {
            if !paths.contains(&p) {
                paths.push(p);
            }
        }
        let exclude: Vec<String> = self.host.exclude.iter().chain(&side.exclude).cloned().collect();
        let before: Vec<String> = self.host.before.iter().chain(&side.before).cloned().collect();
        let at = self.dest.join(&self.host.name);
        let mut what = What { paths, exclude, prev: self.previous(&at) };
        if self.opts.dry_run {
            return self.estimate(&master, deadline, &what, out);
        }
        for command in &before {
            self.before(&master, command, deadline)?;
        }
        loop {
            let target = Partial::create_dir(&at, "--dest").map_err(|e| format!("{e:#}"))?;
            match self.transfer(&master, deadline, &what, &target, out) {
                Ok(()) => {
                    target.rename_into_place().map_err(|e| format!("{e:#}"))?;
                    out.dest = Some(at);
                    return Ok(());
                }
                Err(Transfer::Failed(why)) => {
                    drop_partial(target);
                    return Err(why);
                }
                Err(Transfer::FollowedLinks(links)) => {
                    drop_partial(target);
                    let shown: Vec<String> = links.iter().take(5).map(|l| l.display().to_string()).collect();
                    eprintln!(
                        "[{}] WARNING: {}: the previous backup has a symbolic link on the way where the host now \
                         has a folder (rsync would follow it out of the backup): pulling again without \
                         --link-dest, so that nothing is linked through it",
                        self.host.name,
                        crate::logging::printable(&shown.join(", ")),
                    );
                    what.prev = None;
                }
            }
        }
    }

    /// The same host's folder in the previous complete backup.
    fn previous(&self, at: &Path) -> Option<PathBuf> {
        match &self.opts.link_dest {
            None => None,
            Some(LinkDest::Auto) => snapshot::find_previous(at).ok().flatten(),
            Some(LinkDest::Path(p)) => {
                let p = std::path::absolute(p).ok()?.join(&self.host.name);
                fsx::open_dir_strict(&p).is_ok().then_some(p)
            }
        }
    }

    /// The rsync arguments every transfer of this host starts with: its
    /// remote shell through the master connection.
    fn rsync_args(&self, master: &Master) -> Vec<String> {
        let shell = Ssh::rsync_shell(&master.ssh_args(self.config));
        vec!["-e".into(), shell, format!("--timeout={}", IO_TIMEOUT.as_secs())]
    }

    fn rsync(&self, master: &Master) -> Command {
        let mut cmd = Command::new("rsync");
        cmd.env("LC_ALL", "C").args(self.rsync_args(master));
        cmd
    }

    fn remote(&self, path: &str) -> String {
        format!("{}:{path}", alias(self.host))
    }

    /// What the host declares in its own host.d, fetched read-only.
    fn host_side(&self, master: &Master, deadline: Instant) -> Result<HostSide, Why> {
        let scratch = tempfile::tempdir().map_err(|e| format!("cannot make a scratch folder: {e}"))?;
        let mut cmd = self.rsync(master);
        cmd.args(["-r", "--max-size", HOST_D_MAX_SIZE, "--include=*.toml", "--exclude=*"])
            .arg(self.remote(HOST_D))
            .arg(format!("{}/", scratch.path().display()));
        // Not echoed: a host without host.d is the usual case, not an error.
        let ran = run(cmd, deadline, None).map_err(|e| format!("{e:#}"))?;
        match ran.code() {
            Some(0) => {}
            // No host.d there (rsync says so with 23, rrsync with 12).
            Some(12 | 23)
                if ran
                    .stderr
                    .iter()
                    .any(|l| l.contains("host.d") && l.contains("No such file or directory")) =>
            {
                return Ok(HostSide::default())
            }
            _ => return Err(self.why(&ran)),
        }
        let mut names: Vec<PathBuf> = std::fs::read_dir(scratch.path())
            .map_err(|e| e.to_string())?
            .filter_map(|e| e.ok().map(|e| e.path()))
            .filter(|p| p.extension().is_some_and(|x| x == "toml") && p.is_file())
            .collect();
        names.sort();
        let mut side = HostSide::default();
        for file in names.into_iter().take(HOST_D_MAX_FILES) {
            let shown = crate::logging::printable(&format!(
                "{}{}",
                HOST_D,
                file.file_name().unwrap_or_default().to_string_lossy()
            ))
            .into_owned();
            let text = std::fs::read_to_string(&file).map_err(|e| format!("{shown} on the host: {e}"))?;
            let more = HostSide::parse(&text).map_err(|e| format!("{shown} on the host: {e}"))?;
            eprintln!(
                "[{}] {shown}: {} more paths, {} exclusions, {} commands",
                self.host.name,
                more.paths.len(),
                more.exclude.len(),
                more.before.len()
            );
            side.paths.extend(more.paths);
            side.exclude.extend(more.exclude);
            side.before.extend(more.before);
        }
        Ok(side)
    }

    /// Runs one `before` command on the host; its output goes to the log.
    fn before(&self, master: &Master, command: &str, deadline: Instant) -> Result<(), Why> {
        eprintln!("[{}] running on the host: {}", self.host.name, crate::logging::printable(command));
        let mut cmd = Command::new("ssh");
        cmd.args(master.ssh_args(self.config)).arg(alias(self.host)).arg("--").arg(command);
        let ran = run(cmd, deadline, Some(&self.host.name)).map_err(|e| format!("{e:#}"))?;
        for line in ran.stdout.lines() {
            eprintln!("[{}] {}", self.host.name, crate::logging::printable(line));
        }
        if ran.success() {
            return Ok(());
        }
        if ran.stderr.iter().any(|l| l.contains("does not run rsync")) {
            return Err(format!(
                "before command `{command}` cannot run: our key there is limited to rrsync (read-only); \
                 a host with `before` commands needs a key line without command=\"rrsync ...\""
            ));
        }
        let why = match ran.code() {
            // ssh's own failure: the connection, not the command.
            Some(255) | None => self.why(&ran),
            Some(code) => {
                format!("exit {code}{}", ran.last_error().map(|l| format!(": {l}")).unwrap_or_default())
            }
        };
        Err(format!("before command `{command}` failed: {why}"))
    }

    /// `attributes`: ACLs and extended attributes too (not for an estimate).
    fn transfer_args(&self, cmd: &mut Command, what: &What, attributes: bool) {
        cmd.args([if attributes { "-aHAXS" } else { "-aHS" }, "--numeric-ids", "--relative"]);
        for ours in [manifest::NAME, manifest::SHRUNK_NOTE] {
            cmd.arg(format!("--exclude=/{ours}"));
        }
        for e in &what.exclude {
            cmd.arg(format!("--exclude={e}"));
        }
        if let Some(p) = &what.prev {
            cmd.arg(format!("--link-dest={}", p.display()));
        }
        for p in &what.paths {
            cmd.arg(self.remote(p));
        }
    }

    /// The pull itself: rsync confined to the new folder and the previous
    /// one (see `confine`), then the manifest.
    fn transfer(
        &self,
        master: &Master,
        deadline: Instant,
        what: &What,
        target: &Partial,
        out: &mut HostPull,
    ) -> Result<(), Transfer> {
        let prev = what.prev.as_deref();
        let failed = |e: anyhow::Error| Transfer::Failed(format!("{e:#}"));
        let myself = std::env::current_exe().map_err(|e| failed(e.into()))?;
        let mut cmd = Command::new(myself);
        cmd.env("LC_ALL", "C").arg("confine").arg("--write").arg(&target.partial_path);
        if let Some(p) = prev {
            cmd.arg("--link-from").arg(p);
        }
        cmd.arg("--read").arg(self.config).arg("--").arg("rsync").args(self.rsync_args(master));
        self.transfer_args(&mut cmd, what, true);
        cmd.arg(format!("{}/", target.partial_path.display()));
        let ran = run(cmd, deadline, Some(&self.host.name)).map_err(failed)?;
        out.vanished = ran.vanished;
        match ran.code() {
            Some(0) => out.outcome = Pulled::Done,
            // Files vanished while read: what is there is a backup.
            Some(24) => out.outcome = Pulled::Done,
            // Some files could not be read there (or a path does not exist): named.
            Some(23) => match unreadable(&ran) {
                Ok(named) => {
                    out.unreadable = named;
                    out.outcome = Pulled::Partial;
                }
                Err(ours) => {
                    // Refused by the confinement: a path of the previous
                    // folder that leads out of it (a link followed).
                    if let Some(path) = prev.and_then(|p| denied_in(&ran, p)) {
                        return Err(Transfer::FollowedLinks(vec![path]));
                    }
                    return Err(Transfer::Failed(format!("could not be written to the disk: {ours}")));
                }
            },
            _ => return Err(Transfer::Failed(self.why(&ran))),
        }
        let dir = fsx::open_read(target.parent.as_fd(), &target.partial, true).map_err(|e| {
            Transfer::Failed(format!("cannot open {}: {}", target.partial_path.display(), e.desc()))
        })?;
        let indexed = index::write(dir.as_fd(), &target.partial_path, prev).map_err(failed)?;
        if !indexed.followed_links.is_empty() {
            return Err(Transfer::FollowedLinks(indexed.followed_links));
        }
        out.files = indexed.files;
        out.bytes = indexed.bytes;
        out.bytes_written = indexed.new_bytes;
        nix::unistd::syncfs(dir.as_fd()).map_err(|e| Transfer::Failed(format!("syncfs: {}", e.desc())))
    }

    /// `--dry-run`: what the transfer would write, from rsync's own count.
    fn estimate(
        &self,
        master: &Master,
        deadline: Instant,
        what: &What,
        out: &mut HostPull,
    ) -> Result<(), Why> {
        let scratch = tempfile::tempdir().map_err(|e| format!("cannot make a scratch folder: {e}"))?;
        let mut cmd = self.rsync(master);
        cmd.args(["--dry-run", "--stats"]);
        self.transfer_args(&mut cmd, what, false);
        cmd.arg(format!("{}/", scratch.path().display()));
        let ran = run(cmd, deadline, Some(&self.host.name)).map_err(|e| format!("{e:#}"))?;
        if !matches!(ran.code(), Some(0 | 23 | 24)) {
            return Err(self.why(&ran));
        }
        out.outcome = Pulled::Done;
        out.files = stat(&ran.stdout, "Number of regular files transferred").unwrap_or(0);
        out.bytes = stat(&ran.stdout, "Total file size").unwrap_or(0);
        out.bytes_written = stat(&ran.stdout, "Total transferred file size").unwrap_or(0);
        // What the pull will go through, for the backup's progress.
        journal::record(&journal::Entry::Estimate {
            dest: self.dest.join(&self.host.name),
            files: regular_files(&ran.stdout).unwrap_or(out.files),
            bytes: out.bytes,
        });
        Ok(())
    }
}

/// Removes what a failed host left.
fn drop_partial(target: Partial) {
    let (parent, name) = (target.parent.try_clone(), target.partial.clone());
    let shown = target.partial_path.clone();
    drop(target);
    if let Ok(parent) = parent {
        if let Err(e) = fsx::remove_tree(parent.as_fd(), &name) {
            eprintln!("tetras-back: cannot remove {}: {e}", shown.display());
        }
    }
}

/// The path below `prev` rsync was refused (by the confinement), if any.
fn denied_in(ran: &Ran, prev: &Path) -> Option<PathBuf> {
    let start = format!("\"{}/", prev.display());
    ran.stderr.iter().find_map(|l| {
        if !(l.starts_with("rsync: [generator]") && l.contains("Permission denied")) {
            return None;
        }
        let at = l.find(&start)? + start.len();
        let rest = &l[at..];
        Some(PathBuf::from(&rest[..rest.find('"')?]))
    })
}

/// A number of rsync's `--stats` ("Total file size: 1,234 bytes").
fn stat(stats: &str, label: &str) -> Option<u64> {
    let line = stats.lines().find(|l| l.trim_start().starts_with(label))?;
    let value = line.split_once(':')?.1;
    let digits: String = value.trim_start().chars().take_while(|c| c.is_ascii_digit() || *c == ',').collect();
    digits.replace(',', "").parse().ok()
}

/// The regular files of rsync's `--stats` ("Number of files: 1,234 (reg: 1,000, dir: 234)").
fn regular_files(stats: &str) -> Option<u64> {
    let line = stats.lines().find(|l| l.trim_start().starts_with("Number of files:"))?;
    let reg = &line[line.find("reg: ")? + 5..];
    let digits: String = reg.chars().take_while(|c| c.is_ascii_digit() || *c == ',').collect();
    digits.replace(',', "").parse().ok()
}

/// The files the host could not read, from rsync's messages (`PATH:
/// why`); `Err` with the first line that is about our side instead (the
/// disk full, an attribute it refuses).
fn unreadable(ran: &Ran) -> Result<Vec<String>, String> {
    let mut named = Vec::new();
    for l in &ran.stderr {
        if l.starts_with("rsync: [sender]") {
            named.extend(unreadable_line(l));
        } else if l.starts_with("rsync: ") && !l.contains("vanished") {
            return Err(l.trim().to_owned());
        }
    }
    if named.is_empty() {
        return Err(ran.last_error().unwrap_or("rsync's exit 23 named no file").to_owned());
    }
    named.truncate(HostPull::SHOWN);
    Ok(named)
}

fn unreadable_line(line: &str) -> Option<String> {
    let rest = line.strip_prefix("rsync: ")?;
    if rest.contains("vanished") {
        return None;
    }
    let (a, b) = (rest.find('"')?, rest.rfind('"')?);
    if b <= a {
        return None;
    }
    let path = &rest[a + 1..b];
    let why = rest[b + 1..].rsplit(": ").next().unwrap_or("").trim();
    Some(format!("{path}: {why}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rsync_s_messages_name_the_unreadable_files() {
        assert_eq!(
            unreadable_line(
                r#"rsync: [sender] send_files failed to open "/srv/secret" (in srv): Permission denied (13)"#
            )
            .as_deref(),
            Some("/srv/secret: Permission denied (13)")
        );
        assert_eq!(
            unreadable_line(r#"rsync: [sender] link_stat "/nope" failed: No such file or directory (2)"#)
                .as_deref(),
            Some("/nope: No such file or directory (2)")
        );
        assert_eq!(unreadable_line(r#"file has vanished: "/tmp/x""#), None);
        assert_eq!(unreadable_line("rsync error: some files could not be transferred (code 23)"), None);
    }

    #[test]
    fn stats_are_read_with_their_separators() {
        let s = "Number of files: 3 (reg: 2, dir: 1)\nTotal file size: 1,234,567 bytes\n\
                 Total transferred file size: 89 bytes\n";
        assert_eq!(stat(s, "Total file size"), Some(1_234_567));
        assert_eq!(stat(s, "Total transferred file size"), Some(89));
        assert_eq!(stat(s, "Literal data"), None);
        assert_eq!(regular_files(s), Some(2));
        assert_eq!(regular_files("Number of files: 12,345 (reg: 10,001, dir: 2,344)"), Some(10_001));
    }
}
