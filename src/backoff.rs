//! Waiting politely: exponential backoff with full jitter under one overall deadline.

use std::time::{Duration, Instant};

/// Backoff from `first` doubling up to `cap`, each pause drawn uniformly from [pause/2, pause].
#[derive(Debug, Clone)]
pub struct Backoff {
    next: Duration,
    cap: Duration,
    deadline: Instant,
    /// Until then, pauses stay at `next` without jitter or growth (see [`Backoff::steady`]).
    steady_until: Option<Instant>,
}

impl Backoff {
    pub fn new(first: Duration, cap: Duration, deadline: Instant) -> Self {
        Self {
            next: first,
            cap,
            deadline,
            steady_until: None,
        }
    }

    /// For a local fact that is cheap to ask and usually true within moments (a block device
    /// or an interface appearing after EC2 reported the attachment): ask every `every` for
    /// `steady` (the wait then ends within `every` of the fact), then back off as [`new`] does
    /// from `every` up to `cap`.
    ///
    /// [`new`]: Backoff::new
    pub fn steady(every: Duration, steady: Duration, cap: Duration, deadline: Instant) -> Self {
        Self {
            steady_until: Some(Instant::now() + steady),
            ..Self::new(every, cap, deadline)
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
        if self.steady_until.is_some_and(|until| now < until) {
            return Some(self.next.min(self.deadline - now));
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
    fn steady_pauses_stay_short_then_grow() {
        let mut b = Backoff::steady(
            Duration::from_millis(10),
            Duration::from_millis(200),
            Duration::from_millis(80),
            Instant::now() + Duration::from_secs(3600),
        );
        for _ in 0..50 {
            assert_eq!(b.next_pause(), Some(Duration::from_millis(10)));
        }
        std::thread::sleep(Duration::from_millis(200));
        let later: Vec<Duration> = (0..5).map(|_| b.next_pause().unwrap()).collect();
        let bounds = [10u64, 20, 40, 80, 80];
        for (p, hi) in later.iter().zip(bounds) {
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
