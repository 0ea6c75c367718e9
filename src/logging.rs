//! Log output on stderr. Under systemd (`JOURNAL_STREAM` set) each line
//! carries a `<N>` priority prefix that journald turns into the entry's
//! priority, and no timestamp of its own (the journal adds one).
//!
//! May import: nothing else of the crate.
//!
//! Messages quote names that come from disks (file and folder names,
//! labels), which may hold newlines or terminal escapes: each message is
//! one line, its control characters shown as escapes ([`printable`]), so
//! that no name can forge a line of the log, the journal or a mail.

use std::borrow::Cow;
use std::fmt::Write as _;
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
                writeln!(buf, "<{priority}>{}", printable(&record.args().to_string()))
            } else {
                let now = chrono::Local::now().format("%Y-%m-%d %H:%M:%S");
                writeln!(buf, "{now} {:<5} {}", record.level(), printable(&record.args().to_string()))
            }
        })
        .init();
}

/// `text` with its control characters (C0, DEL, C1: newline, carriage
/// return, the ESC of terminal escapes...) and the bidirectional-text
/// overrides written as escapes (`\n`, `\r`, `\t`, `\x1b`, `\u{202e}`), for
/// text from outside (a disk's names) put into a line meant for people.
pub fn printable(text: &str) -> Cow<'_, str> {
    let hidden = |c: char| {
        c.is_control()
            || matches!(c, '\u{200e}' | '\u{200f}' | '\u{202a}'..='\u{202e}' | '\u{2066}'..='\u{2069}')
    };
    if !text.chars().any(hidden) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        match c {
            '\n' => out.push_str("\\n"),
            '\r' => out.push_str("\\r"),
            '\t' => out.push_str("\\t"),
            c if c.is_ascii_control() => {
                let _ = write!(out, "\\x{:02x}", c as u32);
            }
            c if hidden(c) => {
                let _ = write!(out, "\\u{{{:x}}}", c as u32);
            }
            c => out.push(c),
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn control_characters_are_shown_as_escapes() {
        assert!(matches!(printable("Donnees/é b.txt"), Cow::Borrowed(_)));
        assert_eq!(
            printable("a\nForged: yes\r\t\u{1b}[31mred\u{7f}\u{9b}\u{202e}txt.exe"),
            "a\\nForged: yes\\r\\t\\x1b[31mred\\x7f\\u{9b}\\u{202e}txt.exe"
        );
    }
}
