//! logind's inhibitor locks (`org.freedesktop.login1.Manager.Inhibit`): a
//! "block" lock on shutdown and sleep, held as a file descriptor; closing
//! it releases the lock, so a crashed daemon never leaves one behind.

use zbus::blocking::Connection;
use zbus::zvariant::OwnedFd;

#[zbus::proxy(
    interface = "org.freedesktop.login1.Manager",
    default_service = "org.freedesktop.login1",
    default_path = "/org/freedesktop/login1",
    gen_async = false,
    blocking_name = "Manager"
)]
trait Manager {
    fn inhibit(&self, what: &str, who: &str, why: &str, mode: &str) -> zbus::Result<OwnedFd>;
}

/// Whether logind is there to ask (it may be started on demand).
pub fn check(conn: &Connection) -> zbus::Result<()> {
    zbus::blocking::fdo::PeerProxy::builder(conn)
        .destination("org.freedesktop.login1")?
        .path("/org/freedesktop/login1")?
        .build()?
        .ping()
}

/// A held inhibitor lock; dropped, it is released.
pub struct Inhibitor {
    _fd: OwnedFd,
}

pub fn inhibit(conn: &Connection, why: &str) -> zbus::Result<Inhibitor> {
    let fd = Manager::new(conn)?.inhibit("shutdown:sleep", "tetras-back", why, "block")?;
    Ok(Inhibitor { _fd: fd })
}
