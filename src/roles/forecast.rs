//! A side's share of the downtime, predicted before its window opens
//! ([`crate::predict`]): its blackout window, and its part of the hand-over (the
//! VMM's hooks in the window, the state's encoding, waking up for the other
//! side's message).

use std::time::{Duration, Instant};

use super::error::HookKind;
use super::message::{Envelope, Message};
use super::setup::SideSetup;
use crate::exec::{Engine, RunReport};
use crate::ids::{Side, Window};
use crate::predict::{Calibration, Prediction};
use crate::state::VringBase;
use crate::step::StepKind;

/// Measures (the engine, the earlier windows' `runs`, a round trip per backend)
/// and predicts `setup`'s side.
pub(super) fn predict_side(setup: &SideSetup, engine: &mut Engine, runs: &[RunReport]) -> Prediction {
    let plan = &setup.plan;
    let cal = Calibration::measure(engine, plan, runs, &*setup.actions);
    let lanes = engine.workers() + 1;
    let window = cal.predict(plan, Window::Blackout, lanes, &*setup.actions);
    let hook = |k| setup.hooks.expected(k).unwrap_or_default();
    let wake = cal.engine().wake;
    let handoff = match plan.side() {
        Side::Source => hook(HookKind::StopVcpus) + hook(HookKind::SaveState) + state_codec(setup) + wake,
        Side::Destination => hook(HookKind::LoadState) + hook(HookKind::ResumeVcpus) + wake,
    };
    let p = Prediction { window, handoff, other: None, made_at: Instant::now() };
    tracing::info!(
        side = plan.side().short(),
        blackout_us = p.window.duration.as_micros() as u64,
        handoff_us = p.handoff.as_micros() as u64,
        lower_bound_us = p.lower_bound().as_micros() as u64,
        "predicted"
    );
    p
}

/// Encoding and decoding the state message of this side's rings (median of three).
fn state_codec(setup: &SideSetup) -> Duration {
    let bases: Vec<VringBase> = setup
        .plan
        .steps()
        .iter()
        .filter(|s| s.kind == StepKind::GetVringBase)
        .map(|s| VringBase { device: s.device.0, ring: s.ring.unwrap_or(0), base: 0 })
        .collect();
    let e = Envelope { session: 0, seq: 0, fingerprint: 0, message: Message::State { bases, inflight: vec![], devices: vec![] } };
    let mut t: Vec<Duration> = (0..3)
        .map(|_| {
            let t0 = Instant::now();
            let bytes = e.encode();
            let _ = Envelope::decode(&bytes);
            t0.elapsed()
        })
        .collect();
    t.sort();
    t[1]
}
