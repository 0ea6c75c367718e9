//! tetras-back: plug in a known USB disk, and this server is backed up onto it.

/// One backup of one disk, from mount to unmount, on a worker thread; the
/// scripts it runs; the words it shares (`backup::report`).
mod backup;
/// The system D-Bus: logind's sleep/shutdown inhibitor, UDisks2's power-off.
mod bus;
/// The command line: legacy flags and subcommands, turned into actions.
mod cli;
/// The clients of the daemon: non-blocking FIFOs, the control protocol, events.
mod clients;
/// The administrator's TOML configuration, validated.
mod config;
/// The daemon's event loop.
mod daemon;
/// The disk: udev devices, safe mounts, the identity it proves, the udev rule.
mod disk;
/// The backup engines the scripts call: snapshot, archive, prune, verify.
mod engine;
/// Fault-injection points for the tests (the `failpoints` feature).
mod fault;
/// The site's other machines, pulled over SSH with rsync (`pull`, `hosts`).
mod hosts;
/// English and French: the message catalogue of the mails and the web console.
mod lang;
/// Log output for the terminal and journald.
mod logging;
/// Telling people: mail reports, reminders, the outbox, the metrics file.
mod notify;
/// What the daemon keeps: the state file and the SQLite history.
mod store;
/// The web console (`tetras-back web`), a client of the daemon.
mod web;

// The message catalogue, compiled in (see `lang`).
rust_i18n::i18n!("src/i18n", fallback = "en");

fn main() -> std::process::ExitCode {
    fault::setup();
    cli::run()
}
