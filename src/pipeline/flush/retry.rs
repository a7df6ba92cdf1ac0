//! The retry decision: after an attempt failed, what happens to the writes it carried. A pure
//! function of the failure, the attempt number, the time spent and the policy, so that every rule
//! below is unit-tested without the SDK; the flusher's one retry loop
//! (`retry_loop`) only carries it out.
//!
//! | situation | decision |
//! |---|---|
//! | the shutdown deadline has passed, spool on | [`Decision::Leave`]: stop; the spool keeps the write for the next start |
//! | the shutdown deadline has passed, spool off | [`Decision::GiveUp`] (`shutdown`): dead-lettered, counted, logged |
//! | throttled on its own key, hot-key windows on, the write younger than `max_elapsed` (or spool on) | [`Decision::HandBack`] to its shard |
//! | spool off and retried for `max_elapsed` | [`Decision::GiveUp`] (`retries_exhausted`) |
//! | refused credentials | [`Decision::RetryAfter`] the longest backoff (they do not heal in milliseconds) |
//! | anything else | [`Decision::RetryAfter`] a full-jitter exponential backoff |
//!
//! With the spool on a write is never given up for time: the spool's disk bound is what limits an
//! outage (then new events are refused). A ValidationException is not a retry question: the
//! flusher isolates the poison write and dead-letters it in both modes.

use std::time::Duration;

use crate::telemetry::stats::DropReason;

/// How an attempt failed, as far as retrying is concerned.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Failed {
    /// Throttling; `own_key` when DynamoDB throttled the write's key itself (UnprocessedItems, a
    /// key-range ThrottlingReason or none) rather than table or account capacity.
    Throttled { own_key: bool },
    /// A 5xx, a timeout, a reset, any other error: the attempt may or may not have been applied.
    Transient,
    /// DynamoDB refused the credentials.
    Credentials,
}

/// What to do with a write whose attempt failed.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Decision {
    /// Send it again after this pause.
    RetryAfter(Duration),
    /// Hand it back to its shard, which holds the key for a window and merges newer ops into it.
    HandBack,
    /// Give it up: counted, logged and dead-lettered with this reason.
    GiveUp(DropReason),
    /// Stop without giving it up: the shutdown deadline passed and the spool keeps the write.
    Leave,
}

/// The settings the decision depends on.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RetryPolicy {
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
    /// Without the spool: give a write up after retrying it this long.
    pub max_elapsed: Duration,
    /// The spool holds every write until it is settled: never give up for time.
    pub spooled: bool,
    /// Hot-key windows are on (`pipeline.hot_key_window` > 0).
    pub hand_back_hot: bool,
}

impl RetryPolicy {
    pub fn new(cfg: &crate::config::RetryConfig, spooled: bool, hand_back_hot: bool) -> Self {
        RetryPolicy {
            initial_backoff: cfg.initial_backoff,
            max_backoff: cfg.max_backoff,
            max_elapsed: cfg.max_elapsed,
            spooled,
            hand_back_hot,
        }
    }

    /// Whether a write of age `age` whose attempt failed as `failed` goes back to its shard (a
    /// hot key's window) rather than being retried here: throttled on its own key, windows on,
    /// and young enough that its retry deadline (if any) has not passed.
    pub fn hands_back(&self, failed: Failed, age: Duration) -> bool {
        failed == (Failed::Throttled { own_key: true })
            && self.hand_back_hot
            && (self.spooled || age < self.max_elapsed)
    }

    /// The decision after attempt number `attempt` (0 for the first) failed as `failed`.
    /// `elapsed` is the time since the first attempt of this send, `age` the time since the
    /// oldest op folded into the write was accepted, `stopping` whether the shutdown deadline has
    /// passed, and `jitter` a uniform sample from `[0, 1)` (full jitter).
    pub fn decide(
        &self,
        failed: Failed,
        attempt: u32,
        elapsed: Duration,
        age: Duration,
        stopping: bool,
        jitter: f64,
    ) -> Decision {
        if stopping {
            return if self.spooled {
                Decision::Leave
            } else {
                Decision::GiveUp(DropReason::Shutdown)
            };
        }
        if self.hands_back(failed, age) {
            return Decision::HandBack;
        }
        if !self.spooled && elapsed >= self.max_elapsed {
            return Decision::GiveUp(DropReason::RetriesExhausted);
        }
        let cap = match failed {
            Failed::Credentials => return Decision::RetryAfter(self.max_backoff),
            _ => self
                .initial_backoff
                .saturating_mul(1u32 << attempt.min(20))
                .min(self.max_backoff),
        };
        Decision::RetryAfter(cap.mul_f64(jitter.clamp(0.0, 1.0)))
    }
}

/// The shutdown deadline (`pipeline.shutdown_timeout`), fired once by
/// [`crate::pipeline::Pipeline::shutdown`] and watched by the retry loop and every shard.
///
/// `fired` answers "has it passed?" without a lock; `notify` wakes the tasks waiting in
/// [`Deadline::wait`] (a backoff pause, a request in flight, a shard's select). Firing twice is
/// harmless; nothing ever resets it.
#[derive(Debug, Default)]
pub struct Deadline {
    fired: std::sync::atomic::AtomicBool,
    notify: tokio::sync::Notify,
}

impl Deadline {
    pub fn new() -> Self {
        Self::default()
    }

    /// The deadline has passed: wake everyone waiting.
    pub fn fire(&self) {
        self.fired.store(true, std::sync::atomic::Ordering::SeqCst);
        self.notify.notify_waiters();
    }

    pub fn passed(&self) -> bool {
        self.fired.load(std::sync::atomic::Ordering::SeqCst)
    }

    /// Returns once the deadline has passed (at once if it already has).
    pub async fn wait(&self) {
        loop {
            let notified = self.notify.notified();
            tokio::pin!(notified);
            // Registered before the check, so a fire in between is not missed.
            notified.as_mut().enable();
            if self.passed() {
                return;
            }
            notified.await;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn policy(spooled: bool, hand_back_hot: bool) -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(25),
            max_backoff: Duration::from_secs(5),
            max_elapsed: Duration::from_secs(120),
            spooled,
            hand_back_hot,
        }
    }

    const S: fn(u64) -> Duration = Duration::from_secs;
    const MS: fn(u64) -> Duration = Duration::from_millis;

    #[test]
    fn backoff_doubles_from_the_initial_and_is_capped_with_full_jitter() {
        let p = policy(false, false);
        let cap = |attempt| match p.decide(Failed::Transient, attempt, S(1), S(1), false, 1.0) {
            Decision::RetryAfter(d) => d,
            other => panic!("expected a retry, got {other:?}"),
        };
        assert_eq!(cap(0), MS(25));
        assert_eq!(cap(1), MS(50));
        assert_eq!(cap(3), MS(200));
        assert_eq!(cap(30), S(5), "capped at max_backoff");
        assert_eq!(
            p.decide(Failed::Transient, 3, S(1), S(1), false, 0.5),
            Decision::RetryAfter(MS(100))
        );
        assert_eq!(
            p.decide(Failed::Transient, 3, S(1), S(1), false, 0.0),
            Decision::RetryAfter(Duration::ZERO)
        );
    }

    #[test]
    fn without_the_spool_a_write_is_given_up_after_max_elapsed() {
        let p = policy(false, false);
        assert!(matches!(
            p.decide(Failed::Transient, 9, S(119), S(119), false, 0.3),
            Decision::RetryAfter(_)
        ));
        for failed in [
            Failed::Transient,
            Failed::Credentials,
            Failed::Throttled { own_key: false },
            Failed::Throttled { own_key: true },
        ] {
            assert_eq!(
                p.decide(failed, 9, S(120), S(120), false, 0.3),
                Decision::GiveUp(DropReason::RetriesExhausted),
                "{failed:?}"
            );
        }
    }

    #[test]
    fn with_the_spool_a_write_is_never_given_up_for_time() {
        let p = policy(true, false);
        for elapsed in [S(120), S(3600), S(86_400 * 30)] {
            assert_eq!(
                p.decide(Failed::Transient, 40, elapsed, elapsed, false, 1.0),
                Decision::RetryAfter(S(5)),
                "capped backoff, no give-up after {elapsed:?}"
            );
        }
    }

    #[test]
    fn refused_credentials_wait_the_longest_backoff() {
        let p = policy(false, false);
        assert_eq!(
            p.decide(Failed::Credentials, 0, S(1), S(1), false, 0.1),
            Decision::RetryAfter(S(5))
        );
    }

    #[test]
    fn own_key_throttles_are_handed_back_while_young_or_spooled() {
        let hot = Failed::Throttled { own_key: true };
        let p = policy(false, true);
        assert_eq!(
            p.decide(hot, 0, MS(5), S(10), false, 0.5),
            Decision::HandBack
        );
        assert!(
            matches!(
                p.decide(hot, 0, MS(5), S(130), false, 0.5),
                Decision::RetryAfter(_)
            ),
            "older than max_elapsed: retried in place so the deadline applies"
        );
        assert!(matches!(
            p.decide(
                Failed::Throttled { own_key: false },
                0,
                MS(5),
                S(1),
                false,
                0.5
            ),
            Decision::RetryAfter(_)
        ));
        assert_eq!(
            policy(true, true).decide(hot, 0, MS(5), S(1000), false, 0.5),
            Decision::HandBack
        );
        assert!(matches!(
            policy(false, false).decide(hot, 0, MS(5), S(1), false, 0.5),
            Decision::RetryAfter(_)
        ));
    }

    #[test]
    fn only_own_key_throttles_of_young_writes_are_handed_back_and_only_with_windows_on() {
        let hot = Failed::Throttled { own_key: true };
        let p = policy(false, true);
        assert!(p.hands_back(hot, S(119)));
        assert!(
            !p.hands_back(hot, S(120)),
            "at max_elapsed: retried so it can be given up"
        );
        assert!(
            policy(true, true).hands_back(hot, S(86_400)),
            "spooled: any age"
        );
        assert!(!policy(false, false).hands_back(hot, S(1)), "windows off");
        for failed in [
            Failed::Throttled { own_key: false },
            Failed::Transient,
            Failed::Credentials,
        ] {
            assert!(!p.hands_back(failed, S(1)), "{failed:?}");
        }
    }

    #[test]
    fn backoff_grows_from_the_attempt_not_from_the_time_spent() {
        let p = policy(true, false);
        for elapsed in [MS(1), S(60)] {
            assert_eq!(
                p.decide(
                    Failed::Throttled { own_key: false },
                    2,
                    elapsed,
                    elapsed,
                    false,
                    1.0
                ),
                Decision::RetryAfter(MS(100))
            );
        }
        assert_eq!(
            p.decide(Failed::Transient, u32::MAX, S(1), S(1), false, 1.0),
            Decision::RetryAfter(S(5)),
            "a huge attempt number neither overflows nor passes max_backoff"
        );
    }

    #[tokio::test]
    async fn a_deadline_wakes_its_waiters_and_stays_passed() {
        let d = std::sync::Arc::new(Deadline::new());
        let waiter = tokio::spawn({
            let d = std::sync::Arc::clone(&d);
            async move { d.wait().await }
        });
        tokio::task::yield_now().await;
        assert!(!waiter.is_finished() && !d.passed());
        d.fire();
        waiter
            .await
            .expect("the waiter ends once the deadline fires");
        assert!(d.passed());
        d.wait().await; // returns at once
    }

    #[test]
    fn past_the_shutdown_deadline_the_spool_keeps_writes_and_otherwise_they_are_dead_lettered() {
        for failed in [Failed::Transient, Failed::Throttled { own_key: true }] {
            assert_eq!(
                policy(true, true).decide(failed, 0, MS(1), MS(1), true, 0.5),
                Decision::Leave
            );
            assert_eq!(
                policy(false, true).decide(failed, 0, MS(1), MS(1), true, 0.5),
                Decision::GiveUp(DropReason::Shutdown)
            );
        }
    }
}
