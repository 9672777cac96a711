//! The backend's image and who owns it: active (the image locked by this process,
//! writes accepted) or inactive (flushed, no write accepted, the lock released),
//! the equivalent of qemu-storage-daemon's `blockdev-set-active`.
//!
//! The lock is an exclusive `flock` on the image: two backends of one image
//! cannot both be active, so a destination cannot take the image before the
//! source gave it up, nor the source take it back while the destination holds it.
//! Switching to inactive waits for every write in progress, makes the image
//! durable (`fdatasync`), then releases the lock.
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::blk::storage::Storage;
//! use switchover_testbed::dir::PrivateDir;
//! let dir = PrivateDir::new().unwrap();
//! let img = dir.join("disk.img");
//! std::fs::File::create(&img).unwrap().set_len(1 << 20).unwrap();
//! let src = Storage::open(&img, true).unwrap();
//! let dst = Storage::open(&img, false).unwrap();
//! assert!(dst.activate().is_err()); // the source holds the image
//! src.inactivate().unwrap();
//! dst.activate().unwrap();
//! assert!(src.activate().is_err()); // now the destination does
//! assert!(!src.is_active() && dst.is_active());
//! ```

use std::fs::File;
use std::io;
use std::os::fd::AsRawFd;
use std::path::Path;

use parking_lot::RwLock;

/// An image and its active/inactive state.
#[derive(Debug)]
pub struct Storage {
    file: File,
    capacity: u64,
    active: RwLock<bool>,
    lock: bool,
}

impl Storage {
    /// Opens the image read-write; `active` takes its lock at once.
    ///
    /// # Errors
    /// The image cannot be opened, or (`active`) another process holds it.
    pub fn open(path: &Path, active: bool) -> io::Result<Storage> {
        Self::open_with(path, active, true)
    }

    /// The same; without `lock`, active and inactive do not touch the image's lock
    /// (two backends may then both write it: image locking off, as
    /// qemu-storage-daemon's `locking=off`).
    ///
    /// # Errors
    /// As [`Storage::open`].
    pub fn open_with(path: &Path, active: bool, lock: bool) -> io::Result<Storage> {
        let file = File::options().read(true).write(true).open(path)?;
        let capacity = file.metadata()?.len();
        let s = Storage { file, capacity, active: RwLock::new(false), lock };
        if active {
            s.activate()?;
        }
        Ok(s)
    }

    /// Bytes of the image.
    pub fn capacity(&self) -> u64 {
        self.capacity
    }

    /// Whether writes are accepted.
    pub fn is_active(&self) -> bool {
        *self.active.read()
    }

    /// Takes the image: its lock, then writes are accepted. Idempotent.
    ///
    /// # Errors
    /// Another process holds the image (`WouldBlock`), or `flock` failed.
    pub fn activate(&self) -> io::Result<()> {
        let mut a = self.active.write();
        if *a {
            return Ok(());
        }
        // SAFETY: flock on our own descriptor.
        if self.lock && unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_EX | libc::LOCK_NB) } != 0 {
            let e = io::Error::last_os_error();
            return Err(io::Error::new(e.kind(), format!("the image is held by another process ({e})")));
        }
        *a = true;
        Ok(())
    }

    /// Gives the image up: waits for writes in progress, makes it durable, refuses
    /// writes from now on, releases the lock. Idempotent.
    ///
    /// # Errors
    /// `fdatasync` failed (the image stays active).
    pub fn inactivate(&self) -> io::Result<()> {
        let mut a = self.active.write();
        if !*a {
            return Ok(());
        }
        self.file.sync_data()?;
        *a = false;
        // SAFETY: flock on our own descriptor.
        unsafe { libc::flock(self.file.as_raw_fd(), libc::LOCK_UN) };
        Ok(())
    }

    /// Runs host I/O with the image and whether it may be written; a switch to
    /// inactive waits until it is done.
    pub fn io<R>(&self, f: impl FnOnce(&File, u64, bool) -> R) -> R {
        let a = self.active.read();
        f(&self.file, self.capacity, *a)
    }
}
