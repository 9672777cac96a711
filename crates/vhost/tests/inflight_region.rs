//! The inflight region against a model of a backend: requests taken off the
//! available ring in order, completed in any order, the backend dying at any
//! point of its put protocol. What the region says (requests in flight, in the
//! order taken; the ring's base) must be what the model says; the used index
//! alone must not be trusted when completion is out of order.

use std::fs::File;
use std::os::fd::OwnedFd;

use proptest::prelude::*;
use switchover_vhost::inflight::{queue_region_size, InflightDesc, InflightError, InflightRegion};

const QS: u16 = 64;

/// One backend event.
#[derive(Debug, Clone)]
enum Ev {
    /// Take the next request off the available ring.
    Take,
    /// Complete the outstanding request at this position (modulo their count).
    Complete(usize),
}

/// Runs `evs` on a fresh region as a backend would; if `die` is `Some(k)`, the
/// backend dies inside the k-th completion, after publishing it in the used ring
/// and before clearing it in the region. Returns the region, the used index, the
/// heads taken in order, and the heads outstanding in the order taken.
fn run(evs: &[Ev], die: Option<usize>) -> (InflightRegion, u16, Vec<u16>, Vec<u16>) {
    let region = InflightRegion::create(1, QS).unwrap();
    let q = region.queue(0).unwrap();
    q.init(0);
    let mut free: Vec<u16> = (0..QS).rev().collect();
    let (mut taken, mut out) = (Vec::new(), Vec::<u16>::new());
    let (mut used, mut counter, mut completions) = (0u16, 0u64, 0usize);
    for e in evs {
        match e {
            Ev::Take => {
                let Some(h) = free.pop() else { continue };
                counter += 1;
                q.track_get(h, counter);
                taken.push(h);
                out.push(h);
            }
            Ev::Complete(i) if !out.is_empty() => {
                let h = out.remove(i % out.len());
                q.put_begin(h);
                used = used.wrapping_add(1); // the used ring's index, in guest memory
                if die == Some(completions) {
                    return (region, used, taken, out);
                }
                q.put_end(h, used);
                free.insert(0, h);
                completions += 1;
            }
            Ev::Complete(_) => {}
        }
    }
    (region, used, taken, out)
}

fn evs() -> impl Strategy<Value = Vec<Ev>> {
    prop::collection::vec(prop_oneof![3 => Just(Ev::Take), 2 => (0usize..64).prop_map(Ev::Complete)], 0..200)
}

proptest! {
    #[test]
    fn region_says_what_the_backend_did(e in evs(), die in prop::option::of(0usize..100)) {
        let (region, used, taken, out) = run(&e, die);
        let q = region.queue(0).unwrap();
        let inflight: Vec<u16> = q.in_flight(used).unwrap().iter().map(|x| x.head).collect();
        prop_assert_eq!(&inflight, &out, "in flight, in the order taken");
        prop_assert_eq!(q.recover_base(used).unwrap(), taken.len() as u16, "the base: every request taken");
        // The backend's restart: the same, and the region corrected.
        let again: Vec<u16> = q.fixup(used).unwrap().iter().map(|x| x.head).collect();
        prop_assert_eq!(&again, &out);
        prop_assert_eq!(q.used_idx(), used);
    }

    /// What a restart from the used index alone would read again: the requests at
    /// avail positions [used, taken). That is the requests in flight exactly when
    /// the backend completed in order (every request completed was taken before
    /// every request still in flight); otherwise it repeats completed requests and
    /// skips requests in flight. The region is right in both cases (above).
    #[test]
    fn used_index_alone_is_right_only_for_in_order_completion(e in evs()) {
        let (_region, used, taken, out) = run(&e, None);
        // Positions in the order taken (heads are reused, positions are not).
        let n = taken.len();
        let mut pos_out = Vec::new();
        let mut outs = out.clone();
        for p in (0..n).rev() {
            if let Some(i) = outs.iter().rposition(|h| *h == taken[p]) {
                outs.remove(i);
                pos_out.push(p);
            }
        }
        pos_out.sort_unstable();
        let in_order = pos_out.iter().all(|p| *p >= usize::from(used));
        let from_used: Vec<usize> = (usize::from(used)..n).collect();
        prop_assert_eq!(from_used == pos_out, in_order);
    }
}

#[test]
fn out_of_order_example() {
    // Heads 0..4 taken; 1, 2, 3 completed; 0 still in flight.
    let e = [Ev::Take, Ev::Take, Ev::Take, Ev::Take, Ev::Complete(1), Ev::Complete(1), Ev::Complete(1)];
    let (region, used, taken, out) = run(&e, None);
    assert_eq!((used, taken.len(), out.clone()), (3, 4, vec![0]));
    let q = region.queue(0).unwrap();
    assert_eq!(q.recover_base(used).unwrap(), 4);
    // From the used index alone, the ring would be read again from position 3:
    // head 3 (completed) done twice, head 0 (in flight) never.
    assert_eq!(&taken[3..], &[3]);
}

fn file_of(len: u64) -> OwnedFd {
    let dir = std::env::temp_dir().join(format!("inflight-test-{}-{len}", std::process::id()));
    let f = File::options().read(true).write(true).create(true).truncate(true).open(&dir).unwrap();
    f.set_len(len).unwrap();
    let _ = std::fs::remove_file(&dir);
    f.into()
}

#[test]
fn a_region_that_does_not_fit_its_file_is_refused() {
    let size = queue_region_size(QS) as u64;
    let d = InflightDesc { mmap_size: 2 * size, mmap_offset: 0, num_queues: 2, queue_size: QS };
    let e = InflightRegion::map(file_of(size), d).unwrap_err();
    assert!(matches!(e, InflightError::Invalid { .. }) && e.to_string().contains("the file has"), "{e}");
    // Too small a stride for the ring.
    let d = InflightDesc { mmap_size: 64, mmap_offset: 0, num_queues: 1, queue_size: QS };
    assert!(InflightRegion::map(file_of(size), d).is_err());
    // Misaligned offset.
    let d = InflightDesc { mmap_size: size, mmap_offset: 3, num_queues: 1, queue_size: QS };
    assert!(InflightRegion::map(file_of(2 * size), d).is_err());
    // A plain file fits, but cannot be sealed.
    let d = InflightDesc { mmap_size: size, mmap_offset: 0, num_queues: 1, queue_size: QS };
    let r = InflightRegion::map(file_of(size), d).unwrap();
    assert!(!r.sealed());
}

#[test]
fn impossible_regions_are_corrupt_not_believed() {
    let region = InflightRegion::create(1, QS).unwrap();
    let q = region.queue(0).unwrap();
    q.load(10, &[1, 2]);
    // A used index further from the region's than a ring can be.
    assert!(q.in_flight(10u16.wrapping_add(QS + 1)).is_err());
    // Two requests with one counter.
    q.track_get(5, 1);
    assert!(q.in_flight(10).is_err());
}
