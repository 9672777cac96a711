//! A backend's child process, ended and reaped when dropped.

use std::process::Child;
use std::time::{Duration, Instant};

/// A child process killed and waited for on drop.
///
/// # Examples
///
/// ```
/// use std::process::Command;
/// use switchover_testbed::child::ChildProc;
/// let p = ChildProc::new("sleeper".into(), Command::new("sleep").arg("30").spawn().unwrap());
/// let pid = p.pid().unwrap();
/// drop(p); // ended and reaped
/// assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
/// ```
#[derive(Debug)]
pub struct ChildProc {
    /// What it is (for messages).
    pub what: String,
    child: Option<Child>,
}

impl ChildProc {
    /// Wraps a started child.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use switchover_testbed::child::ChildProc;
    /// let p = ChildProc::new("net0 backend".into(), Command::new("sleep").arg("30").spawn().unwrap());
    /// assert_eq!(p.what, "net0 backend");
    /// ```
    pub fn new(what: String, child: Child) -> ChildProc {
        ChildProc { what, child: Some(child) }
    }

    /// Its pid.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use switchover_testbed::child::ChildProc;
    /// let child = Command::new("sleep").arg("30").spawn().unwrap();
    /// let id = child.id();
    /// let mut p = ChildProc::new("sleeper".into(), child);
    /// assert_eq!(p.pid(), Some(id));
    /// p.kill();
    /// assert_eq!(p.pid(), None);
    /// ```
    pub fn pid(&self) -> Option<u32> {
        self.child.as_ref().map(Child::id)
    }

    /// Whether it has exited (reaps it if so).
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use std::time::Duration;
    /// use switchover_testbed::child::ChildProc;
    /// let mut p = ChildProc::new("true".into(), Command::new("true").spawn().unwrap());
    /// let status = loop {
    ///     if let Some(s) = p.exited() {
    ///         break s;
    ///     }
    ///     std::thread::sleep(Duration::from_millis(1));
    /// };
    /// assert!(status.success());
    /// ```
    pub fn exited(&mut self) -> Option<std::process::ExitStatus> {
        self.child.as_mut().and_then(|c| c.try_wait().ok().flatten())
    }

    /// Asks it to end (SIGTERM, and SIGCONT in case it is stopped) without waiting.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::os::unix::process::ExitStatusExt;
    /// use std::process::Command;
    /// use std::time::Duration;
    /// use switchover_testbed::child::ChildProc;
    /// let mut p = ChildProc::new("sleeper".into(), Command::new("sleep").arg("30").spawn().unwrap());
    /// p.term();
    /// let status = loop {
    ///     if let Some(s) = p.exited() {
    ///         break s;
    ///     }
    ///     std::thread::sleep(Duration::from_millis(1));
    /// };
    /// assert_eq!(status.signal(), Some(libc::SIGTERM));
    /// ```
    pub fn term(&self) {
        if let Some(c) = &self.child {
            // SAFETY: signalling our own, not yet reaped, child by pid.
            unsafe {
                libc::kill(c.id() as i32, libc::SIGTERM);
                libc::kill(c.id() as i32, libc::SIGCONT);
            }
        }
    }

    /// Kills it (SIGKILL, which also ends a stopped process) and reaps it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use switchover_testbed::child::ChildProc;
    /// let mut p = ChildProc::new("sleeper".into(), Command::new("sleep").arg("30").spawn().unwrap());
    /// let pid = p.pid().unwrap();
    /// p.kill(); // SIGKILL, then reaped
    /// assert_eq!(p.pid(), None);
    /// assert!(!std::path::Path::new(&format!("/proc/{pid}")).exists());
    /// ```
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Asks it to end (SIGTERM), waits up to `grace`, then kills it; always reaps it.
    ///
    /// # Examples
    ///
    /// ```
    /// use std::process::Command;
    /// use std::time::{Duration, Instant};
    /// use switchover_testbed::child::ChildProc;
    /// let mut p = ChildProc::new("sleeper".into(), Command::new("sleep").arg("30").spawn().unwrap());
    /// let t = Instant::now();
    /// p.stop(Duration::from_secs(5)); // sleep ends on SIGTERM: no need to wait out the grace
    /// assert!(t.elapsed() < Duration::from_secs(5));
    /// assert_eq!(p.pid(), None);
    /// ```
    pub fn stop(&mut self, grace: Duration) {
        let Some(mut c) = self.child.take() else {
            return;
        };
        if let Ok(Some(_)) = c.try_wait() {
            return;
        }
        // SAFETY: signalling our own child by pid.
        unsafe {
            libc::kill(c.id() as i32, libc::SIGTERM);
            libc::kill(c.id() as i32, libc::SIGCONT);
        }
        let t = Instant::now();
        while t.elapsed() < grace {
            if let Ok(Some(_)) = c.try_wait() {
                return;
            }
            std::thread::sleep(Duration::from_millis(2));
        }
        let _ = c.kill();
        let _ = c.wait();
    }
}

impl Drop for ChildProc {
    fn drop(&mut self) {
        self.stop(Duration::from_millis(500));
    }
}
