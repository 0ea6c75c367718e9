//! The system D-Bus (through zbus): logind, so that the machine does not
//! sleep or shut down in the middle of a backup, and UDisks2, so that a
//! disk is powered off once it is unmounted.
//!
//! May import: `store` (the words of a power-off).
//!
//! Both are courtesies: with no system bus, no logind or no udisks the
//! daemon says so (once at start for the bus and logind, in each
//! `safe_to_remove` for udisks) and backs up all the same.

mod logind;
mod udisks;

use std::path::Path;
use std::time::Duration;

use zbus::blocking::Connection;

pub use logind::Inhibitor;

use crate::store::report::PowerOff;

/// How long a call may take: a hung service must not hold a backup's end.
const CALL_TIMEOUT: Duration = Duration::from_secs(30);

/// The daemon's connection to the system bus, shared with the backup worker.
#[derive(Clone)]
pub struct Bus {
    conn: Option<Connection>,
    /// logind answered at start: inhibitors can be taken.
    logind: bool,
}

impl Bus {
    /// Connects to the system bus and looks for logind; says once what is missing.
    pub fn connect() -> Bus {
        let conn = match zbus::blocking::connection::Builder::system()
            .and_then(|b| b.method_timeout(CALL_TIMEOUT).build())
        {
            Ok(c) => c,
            Err(e) => {
                log::warn!(
                    "no system D-Bus ({e}): backups run without holding off sleep and shutdown, \
                     and disks are not powered off after them"
                );
                return Bus { conn: None, logind: false };
            }
        };
        let logind = match logind::check(&conn) {
            Ok(()) => true,
            Err(e) => {
                log::warn!("logind is not on the system bus ({e}): backups run without holding off sleep and shutdown");
                false
            }
        };
        Bus { conn: Some(conn), logind }
    }

    /// Holds off sleep and shutdown until the returned inhibitor is dropped;
    /// `None` (logged) when logind cannot be asked.
    pub fn inhibit(&self, why: &str) -> Option<Inhibitor> {
        let conn = self.conn.as_ref().filter(|_| self.logind)?;
        match logind::inhibit(conn, why) {
            Ok(i) => Some(i),
            Err(e) => {
                log::warn!("logind refused an inhibitor ({e}); backing up without one");
                None
            }
        }
    }

    /// Asks udisks to power off the drive holding `device` (unmounted).
    pub fn power_off(&self, device: &Path) -> PowerOff {
        match &self.conn {
            None => PowerOff::Not("there is no system D-Bus".into()),
            Some(conn) => udisks::power_off(conn, device),
        }
    }
}
