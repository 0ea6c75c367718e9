//! Sessions (server-side, random 256-bit ids, expired after
//! `web.session_timeout` unused), their CSRF tokens and one-time notices,
//! and the throttling of failed logins per address.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// After this many failed logins from one address...
pub const MAX_FAILURES: u32 = 10;
/// ... it may not try again for this long after its last failure.
pub const LOCKOUT: Duration = Duration::from_secs(15 * 60);

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

    pub fn create(&self, user: &str) -> Session {
        let session = Session {
            id: token(),
            user: user.to_owned(),
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

    /// The live session `id`, marked as used now.
    pub fn get(&self, id: &str) -> Option<Session> {
        let mut map = self.map.lock().unwrap();
        let live = map.get(id).is_some_and(|s| s.last_used.elapsed() < self.timeout);
        if !live {
            map.remove(id);
            return None;
        }
        let s = map.get_mut(id)?;
        s.last_used = Instant::now();
        Some(s.clone())
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

/// Failed logins per address.
#[derive(Default)]
pub struct Throttle {
    failures: Mutex<HashMap<IpAddr, (u32, Instant)>>,
}

impl Throttle {
    /// How long `ip` must wait before trying again (`None`: it may try).
    pub fn wait(&self, ip: IpAddr) -> Option<Duration> {
        let mut map = self.failures.lock().unwrap();
        let &(count, last) = map.get(&ip)?;
        let since = last.elapsed();
        if since >= LOCKOUT {
            map.remove(&ip);
            return None;
        }
        (count >= MAX_FAILURES).then(|| LOCKOUT - since)
    }

    /// Counts a failure; returns how many in a row there were.
    pub fn failed(&self, ip: IpAddr) -> u32 {
        let mut map = self.failures.lock().unwrap();
        let entry = map.entry(ip).or_insert((0, Instant::now()));
        if entry.1.elapsed() >= LOCKOUT {
            entry.0 = 0;
        }
        entry.0 += 1;
        entry.1 = Instant::now();
        entry.0
    }

    pub fn succeeded(&self, ip: IpAddr) {
        self.failures.lock().unwrap().remove(&ip);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

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
        let s = sessions.create("alice");
        assert_eq!(sessions.get(&s.id).unwrap().user, "alice");
        sessions.notify(&s.id, Notice { ok: true, text: "saved".into() });
        assert_eq!(sessions.take_notice(&s.id).unwrap().text, "saved");
        assert!(sessions.take_notice(&s.id).is_none(), "shown once");
        std::thread::sleep(Duration::from_millis(80));
        assert!(sessions.get(&s.id).is_none());
        assert!(sessions.get("nonsense").is_none());
    }

    #[test]
    fn ten_failures_lock_an_address_out() {
        let t = Throttle::default();
        let ip: IpAddr = "127.0.0.1".parse().unwrap();
        for i in 1..MAX_FAILURES {
            assert_eq!(t.failed(ip), i);
            assert!(t.wait(ip).is_none());
        }
        t.failed(ip);
        assert!(t.wait(ip).unwrap() > LOCKOUT - Duration::from_secs(5));
        assert!(t.wait("127.0.0.2".parse().unwrap()).is_none(), "another address may try");
        t.succeeded(ip);
        assert!(t.wait(ip).is_none());
    }
}
