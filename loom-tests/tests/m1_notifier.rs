//! Model 1: exactly-once notifier transitions (`src/notifier.rs`).
//!
//! Two loom threads race to disable (or enable) the same notifier; each issues
//! the "ioctl" (a loom counter) only if it won the transition.
//!
//! Proves, for every interleaving within the preemption bound: exactly one ioctl
//! is issued per notifier and transition, the loser gets a `Refused` (never an
//! ioctl), the refusal names the right reason (`InTransition` or `Already*`, never
//! the opposite direction), and the final state is the target state; a failed
//! ioctl (abort) restores the old state, so a later attempt can still win.
//!
//! Does not prove: anything about the real KVM ioctls, or transitions raced by
//! more than two threads (the CAS argument is the same, the state space is not).
#![cfg(loom)]

use loom::sync::atomic::{AtomicUsize, Ordering};
use loom::sync::Arc;
use loom::thread;
use switchover::notifier::{Notifier, NotifierState, Refused};
use switchover_loom_tests::check;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Dir {
    Disable,
    Enable,
}

/// Tries one transition; on a win issues the ioctl (counts it) and commits.
fn attempt(n: &Notifier, dir: Dir, ioctls: &AtomicUsize) -> Result<(), Refused> {
    let t = match dir {
        Dir::Disable => n.begin_disable()?,
        Dir::Enable => n.begin_enable()?,
    };
    ioctls.fetch_add(1, Ordering::Relaxed);
    t.commit();
    Ok(())
}

fn check_outcome(dir: Dir, a: Result<(), Refused>, b: Result<(), Refused>, n: &Notifier, ioctls: usize) {
    assert_eq!(ioctls, 1, "{dir:?}: {ioctls} ioctls issued for one notifier");
    let (already, target) = match dir {
        Dir::Disable => (Refused::AlreadyDisabled, NotifierState::Disabled),
        Dir::Enable => (Refused::AlreadyEnabled, NotifierState::Enabled),
    };
    let loser = match (a, b) {
        (Ok(()), Err(e)) | (Err(e), Ok(())) => e,
        other => panic!("{dir:?}: exactly one thread must win, got {other:?}"),
    };
    assert!(loser == already || loser == Refused::InTransition, "{dir:?}: loser told {loser:?}");
    assert_eq!(n.state(), target);
}

/// Two threads race on a host notifier and a guest notifier, in opposite orders.
fn race(dir: Dir) {
    let start = match dir {
        Dir::Disable => NotifierState::Enabled,
        Dir::Enable => NotifierState::Disabled,
    };
    let host = Arc::new(Notifier::new(start));
    let guest = Arc::new(Notifier::new(start));
    let host_ioctls = Arc::new(AtomicUsize::new(0));
    let guest_ioctls = Arc::new(AtomicUsize::new(0));
    let t = {
        let (host, guest, hi, gi) = (host.clone(), guest.clone(), host_ioctls.clone(), guest_ioctls.clone());
        thread::spawn(move || {
            let h = attempt(&host, dir, &hi);
            let g = attempt(&guest, dir, &gi);
            (h, g)
        })
    };
    let g = attempt(&guest, dir, &guest_ioctls);
    let h = attempt(&host, dir, &host_ioctls);
    let (th, tg) = t.join().unwrap();
    check_outcome(dir, h, th, &host, host_ioctls.load(Ordering::Relaxed));
    check_outcome(dir, g, tg, &guest, guest_ioctls.load(Ordering::Relaxed));
}

#[test]
fn racing_disables_issue_one_ioctl() {
    check("m1 racing disables (host + guest)", 3, || race(Dir::Disable));
}

#[test]
fn racing_enables_issue_one_ioctl() {
    check("m1 racing enables (host + guest)", 3, || race(Dir::Enable));
}

/// The winner's ioctl fails and it aborts while the other thread tries: the
/// notifier is back to `Enabled` unless the other thread then won and disabled it;
/// ioctls issued == successful disables + failed attempts, and never two at once.
#[test]
fn aborted_disable_restores_state() {
    check("m1 aborted disable races a retry", 3, || {
        let n = Arc::new(Notifier::new(NotifierState::Enabled));
        let in_ioctl = Arc::new(AtomicUsize::new(0));
        let ioctls = Arc::new(AtomicUsize::new(0));
        let t = {
            let (n, in_ioctl, ioctls) = (n.clone(), in_ioctl.clone(), ioctls.clone());
            thread::spawn(move || match n.begin_disable() {
                Ok(tr) => {
                    assert_eq!(in_ioctl.fetch_add(1, Ordering::Relaxed), 0, "two ioctls at once");
                    ioctls.fetch_add(1, Ordering::Relaxed);
                    in_ioctl.fetch_sub(1, Ordering::Relaxed);
                    tr.abort(); // the ioctl failed
                    false
                }
                Err(e) => {
                    // Either the main thread is mid-transition, or it already committed.
                    assert!(matches!(e, Refused::InTransition | Refused::AlreadyDisabled), "told {e:?}");
                    false
                }
            })
        };
        let mine = match n.begin_disable() {
            Ok(tr) => {
                assert_eq!(in_ioctl.fetch_add(1, Ordering::Relaxed), 0, "two ioctls at once");
                ioctls.fetch_add(1, Ordering::Relaxed);
                in_ioctl.fetch_sub(1, Ordering::Relaxed);
                tr.commit();
                true
            }
            Err(e) => {
                assert_eq!(e, Refused::InTransition, "the other thread only ever aborts");
                false
            }
        };
        let theirs = t.join().unwrap();
        assert!(!theirs);
        let issued = ioctls.load(Ordering::Relaxed);
        assert!((1..=2).contains(&issued), "{issued} ioctls");
        if mine {
            assert_eq!(n.state(), NotifierState::Disabled);
        } else {
            assert_eq!(n.state(), NotifierState::Enabled, "an aborted transition must restore the old state");
            assert_eq!(issued, 1);
        }
    });
}
