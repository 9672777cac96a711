//! The one place that chooses synchronisation primitives.
//!
//! Normal builds use `parking_lot` and `std`; builds with `--cfg loom` use loom's
//! model-checked primitives, so `loom-tests/` compiles and explores the *real* engine
//! code (the pattern tokio and sharded-slab use). Nothing else in the crate names
//! `parking_lot`, `std::sync` atomics or `std::thread` for state the engine shares
//! between threads.
//!
//! The API is parking_lot's shape (`lock()` returns a guard, `Condvar::wait` takes
//! `&mut guard`) on both sides.
//!
//! # Examples
//!
//! ```
//! use switchover::sync::{Condvar, Mutex};
//! let m = Mutex::new(1);
//! let cv = Condvar::new();
//! *m.lock() += 1;
//! cv.notify_all();
//! assert_eq!(*m.lock(), 2);
//! ```

#[cfg(not(loom))]
mod imp {
    pub use parking_lot::{Condvar as PlCondvar, Mutex as PlMutex, MutexGuard as PlGuard};
    pub use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
    pub use std::sync::Arc;
    pub use std::thread_local;

    /// A mutex (parking_lot in normal builds, loom's under `--cfg loom`).
    #[derive(Debug, Default)]
    pub struct Mutex<T>(PlMutex<T>);

    /// The guard of a [`Mutex`].
    pub type MutexGuard<'a, T> = PlGuard<'a, T>;

    impl<T> Mutex<T> {
        /// Creates a mutex holding `v`.
        pub fn new(v: T) -> Self {
            Mutex(PlMutex::new(v))
        }
        /// Locks the mutex, blocking until it is free.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
        /// Locks the mutex if it is free right now.
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock()
        }
    }

    /// A condition variable paired with [`Mutex`].
    #[derive(Debug, Default)]
    pub struct Condvar(PlCondvar);

    impl Condvar {
        /// Creates a condition variable.
        pub fn new() -> Self {
            Condvar(PlCondvar::new())
        }
        /// Waits for a notification.
        pub fn wait<T>(&self, g: &mut MutexGuard<'_, T>) {
            self.0.wait(g)
        }
        /// Waits for a notification or until `deadline`; returns true on time-out.
        pub fn wait_until<T>(&self, g: &mut MutexGuard<'_, T>, deadline: std::time::Instant) -> bool {
            self.0.wait_until(g, deadline).timed_out()
        }
        /// Wakes one waiter.
        pub fn notify_one(&self) {
            self.0.notify_one();
        }
        /// Wakes every waiter.
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// Spawns a named OS thread.
    pub fn spawn<F: FnOnce() + Send + 'static>(name: String, f: F) -> std::thread::JoinHandle<()> {
        std::thread::Builder::new().name(name).spawn(f).expect("the OS refused to start a thread")
    }
}

#[cfg(loom)]
mod imp {
    pub use loom::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicU8, AtomicUsize, Ordering};
    pub use loom::sync::Arc;

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
    pub struct Mutex<T>(loom::sync::Mutex<T>);

    /// The guard of a [`Mutex`]; holds loom's guard in an `Option` so that
    /// `Condvar::wait(&mut guard)` can hand it to loom by value.
    #[derive(Debug)]
    pub struct MutexGuard<'a, T>(Option<loom::sync::MutexGuard<'a, T>>);

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
        pub fn new(v: T) -> Self {
            Mutex(loom::sync::Mutex::new(v))
        }
        /// Locks the mutex.
        pub fn lock(&self) -> MutexGuard<'_, T> {
            MutexGuard(Some(self.0.lock().unwrap_or_else(|e| e.into_inner())))
        }
        /// Locks the mutex if it is free right now.
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock().ok().map(|g| MutexGuard(Some(g)))
        }
    }

    /// A condition variable (loom's).
    #[derive(Debug, Default)]
    pub struct Condvar(loom::sync::Condvar);

    impl Condvar {
        /// Creates a condition variable.
        pub fn new() -> Self {
            Condvar(loom::sync::Condvar::new())
        }
        /// Waits for a notification.
        pub fn wait<T>(&self, g: &mut MutexGuard<'_, T>) {
            let inner = g.0.take().expect("guard present");
            g.0 = Some(self.0.wait(inner).unwrap_or_else(|e| e.into_inner()));
        }
        /// Loom has no clock: a timed wait is an untimed one (models set no deadlines).
        pub fn wait_until<T>(&self, g: &mut MutexGuard<'_, T>, _deadline: std::time::Instant) -> bool {
            self.wait(g);
            false
        }
        /// Wakes one waiter.
        pub fn notify_one(&self) {
            self.0.notify_one();
        }
        /// Wakes every waiter.
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// Spawns a loom thread.
    pub fn spawn<F: FnOnce() + Send + 'static>(_name: String, f: F) -> loom::thread::JoinHandle<()> {
        loom::thread::spawn(f)
    }
}

pub use imp::*;
