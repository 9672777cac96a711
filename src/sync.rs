//! The one place that chooses synchronisation primitives.
//!
//! Normal builds use `parking_lot` and `std`; builds with `--cfg loom` use loom's
//! model-checked primitives, so `loom-tests/` compiles and explores the *real* engine
//! code (the pattern tokio and sharded-slab use). Nothing else in the crate names
//! `parking_lot`, `std::sync` atomics or `std::thread` for state the engine shares
//! between threads.
//!
//! Private to the crate (as tokio keeps its `loom` module): the model checks in
//! `loom-tests/` reach the engine through its public API only.
//!
//! The API is parking_lot's shape (`lock()` returns a guard, `Condvar::wait` takes
//! `&mut guard`) on both sides. Its examples are the unit tests at the end of this
//! file (a private module cannot have doctests).

#[cfg(not(loom))]
mod imp {
    use parking_lot::{Condvar as PlCondvar, Mutex as PlMutex, MutexGuard as PlGuard};
    pub(crate) use std::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
    pub(crate) use std::sync::Arc;
    pub(crate) use std::thread_local;

    /// A mutex (parking_lot in normal builds, loom's under `--cfg loom`).
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(PlMutex<T>);

    /// The guard of a [`Mutex`].
    pub(crate) type MutexGuard<'a, T> = PlGuard<'a, T>;

    impl<T> Mutex<T> {
        /// Creates a mutex holding `v`.
        pub(crate) fn new(v: T) -> Self {
            Mutex(PlMutex::new(v))
        }
        /// Locks the mutex, blocking until it is free.
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
    }

    /// A condition variable paired with [`Mutex`].
    #[derive(Debug, Default)]
    pub(crate) struct Condvar(PlCondvar);

    impl Condvar {
        /// Creates a condition variable.
        pub(crate) fn new() -> Self {
            Condvar(PlCondvar::new())
        }
        /// Waits for a notification.
        pub(crate) fn wait<T>(&self, g: &mut MutexGuard<'_, T>) {
            self.0.wait(g)
        }
        /// Waits for a notification or until `deadline`; returns true on time-out.
        pub(crate) fn wait_until<T>(&self, g: &mut MutexGuard<'_, T>, deadline: std::time::Instant) -> bool {
            self.0.wait_until(g, deadline).timed_out()
        }
        /// Wakes one waiter.
        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }
        /// Wakes every waiter.
        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// Spawns a named OS thread.
    pub(crate) fn spawn<F: FnOnce() + Send + 'static>(name: String, f: F) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new().name(name).spawn(f).expect("the OS refused to start a thread")
    }
}

#[cfg(loom)]
mod imp {
    pub(crate) use loom::sync::atomic::{AtomicU32, AtomicU64, AtomicU8, Ordering};
    pub(crate) use loom::sync::Arc;

    /// loom's `thread_local!`, also accepting std's `const { .. }` initialiser
    /// (loom's own macro does not), so callers write one declaration for both builds.
    macro_rules! loom_thread_local {
        () => {};
        ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = const { $init:expr }; $($rest:tt)*) => {
            loom::thread_local!($(#[$attr])* $vis static $name: $t = $init;);
            $crate::sync::thread_local!($($rest)*);
        };
        ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = const { $init:expr }) => {
            loom::thread_local!($(#[$attr])* $vis static $name: $t = $init;);
        };
        ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $init:expr; $($rest:tt)*) => {
            loom::thread_local!($(#[$attr])* $vis static $name: $t = $init;);
            $crate::sync::thread_local!($($rest)*);
        };
        ($(#[$attr:meta])* $vis:vis static $name:ident: $t:ty = $init:expr) => {
            loom::thread_local!($(#[$attr])* $vis static $name: $t = $init;);
        };
    }
    pub(crate) use loom_thread_local as thread_local;

    /// A mutex (loom's, under `--cfg loom`).
    #[derive(Debug, Default)]
    pub(crate) struct Mutex<T>(loom::sync::Mutex<T>);

    /// The guard of a [`Mutex`]; holds loom's guard in an `Option` so that
    /// `Condvar::wait(&mut guard)` can hand it to loom by value.
    #[derive(Debug)]
    pub(crate) struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

    impl<T> std::ops::Deref for MutexGuard<'_, T> {
        type Target = T;
        fn deref(&self) -> &T {
            self.0.as_ref().expect("guard present")
        }
    }
    impl<T> std::ops::DerefMut for MutexGuard<'_, T> {
        fn deref_mut(&mut self) -> &mut T {
            self.0.as_mut().expect("guard present")
        }
    }

    impl<T> Mutex<T> {
        /// Creates a mutex holding `v`.
        pub(crate) fn new(v: T) -> Self {
            Mutex(loom::sync::Mutex::new(v))
        }
        /// Locks the mutex.
        pub(crate) fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(self.0.lock().unwrap_or_else(|e| e.into_inner())))
        }
    }

    /// A condition variable (loom's).
    #[derive(Debug, Default)]
    pub(crate) struct Condvar(loom::sync::Condvar);

    impl Condvar {
        /// Creates a condition variable.
        pub(crate) fn new() -> Self {
            Condvar(loom::sync::Condvar::new())
        }
        /// Waits for a notification.
        pub(crate) fn wait<T>(&self, g: &mut MutexGuard<'_, T>) {
            let inner = g.0.take().expect("guard present");
            g.0 = Some(self.0.wait(inner).unwrap_or_else(|e| e.into_inner()));
        }
        /// Loom has no clock: a timed wait is an untimed one (models set no deadlines).
        pub(crate) fn wait_until<T>(&self, g: &mut MutexGuard<'_, T>, _deadline: std::time::Instant) -> bool {
            self.wait(g);
            false
        }
        /// Wakes one waiter.
        pub(crate) fn notify_one(&self) {
            self.0.notify_one();
        }
        /// Wakes every waiter.
        pub(crate) fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// Spawns a loom thread.
    pub(crate) fn spawn<F: FnOnce() + Send + 'static>(_name: String, f: F) -> loom::thread::JoinHandle<()> {
        loom::thread::spawn(f)
    }
}

pub(crate) use imp::*;

// The examples of this module's primitives. The module is private, so they are
// unit tests rather than doctests.
#[cfg(all(test, not(loom)))]
mod tests {
    use std::sync::Arc;
    use std::time::{Duration, Instant};

    use super::{spawn, Condvar, Mutex, MutexGuard};

    #[test]
    fn mutex_serialises_increments_from_many_threads() {
        let m = Arc::new(Mutex::new(0u32));
        let hs: Vec<_> = (0..4)
            .map(|_| {
                let m = m.clone();
                std::thread::spawn(move || *m.lock() += 1)
            })
            .collect();
        hs.into_iter().for_each(|h| h.join().unwrap());
        assert_eq!(*m.lock(), 4);
    }

    #[test]
    fn mutex_guard_gives_mutable_access() {
        let m = Mutex::new(vec![1]);
        let mut g: MutexGuard<'_, Vec<i32>> = m.lock();
        g.push(2);
        drop(g);
        assert_eq!(*m.lock(), [1, 2]);
    }

    #[test]
    fn mutex_new_holds_its_value() {
        assert_eq!(*Mutex::new("x").lock(), "x");
    }

    #[test]
    fn mutex_lock_gives_the_value() {
        let m = Mutex::new(1);
        *m.lock() *= 5;
        assert_eq!(*m.lock(), 5);
    }

    #[test]
    fn condvar_hands_a_value_between_threads() {
        let pair = Arc::new((Mutex::new(None), Condvar::new()));
        let p = pair.clone();
        let h = std::thread::spawn(move || {
            *p.0.lock() = Some(42);
            p.1.notify_one();
        });
        let mut slot = pair.0.lock();
        while slot.is_none() {
            pair.1.wait(&mut slot);
        }
        assert_eq!(slot.take(), Some(42));
        drop(slot);
        h.join().unwrap();
    }

    #[test]
    fn condvar_wait_until_times_out_unnotified() {
        let (m, cv) = (Mutex::new(()), Condvar::new());
        // Nobody notifies: the wait times out.
        assert!(cv.wait_until(&mut m.lock(), Instant::now() + Duration::from_millis(1)));
    }

    #[test]
    fn condvar_wait_releases_the_lock_while_waiting() {
        let state = Arc::new((Mutex::new(0), Condvar::new()));
        let s = state.clone();
        std::thread::spawn(move || {
            *s.0.lock() = 7;
            s.1.notify_all();
        });
        let mut g = state.0.lock();
        while *g == 0 {
            state.1.wait(&mut g); // releases the lock while waiting
        }
        assert_eq!(*g, 7);
    }

    #[test]
    fn condvar_wait_until_returns_early_when_notified() {
        let state = Arc::new((Mutex::new(false), Condvar::new()));
        let s = state.clone();
        std::thread::spawn(move || {
            *s.0.lock() = true;
            s.1.notify_one();
        });
        let deadline = Instant::now() + Duration::from_secs(10);
        let mut g = state.0.lock();
        while !*g {
            assert!(!state.1.wait_until(&mut g, deadline), "notified long before the deadline");
        }
    }

    #[test]
    fn condvar_notify_one_wakes_a_waiter() {
        let state = Arc::new((Mutex::new(None), Condvar::new()));
        let s = state.clone();
        let h = std::thread::spawn(move || {
            let mut g = s.0.lock();
            while g.is_none() {
                s.1.wait(&mut g);
            }
            g.take().unwrap()
        });
        *state.0.lock() = Some("go");
        state.1.notify_one();
        assert_eq!(h.join().unwrap(), "go");
    }

    #[test]
    fn condvar_notify_all_wakes_every_waiter() {
        let state = Arc::new((Mutex::new(false), Condvar::new()));
        let waiters: Vec<_> = (0..3)
            .map(|_| {
                let s = state.clone();
                std::thread::spawn(move || {
                    let mut g = s.0.lock();
                    while !*g {
                        s.1.wait(&mut g);
                    }
                })
            })
            .collect();
        *state.0.lock() = true;
        state.1.notify_all();
        waiters.into_iter().for_each(|h| h.join().unwrap()); // every waiter woke
    }

    #[test]
    fn spawn_names_the_thread() {
        let h = spawn("probe".into(), || assert_eq!(std::thread::current().name(), Some("probe")));
        h.join().unwrap();
    }
}
