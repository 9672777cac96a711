//! The own blk backend's storage switch (the equivalent of qemu-storage-daemon's
//! `blockdev-set-active`), through its control socket: inactive = flushed, writes
//! refused, image lock released; active = lock taken. Real processes and files.

mod blk_common;

use std::time::Duration;

use blk_common::*;
use switchover_testbed::blk::driver::{pattern, BlkDriver, Op};
use switchover_testbed::blk::BlkOptions;
use switchover_testbed::dir::PrivateDir;
use switchover_vhost::frontend::FrontendConfig;

/// Not a test: the backend process this test binary runs as (see `blk_common::exe`).
#[test]
#[ignore]
fn blk_backend_child_process() {
    if let Some(code) = switchover_testbed::blk::child_main_from_env() {
        std::process::exit(code);
    }
}

#[test]
fn one_backend_of_an_image_is_active_at_a_time_and_only_it_writes() {
    let dir = PrivateDir::new().unwrap();
    let img = image(dir.path(), "disk", 1);
    let guest = Guest::new(1);
    let a = Side::spawn("a", &guest, dir.path(), &img, BlkOptions::new(1), FrontendConfig::new("a blk0", 1)).unwrap();
    // A second active backend cannot start on the image (its lock is held).
    let e = Side::spawn("b", &guest, dir.path(), &img, BlkOptions::new(1), FrontendConfig::new("b blk0", 1)).err().expect("refused");
    assert!(e.to_string().contains("exited before connecting"), "{e}");
    let b =
        Side::spawn("b", &guest, dir.path(), &img, BlkOptions { active: false, ..BlkOptions::new(1) }, FrontendConfig::new("b blk0", 1))
            .unwrap();
    assert!(a.control().is_active().unwrap() && !b.control().is_active().unwrap());
    let err = b.control().activate().unwrap_err().to_string();
    assert!(err.contains("held by another process"), "{err}");
    // An inactive backend refuses writes (I/O error to the guest).
    b.bring_up(Duration::from_secs(5)).unwrap();
    let mut d = BlkDriver::new(0);
    d.submit(&b.mem, Op::Write { sector: 5 }).unwrap();
    guest.kick(0);
    d.wait_all(&b.mem, Duration::from_secs(5)).unwrap();
    assert_eq!(d.done()[0].status, 1, "VIRTIO_BLK_S_IOERR");
    assert_ne!(read_sector(&img, 5), pattern(0, 0));
    assert_eq!(b.control().stats().unwrap().refused, 1);
    // Hand the image over: a gives it up, b takes it; b now writes, a cannot take it back.
    a.control().inactivate().unwrap();
    b.control().activate().unwrap();
    assert!(a.control().activate().is_err());
    d.submit(&b.mem, Op::Write { sector: 5 }).unwrap();
    guest.kick(0);
    d.wait_all(&b.mem, Duration::from_secs(5)).unwrap();
    assert_eq!(d.done()[1].status, 0);
    assert_eq!(read_sector(&img, 5), pattern(0, 1));
    // And back.
    b.control().inactivate().unwrap();
    a.control().activate().unwrap();
    assert!(a.control().is_active().unwrap() && !b.control().is_active().unwrap());
}

/// The backend as `switchover real __backend blk-inflight …` (the CLI's entry, the
/// options in `SWITCHOVER_BLK_ARGS`): how `switchover real` starts it.
#[test]
fn the_cli_entry_serves_the_backend() {
    use switchover_testbed::blk::{spawn, BlkExe};
    use switchover_vhost::frontend::Frontend;
    // The CLI binary next to this test binary's directory (target/PROFILE/).
    let cli = std::env::current_exe().unwrap().parent().and_then(|d| d.parent()).map(|d| d.join("switchover"));
    let Some(cli) = cli.filter(|p| p.is_file()) else {
        assert!(!require_real(), "the switchover binary is not built and SWITCHOVER_REQUIRE_REAL=1");
        eprintln!("SKIPPED: the switchover binary is not built (cargo build -p switchover-cli)");
        return;
    };
    let dir = PrivateDir::new().unwrap();
    let img = image(dir.path(), "disk", 1);
    let s = spawn(&BlkExe::Cli(cli), dir.path(), "blk0", &img, BlkOptions { iops: Some(100), ..BlkOptions::new(2) }).unwrap();
    let fe = Frontend::connect(s.stream, &FrontendConfig::new("blk0", 2)).unwrap();
    assert!(fe.can_hand_over());
    let c = s.control.unwrap();
    assert!(c.is_active().unwrap());
    assert_eq!(c.stats().unwrap().popped, 0);
}
