//! A circuit breaker in front of the rate-limit Redis: after a few consecutive failures it
//! opens and requests skip Redis entirely for a cool-down; then one request probes it
//! (half-open) while the others keep skipping; the probe's success closes it again.
//!
//! Lock-free (atomics only), on tokio's clock so tests can pause time.

use std::sync::atomic::{AtomicU8, AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Consecutive failures that open the breaker. More than one, so that a single dropped
/// connection (a Redis restart, an idle connection closed by a proxy) does not open it; few
/// enough that a dead Redis costs at most this many timeouts before requests stop waiting.
pub const FAILURES_TO_OPEN: u32 = 3;

/// How long an open breaker skips Redis before one request probes it. A dead Redis then
/// costs at most one timeout per cool-down per policy and agent; a recovered one enforces
/// cluster-wide limits again within this long.
pub const COOL_DOWN: Duration = Duration::from_secs(2);

const CLOSED: u8 = 0;
const OPEN: u8 = 1;
const HALF_OPEN: u8 = 2;

/// Whether a request may call Redis.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Admit {
    /// Closed: call.
    Call,
    /// The cool-down is over and this request is the one probe: call, then report.
    Probe,
    /// Open (or another request is probing): do not call; apply the failure mode.
    Skip,
}

/// What a report changed, for the caller to log once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transition {
    None,
    /// Closed → open after [`FAILURES_TO_OPEN`] failures.
    Opened,
    /// A probe failed: open for another cool-down.
    Reopened,
    /// A probe succeeded after an outage of this long.
    Closed(Duration),
}

#[derive(Debug)]
pub struct Breaker {
    epoch: Instant,
    state: AtomicU8,
    failures: AtomicU32,
    /// When the breaker opened first in this outage (ns since `epoch`), for the recovery log.
    outage_start: AtomicU64,
    /// When an open breaker lets a probe through (ns since `epoch`).
    retry_at: AtomicU64,
}

impl Default for Breaker {
    fn default() -> Self {
        Self::new()
    }
}

impl Breaker {
    pub fn new() -> Self {
        Self {
            epoch: Instant::now(),
            state: AtomicU8::new(CLOSED),
            failures: AtomicU32::new(0),
            outage_start: AtomicU64::new(0),
            retry_at: AtomicU64::new(0),
        }
    }

    fn now(&self) -> u64 {
        let elapsed = Instant::now().saturating_duration_since(self.epoch);
        u64::try_from(elapsed.as_nanos()).unwrap_or(u64::MAX)
    }

    fn cool_down_ns() -> u64 {
        u64::try_from(COOL_DOWN.as_nanos()).unwrap_or(u64::MAX)
    }

    /// Whether this request may call Redis now.
    pub fn admit(&self) -> Admit {
        match self.state.load(Ordering::SeqCst) {
            CLOSED => Admit::Call,
            OPEN if self.now() >= self.retry_at.load(Ordering::SeqCst) => {
                match self.state.compare_exchange(
                    OPEN,
                    HALF_OPEN,
                    Ordering::SeqCst,
                    Ordering::SeqCst,
                ) {
                    Ok(_) => Admit::Probe,
                    Err(_) => Admit::Skip,
                }
            }
            _ => Admit::Skip,
        }
    }

    /// How long until an open breaker lets the next probe through (zero when closed).
    pub fn retry_in(&self) -> Duration {
        if self.state.load(Ordering::SeqCst) == CLOSED {
            return Duration::ZERO;
        }
        let wait = self
            .retry_at
            .load(Ordering::SeqCst)
            .saturating_sub(self.now());
        Duration::from_nanos(wait)
    }

    /// Reports a successful call.
    pub fn success(&self, admitted: Admit) -> Transition {
        self.failures.store(0, Ordering::SeqCst);
        // Only the probe closes an open breaker: a slow call admitted before the outage that
        // happens to finish now says little about Redis now.
        if admitted == Admit::Probe
            && self
                .state
                .compare_exchange(HALF_OPEN, CLOSED, Ordering::SeqCst, Ordering::SeqCst)
                .is_ok()
        {
            let outage = self
                .now()
                .saturating_sub(self.outage_start.load(Ordering::SeqCst));
            return Transition::Closed(Duration::from_nanos(outage));
        }
        Transition::None
    }

    /// A probe whose call was abandoned (its request went away mid-call) is put back as if
    /// the cool-down had just ended, so the next request probes: the breaker never stays
    /// half-open with nobody probing.
    pub fn abandon(&self, admitted: Admit) {
        if admitted == Admit::Probe {
            self.retry_at.store(self.now(), Ordering::SeqCst);
            let _ =
                self.state
                    .compare_exchange(HALF_OPEN, OPEN, Ordering::SeqCst, Ordering::SeqCst);
        }
    }

    /// Reports a failed call (an error or a timeout).
    pub fn failure(&self, admitted: Admit) -> Transition {
        let now = self.now();
        if admitted == Admit::Probe {
            self.retry_at
                .store(now.saturating_add(Self::cool_down_ns()), Ordering::SeqCst);
            self.state.store(OPEN, Ordering::SeqCst);
            return Transition::Reopened;
        }
        let failures = self
            .failures
            .fetch_add(1, Ordering::SeqCst)
            .saturating_add(1);
        // Late failures of calls admitted before the breaker opened change nothing.
        if failures < FAILURES_TO_OPEN || self.state.load(Ordering::SeqCst) != CLOSED {
            return Transition::None;
        }
        self.retry_at
            .store(now.saturating_add(Self::cool_down_ns()), Ordering::SeqCst);
        self.outage_start.store(now, Ordering::SeqCst);
        match self
            .state
            .compare_exchange(CLOSED, OPEN, Ordering::SeqCst, Ordering::SeqCst)
        {
            Ok(_) => Transition::Opened,
            Err(_) => Transition::None,
        }
    }
}

/// An admitted call that must be reported: dropped without a report (the request's future was
/// cancelled), it is [`Breaker::abandon`]ed.
#[derive(Debug)]
#[must_use]
pub struct Attempt<'a> {
    breaker: &'a Breaker,
    admitted: Admit,
    reported: bool,
}

impl<'a> Attempt<'a> {
    pub fn new(breaker: &'a Breaker, admitted: Admit) -> Self {
        Self {
            breaker,
            admitted,
            reported: false,
        }
    }

    pub fn success(mut self) -> Transition {
        self.reported = true;
        self.breaker.success(self.admitted)
    }

    pub fn failure(mut self) -> Transition {
        self.reported = true;
        self.breaker.failure(self.admitted)
    }
}

impl Drop for Attempt<'_> {
    fn drop(&mut self) {
        if !self.reported {
            self.breaker.abandon(self.admitted);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn opens_after_consecutive_failures_probes_once_and_closes() {
        let breaker = Breaker::new();
        assert_eq!(breaker.admit(), Admit::Call);
        assert_eq!(breaker.failure(Admit::Call), Transition::None);
        assert_eq!(breaker.success(Admit::Call), Transition::None);
        for _ in 1..FAILURES_TO_OPEN {
            assert_eq!(breaker.failure(Admit::Call), Transition::None);
        }
        assert_eq!(breaker.failure(Admit::Call), Transition::Opened);
        assert_eq!(breaker.admit(), Admit::Skip);
        assert_eq!(breaker.retry_in(), COOL_DOWN);

        tokio::time::advance(COOL_DOWN).await;
        assert_eq!(breaker.admit(), Admit::Probe);
        assert_eq!(breaker.admit(), Admit::Skip, "one probe at a time");
        assert_eq!(breaker.failure(Admit::Probe), Transition::Reopened);
        assert_eq!(breaker.admit(), Admit::Skip);

        tokio::time::advance(COOL_DOWN).await;
        assert_eq!(breaker.admit(), Admit::Probe);
        assert_eq!(
            breaker.success(Admit::Probe),
            Transition::Closed(COOL_DOWN * 2)
        );
        assert_eq!(breaker.admit(), Admit::Call);
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_request_probe() {
        let breaker = Breaker::new();
        for _ in 0..FAILURES_TO_OPEN {
            let _ = breaker.failure(Admit::Call);
        }
        tokio::time::advance(COOL_DOWN).await;
        let probe = Attempt::new(&breaker, breaker.admit());
        assert_eq!(breaker.admit(), Admit::Skip);
        drop(probe);
        assert_eq!(breaker.admit(), Admit::Probe);
    }
}
