//! qemu-storage-daemon as a third-party vhost-user-blk backend, started and stopped
//! by this crate. It listens; the frontend connects. Source and destination run
//! their own daemon on the same image file, with image locking on (`locking=on`).
//!
//! It does not wait for requests in flight in `GET_VRING_BASE`: the frontend drains
//! the ring first (the `drain_inflight` step).
//!
//! **It cannot hand its image over** (qemu-storage-daemon 10.0.2, checked on the
//! installed daemon by `crates/testbed/tests/qsd_storage.rs`):
//!
//! * a `vhost-user-blk` export refuses `allow-inactive` ("Export type does not
//!   support inactive exports"), and adding an export activates its node;
//! * `blockdev-set-active false` fails ("Failed to inactivate node: Operation not
//!   permitted") while such an export uses the node; it succeeds only once the
//!   export is deleted — which closes the frontend's connection, so the source
//!   could not resume on it without a new export and a whole new start;
//! * its image locks share write: a block export takes `CONSISTENT_READ` and
//!   `WRITE` and shares everything, so with `locking=on` two daemons both open the
//!   image writable (only the permission bytes are locked, shared).
//!
//! So on the rig a qemu-storage-daemon device has no storage steps
//! (`RecipeOptions::storage_unmanaged`): one writer at a time rests on the
//! source's rings being drained and stopped before the destination starts its
//! own, and on a destination that will not run the guest being shut down at
//! once. Nothing flushes the image at the stop: with `cache.direct=off`,
//! completed writes may sit in this host's page cache until the guest's next
//! `FLUSH` — enough for a destination on the same host, not for shared storage
//! seen from a second one.
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::qsd;
//! match qsd::find() {
//!     Some(bin) => assert!(bin.is_file()),
//!     None => println!("qemu-storage-daemon is not installed: own blk backends serve every blk"),
//! }
//! ```

use std::os::unix::net::UnixStream;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use super::child::ChildProc;
use crate::error::RigError;

/// Where qemu-storage-daemon is, if it is installed.
///
/// # Examples
///
/// ```
/// use switchover_testbed::qsd;
/// // QEMU_STORAGE_DAEMON overrides the PATH search; a missing file is not found.
/// std::env::set_var("QEMU_STORAGE_DAEMON", "/nonexistent/qemu-storage-daemon");
/// assert_eq!(qsd::find(), None);
/// ```
pub fn find() -> Option<PathBuf> {
    if let Some(p) = std::env::var_os("QEMU_STORAGE_DAEMON") {
        let p = PathBuf::from(p);
        return p.is_file().then_some(p);
    }
    let path = std::env::var_os("PATH").unwrap_or_else(|| "/usr/local/bin:/usr/bin:/bin".into());
    std::env::split_paths(&path).map(|d| d.join("qemu-storage-daemon")).find(|p| p.is_file())
}

/// Starts a daemon exporting `image` as vhost-user-blk with `queues` queues on a
/// socket in `dir`, and connects to it.
///
/// # Errors
/// A message naming the device, with the daemon's own last words.
///
/// # Examples
///
/// ```no_run
/// use switchover_testbed::dir::PrivateDir;
/// use switchover_vhost::frontend::{Frontend, FrontendConfig};
/// use switchover_testbed::qsd;
/// let dir = PrivateDir::new().unwrap();
/// let image = dir.join("blk0.img");
/// std::fs::File::create(&image).unwrap().set_len(1 << 20).unwrap();
/// let bin = qsd::find().expect("qemu-storage-daemon is installed");
/// let (stream, daemon) = qsd::spawn(&bin, dir.path(), "blk0", &image, 2, None).unwrap();
/// assert!(daemon.pid().is_some());
/// let fe = Frontend::connect(stream, &FrontendConfig::new("blk0", 2)).unwrap();
/// assert_eq!(fe.queues(), 2);
/// ```
pub fn spawn(
    bin: &Path,
    dir: &Path,
    name: &str,
    image: &Path,
    queues: u32,
    iops: Option<u32>,
) -> Result<(UnixStream, ChildProc), RigError> {
    let sock = dir.join(format!("{name}-qsd.sock"));
    let log = dir.join(format!("{name}-qsd.log"));
    let _ = std::fs::remove_file(&sock);
    let logf = std::fs::File::create(&log).map_err(RigError::io(format!("{name}: {}", log.display())))?;
    let mut cmd = Command::new(bin);
    cmd.arg("--blockdev").arg(format!("driver=file,node-name=f0,filename={},locking=on,cache.direct=off", image.display()));
    // With `iops`, requests pass a throttle node, so they stay in flight for real.
    let node = match iops {
        Some(n) => {
            cmd.arg("--object").arg(format!("throttle-group,id=tg0,x-iops-total={n}"));
            cmd.arg("--blockdev").arg("driver=throttle,node-name=t0,throttle-group=tg0,file=f0");
            "t0"
        }
        None => "f0",
    };
    cmd.arg("--export")
        .arg(format!(
            "type=vhost-user-blk,id=e0,node-name={node},addr.type=unix,addr.path={},writable=on,num-queues={queues}",
            sock.display()
        ))
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(logf);
    // SAFETY: only async-signal-safe calls between fork and exec.
    unsafe {
        cmd.pre_exec(|| {
            libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
            Ok(())
        });
    }
    let child = cmd.spawn().map_err(RigError::io(format!("{name}: starting {}", bin.display())))?;
    let mut p = ChildProc::new(format!("{name} qemu-storage-daemon"), child);
    let t = Instant::now();
    let last_words = |log: &Path| std::fs::read_to_string(log).unwrap_or_default().lines().last().unwrap_or("").to_string();
    loop {
        if sock.exists() {
            if let Ok(s) = UnixStream::connect(&sock) {
                // Only the daemon we started (our uid) may be behind it.
                super::dir::check_peer_uid(&s)?;
                return Ok((s, p));
            }
        }
        if let Some(st) = p.exited() {
            return Err(RigError::Process {
                process: format!("{name} qemu-storage-daemon"),
                what: format!("exited ({st}): {}", last_words(&log)),
            });
        }
        if t.elapsed() > Duration::from_secs(10) {
            return Err(RigError::Process {
                process: format!("{name} qemu-storage-daemon"),
                what: format!("did not listen within 10 s: {}", last_words(&log)),
            });
        }
        std::thread::sleep(Duration::from_millis(1));
    }
}
