//! The clients of the daemon and how they speak to it: named pipes read and
//! written without ever blocking ([`fifo`]), the control protocol, typed both
//! ways, with the CLI's side of it ([`control`]), and the events written to
//! subscribers ([`events`]).
//!
//! May import: `config`, `store` (the words of a backup, the state and the
//! history the disk table is made of).

pub mod control;
pub mod events;
pub mod fifo;
