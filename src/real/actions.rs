//! [`StepActions`] on a [`RealSide`]: vhost-user messages are split-phase (sent from
//! the lane, completed by the device's reader thread); notifier steps issue real
//! KVM ioctls through the exactly-once state machine; `drain_inflight` waits for the
//! guest's requests to complete in guest memory.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::kvm::Change;
use super::side::RealSide;
use super::wire::Reply;
use crate::error::StepFailure;
use crate::exec::{Completion, StepActions};
use crate::step::{Step, StepKind};

/// Performs steps on one real side.
#[derive(Debug, Clone)]
pub struct RealActions {
    side: Arc<RealSide>,
}

impl RealActions {
    /// Actions on `side`.
    pub fn new(side: Arc<RealSide>) -> RealActions {
        RealActions { side }
    }

    fn drain(&self, g: u32, deadline: Duration) -> Result<(), StepFailure> {
        let mem = self.side.mem();
        let t = Instant::now();
        let mut spins = 0u32;
        loop {
            let (a, u) = (mem.avail_idx(g), mem.used_idx(g));
            if a == u {
                return Ok(());
            }
            if t.elapsed() > deadline {
                return Err(StepFailure::Other {
                    message: format!(
                        "{} request(s) still in flight after {} ms (avail {a}, used {u})",
                        a.wrapping_sub(u),
                        deadline.as_millis()
                    ),
                });
            }
            spins += 1;
            if spins < 64 {
                std::thread::yield_now();
            } else {
                std::thread::sleep(Duration::from_micros(20));
            }
        }
    }
}

impl StepActions for RealActions {
    fn start(&self, step: &Step, done: Completion) {
        let s = &self.side;
        let ring = step.ring;
        let g = s.global(step.device, ring.unwrap_or(0));
        match &step.kind {
            StepKind::HostNotifierOn
            | StepKind::HostNotifierOff
            | StepKind::GuestNotifierOn
            | StepKind::GuestNotifierOff => {
                let host = matches!(
                    step.kind,
                    StepKind::HostNotifierOn | StepKind::HostNotifierOff
                );
                let on = matches!(
                    step.kind,
                    StepKind::HostNotifierOn | StepKind::GuestNotifierOn
                );
                // A refused transition (already in that state) issues nothing and is not an error.
                done.complete(s.vm().change(g, host, on).map(|_: Change| ()));
            }
            StepKind::MemTxnBegin => {
                s.vm().txn_begin();
                done.complete(Ok(()));
            }
            StepKind::MemTxnCommit => {
                s.vm().txn_commit();
                done.complete(Ok(()));
            }
            StepKind::DrainInflight => done.complete(self.drain(g, step.deadline)),
            StepKind::Custom(_) => done.complete(Ok(())),
            kind => {
                let Some(dev) = s.device(step.device) else {
                    done.complete(Err(StepFailure::MissingState {
                        what: "device has no vhost-user connection".into(),
                    }));
                    return;
                };
                let mut value = 0u16;
                if *kind == StepKind::SetVringBase {
                    match ring.and_then(|r| s.state().base(step.device, r)) {
                        Some(b) => value = b,
                        None => {
                            done.complete(Err(StepFailure::MissingState {
                                what: "no vring base was captured for this ring".into(),
                            }));
                            return;
                        }
                    }
                }
                let fd = match kind {
                    StepKind::SetVringKick => s
                        .vm()
                        .ring(g)
                        .map(|n| std::os::fd::AsRawFd::as_raw_fd(&n.kick)),
                    StepKind::SetVringCall => s
                        .vm()
                        .ring(g)
                        .map(|n| std::os::fd::AsRawFd::as_raw_fd(&n.call)),
                    _ => None,
                };
                let kind2 = kind.clone();
                let side = s.clone();
                let device = step.device;
                let on_reply = Box::new(move |r: Result<Reply, StepFailure>| match (r, &kind2) {
                    (Ok(Reply::State(_, num)), StepKind::GetVringBase) => {
                        if let Some(r) = ring {
                            side.state().set_base(device, r, num as u16);
                        }
                        done.complete(Ok(()));
                    }
                    (Ok(_), StepKind::GetVringBase) => done.complete(Err(StepFailure::Garbage {
                        what: "GET_VRING_BASE answered without a vring state".into(),
                    })),
                    (Ok(_), StepKind::SetVringBase) => {
                        side.record_sent_base(g, value);
                        done.complete(Ok(()));
                    }
                    (Ok(_), _) => done.complete(Ok(())),
                    (Err(e), _) => done.complete(Err(e)),
                });
                dev.send_step(kind, ring, g, value, fd, s.mem(), step.deadline, on_reply);
            }
        }
    }
}
