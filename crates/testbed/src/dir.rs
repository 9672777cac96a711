//! A private temporary directory (mode 0700) for sockets and disk images, removed
//! with everything in it when dropped.
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::dir::PrivateDir;
//! let d = PrivateDir::new().unwrap();
//! std::fs::write(d.join("blk0.img"), b"data").unwrap();
//! let p = d.path().to_path_buf();
//! drop(d);
//! assert!(!p.exists()); // removed with everything in it
//! ```

use crate::error::RigError;
use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A private directory under the system temp dir, removed on drop.
///
/// # Examples
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
/// use switchover_testbed::dir::PrivateDir;
/// let d = PrivateDir::new().unwrap();
/// let mode = std::fs::metadata(d.path()).unwrap().permissions().mode();
/// assert_eq!(mode & 0o777, 0o700);
/// ```
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Creates `$TMPDIR/switchover-real-XXXXXX` with mode 0700.
    ///
    /// # Errors
    /// The error of `mkdtemp`.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::dir::PrivateDir;
    /// let d = PrivateDir::new().unwrap();
    /// assert!(d.path().starts_with(std::env::temp_dir()));
    /// assert!(d.path().file_name().unwrap().to_str().unwrap().starts_with("switchover-real-"));
    /// assert_ne!(PrivateDir::new().unwrap().path(), d.path());
    /// ```
    pub fn new() -> io::Result<PrivateDir> {
        let tmpl = std::env::temp_dir().join("switchover-real-XXXXXX");
        let c = CString::new(tmpl.as_os_str().as_bytes()).map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        let mut buf = c.into_bytes_with_nul();
        // SAFETY: buf is a NUL-terminated template that mkdtemp rewrites in place.
        let p = unsafe { libc::mkdtemp(buf.as_mut_ptr().cast()) };
        if p.is_null() {
            return Err(io::Error::last_os_error());
        }
        buf.pop();
        Ok(PrivateDir { path: PathBuf::from(std::ffi::OsStr::from_bytes(&buf)) })
    }

    /// Its path.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::dir::PrivateDir;
    /// let d = PrivateDir::new().unwrap();
    /// assert!(d.path().is_dir());
    /// ```
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    ///
    /// # Examples
    ///
    /// ```
    /// use switchover_testbed::dir::PrivateDir;
    /// let d = PrivateDir::new().unwrap();
    /// let sock = d.join("net0.sock");
    /// assert_eq!(sock.parent(), Some(d.path()));
    /// assert!(sock.ends_with("net0.sock"));
    /// ```
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}

/// Binds a listening Unix socket at `path` and makes it 0600 (owner only). It
/// lives in a [`PrivateDir`] (0700), so no other user can reach it between the
/// bind and the chmod either.
///
/// # Errors
/// The error of bind or chmod.
///
/// # Examples
///
/// ```
/// use std::os::unix::fs::PermissionsExt;
/// use std::os::unix::net::UnixStream;
/// use switchover_testbed::dir::{bind_private, PrivateDir};
/// let d = PrivateDir::new().unwrap();
/// let sock = d.join("net0.sock");
/// let listener = bind_private(&sock).unwrap();
/// assert_eq!(std::fs::metadata(&sock).unwrap().permissions().mode() & 0o777, 0o600);
/// let _client = UnixStream::connect(&sock).unwrap();
/// assert!(listener.accept().is_ok());
/// ```
pub fn bind_private(path: &Path) -> io::Result<std::os::unix::net::UnixListener> {
    use std::os::unix::fs::PermissionsExt;
    let l = std::os::unix::net::UnixListener::bind(path)?;
    if let Err(e) = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600)) {
        let _ = std::fs::remove_file(path);
        return Err(e);
    }
    Ok(l)
}

/// Refuses a peer of another user: `SO_PEERCRED` (the credentials the peer had
/// when it connected) must name this process's effective uid.
///
/// # Errors
/// The peer's uid and pid when they differ, or the getsockopt error.
///
/// # Examples
///
/// ```
/// use std::os::unix::net::UnixStream;
/// use switchover_testbed::dir::check_peer_uid;
/// let (a, _b) = UnixStream::pair().unwrap(); // both ends are this process
/// assert!(check_peer_uid(&a).is_ok());
/// ```
pub fn check_peer_uid(s: &std::os::unix::net::UnixStream) -> Result<(), RigError> {
    use std::os::fd::AsRawFd;
    let mut cred = libc::ucred { pid: 0, uid: 0, gid: 0 };
    let mut len = std::mem::size_of::<libc::ucred>() as libc::socklen_t;
    // SAFETY: getsockopt writes at most `len` bytes into `cred`.
    let r =
        unsafe { libc::getsockopt(s.as_raw_fd(), libc::SOL_SOCKET, libc::SO_PEERCRED, (&mut cred as *mut libc::ucred).cast(), &mut len) };
    if r != 0 {
        return Err(RigError::Io { what: "SO_PEERCRED".into(), source: io::Error::last_os_error() });
    }
    // SAFETY: geteuid cannot fail.
    let me = unsafe { libc::geteuid() };
    if cred.uid != me {
        return Err(RigError::PeerUid { uid: cred.uid, pid: cred.pid, me });
    }
    Ok(())
}
