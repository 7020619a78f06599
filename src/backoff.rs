//! Waiting politely: exponential backoff with full jitter under one overall deadline.

use std::time::{Duration, Instant};

/// Backoff from `first` doubling up to `cap`, each pause drawn uniformly from [pause/2, pause].
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
    deadline: Instant,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration, deadline: Instant) -> Self {
        Self {
            next: first,
            cap,
            deadline,
        }
    }

    pub fn deadline(&self) -> Instant {
        self.deadline
    }

    /// The next pause, or None when it would cross the deadline.
    pub fn next_pause(&mut self) -> Option<Duration> {
        let now = Instant::now();
        if now >= self.deadline {
            return None;
        }
        let half = self.next / 2;
        let jitter = Duration::from_nanos(rand::random_range(0..=half.as_nanos() as u64));
        let pause = (half + jitter).min(self.deadline - now);
        self.next = (self.next * 2).min(self.cap);
        Some(pause)
    }

    /// Sleeps for the next pause; false when the deadline has come (then or before).
    pub async fn wait(&mut self) -> bool {
        match self.next_pause() {
            Some(p) => {
                tokio::time::sleep(p).await;
                Instant::now() < self.deadline
            }
            None => false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn pauses_grow_to_the_cap_and_stay_jittered() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_millis(800),
            Instant::now() + Duration::from_secs(3600),
        );
        let pauses: Vec<Duration> = (0..8).map(|_| b.next_pause().unwrap()).collect();
        let bounds = [100u64, 200, 400, 800, 800, 800, 800, 800];
        for (p, hi) in pauses.iter().zip(bounds) {
            assert!(
                *p >= Duration::from_millis(hi / 2) && *p <= Duration::from_millis(hi),
                "{p:?} vs {hi}"
            );
        }
    }

    #[test]
    fn nothing_after_the_deadline() {
        let mut b = Backoff::new(
            Duration::from_millis(100),
            Duration::from_secs(1),
            Instant::now(),
        );
        assert_eq!(b.next_pause(), None);
    }
}
