//! Fault injection for the tests (`tests/faults.rs`): named points between
//! the steps of a backup and of the engines' multi-step writes, where a test
//! makes the program panic, or stops it dead there to kill it at that exact
//! step. Compiled in only with the `failpoints` cargo feature (`make test`
//! turns it on); without it every point is an empty inline function.
//!
//! May import: nothing else of the crate.
//!
//! The `fail` crate's `FAILPOINTS` variable configures them, e.g.
//! `FAILPOINTS="backup::after_mount=return"`:
//! - `panic` panics at the point;
//! - `return` prints `failpoint NAME reached (pid N)` on stderr and blocks
//!   that thread for good, for the test to SIGKILL the process there;
//! - `3*off->return` lets the point pass three times and stops at the fourth.
//!
//! Scripts inherit the daemon's environment, so the engines they run read
//! the same variable.

/// Reads `FAILPOINTS` (once, at start).
pub fn setup() {
    #[cfg(feature = "failpoints")]
    std::mem::forget(fail::FailScenario::setup());
}

/// A named point; does nothing unless a test configured it.
#[inline]
pub fn point(name: &str) {
    #[cfg(feature = "failpoints")]
    fail::eval(name, |_| {
        eprintln!("tetras-back: failpoint {name} reached (pid {})", std::process::id());
        loop {
            std::thread::park();
        }
    });
    #[cfg(not(feature = "failpoints"))]
    let _ = name;
}
