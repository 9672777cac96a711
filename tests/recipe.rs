//! The recipe under every combination of its options: each ring's start still
//! has its host notifier registered and its route committed before its kick, in
//! whichever window and batching the options choose.

use std::sync::Arc;

use switchover::ids::{Side, Window};
use switchover::plan::Plan;
use switchover::recipe::{build, NoCosts, NotifierBatch, RecipeOptions, RouteCommits, WindowPolicy};
use switchover::step::StepKind;
use switchover::topology::Topology;

/// Whether `a` precedes `b` in `plan` (transitively).
fn precedes(plan: &Plan, a: switchover::ids::StepId, b: switchover::ids::StepId) -> bool {
    let mut stack = vec![b];
    let mut seen = vec![false; plan.len()];
    while let Some(x) = stack.pop() {
        for &p in plan.preds(x) {
            if p == a {
                return true;
            }
            if !seen[p.0 as usize] {
                seen[p.0 as usize] = true;
                stack.push(p);
            }
        }
    }
    false
}

#[test]
fn every_kick_follows_its_host_notifier_and_its_route_under_every_option() {
    let topo = Arc::new(Topology::preset("small").unwrap());
    for policy in [WindowPolicy::Minimal, WindowPolicy::AllInBlackout] {
        for batch in [NotifierBatch::None, NotifierBatch::PerDevice, NotifierBatch::All] {
            for routes in [RouteCommits::None, RouteCommits::PerVector, RouteCommits::PerDevice, RouteCommits::Once] {
                let opts = RecipeOptions { policy, notifier_batch: batch, routes, ..RecipeOptions::engine() };
                let what = format!("{policy:?} {batch:?} {routes:?}");
                let plan = build(&topo, Side::Destination, &opts, &NoCosts).unwrap();
                let kicks: Vec<_> = plan.steps().iter().filter(|s| s.kind == StepKind::SetVringKick).collect();
                assert_eq!(kicks.len() as u32, topo.total_rings(), "{what}");
                for k in kicks {
                    let on = plan
                        .steps()
                        .iter()
                        .find(|s| s.kind == StepKind::HostNotifierOn && s.device == k.device && s.ring == k.ring)
                        .unwrap_or_else(|| panic!("{what}: {} ring {:?} has no host notifier", plan.device_name(k.id), k.ring));
                    assert!(precedes(&plan, on.id, k.id), "{what}: a kick before its host notifier");
                    if routes != RouteCommits::None {
                        let route = plan.steps().iter().find(|s| {
                            s.kind == StepKind::RouteCommit
                                && (s.device == k.device || routes == RouteCommits::Once)
                                && precedes(&plan, s.id, k.id)
                        });
                        let committed_before = route.is_some()
                            || (policy == WindowPolicy::AllInBlackout
                                && plan.steps().iter().any(|s| s.kind == StepKind::RouteCommit && s.device == k.device && s.id < k.id));
                        assert!(committed_before, "{what}: {} ring {:?} kicked before its route", plan.device_name(k.id), k.ring);
                        assert!(plan.steps().iter().filter(|s| s.kind == StepKind::RouteCommit).all(|s| s.window == Window::Blackout));
                    }
                }
            }
        }
    }
}
