//! Devices in memory that answer every step at once: for examples and tests of
//! the strategies themselves, where no backend's timing matters. Not a simulated
//! backend (that is the `switchover-sim` crate): nothing here takes time.

use std::sync::Arc;

use switchover::exec::{Completion, StepActions};
use switchover::ids::Side;
use switchover::recipe::{build, NoCosts, RecipeOptions};
use switchover::roles::SideSetup;
use switchover::state::DeviceState;
use switchover::step::{Step, StepKind};
use switchover::topology::Topology;

/// Devices in memory: every step succeeds at once; `get_vring_base` reads the
/// base `1000 + ring` into the side's state, so the roles' checks (every ring
/// started with the base read on the source) hold.
///
/// ```
/// use std::sync::Arc;
/// use switchover::ids::{DeviceId, Side};
/// use switchover::roles::{run_in_process, Outcome};
/// use switchover::exec::Engine;
/// use switchover::recipe::RecipeOptions;
/// use switchover::topology::Topology;
/// use switchover_baseline::InstantDevices;
/// let topo = Arc::new(Topology::preset("small").unwrap());
/// let src = InstantDevices::setup(&topo, Side::Source, &RecipeOptions::engine());
/// let dst = InstantDevices::setup(&topo, Side::Destination, &RecipeOptions::engine());
/// let rep = run_in_process(&src, &dst, &mut Engine::new(2), &mut Engine::new(2));
/// assert_eq!(rep.outcome, Outcome::Completed);
/// assert_eq!(dst.state.base(DeviceId(0), 1), Some(1001));
/// ```
#[derive(Debug)]
pub struct InstantDevices {
    state: Arc<DeviceState>,
}

impl InstantDevices {
    /// Devices writing into `state`.
    pub fn new(state: Arc<DeviceState>) -> InstantDevices {
        InstantDevices { state }
    }

    /// A side of `topo` on instant devices, its plan built with `opts` (no costs)
    /// and recovering with the same recipe.
    pub fn setup(topo: &Arc<Topology>, side: Side, opts: &RecipeOptions) -> SideSetup {
        let state = Arc::new(DeviceState::new(topo));
        let plan = Arc::new(build(topo, side, opts, &NoCosts).expect("a preset's plan builds"));
        let devices = Arc::new(InstantDevices::new(state.clone()));
        SideSetup::new(plan, devices.clone(), state).with_recovery(opts.clone(), Arc::new(NoCosts), devices)
    }
}

impl StepActions for InstantDevices {
    fn start(&self, step: &Step, done: Completion) {
        if let (StepKind::GetVringBase, Some(r)) = (&step.kind, step.ring) {
            self.state.set_base(step.device, r, 1000 + r as u16);
        }
        done.complete(Ok(()));
    }
}
