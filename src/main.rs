//! tetras-back: plug in a known USB disk, and this server is backed up onto it.

/// One backup of one disk, from mount to unmount, on a worker thread; the
/// scripts it runs; the words it shares (`backup::report`).
mod backup;
/// The system D-Bus: logind's sleep/shutdown inhibitor, UDisks2's power-off.
mod bus;
/// The command line: legacy flags and subcommands, turned into actions.
mod cli;
/// The administrator's TOML configuration, validated.
mod config;
/// The control FIFO protocol between the CLI and the daemon.
mod control;
/// The daemon's event loop.
mod daemon;
/// Block devices through udev: monitor, enumeration, database look-up.
mod devices;
/// The backup engines the scripts call: snapshot, archive, prune, verify.
mod engine;
/// Events written to subscribers' FIFOs.
mod events;
/// Fault-injection points for the tests (the `failpoints` feature).
mod fault;
/// Safe, non-blocking named-pipe I/O.
mod fifo;
/// The backup history and mail outbox in SQLite.
mod history;
/// English and French: the message catalogue of the mails and the web console.
mod lang;
/// Log output for the terminal and journald.
mod logging;
/// Backup reports, reminders and test mails; the outbox thread.
mod mail;
/// The Prometheus text file.
mod metrics;
/// Mounting backup disks safely and unmounting them.
mod mount;
/// The persistent state: known disks and subscribers.
mod state;
/// The udev rule keeping desktop automounters off the known disks.
mod udev_rule;
/// The web console (`tetras-back web`), a client of the daemon.
mod web;

// The message catalogue, compiled in (see `lang`).
rust_i18n::i18n!("src/i18n", fallback = "en");

fn main() -> std::process::ExitCode {
    fault::setup();
    cli::run()
}
