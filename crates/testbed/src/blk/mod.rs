//! The project's own vhost-user-blk backend with an inflight region: a stop that
//! does not wait for the disk.
//!
//! A child process (`switchover real __backend blk-inflight SOCK QUEUES IMAGE`
//! with the options in `SWITCHOVER_BLK_ARGS`, or any binary that calls
//! [`child_main_from_env`]) that serves one frontend connection: real virtio-blk
//! processing (`IN`, `OUT`, `FLUSH`, `GET_ID`) on an image file, with the host
//! I/O done by a pool of workers behind a throttle, so that requests really are in
//! flight and complete in any order. It handles the frontend's requests itself
//! (the `vhost` crate's backend request handler), not through
//! `vhost-user-backend`, which refuses `GET_INFLIGHT_FD`.
//!
//! * **Inflight region** (`INFLIGHT_SHMFD`, `GET_INFLIGHT_FD` / `SET_INFLIGHT_FD`,
//!   the split-ring layout of [`switchover_vhost::inflight`]): every request taken
//!   off a ring is recorded until it completes.
//! * **A stop that does not wait** (`GET_VRING_BASE_INFLIGHT`): `GET_VRING_BASE`
//!   answers at once with the requests in flight recorded in the region. Their
//!   host I/O is settled before the answer, deterministically: a request whose
//!   I/O has not started is cancelled (it never reaches the image); one whose I/O
//!   is executing is waited for — one system call, not the throttle — and its
//!   completion discarded. So no request takes effect after the stop, a request
//!   redone elsewhere writes the same bytes it may already have written, and a
//!   request the guest saw completed (an acknowledged write: on the image before
//!   its status was published) is never redone or lost. Details in [`device`].
//! * **Resubmission**: when a ring starts with requests recorded in the region
//!   (the destination after `SET_INFLIGHT_FD`, or the source restarted after a
//!   rollback), they are resubmitted in the order they were taken (the region's
//!   counters), before any new request, once the base is checked against the
//!   region (`base == used + in flight`).
//! * **Dirty log** (`VHOST_F_LOG_ALL`, `SET_LOG_BASE` with `LOG_SHMFD`, the ring
//!   log flag): every write to guest memory is marked in the frontend's bitmap,
//!   one bit per 4 KiB guest-physical page; used-ring writes at the ring's
//!   `log_guest_addr` ([`guest`]).
//! * **Storage active / inactive** with image locking ([`storage`]), switched from
//!   the control socket ([`control`]): inactive = flushed, writes refused, lock
//!   released; active = lock taken. `--inactive` starts a destination without the
//!   image.
//!
//! Options: `--iops N` (throttle, requests per second for the device), `--workers
//! N` (default 4), `--control PATH` (control socket), `--inactive`, `--no-lock`
//! (image locking off),
//! `--no-inflight` (offer neither inflight feature: the stop drains),
//! `--jitter-us N` (each request waits up to N µs more, at random, before its I/O:
//! completion out of order), `--seed N`, and for tests only `--no-settle` (the stop
//! neither cancels nor waits: host I/O goes on after it — the negative control of
//! the settle rule).
//!
//! # Examples
//!
//! ```
//! use switchover_testbed::blk::BlkOptions;
//! let o = BlkOptions::parse(&["--iops".into(), "200".into(), "--inactive".into()], 4).unwrap();
//! assert_eq!((o.iops, o.active, o.queues), (Some(200), false, 4));
//! assert_eq!(o.interval(), Some(std::time::Duration::from_millis(5)));
//! assert!(BlkOptions::parse(&["--iops".into(), "zero".into()], 1).is_err());
//! ```

pub mod control;
pub mod device;
pub mod driver;
pub mod guest;
pub mod handler;
pub mod request;
pub mod storage;

use std::io;
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use vhost::vhost_user::BackendReqHandler;

use crate::backend::ChildProc;
use crate::error::RigError;

pub use control::Control;
pub use device::Stats;

/// The environment variable that carries the options when the backend runs as
/// `switchover real __backend blk-inflight …`.
pub const ARGS_ENV: &str = "SWITCHOVER_BLK_ARGS";

/// How the backend runs.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BlkOptions {
    /// Rings.
    pub queues: u16,
    /// Throttle: requests per second for the whole device.
    pub iops: Option<u32>,
    /// Worker threads doing host I/O.
    pub workers: usize,
    /// Offer `INFLIGHT_SHMFD` and `GET_VRING_BASE_INFLIGHT`.
    pub inflight: bool,
    /// Settle host I/O at a stop (off only for the negative control).
    pub settle: bool,
    /// Extra random wait before each request's I/O, up to this many µs.
    pub jitter_us: u64,
    /// Seed of that randomness.
    pub seed: u64,
    /// Start with the image active (locked).
    pub active: bool,
    /// Lock the image while active (off: image locking off, `--no-lock`).
    pub lock: bool,
    /// The control socket.
    pub control: Option<PathBuf>,
}

impl BlkOptions {
    /// Defaults for `queues` rings: no throttle, 4 workers, inflight offered,
    /// settling, active, no control socket.
    pub fn new(queues: u16) -> BlkOptions {
        BlkOptions {
            queues,
            iops: None,
            workers: 4,
            inflight: true,
            settle: true,
            jitter_us: 0,
            seed: 0x5eed,
            active: true,
            lock: true,
            control: None,
        }
    }

    /// Parses the options (see the module's documentation).
    ///
    /// # Errors
    /// An unknown option or a bad value, named.
    pub fn parse(args: &[String], queues: u16) -> Result<BlkOptions, RigError> {
        let mut o = BlkOptions::new(queues);
        let mut it = args.iter();
        let num = |name: &str, v: Option<&String>| -> Result<u64, RigError> {
            v.and_then(|v| v.parse::<u64>().ok()).ok_or_else(|| RigError::Config(format!("{name} needs a number")))
        };
        while let Some(a) = it.next() {
            match a.as_str() {
                "--iops" => {
                    let n = num("--iops", it.next())?;
                    if n == 0 || n > 1_000_000 {
                        return Err(RigError::Config("--iops must be 1..=1000000".into()));
                    }
                    o.iops = Some(n as u32);
                }
                "--workers" => o.workers = num("--workers", it.next())?.clamp(1, 64) as usize,
                "--jitter-us" => o.jitter_us = num("--jitter-us", it.next())?,
                "--seed" => o.seed = num("--seed", it.next())?,
                "--control" => o.control = Some(it.next().ok_or_else(|| RigError::Config("--control needs a path".into()))?.into()),
                "--inactive" => o.active = false,
                "--no-lock" => o.lock = false,
                "--no-inflight" => o.inflight = false,
                "--no-settle" => o.settle = false,
                other => return Err(RigError::Config(format!("unknown blk backend option '{other}'"))),
            }
        }
        Ok(o)
    }

    /// The options as arguments (what [`BlkOptions::parse`] reads back).
    pub fn to_args(&self) -> Vec<String> {
        let mut v = Vec::new();
        if let Some(n) = self.iops {
            v.extend(["--iops".to_string(), n.to_string()]);
        }
        v.extend(["--workers".to_string(), self.workers.to_string()]);
        if self.jitter_us > 0 {
            v.extend(["--jitter-us".to_string(), self.jitter_us.to_string(), "--seed".to_string(), self.seed.to_string()]);
        }
        if let Some(c) = &self.control {
            v.extend(["--control".to_string(), c.display().to_string()]);
        }
        if !self.active {
            v.push("--inactive".into());
        }
        if !self.lock {
            v.push("--no-lock".into());
        }
        if !self.inflight {
            v.push("--no-inflight".into());
        }
        if !self.settle {
            v.push("--no-settle".into());
        }
        v
    }

    /// Time between two requests' slots of the throttle.
    pub fn interval(&self) -> Option<Duration> {
        self.iops.map(|n| Duration::from_nanos(1_000_000_000 / u64::from(n)))
    }
}

/// The child process's entry: serves one frontend connection on `sock` (it
/// connects; the frontend listens), then exits.
///
/// # Errors
/// Start-up failures: the image (or its lock), the control socket, the connection.
pub fn serve(sock: &str, image: &Path, opts: BlkOptions) -> Result<(), RigError> {
    // SAFETY: prctl with PR_SET_PDEATHSIG and a signal number.
    unsafe {
        libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL);
    }
    let storage = storage::Storage::open_with(image, opts.active, opts.lock).map_err(RigError::io(format!("image {}", image.display())))?;
    let control = opts.control.clone();
    let dev = device::Device::start(opts, storage).map_err(RigError::io("blk backend workers"))?;
    if let Some(c) = &control {
        control::serve(c, dev.clone()).map_err(RigError::io(format!("control socket {}", c.display())))?;
    }
    let handler = Arc::new(std::sync::Mutex::new(handler::Handler::new(dev.clone())));
    let mut h = BackendReqHandler::connect(sock, handler)
        .map_err(|e| RigError::Process { process: "blk backend".into(), what: format!("connect {sock}: {e}") })?;
    use vhost::vhost_user::Error as E;
    let r = loop {
        match h.handle_request() {
            Ok(()) => {}
            Err(E::Disconnected | E::PartialMessage | E::SocketBroken(_) | E::SocketError(_) | E::SocketConnect(_)) => break Ok(()),
            // The request failed (its ack, if asked for, said so); the stream is in step.
            Err(
                e @ (E::ReqHandlerError(_) | E::InvalidParam | E::InvalidOperation(_) | E::InactiveOperation(_) | E::InactiveFeature(_)),
            ) => {
                eprintln!("blk backend: request failed: {e}");
            }
            Err(e) => {
                break Err(RigError::Daemon { what: format!("serving {sock}"), source: vhost_user_backend::Error::HandleRequest(e).into() })
            }
        }
    };
    dev.shutdown();
    r
}

/// The environment variable that makes a binary calling [`child_main_from_env`]
/// run the backend: `SOCK QUEUES IMAGE [OPTIONS]`, separated by `\x1f`.
pub const CHILD_ENV: &str = "SWITCHOVER_BLK_CHILD";

/// Runs the backend with `SOCK QUEUES IMAGE [OPTIONS]`; returns the exit code.
///
/// ```
/// use switchover_testbed::blk::main;
/// assert_eq!(main(&[]), 2); // usage
/// ```
pub fn main(args: &[String]) -> i32 {
    let (Some(sock), Some(q), Some(image)) = (args.first(), args.get(1), args.get(2)) else {
        eprintln!(
            "usage: SOCK QUEUES IMAGE [--iops N] [--workers N] [--control PATH] [--inactive] [--no-inflight] [--jitter-us N] [--seed N]"
        );
        return 2;
    };
    let r = q
        .parse::<u16>()
        .map_err(|_| RigError::Config(format!("bad queue count '{q}'")))
        .and_then(|q| BlkOptions::parse(&args[3..], q))
        .and_then(|o| serve(sock, Path::new(image), o));
    match r {
        Ok(()) => 0,
        Err(e) => {
            eprintln!("switchover-blk: {e}");
            1
        }
    }
}

/// If [`CHILD_ENV`] is set, runs the backend with its arguments and returns the
/// exit code: how a test binary re-executes itself as the backend process
/// ([`BlkExe::Reexec`]). `None` when it is not set.
pub fn child_main_from_env() -> Option<i32> {
    let v = std::env::var(CHILD_ENV).ok()?;
    let args: Vec<String> = v.split('\x1f').map(String::from).collect();
    Some(main(&args))
}

/// The entry when the backend runs as `switchover real __backend blk-inflight
/// SOCK QUEUES IMAGE`: the options come from [`ARGS_ENV`].
///
/// # Errors
/// As [`serve`], or options that do not parse.
pub fn serve_from_env(sock: &str, queues: usize, image: Option<&Path>) -> Result<(), RigError> {
    let image = image.ok_or_else(|| RigError::Config("a blk backend needs a file".into()))?;
    let q = u16::try_from(queues).map_err(|_| RigError::Config(format!("bad queue count {queues}")))?;
    let args: Vec<String> = std::env::var(ARGS_ENV).unwrap_or_default().split_whitespace().map(String::from).collect();
    serve(sock, image, BlkOptions::parse(&args, q)?)
}

/// Which binary runs the backend.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BlkExe {
    /// The `switchover` CLI (`real __backend blk-inflight`, options in [`ARGS_ENV`]).
    Cli(PathBuf),
    /// A test binary run as `EXE --exact TEST --ignored`, whose test `TEST` calls
    /// [`child_main_from_env`] (the arguments in [`CHILD_ENV`]).
    Reexec {
        /// The test binary.
        exe: PathBuf,
        /// The test that runs the backend.
        test: String,
    },
}

/// A running backend: its connection (not yet handshaken), process, and control socket.
#[derive(Debug)]
pub struct Spawned {
    /// The vhost-user connection.
    pub stream: UnixStream,
    /// The process.
    pub proc_: ChildProc,
    /// Its control socket, if it has one.
    pub control: Option<Control>,
}

/// Starts the backend for device `name` on `image` and accepts its connection on a
/// socket in `dir` (removed once connected). With `opts.control` unset, a control
/// socket is put in `dir`.
///
/// # Errors
/// A message naming the device: the process did not start or connect in 10 s.
pub fn spawn(exe: &BlkExe, dir: &Path, name: &str, image: &Path, mut opts: BlkOptions) -> Result<Spawned, RigError> {
    static SEQ: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);
    let n = SEQ.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    let sock = dir.join(format!("{name}-blk-{}-{n}.sock", std::process::id()));
    if opts.control.is_none() {
        opts.control = Some(dir.join(format!("{name}-ctl-{}-{n}.sock", std::process::id())));
    }
    let _ = std::fs::remove_file(&sock);
    let listener = crate::dir::bind_private(&sock).map_err(RigError::io(format!("{name}: bind {}", sock.display())))?;
    listener.set_nonblocking(true).map_err(RigError::io(format!("{name}: non-blocking listener")))?;
    let head = [sock.display().to_string(), opts.queues.to_string(), image.display().to_string()];
    let mut cmd = match exe {
        BlkExe::Reexec { exe, test } => {
            let mut c = Command::new(exe);
            let all: Vec<String> = head.iter().cloned().chain(opts.to_args()).collect();
            c.args(["--exact", test, "--ignored", "--nocapture", "--test-threads", "1"]).env(CHILD_ENV, all.join("\x1f"));
            c
        }
        BlkExe::Cli(p) => {
            let mut c = Command::new(p);
            c.args(["real", "__backend", "blk-inflight"]).args(head).env(ARGS_ENV, opts.to_args().join(" "));
            c
        }
    };
    cmd.stdin(Stdio::null()).stdout(Stdio::null());
    let child = cmd.spawn().map_err(RigError::io(format!("{name}: starting the blk backend")))?;
    let mut p = ChildProc::new(format!("{name} blk backend"), child);
    let t = Instant::now();
    let stream = loop {
        match listener.accept() {
            Ok((s, _)) => match crate::dir::check_peer_uid(&s) {
                Ok(()) => break s,
                Err(e) => tracing::warn!(device = name, error = %e, "connection refused"),
            },
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => {
                if let Some(st) = p.exited() {
                    let _ = std::fs::remove_file(&sock);
                    return Err(RigError::Process {
                        process: format!("{name} blk backend"),
                        what: format!("exited before connecting ({st})"),
                    });
                }
                if t.elapsed() > Duration::from_secs(10) {
                    let _ = std::fs::remove_file(&sock);
                    return Err(RigError::Process { process: format!("{name} blk backend"), what: "did not connect within 10 s".into() });
                }
                std::thread::sleep(Duration::from_micros(200));
            }
            Err(e) => return Err(RigError::Io { what: format!("{name}: accept"), source: e }),
        }
    };
    let _ = std::fs::remove_file(&sock);
    stream.set_nonblocking(false).map_err(RigError::io(format!("{name}: blocking socket")))?;
    let control = opts.control.map(|c| Control::new(name, c));
    Ok(Spawned { stream, proc_: p, control })
}
