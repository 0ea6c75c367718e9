//! The disk: the block devices udev tells of (monitor, enumeration, look-up),
//! mounting a disk safely and unmounting it, the identity a known disk
//! proves (`.tetras-back/disk-id`), and the udev rule that keeps desktop
//! automounters off the known disks.
//!
//! May import: `engine` (its file-system calls), `store` (the atomic
//! write, the words of a job).

pub mod devices;
pub mod identity;
pub mod mount;
pub mod udev_rule;
