//! A real SMTP server on loopback: Debian's aiosmtpd, delivering into a Maildir.

use std::fs;
use std::net::{TcpListener, TcpStream};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A port nothing listens on now.
pub fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port()
}

/// A loopback port that refuses connections for as long as this lives: a
/// socket bound to it that does not listen, so that nothing else (another
/// test's server, chromedriver) can take it meanwhile.
pub struct ClosedPort {
    _socket: std::os::fd::OwnedFd,
    pub port: u16,
}

impl ClosedPort {
    pub fn new() -> ClosedPort {
        use nix::libc;
        use std::os::fd::FromRawFd;
        // SAFETY: plain socket calls on a descriptor owned right away.
        unsafe {
            let fd = libc::socket(libc::AF_INET, libc::SOCK_STREAM | libc::SOCK_CLOEXEC, 0);
            assert!(fd >= 0, "socket: {}", std::io::Error::last_os_error());
            let socket = std::os::fd::OwnedFd::from_raw_fd(fd);
            let mut addr: libc::sockaddr_in = std::mem::zeroed();
            addr.sin_family = libc::AF_INET as libc::sa_family_t;
            addr.sin_addr.s_addr = u32::from(std::net::Ipv4Addr::LOCALHOST).to_be();
            let len = std::mem::size_of::<libc::sockaddr_in>() as libc::socklen_t;
            let sa = &mut addr as *mut libc::sockaddr_in as *mut libc::sockaddr;
            assert_eq!(libc::bind(fd, sa, len), 0, "bind: {}", std::io::Error::last_os_error());
            let mut len = len;
            assert_eq!(libc::getsockname(fd, sa, &mut len), 0);
            ClosedPort { _socket: socket, port: u16::from_be(addr.sin_port) }
        }
    }
}

/// An aiosmtpd process, killed (by pid) when dropped.
pub struct SmtpServer {
    child: Child,
    pub port: u16,
    pub maildir: PathBuf,
}

impl SmtpServer {
    /// Starts a server on `port` delivering into `<dir>/maildir` (made by the server).
    pub fn start(dir: &Path, port: u16) -> SmtpServer {
        SmtpServer::start_with(dir, port, &[])
    }

    /// The same, with more aiosmtpd options (`--tlscert`, `--smtpscert`, ...).
    pub fn start_with(dir: &Path, port: u16, options: &[&str]) -> SmtpServer {
        let maildir = dir.join("maildir");
        let child = Command::new("/usr/bin/python3")
            .args(["-m", "aiosmtpd", "-n", "-l", &format!("127.0.0.1:{port}")])
            .args(options)
            .args(["-c", "aiosmtpd.handlers.Mailbox"])
            .arg(&maildir)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(fs::File::create(dir.join("smtpd.log")).unwrap())
            .spawn()
            .expect("/usr/bin/python3 -m aiosmtpd (Debian: python3-aiosmtpd; `make test` installs it)");
        let mut s = SmtpServer { child, port, maildir };
        let deadline = Instant::now() + Duration::from_secs(10);
        while TcpStream::connect(("127.0.0.1", port)).is_err() {
            if let Some(st) = s.child.try_wait().unwrap() {
                panic!(
                    "aiosmtpd exited ({st}): {}",
                    fs::read_to_string(dir.join("smtpd.log")).unwrap_or_default()
                );
            }
            assert!(Instant::now() < deadline, "aiosmtpd did not listen on port {port}");
            std::thread::sleep(Duration::from_millis(50));
        }
        s
    }

    /// The messages delivered so far, oldest first (raw RFC 5322 bytes).
    pub fn messages(&self) -> Vec<Vec<u8>> {
        let mut files: Vec<_> = fs::read_dir(self.maildir.join("new"))
            .map(|d| d.map(|e| e.unwrap().path()).collect())
            .unwrap_or_default();
        files.sort_by_key(|p| fs::metadata(p).unwrap().modified().unwrap());
        files.iter().map(|p| fs::read(p).unwrap()).collect()
    }

    /// Waits until `n` messages are there (or times out); returns them.
    #[track_caller]
    pub fn wait_for(&self, n: usize, timeout: Duration) -> Vec<Vec<u8>> {
        let deadline = Instant::now() + timeout;
        loop {
            let m = self.messages();
            if m.len() >= n {
                return m;
            }
            assert!(Instant::now() < deadline, "{} messages arrived, expected {n}", m.len());
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for SmtpServer {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The `[mail]` section sending through the server on `port`.
pub fn smtp_config(port: u16, extra: &str) -> String {
    smtp_tls_config(port, "none", extra)
}

/// The same with `tls` = none | starttls | tls.
pub fn smtp_tls_config(port: u16, tls: &str, extra: &str) -> String {
    format!(
        "[mail]\nto = \"admin@example.org\"\ntransport = \"smtp\"\nretry_after = \"1s\"\n{extra}\n\
         [mail.smtp]\nhost = \"127.0.0.1\"\nport = {port}\ntls = \"{tls}\"\n"
    )
}

/// A parsed mail: its subject, its text body, and its attachments (name, content).
pub struct Mail {
    pub subject: String,
    pub to: String,
    pub body: String,
    pub attachments: Vec<(String, Vec<u8>)>,
}

impl Mail {
    pub fn parse(raw: &[u8]) -> Mail {
        use mailparse::MailHeaderMap;
        let m = mailparse::parse_mail(raw).unwrap();
        let subject = m.headers.get_first_value("Subject").unwrap_or_default();
        let to = m.headers.get_first_value("To").unwrap_or_default();
        let mut body = String::new();
        let mut attachments = Vec::new();
        let parts: Vec<&mailparse::ParsedMail> =
            if m.subparts.is_empty() { vec![&m] } else { m.subparts.iter().collect() };
        for p in parts {
            let disposition = p.get_content_disposition();
            match disposition.params.get("filename") {
                Some(name) => attachments.push((name.clone(), p.get_body_raw().unwrap())),
                None => body.push_str(&p.get_body().unwrap()),
            }
        }
        Mail { subject, to, body, attachments }
    }
}
