//! Login throttling: after `max` failed sign-ins for one user name or from one address
//! within `window`, further attempts are refused (429 with Retry-After) until the oldest
//! failure leaves the window. It counts names whether or not the user exists, so the
//! answer never reveals which names are real. Kept in memory: a restart forgets it.

use std::collections::{HashMap, VecDeque};
use std::sync::Mutex;
use std::time::{Duration, Instant};

/// Most keys tracked at once; beyond it the stalest are forgotten first.
const MAX_KEYS: usize = 100_000;

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

    /// `Err(retry_after)` when any key has used up its attempts.
    pub fn check(&self, keys: &[String], now: Instant) -> Result<(), Duration> {
        let mut failures = self.failures.lock().expect("throttle lock");
        let mut wait = Duration::ZERO;
        for key in keys {
            if let Some(times) = failures.get_mut(key) {
                while times
                    .front()
                    .is_some_and(|t| now.duration_since(*t) >= self.window)
                {
                    times.pop_front();
                }
                if times.len() >= self.max {
                    let oldest = *times.front().expect("non-empty");
                    wait = wait.max(self.window - now.duration_since(oldest));
                }
            }
        }
        if wait.is_zero() { Ok(()) } else { Err(wait) }
    }

    pub fn record_failure(&self, keys: &[String], now: Instant) {
        let mut failures = self.failures.lock().expect("throttle lock");
        if failures.len() >= MAX_KEYS {
            let window = self.window;
            failures.retain(|_, times| {
                times
                    .back()
                    .is_some_and(|t| now.duration_since(*t) < window)
            });
        }
        for key in keys {
            failures.entry(key.clone()).or_default().push_back(now);
        }
    }

    /// A successful sign-in clears that user's count (not the address's).
    pub fn record_success(&self, key: &str) {
        self.failures.lock().expect("throttle lock").remove(key);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn refuses_after_max_failures_until_the_window_passes() {
        let throttle = LoginThrottle::new(3, Duration::from_secs(60));
        let keys = vec!["user:alice".to_string(), "addr:10.0.0.1".to_string()];
        let t0 = Instant::now();
        for i in 0..3 {
            assert!(throttle.check(&keys, t0 + Duration::from_secs(i)).is_ok());
            throttle.record_failure(&keys, t0 + Duration::from_secs(i));
        }
        let wait = throttle
            .check(&keys, t0 + Duration::from_secs(10))
            .unwrap_err();
        assert_eq!(wait, Duration::from_secs(50));
        // Another name from the same address is throttled too.
        let other = vec!["user:bob".to_string(), "addr:10.0.0.1".to_string()];
        assert!(
            throttle
                .check(&other, t0 + Duration::from_secs(10))
                .is_err()
        );
        assert!(throttle.check(&keys, t0 + Duration::from_secs(61)).is_ok());
    }
}
