//! A real OpenSSH server on loopback: Debian's /usr/sbin/sshd, run by root in
//! the foreground with a config, a host key and an authorized_keys of its own
//! in a directory, for the tests that pull other hosts over ssh + rsync.
//!
//! Debian packages: openssh-server (sshd), openssh-client (ssh-keygen, ssh);
//! keys with `command="rrsync ..."` also need rsync and python3-minimal.

use std::fs;
use std::net::TcpStream;
use std::os::unix::fs::PermissionsExt;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use wait_timeout::ChildExt;

use super::smtp::free_port;

const SSHD: &str = "/usr/sbin/sshd";
const KEYGEN: &str = "/usr/bin/ssh-keygen";

/// An sshd listening on 127.0.0.1:`port`, its files in `dir`; killed (by pid) when dropped.
pub struct Sshd {
    pub port: u16,
    pub dir: PathBuf,
    child: Child,
}

impl Sshd {
    /// Starts `sshd -D -e -f DIR/sshd_config` on 127.0.0.1:<free port>, with its own
    /// ed25519 host key DIR/host_ed25519 (made if absent), AuthorizedKeysFile
    /// DIR/authorized_keys (written from `authorized_keys`), PidFile DIR/sshd.pid and
    /// its log (stderr, LogLevel VERBOSE) appended to DIR/sshd.log. Root may log in
    /// with a key only; TCP forwarding is allowed (for a ProxyJump host).
    /// Waits until the port accepts connections (10 s), panicking with the log otherwise.
    pub fn start(dir: &Path, authorized_keys: &str) -> Sshd {
        check_root_not_locked();
        // The privilege separation directory: sshd refuses to start without it.
        if !Path::new("/run/sshd").is_dir() {
            fs::create_dir_all("/run/sshd").expect("mkdir /run/sshd");
            fs::set_permissions("/run/sshd", fs::Permissions::from_mode(0o755)).unwrap();
        }
        fs::create_dir_all(dir).unwrap();
        let port = free_port();
        let q = |name: &str| format!("\"{}\"", dir.join(name).display());
        // OpenSSH 9.8 and later refuse for a while a source whose connections fail
        // to authenticate, which the tests do on purpose: not for loopback.
        let penalties = if sshd_version() >= (9, 8) { "PerSourcePenalties no\n" } else { "" };
        let config = format!(
            "ListenAddress 127.0.0.1:{port}\n\
             HostKey {}\n\
             AuthorizedKeysFile {}\n\
             PidFile {}\n\
             StrictModes no\n\
             PermitRootLogin prohibit-password\n\
             PubkeyAuthentication yes\n\
             PasswordAuthentication no\n\
             KbdInteractiveAuthentication no\n\
             UsePAM no\n\
             AllowTcpForwarding yes\n\
             PrintMotd no\n\
             LogLevel VERBOSE\n\
             {penalties}",
            q("host_ed25519"),
            q("authorized_keys"),
            q("sshd.pid"),
        );
        fs::write(dir.join("sshd_config"), config).unwrap();
        write_authorized_keys(dir, authorized_keys);
        Sshd { port, dir: dir.to_owned(), child: launch(dir, port) }
    }

    /// Same port, same dir: stops this sshd and starts it again with a new host key
    /// (the old one deleted) — "the host was reinstalled", or a man in the middle.
    pub fn restart_with_new_host_key(&mut self) {
        stop(&mut self.child);
        for f in ["host_ed25519", "host_ed25519.pub"] {
            let _ = fs::remove_file(self.dir.join(f));
        }
        self.child = launch(&self.dir, self.port);
    }

    /// Rewrites authorized_keys (mode 0600, owned by root); sshd reads it at each
    /// connection, so no restart is needed.
    pub fn set_authorized_keys(&self, text: &str) {
        write_authorized_keys(&self.dir, text);
    }

    /// The SHA256 fingerprint of the current host key, as `ssh-keygen -lf` prints it
    /// ("SHA256:..."), which is also what ssh prints when it meets the host.
    pub fn fingerprint(&self) -> String {
        let pubkey = self.dir.join("host_ed25519.pub");
        let out = Command::new(KEYGEN).arg("-lf").arg(&pubkey).output().expect(KEYGEN);
        assert!(out.status.success(), "ssh-keygen -lf {pubkey:?}: {}", String::from_utf8_lossy(&out.stderr));
        let text = String::from_utf8(out.stdout).unwrap();
        // "256 SHA256:... comment (ED25519)"
        text.split_whitespace().nth(1).unwrap_or_else(|| panic!("ssh-keygen -lf printed {text:?}")).to_owned()
    }

    /// The sshd log so far (for assertion messages).
    pub fn log(&self) -> String {
        log(&self.dir)
    }
}

impl Drop for Sshd {
    fn drop(&mut self) {
        stop(&mut self.child);
    }
}

/// Makes the host key if absent, runs sshd and waits until it listens on `port`.
fn launch(dir: &Path, port: u16) -> Child {
    let key = dir.join("host_ed25519");
    if !key.exists() {
        keygen(&key, "tetras-back test sshd");
    }
    let logfile = fs::OpenOptions::new().create(true).append(true).open(dir.join("sshd.log")).unwrap();
    let mut child = Command::new(SSHD)
        .args(["-D", "-e", "-f"])
        .arg(dir.join("sshd_config"))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logfile)
        .spawn()
        .expect("/usr/sbin/sshd (Debian: openssh-server)");
    let deadline = Instant::now() + Duration::from_secs(10);
    while TcpStream::connect(("127.0.0.1", port)).is_err() {
        if let Some(st) = child.try_wait().unwrap() {
            panic!("sshd exited ({st}):\n{}", log(dir));
        }
        if Instant::now() >= deadline {
            stop(&mut child);
            panic!("sshd did not listen on port {} in 10 s:\n{}", port, log(dir));
        }
        std::thread::sleep(Duration::from_millis(20));
    }
    child
}

/// DIR/sshd.log, every run of sshd in DIR appended.
fn log(dir: &Path) -> String {
    fs::read_to_string(dir.join("sshd.log")).unwrap_or_default()
}

/// Writes DIR/authorized_keys, mode 0600, owned by root; replaced by a rename, so
/// that a connection meanwhile reads the old file or the new, whole.
fn write_authorized_keys(dir: &Path, text: &str) {
    let tmp = dir.join("authorized_keys.new");
    let mut text = text.to_owned();
    if !text.is_empty() && !text.ends_with('\n') {
        text.push('\n');
    }
    fs::write(&tmp, text).unwrap();
    fs::set_permissions(&tmp, fs::Permissions::from_mode(0o600)).unwrap();
    std::os::unix::fs::chown(&tmp, Some(0), Some(0)).unwrap();
    fs::rename(&tmp, dir.join("authorized_keys")).unwrap();
}

/// Makes an ed25519 client key pair DIR/id_ed25519 (no passphrase) if absent;
/// returns (private key path, public key line).
pub fn client_key(dir: &Path) -> (PathBuf, String) {
    fs::create_dir_all(dir).unwrap();
    let key = dir.join("id_ed25519");
    if !key.exists() {
        keygen(&key, "tetras-back test client");
    }
    let public = fs::read_to_string(dir.join("id_ed25519.pub")).unwrap();
    (key, public.trim_end().to_owned())
}

/// `ssh-keygen` an ed25519 pair at `path` and `path`.pub, without a passphrase.
fn keygen(path: &Path, comment: &str) {
    let out = Command::new(KEYGEN)
        .args(["-q", "-t", "ed25519", "-N", "", "-C", comment, "-f"])
        .arg(path)
        .stdin(Stdio::null())
        .output()
        .expect("/usr/bin/ssh-keygen (Debian: openssh-client)");
    assert!(out.status.success(), "ssh-keygen -f {path:?}: {}", String::from_utf8_lossy(&out.stderr));
}

/// SIGTERM, SIGKILL after 2 s, and reap. The sessions sshd forked live on until
/// their client goes.
fn stop(child: &mut Child) {
    let pid = Pid::from_raw(child.id() as i32);
    if child.try_wait().unwrap().is_none() {
        let _ = kill(pid, Signal::SIGTERM);
        if child.wait_timeout(Duration::from_secs(2)).unwrap().is_none() {
            let _ = kill(pid, Signal::SIGKILL);
        }
    }
    let _ = child.wait();
}

/// (major, minor) of the sshd that runs, from `sshd -V` ("OpenSSH_9.2, OpenSSL ...").
fn sshd_version() -> (u32, u32) {
    let out = Command::new(SSHD).arg("-V").output().expect("/usr/sbin/sshd (Debian: openssh-server)");
    let text = String::from_utf8_lossy(&out.stderr).into_owned() + &String::from_utf8_lossy(&out.stdout);
    let parse = || {
        let v = text.split("OpenSSH_").nth(1)?;
        let mut parts = v.split(|c: char| !c.is_ascii_digit());
        Some((parts.next()?.parse().ok()?, parts.next()?.parse().ok()?))
    };
    parse().unwrap_or_else(|| panic!("no OpenSSH version in `sshd -V`: {text:?}"))
}

/// With UsePAM no, sshd refuses every login to an account whose password is locked
/// ("!..." in /etc/shadow), keys included: say so rather than let tests fail obscurely.
fn check_root_not_locked() {
    let shadow = fs::read_to_string("/etc/shadow").unwrap_or_default();
    if let Some(line) = shadow.lines().find(|l| l.starts_with("root:")) {
        let password = line.split(':').nth(1).unwrap_or("");
        assert!(
            !password.starts_with('!'),
            "root's password is locked ({password:?} in /etc/shadow): sshd without PAM then refuses \
             root even with a key; unlock it with `usermod -p '*' root`"
        );
    }
}
