//! The boot deadline: made once per command (`boot.deadline_seconds` from its start), it
//! bounds every step the command runs. `boot` runs its steps under one deadline, each getting
//! what the earlier ones left; a single-step command has a deadline of its own. A step that
//! runs out fails with kind `timeout`, naming the step and what it was waiting for.

use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use anyhow::Result;

/// How long after the deadline a step still concluding on its own (its waits end at the
/// deadline, then it names what it waited for, e.g. `resource_in_use`) is given before it is
/// cut short: well within the contract's one second.
const GRACE: Duration = Duration::from_millis(500);

tokio::task_local! {
    /// What the running step last waited for, for the message when it runs out.
    static WAITING_FOR: Arc<Mutex<Option<String>>>;
}

/// One command's deadline.
#[derive(Debug, Clone, Copy)]
pub struct Deadline {
    at: Instant,
    budget: Duration,
}

/// A step ran out of the boot deadline (kind `timeout`).
#[derive(Debug, thiserror::Error)]
#[error("{step} did not finish within the boot deadline ({budget:?}){}", waiting_for.as_ref().map(|w| format!("; last waiting for: {w}")).unwrap_or_default())]
pub struct TimedOut {
    pub step: &'static str,
    pub budget: Duration,
    pub waiting_for: Option<String>,
}

impl Deadline {
    /// The deadline `budget` from now.
    pub fn after(budget: Duration) -> Deadline {
        Deadline {
            at: Instant::now() + budget,
            budget,
        }
    }

    /// The instant every wait of the command ends by.
    pub fn at(&self) -> Instant {
        self.at
    }

    /// What is left of the deadline.
    pub fn remaining(&self) -> Duration {
        self.at.saturating_duration_since(Instant::now())
    }

    /// Runs one step with what is left of the deadline. The step's own conclusions stand
    /// (a typed failure such as `resource_in_use` or `no_eligible_id`); a step still running
    /// just after the deadline is cut short, and a step that gave up for want of time (its
    /// last transient error, returned at the deadline) fails with kind `timeout`.
    pub async fn run<T>(
        &self,
        step: &'static str,
        work: impl Future<Output = Result<T>>,
    ) -> Result<T> {
        tracing::debug!(
            step,
            remaining_ms = self.remaining().as_millis() as u64,
            "step starts"
        );
        let waiting = Arc::new(Mutex::new(None));
        let work = WAITING_FOR.scope(waiting.clone(), work);
        match tokio::time::timeout_at((self.at + GRACE).into(), work).await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) if Instant::now() >= self.at && crate::exit::kind_for(&e) == "failure" => {
                Err(e.context(self.timed_out(step, None)))
            }
            Ok(Err(e)) => Err(e),
            Err(_) => Err(self.timed_out(step, waiting.lock().unwrap().take()).into()),
        }
    }

    fn timed_out(&self, step: &'static str, waiting_for: Option<String>) -> TimedOut {
        TimedOut {
            step,
            budget: self.budget,
            waiting_for,
        }
    }
}

/// Notes what the running step is waiting for (the last transient failure it retries), so
/// that running out of time can say so.
/// Outside [`Deadline::run`] it does nothing.
pub fn waiting_for(what: impl Into<String>) {
    let _ = WAITING_FOR.try_with(|w| *w.lock().unwrap() = Some(what.into()));
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_step_that_hangs_is_cut_short_as_a_timeout() {
        let d = Deadline::after(Duration::from_millis(100));
        let started = Instant::now();
        let r: Result<()> = d
            .run("attach", async {
                waiting_for("DescribeVolumes: no answer");
                std::future::pending().await
            })
            .await;
        let e = r.unwrap_err();
        // Cut short, not left to hang (the bound leaves room for a loaded machine).
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(crate::exit::kind_for(&e), "timeout");
        let text = format!("{e:#}");
        assert!(
            text.contains("attach") && text.contains("DescribeVolumes"),
            "{text}"
        );
    }

    #[tokio::test]
    async fn a_step_giving_up_at_the_deadline_is_a_timeout_unless_it_concluded() {
        let d = Deadline::after(Duration::from_millis(50));
        let r: Result<()> = d
            .run("mount", async {
                tokio::time::sleep(Duration::from_millis(60)).await;
                Err(anyhow::anyhow!("DescribeVolumes: dispatch failure"))
            })
            .await;
        assert_eq!(crate::exit::kind_for(&r.unwrap_err()), "timeout");

        let d = Deadline::after(Duration::from_millis(50));
        let r: Result<()> = d
            .run("attach", async {
                tokio::time::sleep(Duration::from_millis(60)).await;
                Err(crate::attach::AttachError::NotFound("eni".into()).into())
            })
            .await;
        assert_eq!(crate::exit::kind_for(&r.unwrap_err()), "resource_not_found");

        let d = Deadline::after(Duration::from_secs(60));
        let r: Result<()> = d
            .run("route", async { Err(anyhow::anyhow!("no MAC")) })
            .await;
        assert_eq!(
            crate::exit::kind_for(&r.unwrap_err()),
            "failure",
            "before the deadline"
        );
    }
}
