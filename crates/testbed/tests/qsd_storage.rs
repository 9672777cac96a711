//! What the installed qemu-storage-daemon does when asked to give its image up
//! (the REAL daemon, driven over QMP), as `switchover_testbed::safety::QSD_STORAGE`
//! states it and the rig relies on (no storage steps on a qemu-storage-daemon
//! device):
//!
//! * a `vhost-user-blk` export refuses `allow-inactive`;
//! * `blockdev-set-active false` fails while such an export uses the node, and
//!   succeeds once the export is deleted (which closes the frontend's
//!   connection);
//! * with `locking=on`, a second daemon exports the same image writable (its
//!   locks share write).
//!
//! If the installed daemon accepts either request, the test fails and says so:
//! its storage could then be handed over as steps, and `QSD_STORAGE`, `qsd.rs`
//! and the rig's `storage_unmanaged` are out of date.
//!
//! Skipped, with the reason printed, when qemu-storage-daemon is not installed,
//! unless `SWITCHOVER_REQUIRE_REAL=1` (then its absence is a failure).

use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use switchover_testbed::dir::PrivateDir;
use switchover_testbed::qsd;
use switchover_testbed::safety::QSD_STORAGE;

fn qsd_or_skip() -> Option<PathBuf> {
    match qsd::find() {
        Some(b) => Some(b),
        None => {
            assert!(
                std::env::var_os("SWITCHOVER_REQUIRE_REAL").is_none(),
                "qemu-storage-daemon is not installed but SWITCHOVER_REQUIRE_REAL is set"
            );
            eprintln!("SKIPPED: qemu-storage-daemon is not installed (package qemu-utils)");
            None
        }
    }
}

/// A daemon with a QMP monitor, killed when dropped.
struct Daemon {
    child: Child,
    qmp: BufReader<UnixStream>,
}

impl Drop for Daemon {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn wait_for(p: &Path, child: &mut Child) {
    let t = Instant::now();
    while !p.exists() {
        if let Ok(Some(st)) = child.try_wait() {
            panic!("qemu-storage-daemon exited ({st}) before {} appeared", p.display());
        }
        assert!(t.elapsed() < Duration::from_secs(10), "{} did not appear within 10 s", p.display());
        std::thread::sleep(Duration::from_millis(5));
    }
}

impl Daemon {
    /// A daemon with the image as node `f0` (`locking=on`, as the rig opens it)
    /// and `args` more.
    fn start(bin: &Path, dir: &Path, name: &str, image: &Path, args: &[String]) -> Daemon {
        let qmp_path = dir.join(format!("{name}-qmp.sock"));
        let mut child = Command::new(bin)
            .arg("--blockdev")
            .arg(format!("driver=file,node-name=f0,filename={},locking=on,cache.direct=off", image.display()))
            .arg("--chardev")
            .arg(format!("socket,id=qmp,path={},server=on,wait=off", qmp_path.display()))
            .arg("--monitor")
            .arg("chardev=qmp")
            .args(args)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::piped())
            .spawn()
            .expect("start qemu-storage-daemon");
        wait_for(&qmp_path, &mut child);
        let s = UnixStream::connect(&qmp_path).expect("connect to QMP");
        s.set_read_timeout(Some(Duration::from_secs(10))).expect("timeout");
        let mut d = Daemon { child, qmp: BufReader::new(s) };
        let greeting = d.line();
        assert!(greeting.contains("\"QMP\""), "QMP greeting: {greeting}");
        let r = d.cmd("qmp_capabilities", "{}");
        assert!(r.is_ok(), "qmp_capabilities: {r:?}");
        d
    }

    fn line(&mut self) -> String {
        let mut l = String::new();
        self.qmp.read_line(&mut l).expect("read QMP");
        assert!(!l.is_empty(), "QMP closed");
        l
    }

    /// Runs a command: `Ok(reply)` or `Err(the error's description)`.
    fn cmd(&mut self, execute: &str, arguments: &str) -> Result<String, String> {
        let msg = format!("{{\"execute\": \"{execute}\", \"arguments\": {arguments}}}\n");
        self.qmp.get_mut().write_all(msg.as_bytes()).expect("write QMP");
        loop {
            let l = self.line();
            if l.contains("\"event\"") {
                continue;
            }
            if l.contains("\"return\"") {
                return Ok(l);
            }
            let desc = l.split("\"desc\": \"").nth(1).and_then(|s| s.split('"').next()).unwrap_or(&l).to_string();
            return Err(desc);
        }
    }

    fn export(&mut self, id: &str, sock: &Path, extra: &str) -> Result<String, String> {
        self.cmd(
            "block-export-add",
            &format!(
                "{{\"type\": \"vhost-user-blk\", \"id\": \"{id}\", \"node-name\": \"f0\", \"addr\": {{\"type\": \"unix\", \"path\": \"{}\"}}, \"writable\": true{extra}}}",
                sock.display()
            ),
        )
    }
}

fn version(bin: &Path) -> String {
    let out = Command::new(bin).arg("--version").output().expect("qemu-storage-daemon --version");
    String::from_utf8_lossy(&out.stdout).lines().next().unwrap_or_default().to_string()
}

#[test]
fn qsd_vhost_user_blk_export_cannot_give_its_image_up() {
    let Some(bin) = qsd_or_skip() else { return };
    let v = version(&bin);
    eprintln!("{v}");
    let dir = PrivateDir::new().expect("private dir");
    let image = dir.join("disk.img");
    std::fs::File::create(&image).expect("image").set_len(1 << 20).expect("size");
    let mut d = Daemon::start(&bin, dir.path(), "a", &image, &[]);

    // An export that could be inactive: refused by the vhost-user-blk export type.
    let r = d.export("e1", &dir.join("e1.sock"), ", \"allow-inactive\": true");
    match &r {
        Err(e) => {
            assert!(e.contains("does not support inactive exports"), "allow-inactive refused, but not as QSD_STORAGE says: {e}");
            eprintln!("allow-inactive: refused: {e}");
        }
        Ok(_) => panic!(
            "{v}: its vhost-user-blk export accepts allow-inactive: the image can be handed over as steps; \
             QSD_STORAGE (\"{QSD_STORAGE}\"), qsd.rs and the rig's storage_unmanaged are out of date"
        ),
    }

    // The export the rig uses: then the node cannot be inactivated.
    d.export("e0", &dir.join("e0.sock"), "").expect("a plain vhost-user-blk export");
    match d.cmd("blockdev-set-active", "{\"node-name\": \"f0\", \"active\": false}") {
        Err(e) => {
            assert!(e.contains("Operation not permitted"), "blockdev-set-active false refused, but not as QSD_STORAGE says: {e}");
            eprintln!("blockdev-set-active false with the export: refused: {e}");
        }
        Ok(_) => panic!(
            "{v}: blockdev-set-active false succeeds while a vhost-user-blk export uses the node: the image can be given up; \
             QSD_STORAGE (\"{QSD_STORAGE}\") and the rig's storage_unmanaged are out of date"
        ),
    }
    // Only without the export (which the frontend was connected to) does it work.
    d.cmd("block-export-del", "{\"id\": \"e0\"}").expect("delete the export");
    let t = Instant::now();
    let inactive = loop {
        // The export goes once its last user is gone.
        match d.cmd("blockdev-set-active", "{\"node-name\": \"f0\", \"active\": false}") {
            Ok(_) => break true,
            Err(_) if t.elapsed() < Duration::from_secs(5) => std::thread::sleep(Duration::from_millis(20)),
            Err(e) => {
                eprintln!("blockdev-set-active false without the export: {e}");
                break false;
            }
        }
    };
    assert!(inactive, "without the export, blockdev-set-active false still fails");
    d.cmd("blockdev-set-active", "{\"node-name\": \"f0\", \"active\": true}").expect("reactivate");
    d.export("e0", &dir.join("e0b.sock"), "").expect("export again");

    // Image locking on, yet a second daemon exports the same image writable.
    let sock_b = dir.join("b.sock");
    let arg = format!("type=vhost-user-blk,id=e0,node-name=f0,addr.type=unix,addr.path={},writable=on", sock_b.display());
    let mut b = Daemon::start(&bin, dir.path(), "b", &image, &["--export".into(), arg]);
    wait_for(&sock_b, &mut b.child);
    assert!(b.child.try_wait().expect("wait").is_none(), "the second daemon exited: its lock conflicts (QSD_STORAGE is out of date)");
    assert!(UnixStream::connect(&sock_b).is_ok(), "the second daemon's export does not accept a connection");
    eprintln!("two daemons export {} writable with locking=on", image.display());
}
