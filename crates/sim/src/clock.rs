//! Precise sleeping for simulated service times.

use std::time::{Duration, Instant};

std::thread_local! {
    static SLACK_SET: std::cell::Cell<bool> = const { std::cell::Cell::new(false) };
}

fn tighten_timer_slack() {
    SLACK_SET.with(|s| {
        if !s.get() {
            s.set(true);
            // Linux rounds sleeps up by the thread's timer slack (50 µs by default);
            // 1 ns makes simulated service times land where the profile says.
            // SAFETY: PR_SET_TIMERSLACK takes an integer and affects only this thread.
            #[cfg(target_os = "linux")]
            unsafe {
                libc::prctl(libc::PR_SET_TIMERSLACK, 1 as libc::c_ulong, 0, 0, 0);
            }
        }
    });
}

/// Sleeps until `deadline`: the OS sleep for the bulk, a busy spin for the last
/// few microseconds. (Not a yielding spin: with more runnable threads than cores —
/// the simulated backends, the lanes — a yield hands the core away for a whole
/// time slice, and a step of a microsecond would take milliseconds.)
///
/// ```
/// let t = std::time::Instant::now() + std::time::Duration::from_micros(300);
/// switchover_sim::sleep_until(t);
/// assert!(std::time::Instant::now() >= t);
/// ```
pub fn sleep_until(deadline: Instant) {
    tighten_timer_slack();
    loop {
        let now = Instant::now();
        if now >= deadline {
            return;
        }
        let left = deadline - now;
        if left > Duration::from_micros(30) {
            std::thread::sleep(left - Duration::from_micros(10));
        } else {
            std::hint::spin_loop();
        }
    }
}
