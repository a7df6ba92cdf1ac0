//! Fault injection and latency: per-request decisions drawn from one seeded PRNG.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Mutex, PoisonError, RwLock};
use std::time::{Duration, Instant};

use crate::config::{FaultConfig, StallAction};
use crate::error::ApiError;

/// What to do with one data-plane request before it reaches the tables.
#[derive(Debug, Clone, PartialEq)]
pub enum Decision {
    Proceed,
    /// 503, an outage window or the forced outage is on.
    Outage,
    /// Close the connection without answering.
    Reset,
    /// Answer with this 500/503 instead of applying the request.
    Error(ApiError),
    /// Hold the request this long, then act.
    Stall(Duration, StallAction),
    /// A write only: apply it as usual, then answer 500 instead of the real answer.
    ApplyThenError,
    /// A write only: hold it this long unanswered, apply it, then drop the connection.
    ApplyLate(Duration),
}

/// The per-request part of [`FaultConfig`], copied out of the lock.
struct Rates {
    reset_rate: f64,
    error_rate: f64,
    stall_rate: f64,
    stall: Duration,
    stall_action: StallAction,
    apply_then_error_rate: f64,
    apply_late_rate: f64,
    apply_late_delay: Duration,
}

/// Faults, latency and the random knobs.
///
/// One PRNG behind a `Mutex` (a few nanoseconds per draw, and only drawn when a rate is
/// non-zero): with a fixed seed and one client the sequence of decisions is reproducible; with
/// concurrent clients the interleaving is not, but the rates are.
#[derive(Debug)]
pub struct Faults {
    config: RwLock<FaultConfig>,
    latency: Duration,
    jitter: Duration,
    /// `SimHandle::set_outage` / `POST /_sim/outage`, on top of the scheduled windows.
    forced_outage: AtomicBool,
    started: Instant,
    rng: Mutex<fastrand::Rng>,
}

impl Faults {
    pub fn new(config: FaultConfig, latency: Duration, jitter: Duration, seed: u64) -> Faults {
        Faults {
            config: RwLock::new(config),
            latency,
            jitter,
            forced_outage: AtomicBool::new(false),
            started: Instant::now(),
            rng: Mutex::new(fastrand::Rng::with_seed(seed)),
        }
    }

    pub fn config(&self) -> FaultConfig {
        self.config
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn set_config(&self, config: FaultConfig) {
        *self.config.write().unwrap_or_else(PoisonError::into_inner) = config;
    }

    pub fn set_outage(&self, on: bool) {
        self.forced_outage.store(on, Ordering::Relaxed);
    }

    /// Whether a forced or scheduled outage is in effect now.
    pub fn outage_active(&self) -> bool {
        if self.forced_outage.load(Ordering::Relaxed) {
            return true;
        }
        let now = self.started.elapsed();
        let config = self.config.read().unwrap_or_else(PoisonError::into_inner);
        config
            .outages
            .iter()
            .any(|w| now >= w.start && now < w.start + w.duration)
    }

    /// A uniform draw in `[0, 1)`.
    fn draw(&self) -> f64 {
        self.rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .f64()
    }

    /// True with probability `rate`.
    pub fn roll(&self, rate: f64) -> bool {
        rate > 0.0 && (rate >= 1.0 || self.draw() < rate)
    }

    /// `latency + U`, `U` uniform on `[0, jitter]`.
    pub fn latency(&self) -> Duration {
        if self.jitter.is_zero() {
            return self.latency;
        }
        let jitter_nanos = self.jitter.as_nanos().min(u128::from(u64::MAX)) as u64;
        let extra = self
            .rng
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .u64(0..=jitter_nanos);
        self.latency + Duration::from_nanos(extra)
    }

    /// `throttle_rate` and `unprocessed_keys_rate`, without cloning the whole configuration.
    pub fn batch_rates(&self) -> (f64, f64) {
        let c = self.config.read().unwrap_or_else(PoisonError::into_inner);
        (c.throttle_rate, c.unprocessed_keys_rate)
    }

    /// Outage first, then reset, error and stall, then (for a data-plane write only)
    /// apply-then-error and apply-late, each drawn independently; the first that hits wins.
    pub fn decide(&self, write: bool) -> Decision {
        if self.outage_active() {
            return Decision::Outage;
        }
        let c = {
            let c = self.config.read().unwrap_or_else(PoisonError::into_inner);
            Rates {
                reset_rate: c.reset_rate,
                error_rate: c.error_rate,
                stall_rate: c.stall_rate,
                stall: c.stall,
                stall_action: c.stall_action,
                apply_then_error_rate: c.apply_then_error_rate,
                apply_late_rate: c.apply_late_rate,
                apply_late_delay: c.apply_late_delay,
            }
        };
        if self.roll(c.reset_rate) {
            return Decision::Reset;
        }
        if self.roll(c.error_rate) {
            return Decision::Error(if self.roll(0.5) {
                ApiError::internal()
            } else {
                ApiError::unavailable("Service unavailable (injected by dynamo-sim)")
            });
        }
        if self.roll(c.stall_rate) {
            return Decision::Stall(c.stall, c.stall_action);
        }
        if write {
            if self.roll(c.apply_then_error_rate) {
                return Decision::ApplyThenError;
            }
            if self.roll(c.apply_late_rate) {
                return Decision::ApplyLate(c.apply_late_delay);
            }
        }
        Decision::Proceed
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::OutageWindow;

    #[test]
    fn rates_are_respected() {
        let f = Faults::new(
            FaultConfig {
                error_rate: 0.25,
                ..FaultConfig::default()
            },
            Duration::ZERO,
            Duration::ZERO,
            7,
        );
        let errors = (0..10_000)
            .filter(|_| matches!(f.decide(true), Decision::Error(_)))
            .count();
        assert!((2_000..3_000).contains(&errors), "{errors}");
        assert!(!f.roll(0.0));
        assert!(f.roll(1.0));
    }

    #[test]
    fn ambiguous_write_faults_spare_reads() {
        let f = Faults::new(
            FaultConfig {
                apply_then_error_rate: 0.5,
                apply_late_rate: 1.0,
                apply_late_delay: Duration::from_millis(300),
                ..FaultConfig::default()
            },
            Duration::ZERO,
            Duration::ZERO,
            3,
        );
        assert_eq!(f.decide(false), Decision::Proceed);
        let decisions: Vec<Decision> = (0..1000).map(|_| f.decide(true)).collect();
        let then_error = decisions
            .iter()
            .filter(|d| **d == Decision::ApplyThenError)
            .count();
        let late = decisions
            .iter()
            .filter(|d| **d == Decision::ApplyLate(Duration::from_millis(300)))
            .count();
        assert!((400..600).contains(&then_error), "{then_error}");
        assert_eq!(then_error + late, 1000);
    }

    #[test]
    fn latency_is_bounded() {
        let f = Faults::new(
            FaultConfig::default(),
            Duration::from_millis(10),
            Duration::from_millis(2),
            1,
        );
        for _ in 0..1000 {
            let l = f.latency();
            assert!(l >= Duration::from_millis(10) && l <= Duration::from_millis(12));
        }
    }

    #[test]
    fn outages_forced_and_scheduled() {
        let f = Faults::new(
            FaultConfig {
                outages: vec![OutageWindow {
                    start: Duration::ZERO,
                    duration: Duration::from_secs(3600),
                }],
                ..FaultConfig::default()
            },
            Duration::ZERO,
            Duration::ZERO,
            1,
        );
        assert_eq!(f.decide(true), Decision::Outage);
        f.set_config(FaultConfig::default());
        assert_eq!(f.decide(true), Decision::Proceed);
        f.set_outage(true);
        assert!(f.outage_active());
    }
}
