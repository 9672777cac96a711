//! The step clock: a cheap timestamp per step start and end.
//!
//! On x86-64 with an invariant TSC (`constant_tsc` and `nonstop_tsc`), a step's
//! timestamps are TSC reads (about 10 ns here, against about 36 ns for
//! `Instant::now()`), converted to nanoseconds with a rate calibrated once per
//! process against the monotonic clock. Anywhere else (and under loom) it is
//! `Instant`.

use std::sync::OnceLock;
use std::time::{Duration, Instant};

/// Ticks per nanosecond, or `None` when the TSC is not used.
fn rate() -> Option<f64> {
    static RATE: OnceLock<Option<f64>> = OnceLock::new();
    *RATE.get_or_init(calibrate)
}

#[cfg(all(target_arch = "x86_64", not(loom)))]
fn calibrate() -> Option<f64> {
    let flags = std::fs::read_to_string("/proc/cpuinfo").ok()?;
    let line = flags.lines().find(|l| l.starts_with("flags"))?;
    if !(line.contains(" constant_tsc") && line.contains(" nonstop_tsc")) {
        return None;
    }
    // Two windows of 1 ms; the TSC must agree with the monotonic clock on both.
    let mut rates = [0.0f64; 2];
    for r in &mut rates {
        let (t0, c0) = (Instant::now(), tsc());
        while t0.elapsed() < Duration::from_millis(1) {
            std::hint::spin_loop();
        }
        let (t1, c1) = (Instant::now(), tsc());
        *r = c1.wrapping_sub(c0) as f64 / (t1 - t0).as_nanos() as f64;
    }
    let ok = rates[0] > 0.1 && (rates[0] - rates[1]).abs() / rates[0] < 0.02;
    ok.then_some((rates[0] + rates[1]) / 2.0)
}

#[cfg(not(all(target_arch = "x86_64", not(loom))))]
fn calibrate() -> Option<f64> {
    None
}

#[cfg(all(target_arch = "x86_64", not(loom)))]
fn tsc() -> u64 {
    // SAFETY: RDTSC has no preconditions on x86-64.
    unsafe { core::arch::x86_64::_rdtsc() }
}

#[cfg(not(all(target_arch = "x86_64", not(loom))))]
fn tsc() -> u64 {
    0
}

/// A run's time origin; converts stamps to durations since it.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Clock {
    origin: Instant,
    origin_tsc: u64,
    rate: Option<f64>,
    /// Nanoseconds per tick, in 32.32 fixed point.
    ns_per_tick: u64,
}

/// A timestamp from [`Clock::now`], in the clock's own units (TSC ticks since the
/// origin, or nanoseconds where the TSC is not used); [`Clock::ns`] converts.
pub(crate) type Stamp = u64;

impl Clock {
    /// A clock whose origin is now.
    pub(crate) fn start() -> Clock {
        let rate = rate();
        let ns_per_tick = rate.map_or(1 << 32, |r| ((1.0 / r) * 4_294_967_296.0) as u64);
        Clock { origin: Instant::now(), origin_tsc: if rate.is_some() { tsc() } else { 0 }, rate, ns_per_tick }
    }

    /// When the clock started.
    pub(crate) fn origin(&self) -> Instant {
        self.origin
    }

    /// Now, in clock units since the origin (one TSC read: no conversion on the
    /// engine's hot path).
    #[inline]
    pub(crate) fn now(&self) -> Stamp {
        match self.rate {
            Some(_) => tsc().saturating_sub(self.origin_tsc),
            None => self.origin.elapsed().as_nanos() as u64,
        }
    }

    /// A stamp in nanoseconds since the origin.
    #[inline]
    pub(crate) fn ns(&self, s: Stamp) -> u64 {
        match self.rate {
            Some(_) => ((u128::from(s) * u128::from(self.ns_per_tick)) >> 32) as u64,
            None => s,
        }
    }

    /// A duration in clock units (saturating: a deadline too far to express is
    /// never reached).
    pub(crate) fn ticks(&self, d: Duration) -> u64 {
        let ns = u64::try_from(d.as_nanos()).unwrap_or(u64::MAX);
        match self.rate {
            Some(r) => {
                let t = ns as f64 * r;
                if t >= u64::MAX as f64 {
                    u64::MAX
                } else {
                    t as u64
                }
            }
            None => ns,
        }
    }

    /// A stamp as an instant.
    pub(crate) fn instant(&self, s: Stamp) -> Instant {
        let ns = self.ns(s);
        self.origin.checked_add(Duration::from_nanos(ns)).unwrap_or(self.origin + Duration::from_secs(86_400 * 365))
    }
}
