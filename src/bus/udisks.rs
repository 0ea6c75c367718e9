//! UDisks2: power off the drive of a block device once its filesystem is
//! unmounted, so a USB disk spins down and can be pulled out at once
//! (what a desktop's "safely remove" does).
//!
//! ```text
//!  Manager.ResolveDevice({"path": "/dev/sdb1"}) -> block object
//!  Block.Drive                                  -> drive object ("/" : none)
//!  Drive.CanPowerOff, then Drive.PowerOff({})
//! ```

use std::collections::HashMap;
use std::path::Path;

use zbus::blocking::Connection;
use zbus::zvariant::{OwnedObjectPath, Value};

use crate::store::report::PowerOff;

#[zbus::proxy(
    interface = "org.freedesktop.UDisks2.Manager",
    default_service = "org.freedesktop.UDisks2",
    default_path = "/org/freedesktop/UDisks2/Manager",
    gen_async = false,
    blocking_name = "Manager"
)]
trait Manager {
    fn resolve_device(
        &self,
        devspec: HashMap<&str, Value<'_>>,
        options: HashMap<&str, Value<'_>>,
    ) -> zbus::Result<Vec<OwnedObjectPath>>;
}

#[zbus::proxy(
    interface = "org.freedesktop.UDisks2.Block",
    default_service = "org.freedesktop.UDisks2",
    gen_async = false,
    blocking_name = "Block"
)]
trait Block {
    #[zbus(property)]
    fn drive(&self) -> zbus::Result<OwnedObjectPath>;
}

#[zbus::proxy(
    interface = "org.freedesktop.UDisks2.Drive",
    default_service = "org.freedesktop.UDisks2",
    gen_async = false,
    blocking_name = "Drive"
)]
trait Drive {
    #[zbus(property)]
    fn can_power_off(&self) -> zbus::Result<bool>;
    fn power_off(&self, options: HashMap<&str, Value<'_>>) -> zbus::Result<()>;
}

pub fn power_off(conn: &Connection, device: &Path) -> PowerOff {
    match try_power_off(conn, device) {
        Ok(p) => p,
        // The first call, ResolveDevice, is answered by the bus itself when
        // no udisks is there (nor can be started).
        Err(zbus::Error::MethodError(name, _, _))
            if matches!(
                name.as_str(),
                "org.freedesktop.DBus.Error.ServiceUnknown" | "org.freedesktop.DBus.Error.NameHasNoOwner"
            ) =>
        {
            PowerOff::Not("udisks is not on the system bus".into())
        }
        Err(e) => PowerOff::Not(format!("udisks refused to power the drive off: {e}")),
    }
}

fn try_power_off(conn: &Connection, device: &Path) -> zbus::Result<PowerOff> {
    let path = device.to_string_lossy();
    let blocks = Manager::new(conn)?
        .resolve_device(HashMap::from([("path", Value::from(path.as_ref()))]), HashMap::new())?;
    let Some(block) = blocks.first() else {
        return Ok(PowerOff::Not(format!("udisks does not know {}", device.display())));
    };
    let drive = Block::builder(conn).path(block)?.build()?.drive()?;
    if drive.as_str() == "/" {
        return Ok(PowerOff::Not(format!(
            "{} is not on a drive that can be powered off (a loop or virtual device)",
            device.display()
        )));
    }
    let drive = Drive::builder(conn).path(drive)?.build()?;
    if !drive.can_power_off()? {
        return Ok(PowerOff::Not(format!(
            "the drive of {} cannot be powered off (not a removable drive)",
            device.display()
        )));
    }
    drive.power_off(HashMap::new())?;
    Ok(PowerOff::Done)
}
