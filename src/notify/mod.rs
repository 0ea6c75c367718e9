//! Telling people: the mail reports, reminders and test mails and the
//! outbox thread that sends them ([`mail`]), and the Prometheus text file
//! ([`metrics`]).
//!
//! May import: `config`, `engine` (sizes in words), `lang`, `logging`,
//! `store` (the outbox, the history's summaries, the words of a backup).

pub mod mail;
pub mod metrics;
