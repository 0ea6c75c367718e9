//! A channel whose receiving end can sit in the daemon's `poll(2)` set: each
//! send also writes a byte to a socket pair, which makes the loop wake up.

use std::io::{self, Read, Write};
use std::os::unix::net::UnixStream;
use std::sync::mpsc::{self, Receiver, Sender};
use std::time::{Duration, Instant};

pub struct WakeChannel<T> {
    tx: Sender<T>,
    rx: Receiver<T>,
    wake_tx: UnixStream,
    /// Readable when something was sent.
    pub wake_rx: UnixStream,
}

/// The sending end, for another thread.
pub struct WakeSender<T> {
    tx: Sender<T>,
    wake: UnixStream,
}

impl<T> WakeSender<T> {
    pub fn send(&self, value: T) {
        let _ = self.tx.send(value);
        let _ = (&self.wake).write(&[1]);
    }
}

impl<T> WakeChannel<T> {
    pub fn new() -> io::Result<WakeChannel<T>> {
        let (tx, rx) = mpsc::channel();
        let (wake_rx, wake_tx) = UnixStream::pair()?;
        wake_rx.set_nonblocking(true)?;
        // A full socket buffer must not block a sender: one byte pending is enough to wake.
        wake_tx.set_nonblocking(true)?;
        Ok(WakeChannel { tx, rx, wake_tx, wake_rx })
    }

    pub fn sender(&self) -> io::Result<WakeSender<T>> {
        Ok(WakeSender { tx: self.tx.clone(), wake: self.wake_tx.try_clone()? })
    }

    /// Everything sent so far.
    pub fn drain(&self) -> Vec<T> {
        let mut buf = [0u8; 256];
        while matches!((&self.wake_rx).read(&mut buf), Ok(n) if n > 0) {}
        self.rx.try_iter().collect()
    }

    /// Waits for the next value (`None`: every sender is gone).
    pub fn recv(&self) -> Option<T> {
        self.rx.recv().ok()
    }
}

/// Something the loop does every `every`, the first time at once; the loop
/// sleeps no longer than until [`Periodic::next`].
#[derive(Debug)]
pub struct Periodic {
    next: Instant,
    every: Duration,
}

impl Periodic {
    pub fn new(every: Duration) -> Periodic {
        Periodic { next: Instant::now(), every }
    }

    /// The next time is `every` from now.
    pub fn restart(&mut self) {
        self.next = Instant::now() + self.every;
    }

    /// Whether it is time; if so, the next time is `every` from now.
    pub fn due(&mut self) -> bool {
        let now = Instant::now();
        if now < self.next {
            return false;
        }
        self.next = now + self.every;
        true
    }

    pub fn next(&self) -> Instant {
        self.next
    }
}
