//! Sessions (server-side, random 256-bit ids, expired after
//! `web.session_timeout` unused, ended when their user is removed or their
//! password changes), their CSRF tokens and one-time notices, and the
//! throttling of logins per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// After this many failed logins from one address...
pub const MAX_FAILURES: u32 = 10;
/// ... it may not try again for this long after its last failure.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);
/// At most this many passwords from one address are checked at once; the
/// others are refused (429) until one is done.
pub const MAX_AT_ONCE: u32 = 2;
/// Beyond this many addresses, those with nothing left to remember are
/// forgotten.
const ADDRESSES_KEPT: usize = 1024;

/// A random 256-bit token, in hex.
pub fn token() -> String {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).expect("the kernel's random source is readable");
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

/// Compares two tokens in a time that does not depend on where they differ.
pub fn same_token(a: &str, b: &str) -> bool {
    a.len() == b.len() && a.bytes().zip(b.bytes()).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// A one-time notice shown on the next page (the outcome of an action).
#[derive(Debug, Clone, PartialEq)]
pub struct Notice {
    pub ok: bool,
    pub text: String,
}

/// A logged-in user's session.
#[derive(Debug, Clone)]
pub struct Session {
    pub id: String,
    pub user: String,
    /// The fingerprint of the user's password hash when they logged in
    /// (`Users::fingerprint`): another one in the users file ends the session.
    pub fingerprint: String,
    /// The token every form of this session carries.
    pub csrf: String,
    last_used: Instant,
    notice: Option<Notice>,
}

pub struct Sessions {
    map: Mutex<HashMap<String, Session>>,
    timeout: Duration,
}

impl Sessions {
    pub fn new(timeout: Duration) -> Sessions {
        Sessions { map: Mutex::new(HashMap::new()), timeout }
    }

    pub fn create(&self, user: &str, fingerprint: &str) -> Session {
        let session = Session {
            id: token(),
            user: user.to_owned(),
            fingerprint: fingerprint.to_owned(),
            csrf: token(),
            last_used: Instant::now(),
            notice: None,
        };
        let mut map = self.map.lock().unwrap();
        let timeout = self.timeout;
        map.retain(|_, s| s.last_used.elapsed() < timeout);
        map.insert(session.id.clone(), session.clone());
        session
    }

    /// The live session `id`, marked as used now when `touch`.
    /// `still_valid` tells whether its user may still use it (still in the
    /// users file, with the same password); a session it refuses ends.
    pub fn get_checked(
        &self,
        id: &str,
        touch: bool,
        still_valid: impl FnOnce(&Session) -> bool,
    ) -> Option<Session> {
        let mut map = self.map.lock().unwrap();
        let live = map.get(id).is_some_and(|s| s.last_used.elapsed() < self.timeout);
        if !live || !still_valid(map.get(id)?) {
            map.remove(id);
            return None;
        }
        let s = map.get_mut(id)?;
        if touch {
            s.last_used = Instant::now();
        }
        Some(s.clone())
    }

    /// The live session `id`, marked as used now.
    #[cfg(test)]
    pub fn get(&self, id: &str) -> Option<Session> {
        self.get_checked(id, true, |_| true)
    }

    pub fn remove(&self, id: &str) {
        self.map.lock().unwrap().remove(id);
    }

    /// Leaves a notice for the session's next page.
    pub fn notify(&self, id: &str, notice: Notice) {
        if let Some(s) = self.map.lock().unwrap().get_mut(id) {
            s.notice = Some(notice);
        }
    }

    /// Takes the session's notice, if any (shown once).
    pub fn take_notice(&self, id: &str) -> Option<Notice> {
        self.map.lock().unwrap().get_mut(id)?.notice.take()
    }
}

/// What the throttle knows of one address.
#[derive(Debug)]
struct Address {
    /// Failed logins in a row, counting those being checked now: each
    /// attempt takes its slot before its password is checked, and gives it
    /// back only when the password was right.
    failures: u32,
    /// Passwords being checked now.
    checking: u32,
    /// The last attempt (its start or its end).
    last: Instant,
}

/// Why a login is not even checked.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Refusal {
    /// Too many failures: the address waits this long.
    Locked(Duration),
    /// `MAX_AT_ONCE` passwords of this address are being checked.
    Busy,
}

/// Logins per address: failures in a row and passwords being checked.
pub struct Throttle {
    addresses: Arc<Mutex<HashMap<IpAddr, Address>>>,
    lockout: Duration,
}

impl Default for Throttle {
    fn default() -> Throttle {
        Throttle::with_lockout(LOCKOUT)
    }
}

impl Throttle {
    pub fn with_lockout(lockout: Duration) -> Throttle {
        Throttle { addresses: Arc::default(), lockout }
    }

    /// A login attempt from `ip` may check its password: its failure is
    /// counted now, before the check, and forgotten only if
    /// `Attempt::succeeded` is called. Refused when the address has failed
    /// `MAX_FAILURES` times in a row (within the lockout), or when
    /// `MAX_AT_ONCE` of its passwords are being checked.
    pub fn begin(&self, ip: IpAddr) -> Result<Attempt, Refusal> {
        let mut map = self.addresses.lock().unwrap();
        if map.len() > ADDRESSES_KEPT {
            let lockout = self.lockout;
            map.retain(|_, a| a.checking > 0 || a.last.elapsed() < lockout);
        }
        let now = Instant::now();
        let a = map.entry(ip).or_insert(Address { failures: 0, checking: 0, last: now });
        let since = a.last.elapsed();
        if since >= self.lockout && a.checking == 0 {
            a.failures = 0;
        }
        if a.failures >= MAX_FAILURES {
            return Err(Refusal::Locked(self.lockout.saturating_sub(since).max(Duration::from_secs(1))));
        }
        if a.checking >= MAX_AT_ONCE {
            return Err(Refusal::Busy);
        }
        a.failures += 1;
        a.checking += 1;
        a.last = now;
        Ok(Attempt { addresses: self.addresses.clone(), ip, count: a.failures, succeeded: false })
    }

    /// How long `ip` must wait before trying again (`None`: it may try).
    #[cfg(test)]
    fn wait(&self, ip: IpAddr) -> Option<Duration> {
        let map = self.addresses.lock().unwrap();
        let a = map.get(&ip)?;
        let since = a.last.elapsed();
        (a.failures >= MAX_FAILURES && since < self.lockout).then(|| self.lockout - since)
    }
}

/// A login whose password is being checked; dropped without `succeeded`,
/// it stays a failure.
#[derive(Debug)]
pub struct Attempt {
    addresses: Arc<Mutex<HashMap<IpAddr, Address>>>,
    ip: IpAddr,
    count: u32,
    succeeded: bool,
}

impl Attempt {
    /// Which failure in a row this attempt is, if its password is wrong.
    pub fn count(&self) -> u32 {
        self.count
    }

    /// The password was right: the address's failures are forgotten, but
    /// for those still being checked.
    pub fn succeeded(mut self) {
        self.succeeded = true;
    }
}

impl Drop for Attempt {
    fn drop(&mut self) {
        let mut map = self.addresses.lock().unwrap();
        let Some(a) = map.get_mut(&self.ip) else { return };
        a.checking = a.checking.saturating_sub(1);
        a.last = Instant::now();
        if self.succeeded {
            a.failures = a.checking;
            if a.failures == 0 {
                map.remove(&self.ip);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicU32, Ordering};

    #[test]
    fn tokens_are_256_bits_and_differ() {
        let (a, b) = (token(), token());
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
        assert!(same_token(&a, &a.clone()) && !same_token(&a, &b) && !same_token(&a, ""));
    }

    #[test]
    fn sessions_expire_when_unused() {
        let sessions = Sessions::new(Duration::from_millis(50));
        let s = sessions.create("alice", "f1");
        assert_eq!(sessions.get(&s.id).unwrap().user, "alice");
        sessions.notify(&s.id, Notice { ok: true, text: "saved".into() });
        assert_eq!(sessions.take_notice(&s.id).unwrap().text, "saved");
        assert!(sessions.take_notice(&s.id).is_none(), "shown once");
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.get(&s.id).is_none());
        assert!(sessions.get("nonsense").is_none());
    }

    #[test]
    fn a_session_its_user_may_no_longer_use_ends() {
        let sessions = Sessions::new(Duration::from_secs(60));
        let s = sessions.create("alice", "f1");
        let t = sessions.create("bob", "f2");
        assert!(sessions.get_checked(&s.id, true, |s| s.fingerprint == "f1").is_some());
        // Another password (or none): the session ends, for good.
        assert!(sessions.get_checked(&s.id, true, |s| s.fingerprint == "f9").is_none());
        assert!(sessions.get(&s.id).is_none(), "the session was not ended");
        assert_eq!(sessions.get(&t.id).unwrap().user, "bob", "another user's session was ended");
    }

    #[test]
    fn a_check_without_touching_does_not_keep_a_session_alive() {
        let sessions = Sessions::new(Duration::from_millis(100));
        let s = sessions.create("alice", "f1");
        for _ in 0..3 {
            std::thread::sleep(Duration::from_millis(40));
            let _ = sessions.get_checked(&s.id, false, |_| true);
        }
        assert!(sessions.get(&s.id).is_none(), "peeking kept the session alive");
    }

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn ten_failures_lock_an_address_out() {
        let t = Throttle::default();
        let ip = ip("127.0.0.1");
        for i in 1..=MAX_FAILURES {
            assert!(t.wait(ip).is_none());
            let attempt = t.begin(ip).unwrap();
            assert_eq!(attempt.count(), i);
        }
        let Err(Refusal::Locked(wait)) = t.begin(ip) else { panic!("not locked out") };
        assert!(wait > LOCKOUT - Duration::from_secs(5));
        assert!(t.wait(ip).unwrap() > LOCKOUT - Duration::from_secs(5));
        assert!(t.begin(self::ip("127.0.0.2")).is_ok(), "another address may try");
    }

    #[test]
    fn the_failure_is_counted_before_the_password_is_checked() {
        let t = Throttle::default();
        let ip = ip("10.0.0.1");
        let (first, second) = (t.begin(ip).unwrap(), t.begin(ip).unwrap());
        assert_eq!((first.count(), second.count()), (1, 2), "both slots are taken while checking");
        assert_eq!(t.begin(ip).unwrap_err(), Refusal::Busy, "a third check at once");
        drop(first);
        assert_eq!(t.begin(ip).unwrap().count(), 3, "a wrong password stays counted");
        // A right password gives its slot back, and forgets the failures
        // but for those still being checked.
        second.succeeded();
        let a = t.begin(ip).unwrap();
        assert_eq!(a.count(), 1);
        let b = t.begin(ip).unwrap();
        a.succeeded();
        assert_eq!(t.begin(ip).unwrap().count(), 2, "the attempt still checked was forgotten");
        drop(b);
        assert_eq!(t.begin(ip).unwrap().count(), 3);
    }

    #[test]
    fn sixty_logins_at_once_check_at_most_ten_passwords() {
        // Each thread checks a (slow, wrong) password when it may.
        let t = Arc::new(Throttle::default());
        let (checked, now, most) =
            (Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)), Arc::new(AtomicU32::new(0)));
        let start = Arc::new(std::sync::Barrier::new(60));
        let threads: Vec<_> = (0..60)
            .map(|_| {
                let (t, checked, now, most, start) =
                    (t.clone(), checked.clone(), now.clone(), most.clone(), start.clone());
                std::thread::spawn(move || {
                    start.wait();
                    loop {
                        match t.begin(ip("192.0.2.7")) {
                            Ok(attempt) => {
                                checked.fetch_add(1, Ordering::SeqCst);
                                let at_once = now.fetch_add(1, Ordering::SeqCst) + 1;
                                most.fetch_max(at_once, Ordering::SeqCst);
                                std::thread::sleep(Duration::from_millis(5));
                                now.fetch_sub(1, Ordering::SeqCst);
                                drop(attempt);
                            }
                            Err(Refusal::Busy) => std::thread::sleep(Duration::from_millis(1)),
                            Err(Refusal::Locked(_)) => return,
                        }
                    }
                })
            })
            .collect();
        for th in threads {
            th.join().unwrap();
        }
        assert_eq!(checked.load(Ordering::SeqCst), MAX_FAILURES, "passwords checked");
        assert!(
            most.load(Ordering::SeqCst) <= MAX_AT_ONCE,
            "{} checked at once",
            most.load(Ordering::SeqCst)
        );
        // Locked now, even for the right password.
        assert!(matches!(t.begin(ip("192.0.2.7")), Err(Refusal::Locked(_))));
    }

    #[test]
    fn a_lockout_ends() {
        let t = Throttle::with_lockout(Duration::from_millis(60));
        let ip = ip("10.0.0.2");
        for _ in 0..MAX_FAILURES {
            drop(t.begin(ip).unwrap());
        }
        assert!(matches!(t.begin(ip), Err(Refusal::Locked(_))));
        std::thread::sleep(Duration::from_millis(80));
        assert_eq!(t.begin(ip).unwrap().count(), 1, "the failures were not forgotten");
    }
}
