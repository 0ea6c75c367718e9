//! The console's users: `web.users_file`, one `name:hash` per line, bcrypt
//! hashes as `htpasswd -B` writes them (`$2y$`; `$2b$` and `$2a$` too), so
//! an existing htpasswd file works. The file must be private to root: it is
//! refused when its group or others may read it.
//!
//! A user is an `admin` when `web.admins` names them, an `operator`
//! otherwise (the file has no room for roles: htpasswd's format is kept).

use std::fs;
use std::io;
use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::LazyLock;

use anyhow::{bail, Context, Result};

use crate::store::state::write_atomic;

/// bcrypt's cost for the hashes `web-passwd` writes (2^12 rounds, about a
/// quarter of a second: slow for guessing, quick enough to log in).
const COST: u32 = 12;

/// The users, as read from the file.
#[derive(Debug, Default, Clone)]
pub struct Users {
    entries: Vec<(String, String)>,
}

/// A hash checked when the user is unknown, so that an unknown name takes
/// as long to refuse as a wrong password.
static DECOY: LazyLock<String> = LazyLock::new(|| bcrypt::hash("decoy", COST).unwrap_or_default());

impl Users {
    /// Reads `path`; a missing file is no users.
    pub fn load(path: &Path) -> Result<Users> {
        let meta = match fs::metadata(path) {
            Ok(m) => m,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(Users::default()),
            Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
        };
        let mode = meta.permissions().mode() & 0o777;
        if mode & 0o077 != 0 {
            bail!(
                "{} can be read by group or others (mode {mode:04o}); `chmod 600` it, it holds the \
                 console's password hashes",
                path.display()
            );
        }
        let text = fs::read_to_string(path).with_context(|| format!("cannot read {}", path.display()))?;
        let mut entries = Vec::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let Some((name, hash)) = line.split_once(':') else {
                bail!("{} line {}: expected `name:hash`", path.display(), i + 1);
            };
            if !hash.starts_with("$2") {
                bail!(
                    "{} line {}: the hash of {name:?} is not a bcrypt hash (`htpasswd -B` writes those)",
                    path.display(),
                    i + 1
                );
            }
            entries.push((name.to_owned(), hash.to_owned()));
        }
        Ok(Users { entries })
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    /// Whether `password` is `name`'s (slow on purpose: bcrypt).
    #[cfg(test)]
    pub fn verify(&self, name: &str, password: &str) -> bool {
        self.check(name, password).is_some()
    }

    /// When `password` is `name`'s (slow on purpose: bcrypt), the
    /// fingerprint of the hash it matched.
    pub fn check(&self, name: &str, password: &str) -> Option<String> {
        match self.hash(name) {
            Some(hash) => bcrypt::verify(password, hash).unwrap_or(false).then(|| fingerprint(hash)),
            None => {
                let _ = bcrypt::verify(password, &DECOY);
                None
            }
        }
    }

    fn hash(&self, name: &str) -> Option<&str> {
        self.entries.iter().find(|(n, _)| n == name).map(|(_, h)| h.as_str())
    }

    /// A fingerprint of `name`'s password hash (`None`: no such user). A
    /// session keeps the one its user logged in with: when the file holds
    /// another (a new password) or none (the user was removed), it ends.
    pub fn fingerprint(&self, name: &str) -> Option<String> {
        self.hash(name).map(fingerprint)
    }

    pub fn names(&self) -> impl Iterator<Item = &str> {
        self.entries.iter().map(|(n, _)| n.as_str())
    }
}

/// BLAKE3 of a hash: a session need not keep the hash itself.
fn fingerprint(hash: &str) -> String {
    blake3::hash(hash.as_bytes()).to_hex().to_string()
}

/// What a console user may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Role {
    /// Sees status and history, backs up now, opens and closes disks.
    Operator,
    /// Also saves and forgets disks, browses, downloads and restores.
    Admin,
}

impl Role {
    /// `name`'s role: `Admin` when `web.admins` lists them.
    pub fn of(web: &crate::config::Web, name: &str) -> Role {
        if web.admins.iter().any(|a| a == name) {
            Role::Admin
        } else {
            Role::Operator
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Role::Operator => "operator",
            Role::Admin => "admin",
        }
    }
}

/// A user name the file can hold: no colon, no space or control character.
pub fn check_name(name: &str) -> Result<()> {
    crate::config::check_user_name(name).map_err(anyhow::Error::msg)
}

/// Sets `name`'s password (adds the user if new); returns whether it was new.
pub fn set_password(path: &Path, name: &str, password: &str) -> Result<bool> {
    check_name(name)?;
    if password.is_empty() {
        bail!("the password is empty");
    }
    let hash = bcrypt::hash(password, COST).context("cannot hash the password")?;
    edit(path, |lines| {
        let mut new = true;
        for line in lines.iter_mut() {
            if line.split_once(':').is_some_and(|(n, _)| n == name) {
                *line = format!("{name}:{hash}");
                new = false;
            }
        }
        if new {
            lines.push(format!("{name}:{hash}"));
        }
        Ok(new)
    })
}

/// Removes `name`.
pub fn delete(path: &Path, name: &str) -> Result<()> {
    edit(path, |lines| {
        let before = lines.len();
        lines.retain(|line| line.split_once(':').is_none_or(|(n, _)| n != name));
        if lines.len() == before {
            bail!("{} has no user {name:?}", path.display());
        }
        Ok(())
    })
}

/// Rewrites the file (0600, atomically) with `change` applied to its lines;
/// comments and other users are kept as they are.
fn edit<T>(path: &Path, change: impl FnOnce(&mut Vec<String>) -> Result<T>) -> Result<T> {
    Users::load(path)?; // refuses a file others can read, or that is not one
    let text = match fs::read_to_string(path) {
        Ok(t) => t,
        Err(e) if e.kind() == io::ErrorKind::NotFound => String::new(),
        Err(e) => return Err(e).with_context(|| format!("cannot read {}", path.display())),
    };
    let mut lines: Vec<String> = text.lines().map(str::to_owned).collect();
    let out = change(&mut lines)?;
    let mut content = lines.join("\n");
    content.push('\n');
    if let Some(dir) = path.parent() {
        fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
    }
    write_atomic(path, 0o600, content.as_bytes())
        .with_context(|| format!("cannot write {}", path.display()))?;
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn set_change_verify_delete_and_the_mode_check() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("web-users");
        assert!(Users::load(&path).unwrap().is_empty());
        assert!(set_password(&path, "alice", "first").unwrap());
        assert!(!set_password(&path, "alice", "second").unwrap());
        assert!(set_password(&path, "bob", "pw").unwrap());
        assert_eq!(fs::metadata(&path).unwrap().permissions().mode() & 0o777, 0o600);
        let users = Users::load(&path).unwrap();
        assert!(users.verify("alice", "second") && !users.verify("alice", "first"));
        assert!(!users.verify("carol", "pw"));
        let print = users.check("alice", "second").unwrap();
        assert_eq!(users.fingerprint("alice").as_deref(), Some(print.as_str()));
        assert_eq!(print.len(), 64);
        assert!(users.fingerprint("carol").is_none());
        assert_eq!(users.names().collect::<Vec<_>>(), ["alice", "bob"]);
        set_password(&path, "alice", "second").unwrap();
        let again = Users::load(&path).unwrap().fingerprint("alice").unwrap();
        assert_ne!(again, print, "the same password set again is a new hash (a new salt)");
        delete(&path, "bob").unwrap();
        assert!(!Users::load(&path).unwrap().verify("bob", "pw"));
        assert!(delete(&path, "bob").unwrap_err().to_string().contains("no user \"bob\""));
        assert!(set_password(&path, "a:b", "x").is_err());
        fs::set_permissions(&path, fs::Permissions::from_mode(0o640)).unwrap();
        let e = Users::load(&path).unwrap_err().to_string();
        assert!(e.contains("web-users") && e.contains("0640") && e.contains("chmod 600"), "{e}");
    }

    #[test]
    fn admins_are_named_everyone_else_is_an_operator() {
        let text = "[web]\nadmins = [\"alice\"]\n";
        let config = crate::config::Config::parse(text, Path::new("/t.toml")).unwrap();
        assert_eq!(Role::of(&config.web, "alice"), Role::Admin);
        for other in ["bob", "Alice", "alice ", ""] {
            assert_eq!(Role::of(&config.web, other), Role::Operator, "{other:?}");
        }
        let none = crate::config::Config::parse("", Path::new("/t.toml")).unwrap();
        assert_eq!(Role::of(&none.web, "alice"), Role::Operator, "nobody is an admin by default");
    }

    #[test]
    fn the_decoy_is_a_valid_hash() {
        assert!(bcrypt::verify("x", &DECOY).is_ok());
    }
}
