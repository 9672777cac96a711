//! A private temporary directory (mode 0700) for sockets and disk images, removed
//! with everything in it when dropped.

use std::ffi::CString;
use std::io;
use std::os::unix::ffi::OsStrExt;
use std::path::{Path, PathBuf};

/// A private directory under the system temp dir, removed on drop.
#[derive(Debug)]
pub struct PrivateDir {
    path: PathBuf,
}

impl PrivateDir {
    /// Creates `$TMPDIR/switchover-real-XXXXXX` with mode 0700.
    ///
    /// # Errors
    /// The error of `mkdtemp`.
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
    pub fn path(&self) -> &Path {
        &self.path
    }

    /// A path inside it.
    pub fn join(&self, name: &str) -> PathBuf {
        self.path.join(name)
    }
}

impl Drop for PrivateDir {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.path);
    }
}
