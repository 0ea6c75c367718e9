//! Log output on stderr. Under systemd (`JOURNAL_STREAM` set) each line
//! carries a `<N>` priority prefix that journald turns into the entry's
//! priority, and no timestamp of its own (the journal adds one).

use std::io::Write;

use log::{Level, LevelFilter};

/// Sets up logging: the daemon logs at info by default, other commands only
/// warnings; each `-v` adds a level.
pub fn init(verbose: u8, daemon: bool) {
    let base = if daemon { 2 } else { 0 };
    let level = match base + verbose {
        0 => LevelFilter::Warn,
        1 | 2 => LevelFilter::Info,
        3 => LevelFilter::Debug,
        _ => LevelFilter::Trace,
    };
    let journald = std::env::var_os("JOURNAL_STREAM").is_some();
    env_logger::Builder::new()
        .filter_level(level)
        .format(move |buf, record| {
            if journald {
                let priority = match record.level() {
                    Level::Error => 3,
                    Level::Warn => 4,
                    Level::Info => 6,
                    Level::Debug | Level::Trace => 7,
                };
                writeln!(buf, "<{priority}>{}", record.args())
            } else {
                let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
                writeln!(buf, "{now} {:<5} {}", record.level(), record.args())
            }
        })
        .init();
}
