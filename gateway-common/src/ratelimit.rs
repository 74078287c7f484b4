//! Per-source packet rate limit: a token bucket in its GCRA form.
//!
//! A token bucket of `burst` tokens refilled at `pps` tokens per second admits exactly the
//! packets that the generic cell rate algorithm admits with emission interval `T = 1 s / pps`
//! and tolerance `T * burst`. GCRA keeps one `u64` per source (the theoretical arrival time,
//! TAT) instead of a token count and a timestamp, which halves the state per source and
//! needs no division per packet.

use crate::maps::Settings;

/// Upper bound on packets per second accepted by [`Settings::rate`]: 1 ns between packets.
pub const MAX_PPS: u64 = 1_000_000_000;
/// Upper bound on the burst, which keeps `interval * burst` far from overflowing `u64`.
pub const MAX_BURST: u64 = 1_000_000_000;

/// Why a rate setting is refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RateError {
    PpsTooHigh,
    BurstZero,
    BurstTooHigh,
    Prefix4TooLong,
    Prefix6TooLong,
}

impl Settings {
    /// Settings that enforce `pps` packets per second with a burst of `burst` packets per
    /// source key; `pps == 0` turns the rate limit off. The other fields are left at zero for
    /// the loader to fill in.
    pub fn rate(pps: u64, burst: u64, prefix4: u32, prefix6: u32) -> Result<Settings, RateError> {
        if pps > MAX_PPS {
            return Err(RateError::PpsTooHigh);
        }
        if prefix4 > 32 {
            return Err(RateError::Prefix4TooLong);
        }
        if prefix6 > 128 {
            return Err(RateError::Prefix6TooLong);
        }
        if pps == 0 {
            return Ok(Settings {
                prefix4,
                prefix6,
                ..Settings::default()
            });
        }
        if burst == 0 {
            return Err(RateError::BurstZero);
        }
        if burst > MAX_BURST {
            return Err(RateError::BurstTooHigh);
        }
        let interval_ns = 1_000_000_000 / pps;
        Ok(Settings {
            interval_ns,
            burst_ns: interval_ns * burst,
            prefix4,
            prefix6,
            ..Settings::default()
        })
    }

    /// Whether the rate limit is on.
    #[inline(always)]
    pub const fn rate_limited(&self) -> bool {
        self.interval_ns != 0
    }
}

/// One GCRA step. `tat` is the source's stored theoretical arrival time (0 for a new source),
/// `now` the current time in the same clock. Returns the TAT to store when the packet is
/// admitted, `None` when it must be dropped (then the stored TAT stays as it is).
#[inline(always)]
pub fn admit(now: u64, tat: u64, interval_ns: u64, burst_ns: u64) -> Option<u64> {
    let base = if tat > now { tat } else { now };
    let next = base.saturating_add(interval_ns);
    // `next > now` always holds here (interval_ns >= 1), so the subtraction cannot wrap.
    if next - now > burst_ns {
        None
    } else {
        Some(next)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SEC: u64 = 1_000_000_000;

    /// Runs `n` packets at even spacing `gap` starting at `start` and returns how many pass.
    fn run(s: &Settings, tat: &mut u64, start: u64, gap: u64, n: u64) -> u64 {
        let mut passed = 0;
        for i in 0..n {
            if let Some(next) = admit(start + i * gap, *tat, s.interval_ns, s.burst_ns) {
                *tat = next;
                passed += 1;
            }
        }
        passed
    }

    #[test]
    fn a_new_source_gets_exactly_its_burst_at_once() {
        let s = Settings::rate(100, 10, 32, 64).unwrap();
        let mut tat = 0;
        assert_eq!(run(&s, &mut tat, 5 * SEC, 0, 50), 10);
    }

    #[test]
    fn sustained_rate_converges_to_pps() {
        let s = Settings::rate(1000, 50, 32, 64).unwrap();
        let mut tat = 0;
        // 10 s at 10,000 packets/s: burst plus 1,000 per second.
        let passed = run(&s, &mut tat, SEC, SEC / 10_000, 100_000);
        assert!((10_000..=10_051).contains(&passed), "passed {passed}");
    }

    #[test]
    fn below_the_rate_everything_passes() {
        let s = Settings::rate(1000, 1, 32, 64).unwrap();
        let mut tat = 0;
        assert_eq!(run(&s, &mut tat, SEC, SEC / 999, 5000), 5000);
    }

    #[test]
    fn an_idle_source_earns_back_only_its_burst() {
        let s = Settings::rate(10, 5, 32, 64).unwrap();
        let mut tat = 0;
        assert_eq!(run(&s, &mut tat, SEC, 0, 100), 5);
        // An hour later the bucket is full again, not fuller.
        assert_eq!(run(&s, &mut tat, 3600 * SEC, 0, 100), 5);
    }

    #[test]
    fn refused_settings() {
        assert_eq!(Settings::rate(10, 0, 32, 64), Err(RateError::BurstZero));
        assert_eq!(
            Settings::rate(MAX_PPS + 1, 1, 32, 64),
            Err(RateError::PpsTooHigh)
        );
        assert_eq!(
            Settings::rate(10, MAX_BURST + 1, 32, 64),
            Err(RateError::BurstTooHigh)
        );
        assert_eq!(
            Settings::rate(10, 1, 33, 64),
            Err(RateError::Prefix4TooLong)
        );
        assert_eq!(
            Settings::rate(10, 1, 32, 129),
            Err(RateError::Prefix6TooLong)
        );
        let off = Settings::rate(0, 0, 24, 48).unwrap();
        assert!(!off.rate_limited());
        assert_eq!((off.prefix4, off.prefix6), (24, 48));
    }

    #[test]
    fn extremes_do_not_overflow() {
        let s = Settings::rate(MAX_PPS, MAX_BURST, 32, 128).unwrap();
        assert_eq!(
            admit(u64::MAX - 1, u64::MAX, s.interval_ns, s.burst_ns),
            Some(u64::MAX)
        );
        let s = Settings::rate(1, MAX_BURST, 32, 128).unwrap();
        assert!(admit(0, 0, s.interval_ns, s.burst_ns).is_some());
    }

    proptest::proptest! {
        /// Over any window, a source never gets more than burst + pps * window packets.
        #[test]
        fn never_more_than_burst_plus_rate(pps in 1u64..100_000, burst in 1u64..1000,
                                           gaps in proptest::collection::vec(0u64..2_000_000, 1..400)) {
            let s = Settings::rate(pps, burst, 32, 64).unwrap();
            let mut tat = 0;
            let start = 1_000 * SEC;
            let mut now = start;
            let mut passed = 0u64;
            for gap in gaps {
                now += gap;
                if let Some(next) = admit(now, tat, s.interval_ns, s.burst_ns) {
                    tat = next;
                    passed += 1;
                }
            }
            let window = now - start;
            let bound = burst + window / s.interval_ns + 1;
            proptest::prop_assert!(passed <= bound, "passed {} bound {}", passed, bound);
        }
    }
}
