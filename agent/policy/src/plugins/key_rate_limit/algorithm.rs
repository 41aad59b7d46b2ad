//! The counting algorithms, as pure functions: a key's state, the time now and the quota in;
//! the new state and a decision out. No clock reads, no locks: the callers own both.
//!
//! Time is in nanoseconds since an epoch the caller picks (the agent uses the moment its
//! counter table was created). Both algorithms are exact in integers: GCRA keeps its
//! theoretical arrival time in units of `1 / requests` nanoseconds, so an emission interval
//! such as 1 s / 3 has no rounding, and the sliding window compares `requests × per` products.
//!
//! **A key's state survives a change of its quota.** Requests a key has made stay counted:
//! GCRA turns the key's debt (how far its theoretical arrival time is ahead of now) into a
//! number of requests under the old quota and back into time under the new one, capped at a
//! full window; the sliding window keeps its counts as they are, and when `per` changes it
//! carries its weighted estimate into the new window as that window's count.

use fleetgate_shared::model::Rate;

const NANOS_PER_MILLI: u64 = 1_000_000;

/// `requests` per `per_ns` nanoseconds, both at least 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Quota {
    pub requests: u64,
    pub per_ns: u64,
}

impl Quota {
    /// The quota of a configured rate. Validation keeps both fields at least 1; a zero is
    /// raised to 1 here rather than divided by.
    pub fn from_rate(rate: &Rate) -> Quota {
        Quota {
            requests: rate.requests.max(1),
            per_ns: rate.per.as_millis().saturating_mul(NANOS_PER_MILLI).max(1),
        }
    }
}

/// What one request gets.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Decision {
    pub allowed: bool,
    /// The quota's request count (`RateLimit-Limit`).
    pub limit: u64,
    /// Requests the key may still make right now (`RateLimit-Remaining`).
    pub remaining: u64,
    /// Nanoseconds until the key has its whole quota again (`RateLimit-Reset`).
    pub reset_ns: u64,
    /// When limited, nanoseconds until one more request would be allowed (`Retry-After`).
    pub retry_after_ns: u64,
}

fn ceil_div(a: u128, b: u128) -> u128 {
    if b == 0 { a } else { a.div_ceil(b) }
}

fn to_u64(v: u128) -> u64 {
    u64::try_from(v).unwrap_or(u64::MAX)
}

// ---------------------------------------------------------------------------------------------
// GCRA
// ---------------------------------------------------------------------------------------------

/// One key's GCRA state: its theoretical arrival time (TAT), in units of `1 / quota.requests`
/// nanoseconds, and the quota it was computed under.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GcraState {
    tat: u128,
    quota: Quota,
}

impl GcraState {
    /// Whether the key has its whole quota back: forgetting the state then changes nothing.
    pub fn idle(&self, now: u64) -> bool {
        self.tat <= u128::from(now) * u128::from(self.quota.requests)
    }

    /// The state under `quota`, converting the debt as the module documentation says.
    fn under(self, quota: Quota, now: u64) -> GcraState {
        if self.quota == quota {
            return self;
        }
        let old_now = u128::from(now) * u128::from(self.quota.requests);
        let debt = self.tat.saturating_sub(old_now);
        // debt / old_per = requests made (in emission intervals); × new_per = the new debt.
        let new_debt =
            debt.saturating_mul(u128::from(quota.per_ns)) / u128::from(self.quota.per_ns);
        let window = u128::from(quota.per_ns) * u128::from(quota.requests);
        GcraState {
            tat: u128::from(now) * u128::from(quota.requests) + new_debt.min(window),
            quota,
        }
    }
}

/// The generic cell rate algorithm: one request costs an emission interval `T = per /
/// requests`; a request is allowed while the key's debt after it stays within `per`, which
/// allows a burst of exactly `requests` and then one request every `T`.
pub fn gcra(state: Option<GcraState>, now: u64, quota: Quota) -> (GcraState, Decision) {
    let n = u128::from(quota.requests);
    let t = u128::from(quota.per_ns); // the emission interval, in 1/n ns units
    let window = t * n;
    let now_s = u128::from(now) * n;
    let mut tat = state.map_or(now_s, |s| s.under(quota, now).tat).max(now_s);
    let next = tat + t;
    let allowed = next - now_s <= window;
    let retry = if allowed {
        tat = next;
        0
    } else {
        ceil_div(next - now_s - window, n)
    };
    let debt = tat - now_s;
    let decision = Decision {
        allowed,
        limit: quota.requests,
        remaining: to_u64((window - debt.min(window)) / t),
        reset_ns: to_u64(ceil_div(debt, n)),
        retry_after_ns: to_u64(retry),
    };
    (GcraState { tat, quota }, decision)
}

// ---------------------------------------------------------------------------------------------
// Sliding window
// ---------------------------------------------------------------------------------------------

/// One key's sliding-window state: the counts of the fixed window `window` (index `now /
/// per`) and of the one before it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct WindowState {
    window: u64,
    current: u64,
    previous: u64,
    per_ns: u64,
}

impl WindowState {
    /// Whether both counted windows are over: forgetting the state then changes nothing.
    pub fn idle(&self, now: u64) -> bool {
        now / self.per_ns.max(1) > self.window.saturating_add(1)
    }

    /// `(current, previous)` counts as seen from window `w` of the same length.
    fn counts_at(&self, w: u64) -> (u64, u64) {
        if self.window == w {
            (self.current, self.previous)
        } else if self.window.saturating_add(1) == w {
            (0, self.current)
        } else {
            (0, 0)
        }
    }
}

/// Two fixed windows weighted by overlap: the estimate is `previous × (per − elapsed) / per +
/// current`, and a request is allowed while the estimate after it stays within `requests`.
pub fn sliding_window(
    state: Option<WindowState>,
    now: u64,
    quota: Quota,
) -> (WindowState, Decision) {
    let p = quota.per_ns;
    let w = now / p;
    let e = now % p;
    let (mut current, previous) = match state {
        None => (0, 0),
        Some(s) if s.per_ns == p => s.counts_at(w),
        Some(s) => {
            // `per` changed: carry the old weighted estimate in as this window's count.
            let op = s.per_ns.max(1);
            let (oc, oprev) = s.counts_at(now / op);
            let oe = u128::from(now % op);
            let est = ceil_div(
                u128::from(oprev) * (u128::from(op) - oe) + u128::from(oc) * u128::from(op),
                u128::from(op),
            );
            (to_u64(est), 0)
        }
    };
    let (n, pw, prev) = (
        u128::from(quota.requests),
        u128::from(p),
        u128::from(previous),
    );
    let weighted_prev = prev * (pw - u128::from(e));
    let allowed = weighted_prev + (u128::from(current) + 1) * pw <= n * pw;
    if allowed {
        current = current.saturating_add(1);
    }
    let used = weighted_prev + u128::from(current) * pw;
    let reset_ns = if current > 0 {
        2 * p - e
    } else if previous > 0 {
        p - e
    } else {
        0
    };
    let retry_after_ns = if allowed {
        0
    } else {
        window_retry(previous, current, quota.requests, p, e)
    };
    let decision = Decision {
        allowed,
        limit: quota.requests,
        remaining: to_u64(n.saturating_mul(pw).saturating_sub(used) / pw),
        reset_ns,
        retry_after_ns,
    };
    let state = WindowState {
        window: w,
        current,
        previous,
        per_ns: p,
    };
    (state, decision)
}

/// Nanoseconds from offset `e` of the current window until one more request fits.
fn window_retry(previous: u64, current: u64, limit: u64, p: u64, e: u64) -> u64 {
    let (n, pw) = (u128::from(limit), u128::from(p));
    // Later in this window: previous × (p − x) + (current + 1) × p ≤ n × p.
    if current < limit && previous > 0 {
        let slack = (n - u128::from(current) - 1) * pw;
        let keep = to_u64((slack / u128::from(previous)).min(pw));
        let x = p - keep;
        if x < p {
            return x.saturating_sub(e);
        }
    }
    // In the next window, where this window's count becomes the weighted one.
    let y = if current == 0 {
        0
    } else {
        let keep = to_u64(((n - 1) * pw / u128::from(current)).min(pw));
        p - keep
    };
    (p - e) + y
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: u64 = 1_000_000;
    const S: u64 = 1_000 * MS;

    fn quota(requests: u64, per_ns: u64) -> Quota {
        Quota { requests, per_ns }
    }

    /// Runs `count` requests at `now` and returns how many were allowed and the last decision.
    fn burst<St: Copy>(
        check: fn(Option<St>, u64, Quota) -> (St, Decision),
        state: &mut Option<St>,
        now: u64,
        q: Quota,
        count: u32,
    ) -> (u32, Decision) {
        let mut allowed = 0;
        let mut last = None;
        for _ in 0..count {
            let (s, d) = check(*state, now, q);
            *state = Some(s);
            allowed += u32::from(d.allowed);
            last = Some(d);
        }
        (allowed, last.unwrap())
    }

    #[test]
    fn gcra_allows_a_burst_of_exactly_the_quota_then_one_per_interval() {
        let q = quota(10, S);
        let mut state = None;
        for i in 0..10 {
            let (s, d) = gcra(state, 0, q);
            state = Some(s);
            assert!(d.allowed, "request {i} of the burst");
            assert_eq!(d.remaining, 9 - i);
            assert_eq!(d.reset_ns, (i + 1) * 100 * MS);
        }
        let (s, d) = gcra(state, 0, q);
        assert!(!d.allowed);
        assert_eq!(d.remaining, 0);
        assert_eq!(d.retry_after_ns, 100 * MS);
        state = Some(s);
        assert!(!gcra(state, 100 * MS - 1, q).1.allowed, "1 ns early");
        let (s, d) = gcra(state, 100 * MS, q);
        assert!(d.allowed, "refilled after per / requests");
        assert_eq!(d.remaining, 0);
        assert!(
            !gcra(Some(s), 100 * MS, q).1.allowed,
            "one request per interval"
        );
        assert!(s.idle(1_100 * MS) && !s.idle(1_100 * MS - 1));
    }

    #[test]
    fn gcra_is_exact_when_the_interval_is_not_a_whole_number_of_nanoseconds() {
        // T = 1 s / 3 = 333_333_333.33 ns.
        let q = quota(3, S);
        let mut state = None;
        assert_eq!(burst(gcra, &mut state, 0, q, 4).0, 3);
        assert!(!gcra(state, 333_333_333, q).1.allowed);
        let (s, d) = gcra(state, 333_333_334, q);
        assert!(d.allowed);
        // Three intervals after the burst the whole quota is back, to the nanosecond.
        assert_eq!(burst(gcra, &mut Some(s), S + 333_333_334, q, 4).0, 3);
    }

    #[test]
    fn gcra_keeps_the_requests_made_when_the_quota_changes() {
        let mut state = None;
        let (allowed, _) = burst(gcra, &mut state, 0, quota(10, S), 4);
        assert_eq!(allowed, 4);
        // Raised to 100/s: the 4 requests made stay counted, 96 remain.
        let (_, d) = gcra(state, 0, quota(100, S));
        assert_eq!(d.remaining, 95);
        // Lowered to 2/s: 4 made is over the new quota, so the key is full and waits.
        let (_, d) = gcra(state, 0, quota(2, S));
        assert!(!d.allowed);
        assert_eq!(d.retry_after_ns, 500 * MS);
    }

    #[test]
    fn sliding_window_weights_the_previous_window_by_its_overlap() {
        let q = quota(10, S);
        let mut state = None;
        // 10 requests late in window 0.
        let (allowed, d) = burst(sliding_window, &mut state, 900 * MS, q, 11);
        assert_eq!(allowed, 10);
        assert!(!d.allowed);
        // At the boundary the previous window weighs 1: 10 × (1 − y) + 1 ≤ 10 ⇒ y ≥ 0.1 s.
        assert_eq!(d.retry_after_ns, 200 * MS);
        // At the boundary the previous window still counts in full.
        assert!(!sliding_window(state, S, q).1.allowed);
        // Half-way into window 1 it counts half: 5 more fit, not 6.
        let (allowed, d) = burst(sliding_window, &mut state, S + 500 * MS, q, 6);
        assert_eq!(allowed, 5);
        assert!(!d.allowed);
        // 10 × (1 − x) + 6 ≤ 10 ⇒ x ≥ 0.6 s into the window: 100 ms from now.
        assert_eq!(d.retry_after_ns, 100 * MS);
        assert!(!sliding_window(state, S + 600 * MS - 1, q).1.allowed);
        assert!(sliding_window(state, S + 600 * MS, q).1.allowed);
    }

    #[test]
    fn sliding_window_reports_remaining_and_reset() {
        let q = quota(5, S);
        let (s, d) = sliding_window(None, 250 * MS, q);
        assert_eq!((d.remaining, d.reset_ns), (4, 2 * S - 250 * MS));
        let (s, d) = sliding_window(Some(s), S + 500 * MS, q);
        // previous 1 × 0.5 + current 1 = 1.5 used ⇒ 3 whole requests remain.
        assert_eq!(d.remaining, 3);
        assert!(!s.idle(2 * S + 999 * MS) && s.idle(3 * S));
    }

    #[test]
    fn sliding_window_retry_crosses_into_the_next_window_when_this_one_is_full() {
        let q = quota(2, S);
        let mut state = None;
        let (allowed, d) = burst(sliding_window, &mut state, 100 * MS, q, 3);
        assert_eq!(allowed, 2);
        // Next window: 2 × (1 − y) + 1 ≤ 2 ⇒ y ≥ 0.5 s, so 0.9 s + 0.5 s from now.
        assert_eq!(d.retry_after_ns, 1_400 * MS);
        assert!(!sliding_window(state, 1_500 * MS - 1, q).1.allowed);
        assert!(sliding_window(state, 1_500 * MS, q).1.allowed);
    }

    #[test]
    fn sliding_window_keeps_counts_across_quota_changes() {
        let mut state = None;
        burst(sliding_window, &mut state, 0, quota(10, S), 4);
        let (_, d) = sliding_window(state, 0, quota(6, S));
        assert_eq!(d.remaining, 1, "4 made + this one of 6");
        // A new `per` carries the estimate (4) into the new window.
        let (_, d) = sliding_window(state, 0, quota(6, 10 * S));
        assert_eq!(d.remaining, 1);
    }
}
