//! What the daemon keeps, and the words it keeps it in: the state file
//! (known disks and subscribers, versioned JSON written atomically, never
//! silently replaced), the history (backups, plugs, the mail outbox and
//! reminders in SQLite), and [`report`], the vocabulary of a backup (its
//! job, status, report, drill) that the history, the state, the events,
//! the mails and the metrics share.
//!
//! May import: `engine` (the file-system calls, what the engines did),
//! `lang`.

pub mod history;
pub mod report;
pub mod state;
pub mod trend;
