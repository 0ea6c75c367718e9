//! `[[hosts]]`: the site's other machines, pulled over SSH with rsync onto
//! the same disk, and what a host adds itself in its own
//! `/etc/tetras-back/host.d/*.toml` ([`HostSide`]).
//!
//! Every value here ends up on an `ssh` or `rsync` command line, so each is
//! held to a shape that cannot be read as an option or reach a shell on
//! this side: names and addresses of plain characters, never starting with
//! `-`; paths absolute, without `.` or `..`.

use std::time::Duration;

use serde::Deserialize;

use super::parse_duration;

/// The default `hosts[].timeout`: a pull still running after this long is stopped.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(6 * 3600);

/// One other machine of the site.
#[derive(Debug, Clone, PartialEq)]
pub struct Host {
    /// Its folder in a backup (`<dated folder>/NAME/etc/...`).
    pub name: String,
    /// Host name or IP address.
    pub address: String,
    pub user: String,
    pub port: u16,
    /// Absolute paths on the host, kept as they are below its folder.
    pub paths: Vec<String>,
    /// rsync patterns (`/home/*/.cache` from the root, `*.tmp` anywhere).
    pub exclude: Vec<String>,
    /// Shell commands run on the host, in order, before the pull.
    pub before: Vec<String>,
    /// The intermediate host(s), as ssh's ProxyJump: `[user@]host[:port]`,
    /// several separated by commas.
    pub jump: Option<String>,
    /// The whole pull of this host (commands and transfer) is stopped after this long.
    pub timeout: Duration,
}

impl Host {
    /// How ssh names it in a known_hosts file: `address`, or
    /// `[address]:port` on another port than 22.
    pub fn known_as(&self) -> String {
        if self.port == 22 {
            self.address.clone()
        } else {
            format!("[{}]:{}", self.address, self.port)
        }
    }

    /// How ssh names its jump hosts in a known_hosts file.
    pub fn jump_known_as(&self) -> Vec<String> {
        let Some(j) = &self.jump else { return Vec::new() };
        j.split(',')
            .map(|hop| {
                let rest = hop.split_once('@').map_or(hop, |(_, r)| r);
                match rest.rsplit_once(':') {
                    Some((h, p)) if !h.contains(':') && p != "22" => format!("[{h}]:{p}"),
                    Some((h, _)) if !h.contains(':') => h.to_owned(),
                    _ => rest.to_owned(),
                }
            })
            .collect()
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct RawHost {
    name: String,
    address: String,
    user: Option<String>,
    port: Option<u16>,
    #[serde(default)]
    paths: Vec<String>,
    #[serde(default)]
    exclude: Vec<String>,
    #[serde(default)]
    before: Vec<String>,
    jump: Option<String>,
    timeout: Option<String>,
}

/// Validates `[[hosts]]`; an error names its key (`hosts[1].address`).
pub(super) fn hosts(raw: Vec<RawHost>) -> Result<Vec<Host>, (String, String)> {
    let mut out: Vec<Host> = Vec::with_capacity(raw.len());
    for (i, h) in raw.into_iter().enumerate() {
        let key = |k: &str| format!("hosts[{i}].{k}");
        check_name(&h.name).map_err(|m| (key("name"), m))?;
        if out.iter().any(|o| o.name == h.name) {
            return Err((key("name"), format!("two hosts are named {:?}", h.name)));
        }
        check_address(&h.address).map_err(|m| (key("address"), m))?;
        let user = h.user.unwrap_or_else(|| "root".into());
        check_login(&user).map_err(|m| (key("user"), m))?;
        let port = h.port.unwrap_or(22);
        if port == 0 {
            return Err((key("port"), "expected a port from 1 to 65535, got 0".into()));
        }
        if h.paths.is_empty() {
            return Err((key("paths"), "expected at least one path on the host, such as [\"/etc\"]".into()));
        }
        let side = check_lists(HostSide { paths: h.paths, exclude: h.exclude, before: h.before })
            .map_err(|(k, m)| (key(&k), m))?;
        if let Some(j) = &h.jump {
            check_jump(j).map_err(|m| (key("jump"), m))?;
        }
        let timeout = match h.timeout {
            None => DEFAULT_TIMEOUT,
            Some(t) => parse_duration(&t).map_err(|m| (key("timeout"), m))?,
        };
        out.push(Host {
            name: h.name,
            address: h.address,
            user,
            port,
            paths: side.paths,
            exclude: side.exclude,
            before: side.before,
            jump: h.jump,
            timeout,
        });
    }
    Ok(out)
}

/// What a host declares on its own side, in `/etc/tetras-back/host.d/*.toml`:
/// more `paths`, `exclude` patterns and `before` commands, added to its
/// `[[hosts]]` entry at each pull.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct HostSide {
    #[serde(default)]
    pub paths: Vec<String>,
    #[serde(default)]
    pub exclude: Vec<String>,
    #[serde(default)]
    pub before: Vec<String>,
}

impl HostSide {
    /// Parses one host.d file; an error names the key.
    pub fn parse(text: &str) -> Result<HostSide, String> {
        let raw: HostSide = toml::from_str(text).map_err(|e| e.to_string())?;
        check_lists(raw).map_err(|(k, m)| format!("key `{k}`: {m}"))
    }
}

fn check_lists(side: HostSide) -> Result<HostSide, (String, String)> {
    for (i, p) in side.paths.iter().enumerate() {
        check_path(p).map_err(|m| (format!("paths[{i}]"), m))?;
    }
    for (i, e) in side.exclude.iter().enumerate() {
        // "!" clears every rule before it; "+ " and "- " are rule prefixes.
        if e.trim().is_empty()
            || e.contains(['\n', '\r', '\0'])
            || e.starts_with('!')
            || e.starts_with("+ ")
            || e.starts_with("- ")
        {
            return Err((
                format!("exclude[{i}]"),
                format!("{e:?} is not an rsync pattern (nor may it be a rule)"),
            ));
        }
    }
    for (i, c) in side.before.iter().enumerate() {
        if c.trim().is_empty() || c.contains('\0') {
            return Err((format!("before[{i}]"), "expected a shell command, got an empty one".into()));
        }
    }
    Ok(side)
}

/// A host's name is a folder name in every backup.
fn check_name(name: &str) -> Result<(), String> {
    let ok = (1..=64).contains(&name.len())
        && name.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
        && !name.starts_with(['.', '-'])
        && !name.ends_with(crate::engine::PARTIAL);
    if !ok {
        return Err(format!(
            "{name:?} is not a host name for a folder: 1 to 64 characters from A-Z a-z 0-9 . _ -, \
             not starting with . or -, not ending with .partial"
        ));
    }
    Ok(())
}

/// A host name or an IP address (IPv6 without brackets).
fn check_address(a: &str) -> Result<(), String> {
    let ok = (1..=253).contains(&a.len())
        && !a.starts_with('-')
        && a.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':'));
    if !ok {
        return Err(format!(
            "{a:?} is not a host name or IP address (IPv6 zone indexes such as %eth0 are not supported)"
        ));
    }
    Ok(())
}

/// A login name on the host.
fn check_login(u: &str) -> Result<(), String> {
    let ok = (1..=32).contains(&u.len())
        && !u.starts_with('-')
        && u.chars().all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'));
    if !ok {
        return Err(format!("{u:?} is not a user name (A-Z a-z 0-9 . _ -, not starting with -)"));
    }
    Ok(())
}

/// `[user@]host[:port]`, several separated by commas.
fn check_jump(j: &str) -> Result<(), String> {
    let bad =
        || format!("{j:?} is not a jump host: expected [user@]host[:port], several separated by commas");
    for hop in j.split(',') {
        let (user, rest) = match hop.split_once('@') {
            Some((u, r)) => (Some(u), r),
            None => (None, hop),
        };
        if let Some(u) = user {
            check_login(u).map_err(|_| bad())?;
        }
        let host = match rest.rsplit_once(':') {
            Some((h, p)) if !h.contains(':') => {
                p.parse::<u16>().ok().filter(|p| *p > 0).ok_or_else(bad)?;
                h
            }
            _ => rest,
        };
        check_address(host).map_err(|_| bad())?;
    }
    Ok(())
}

/// An absolute path on the host, without `.` or `..` components.
fn check_path(p: &str) -> Result<(), String> {
    let bad = |why: &str| Err(format!("{p:?}: {why}"));
    if !p.starts_with('/') {
        return bad("expected an absolute path");
    }
    if p.contains(['\n', '\r', '\0']) {
        return bad("a path cannot hold a line break");
    }
    if p.split('/').any(|c| c == "." || c == "..") {
        return bad("a path cannot go through . or ..");
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn raw(toml_text: &str) -> Vec<RawHost> {
        #[derive(Deserialize)]
        struct F {
            hosts: Vec<RawHost>,
        }
        toml::from_str::<F>(toml_text).unwrap().hosts
    }

    #[test]
    fn defaults_and_known_hosts_names() {
        let h = hosts(raw("[[hosts]]\nname = \"web1\"\naddress = \"10.0.0.5\"\npaths = [\"/etc\"]")).unwrap();
        assert_eq!(h[0].user, "root");
        assert_eq!(h[0].port, 22);
        assert_eq!(h[0].timeout, DEFAULT_TIMEOUT);
        assert_eq!(h[0].known_as(), "10.0.0.5");
        let h =
            hosts(raw("[[hosts]]\nname = \"a\"\naddress = \"::1\"\nport = 2222\npaths = [\"/\"]")).unwrap();
        assert_eq!(h[0].known_as(), "[::1]:2222");
    }

    #[test]
    fn every_bad_value_names_its_key() {
        let cases = [
            ("name = \"-x\"\naddress = \"a\"\npaths = [\"/etc\"]", "hosts[0].name"),
            ("name = \"x.partial\"\naddress = \"a\"\npaths = [\"/etc\"]", "hosts[0].name"),
            ("name = \"x\"\naddress = \"-oProxyCommand=evil\"\npaths = [\"/etc\"]", "hosts[0].address"),
            ("name = \"x\"\naddress = \"a b\"\npaths = [\"/etc\"]", "hosts[0].address"),
            ("name = \"x\"\naddress = \"a\"\nuser = \"-l\"\npaths = [\"/etc\"]", "hosts[0].user"),
            ("name = \"x\"\naddress = \"a\"\nport = 0\npaths = [\"/etc\"]", "hosts[0].port"),
            ("name = \"x\"\naddress = \"a\"", "hosts[0].paths"),
            ("name = \"x\"\naddress = \"a\"\npaths = [\"etc\"]", "hosts[0].paths[0]"),
            ("name = \"x\"\naddress = \"a\"\npaths = [\"/etc/../root\"]", "hosts[0].paths[0]"),
            ("name = \"x\"\naddress = \"a\"\npaths = [\"/etc\"]\nexclude = [\"\"]", "hosts[0].exclude[0]"),
            ("name = \"x\"\naddress = \"a\"\npaths = [\"/etc\"]\nexclude = [\"!\"]", "hosts[0].exclude[0]"),
            (
                "name = \"x\"\naddress = \"a\"\npaths = [\"/etc\"]\nexclude = [\"+ /etc\"]",
                "hosts[0].exclude[0]",
            ),
            ("name = \"x\"\naddress = \"fe80::1%eth0\"\npaths = [\"/etc\"]", "hosts[0].address"),
            ("name = \"x\"\naddress = \"a\"\npaths = [\"/etc\"]\nbefore = [\" \"]", "hosts[0].before[0]"),
            ("name = \"x\"\naddress = \"a\"\npaths = [\"/etc\"]\njump = \"-J\"", "hosts[0].jump"),
            ("name = \"x\"\naddress = \"a\"\npaths = [\"/etc\"]\njump = \"b:99999\"", "hosts[0].jump"),
            ("name = \"x\"\naddress = \"a\"\npaths = [\"/etc\"]\ntimeout = \"soon\"", "hosts[0].timeout"),
        ];
        for (body, key) in cases {
            let e = hosts(raw(&format!("[[hosts]]\n{body}"))).unwrap_err();
            assert_eq!(e.0, key, "{body}: {}", e.1);
        }
        let two = "[[hosts]]\nname = \"x\"\naddress = \"a\"\npaths = [\"/etc\"]\n";
        assert_eq!(hosts(raw(&format!("{two}{two}"))).unwrap_err().0, "hosts[1].name");
        assert!(check_jump("admin@bastion.example.org:2222,gw").is_ok());
        let h = hosts(raw(
            "[[hosts]]\nname = \"x\"\naddress = \"a\"\npaths = [\"/etc\"]\njump = \"u@b:2222,c,d:22\"",
        ))
        .unwrap();
        assert_eq!(h[0].jump_known_as(), ["[b]:2222", "c", "d"]);
    }

    #[test]
    fn host_side_files() {
        let s = HostSide::parse("paths = [\"/srv/app\"]\nbefore = [\"app-dump\"]").unwrap();
        assert_eq!(s.paths, ["/srv/app"]);
        assert!(HostSide::parse("paths = [\"srv\"]").unwrap_err().contains("paths[0]"));
        assert!(HostSide::parse("colour = 1").unwrap_err().contains("colour"));
    }
}
