//! Login throttling, in memory (a restart forgets it). Failures are counted per address,
//! per user name and per (name, address) pair over a sliding `window`:
//!
//! - an address with `max` failures is refused (429 with Retry-After) until its oldest
//!   failure leaves the window, whatever name it tries;
//! - a name with `max` failures (a guessing attack spread over many addresses) is
//!   refused only to addresses that have themselves failed it `PAIR_ALLOWANCE` times —
//!   so an attacker cannot lock the real user out: from an address that is not failing,
//!   the right password still signs in, while each attacking address gets a couple of
//!   guesses per window instead of `max`.
//!
//! Names are counted whether or not the user exists, so the answer never reveals which
//! names are real.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys tracked at once; beyond it the stalest are forgotten first.
const MAX_KEYS: usize = 100_000;

/// Failures an address may have on a name that is under attack before it is refused.
pub const PAIR_ALLOWANCE: usize = 3;

/// The counters one sign-in attempt touches.
pub struct Attempt {
    pub name: String,
    pub address: String,
}

impl Attempt {
    pub fn new(name: &str, address: &str) -> Self {
        Self {
            name: format!("user:{name}"),
            address: format!("addr:{address}"),
        }
    }

    fn pair(&self) -> String {
        format!("{}|{}", self.name, self.address)
    }

    fn keys(&self) -> [String; 3] {
        [self.name.clone(), self.address.clone(), self.pair()]
    }
}

pub struct LoginThrottle {
    max: usize,
    window: Duration,
    failures: Mutex<HashMap<String, VecDeque<Instant>>>,
}

impl LoginThrottle {
    pub fn new(max: usize, window: Duration) -> Self {
        Self {
            max,
            window,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// How long until `key` has fewer than `limit` failures in the window (zero if it
    /// has fewer now); forgets failures that left the window.
    fn wait(
        failures: &mut HashMap<String, VecDeque<Instant>>,
        key: &str,
        limit: usize,
        window: Duration,
        now: Instant,
    ) -> Duration {
        let Some(times) = failures.get_mut(key) else {
            return Duration::ZERO;
        };
        while times
            .front()
            .is_some_and(|t| now.duration_since(*t) >= window)
        {
            times.pop_front();
        }
        if times.len() < limit {
            return Duration::ZERO;
        }
        let oldest = times[times.len() - limit];
        window.saturating_sub(now.duration_since(oldest))
    }

    /// `Err(retry_after)` when the address has used up its attempts, or the name has and
    /// so has this address on it.
    pub fn check(&self, attempt: &Attempt, now: Instant) -> Result<(), Duration> {
        let mut failures = self.failures.lock().expect("throttle lock");
        let (max, window) = (self.max, self.window);
        let address = Self::wait(&mut failures, &attempt.address, max, window, now);
        let name = Self::wait(&mut failures, &attempt.name, max, window, now);
        let pair = Self::wait(&mut failures, &attempt.pair(), PAIR_ALLOWANCE, window, now);
        let wait = if name.is_zero() || pair.is_zero() {
            address
        } else {
            address.max(name.min(pair))
        };
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    pub fn record_failure(&self, attempt: &Attempt, now: Instant) {
        let mut failures = self.failures.lock().expect("throttle lock");
        if failures.len() >= MAX_KEYS {
            let window = self.window;
            failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        for key in attempt.keys() {
            failures.entry(key).or_default().push_back(now);
        }
    }

    /// A successful sign-in clears that name's counts (not the address's).
    pub fn record_success(&self, attempt: &Attempt) {
        let mut failures = self.failures.lock().expect("throttle lock");
        failures.remove(&attempt.name);
        failures.remove(&attempt.pair());
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_after_max_failures_until_the_window_passes() {
        let throttle = LoginThrottle::new(3, Duration::from_secs(60));
        let alice = Attempt::new("alice", "10.0.0.1");
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(throttle.check(&alice, t0 + Duration::from_secs(i)).is_ok());
            throttle.record_failure(&alice, t0 + Duration::from_secs(i));
        }
        let wait = throttle
            .check(&alice, t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        // Another name from the same address is throttled too.
        let bob = Attempt::new("bob", "10.0.0.1");
        assert!(throttle.check(&bob, t0 + Duration::from_secs(10)).is_err());
        assert!(throttle.check(&alice, t0 + Duration::from_secs(61)).is_ok());
    }

    #[test]
    fn a_name_under_attack_stays_open_to_an_address_that_is_not_failing() {
        let throttle = LoginThrottle::new(10, Duration::from_secs(300));
        let t0 = Instant::now();
        // Ten addresses fail "admin" once each: the name is under attack.
        for i in 0..10 {
            throttle.record_failure(&Attempt::new("admin", &format!("10.0.0.{i}")), t0);
        }
        // The real admin elsewhere is let in to try.
        assert!(
            throttle
                .check(&Attempt::new("admin", "192.0.2.7"), t0)
                .is_ok()
        );
        // An attacking address gets PAIR_ALLOWANCE guesses, then waits.
        let attacker = Attempt::new("admin", "10.0.0.1");
        for _ in 1..PAIR_ALLOWANCE {
            assert!(throttle.check(&attacker, t0).is_ok());
            throttle.record_failure(&attacker, t0);
        }
        assert!(throttle.check(&attacker, t0).is_err());
    }
}
