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
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::sync::Mutex;
    /// let m = Arc::new(Mutex::new(0u32));
    /// let hs: Vec<_> = (0..4)
    ///     .map(|_| {
    ///         let m = m.clone();
    ///         std::thread::spawn(move || *m.lock() += 1)
    ///     })
    ///     .collect();
    /// hs.into_iter().for_each(|h| h.join().unwrap());
    /// assert_eq!(*m.lock(), 4);
    /// ```
    #[derive(Debug, Default)]
    pub struct Mutex<T>(PlMutex<T>);

    /// The guard of a [`Mutex`].
    ///
    /// ```
    /// use switchover::sync::{Mutex, MutexGuard};
    /// let m = Mutex::new(vec![1]);
    /// let mut g: MutexGuard<'_, Vec<i32>> = m.lock();
    /// g.push(2);
    /// drop(g);
    /// assert_eq!(*m.lock(), [1, 2]);
    /// ```
    pub type MutexGuard<'a, T> = PlGuard<'a, T>;

    impl<T> Mutex<T> {
        /// Creates a mutex holding `v`.
        ///
        /// ```
        /// use switchover::sync::Mutex;
        /// assert_eq!(*Mutex::new("x").lock(), "x");
        /// ```
        pub fn new(v: T) -> Self {
            Mutex(PlMutex::new(v))
        }
        /// Locks the mutex, blocking until it is free.
        ///
        /// ```
        /// use switchover::sync::Mutex;
        /// let m = Mutex::new(1);
        /// *m.lock() *= 5;
        /// assert_eq!(*m.lock(), 5);
        /// ```
        pub fn lock(&self) -> MutexGuard<'_, T> {
            self.0.lock()
        }
        /// Locks the mutex if it is free right now.
        ///
        /// ```
        /// use switchover::sync::Mutex;
        /// let m = Mutex::new(());
        /// let g = m.lock();
        /// assert!(m.try_lock().is_none()); // held
        /// drop(g);
        /// assert!(m.try_lock().is_some());
        /// ```
        pub fn try_lock(&self) -> Option<MutexGuard<'_, T>> {
            self.0.try_lock()
        }
    }

    /// A condition variable paired with [`Mutex`].
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::sync::{Condvar, Mutex};
    /// let pair = Arc::new((Mutex::new(None), Condvar::new()));
    /// let p = pair.clone();
    /// let h = std::thread::spawn(move || {
    ///     *p.0.lock() = Some(42);
    ///     p.1.notify_one();
    /// });
    /// let mut slot = pair.0.lock();
    /// while slot.is_none() {
    ///     pair.1.wait(&mut slot);
    /// }
    /// assert_eq!(slot.take(), Some(42));
    /// drop(slot);
    /// h.join().unwrap();
    /// ```
    #[derive(Debug, Default)]
    pub struct Condvar(PlCondvar);

    impl Condvar {
        /// Creates a condition variable.
        ///
        /// ```
        /// use std::time::{Duration, Instant};
        /// use switchover::sync::{Condvar, Mutex};
        /// let (m, cv) = (Mutex::new(()), Condvar::new());
        /// // Nobody notifies: the wait times out.
        /// assert!(cv.wait_until(&mut m.lock(), Instant::now() + Duration::from_millis(1)));
        /// ```
        pub fn new() -> Self {
            Condvar(PlCondvar::new())
        }
        /// Waits for a notification.
        ///
        /// ```
        /// use std::sync::Arc;
        /// use switchover::sync::{Condvar, Mutex};
        /// let state = Arc::new((Mutex::new(0), Condvar::new()));
        /// let s = state.clone();
        /// std::thread::spawn(move || {
        ///     *s.0.lock() = 7;
        ///     s.1.notify_all();
        /// });
        /// let mut g = state.0.lock();
        /// while *g == 0 {
        ///     state.1.wait(&mut g); // releases the lock while waiting
        /// }
        /// assert_eq!(*g, 7);
        /// ```
        pub fn wait<T>(&self, g: &mut MutexGuard<'_, T>) {
            self.0.wait(g)
        }
        /// Waits for a notification or until `deadline`; returns true on time-out.
        ///
        /// ```
        /// use std::sync::Arc;
        /// use std::time::{Duration, Instant};
        /// use switchover::sync::{Condvar, Mutex};
        /// let state = Arc::new((Mutex::new(false), Condvar::new()));
        /// let s = state.clone();
        /// std::thread::spawn(move || {
        ///     *s.0.lock() = true;
        ///     s.1.notify_one();
        /// });
        /// let deadline = Instant::now() + Duration::from_secs(10);
        /// let mut g = state.0.lock();
        /// while !*g {
        ///     assert!(!state.1.wait_until(&mut g, deadline), "notified long before the deadline");
        /// }
        /// ```
        pub fn wait_until<T>(&self, g: &mut MutexGuard<'_, T>, deadline: std::time::Instant) -> bool {
            self.0.wait_until(g, deadline).timed_out()
        }
        /// Wakes one waiter.
        ///
        /// ```
        /// use std::sync::Arc;
        /// use switchover::sync::{Condvar, Mutex};
        /// let state = Arc::new((Mutex::new(None), Condvar::new()));
        /// let s = state.clone();
        /// let h = std::thread::spawn(move || {
        ///     let mut g = s.0.lock();
        ///     while g.is_none() {
        ///         s.1.wait(&mut g);
        ///     }
        ///     g.take().unwrap()
        /// });
        /// *state.0.lock() = Some("go");
        /// state.1.notify_one();
        /// assert_eq!(h.join().unwrap(), "go");
        /// ```
        pub fn notify_one(&self) {
            self.0.notify_one();
        }
        /// Wakes every waiter.
        ///
        /// ```
        /// use std::sync::Arc;
        /// use switchover::sync::{Condvar, Mutex};
        /// let state = Arc::new((Mutex::new(false), Condvar::new()));
        /// let waiters: Vec<_> = (0..3)
        ///     .map(|_| {
        ///         let s = state.clone();
        ///         std::thread::spawn(move || {
        ///             let mut g = s.0.lock();
        ///             while !*g {
        ///                 s.1.wait(&mut g);
        ///             }
        ///         })
        ///     })
        ///     .collect();
        /// *state.0.lock() = true;
        /// state.1.notify_all();
        /// waiters.into_iter().for_each(|h| h.join().unwrap()); // every waiter woke
        /// ```
        pub fn notify_all(&self) {
            self.0.notify_all();
        }
    }

    /// Spawns a named OS thread.
    ///
    /// ```
    /// let h = switchover::sync::spawn("probe".into(), || assert_eq!(std::thread::current().name(), Some("probe")));
    /// h.join().unwrap();
    /// ```
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
