//! What the steps a two-host switchover adds to the window cost on this machine:
//! the figures the SIMULATED profile charges for them (`crates/sim/src/profile.rs`,
//! docs/performance.md, "The simulated profile").
//!
//! * `route_commit` — `KVM_SET_GSI_ROUTING` on a real KVM VM with an in-kernel
//!   irqchip and one irqfd per GSI: one commit of N MSI routes against N commits
//!   of a growing table (QEMU before per-device batching: one commit per vector)
//!   and one commit per device;
//! * `eventfd_write` — one write to an eventfd (a ring's call or kick: `ring_notify`
//!   signals both);
//! * `page_copy` — copying one dirty 4 KiB page (`final_pass`, per page);
//! * `bitmap_scan` — scanning the dirty bitmap of 1 GiB of guest memory (one bit
//!   per 4 KiB page) for set bits (`log_sync`, per GiB);
//! * `storage` — qemu-storage-daemon's QMP `blockdev-set-active` false / true on a
//!   file node (`storage_inactivate` / `storage_activate`), and a QMP round trip
//!   that does nothing (`query-version`) for comparison.
//!
//! Requirements are checked first; when `/dev/kvm` or `qemu-storage-daemon` is
//! missing, that group prints one line saying so and is skipped (with
//! `SWITCHOVER_REQUIRE_REAL=1` a missing requirement is an error).
//!
//! `cargo bench --bench window_costs` (a summary table at the end, saved as
//! `target/criterion/summary/window_costs.md`).

mod common;

use std::hint::black_box;
use std::io::{BufRead, BufReader, Write};
use std::os::unix::net::UnixStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use criterion::{BenchmarkId, Criterion};
use kvm_bindings::{kvm_irq_routing_entry, KvmIrqRouting, KVM_IRQ_ROUTING_MSI};
use kvm_ioctls::{Kvm, VmFd};
use vmm_sys_util::eventfd::EventFd;

use common::{machine, save, table, Samples};

static S: Samples = Samples::new();

/// Route table sizes: one device's rings (64), the medium preset's (80), rfc-huge's (1120).
const ROUTES: [u32; 3] = [64, 80, 1120];
/// The first GSI used for MSI routes (the IOAPIC's pins come first).
const FIRST_GSI: u32 = 24;

fn require_real() -> bool {
    std::env::var("SWITCHOVER_REQUIRE_REAL").is_ok_and(|v| v == "1")
}

fn missing(what: &str) {
    if require_real() {
        panic!("SWITCHOVER_REQUIRE_REAL=1 and {what}");
    }
    println!("window_costs: skipped: {what}");
}

fn msi(gsi: u32) -> kvm_irq_routing_entry {
    let mut e = kvm_irq_routing_entry { gsi, type_: KVM_IRQ_ROUTING_MSI, ..Default::default() };
    // Address 0xfee00000 (LAPIC), destination and vector spread over the table.
    e.u.msi.address_lo = 0xfee0_0000 | ((gsi % 8) << 12);
    e.u.msi.data = 0x30 + (gsi % 200);
    e
}

fn routing(n: u32) -> KvmIrqRouting {
    let mut t = KvmIrqRouting::new(0).expect("an empty routing table");
    for g in 0..n {
        t.push(msi(FIRST_GSI + g)).expect("at most KVM_MAX_IRQ_ROUTES entries");
    }
    t
}

/// A VM with an in-kernel irqchip and one irqfd per GSI of the `n` routes.
fn vm_with_irqfds(kvm: &Kvm, n: u32) -> (VmFd, Vec<EventFd>) {
    let vm = kvm.create_vm().expect("KVM_CREATE_VM");
    vm.create_irq_chip().expect("KVM_CREATE_IRQCHIP");
    vm.set_gsi_routing(&routing(n)).expect("KVM_SET_GSI_ROUTING");
    let fds: Vec<EventFd> = (0..n)
        .map(|g| {
            let e = EventFd::new(0).expect("eventfd");
            vm.register_irqfd(&e, FIRST_GSI + g).expect("KVM_IRQFD");
            e
        })
        .collect();
    (vm, fds)
}

fn route_commits(c: &mut Criterion) {
    let kvm = match std::fs::OpenOptions::new().read(true).write(true).open("/dev/kvm") {
        Ok(_) => Kvm::new().expect("/dev/kvm opens"),
        Err(e) => return missing(&format!("/dev/kvm cannot be opened read-write ({e})")),
    };
    let mut g = c.benchmark_group("route_commit");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    for n in ROUTES {
        let (vm, _fds) = vm_with_irqfds(&kvm, n);
        let full = routing(n);
        g.bench_with_input(BenchmarkId::new("once", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    vm.set_gsi_routing(&full).expect("commit");
                }
                let d = t.elapsed();
                S.add("route_commit", "once", &n.to_string(), d.as_secs_f64() * 1e6 / iters as f64);
                d
            })
        });
        // One commit per vector, the table growing by one route each time (QEMU
        // committed the whole table after adding each vector's route).
        let tables: Vec<KvmIrqRouting> = (1..=n).map(routing).collect();
        g.bench_with_input(BenchmarkId::new("per_vector", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    for tb in &tables {
                        vm.set_gsi_routing(tb).expect("commit");
                    }
                }
                let d = t.elapsed();
                S.add("route_commit", "per_vector", &n.to_string(), d.as_secs_f64() * 1e6 / iters as f64);
                d
            })
        });
        // One commit per device of 64 vectors (rfc-huge's nets; a 64-route step).
        let per_dev: Vec<KvmIrqRouting> = (1..=n.div_ceil(64)).map(|k| routing((k * 64).min(n))).collect();
        g.bench_with_input(BenchmarkId::new("per_device_64", n), &n, |b, _| {
            b.iter_custom(|iters| {
                let t = Instant::now();
                for _ in 0..iters {
                    for tb in &per_dev {
                        vm.set_gsi_routing(tb).expect("commit");
                    }
                }
                let d = t.elapsed();
                S.add("route_commit", "per_device_64", &n.to_string(), d.as_secs_f64() * 1e6 / iters as f64);
                d
            })
        });
    }
    g.finish();
}

fn small_ops(c: &mut Criterion) {
    let mut g = c.benchmark_group("window_ops");
    g.sample_size(20).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(1));
    let efd = EventFd::new(0).expect("eventfd");
    g.bench_function("eventfd_write", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                efd.write(1).expect("eventfd write");
            }
            let d = t.elapsed();
            // Drain the counter so it never saturates.
            let _ = efd.read();
            S.add("window_ops", "eventfd_write", "", d.as_secs_f64() * 1e9 / iters as f64);
            d
        })
    });
    // Pages far apart, so each copy misses the cache as a final pass's does.
    let pages = 4096usize;
    let src = vec![0xa5u8; pages * 4096];
    let mut dst = vec![0u8; pages * 4096];
    g.bench_function("page_copy_4k", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for i in 0..iters as usize {
                let p = (i * 1031) % pages * 4096;
                dst[p..p + 4096].copy_from_slice(black_box(&src[p..p + 4096]));
            }
            let d = t.elapsed();
            black_box(&dst);
            S.add("window_ops", "page_copy_4k", "", d.as_secs_f64() * 1e9 / iters as f64);
            d
        })
    });
    // 1 GiB of guest memory: 262 144 pages, a 32 KiB bitmap with a few set bits.
    let mut bitmap = vec![0u64; (1usize << 30) / 4096 / 64];
    for i in (0..bitmap.len()).step_by(97) {
        bitmap[i] = 1 << (i % 64);
    }
    g.bench_function("bitmap_scan_1gib", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            let mut found = 0u64;
            for _ in 0..iters {
                for (w, &bits) in black_box(&bitmap).iter().enumerate() {
                    if bits != 0 {
                        found += u64::from(bits.count_ones()) + w as u64 % 2;
                    }
                }
            }
            let d = t.elapsed();
            black_box(found);
            S.add("window_ops", "bitmap_scan_1gib", "", d.as_secs_f64() * 1e9 / iters as f64);
            d
        })
    });
    g.finish();
}

/// A qemu-storage-daemon with one file node and a QMP socket.
struct Qsd {
    child: Child,
    dir: PathBuf,
    qmp: BufReader<UnixStream>,
}

impl Qsd {
    fn start() -> Result<Qsd, String> {
        let dir = std::env::temp_dir().join(format!("switchover-window-costs-{}", std::process::id()));
        std::fs::create_dir_all(&dir).map_err(|e| e.to_string())?;
        let img = dir.join("disk.img");
        std::fs::File::create(&img).and_then(|f| f.set_len(64 << 20)).map_err(|e| e.to_string())?;
        let sock = dir.join("qmp.sock");
        let child = Command::new("qemu-storage-daemon")
            .arg("--blockdev")
            .arg(format!("driver=file,node-name=f0,filename={}", img.display()))
            .arg("--chardev")
            .arg(format!("socket,path={},server=on,wait=off,id=qmp0", sock.display()))
            .args(["--monitor", "chardev=qmp0"])
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .map_err(|e| format!("qemu-storage-daemon cannot be started ({e})"))?;
        let until = Instant::now() + Duration::from_secs(5);
        let stream = loop {
            match UnixStream::connect(&sock) {
                Ok(s) => break s,
                Err(_) if Instant::now() < until => std::thread::sleep(Duration::from_millis(20)),
                Err(e) => return Err(format!("no QMP socket ({e})")),
            }
        };
        let mut q = Qsd { child, dir, qmp: BufReader::new(stream) };
        let mut greeting = String::new();
        q.qmp.read_line(&mut greeting).map_err(|e| e.to_string())?;
        q.cmd(r#"{"execute":"qmp_capabilities"}"#)?;
        Ok(q)
    }

    fn cmd(&mut self, json: &str) -> Result<(), String> {
        let s = self.qmp.get_mut();
        s.write_all(json.as_bytes()).and_then(|()| s.write_all(b"\n")).map_err(|e| e.to_string())?;
        loop {
            let mut line = String::new();
            self.qmp.read_line(&mut line).map_err(|e| e.to_string())?;
            if line.contains("\"return\"") {
                return Ok(());
            }
            if line.contains("\"error\"") || line.is_empty() {
                return Err(format!("{json}: {}", line.trim()));
            }
        }
    }
}

impl Drop for Qsd {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn storage(c: &mut Criterion) {
    let mut q = match Qsd::start() {
        Ok(q) => q,
        Err(e) => return missing(&e),
    };
    let mut g = c.benchmark_group("storage");
    g.sample_size(10).warm_up_time(Duration::from_millis(300)).measurement_time(Duration::from_secs(2));
    let inactive = r#"{"execute":"blockdev-set-active","arguments":{"node-name":"f0","active":false}}"#;
    let active = r#"{"execute":"blockdev-set-active","arguments":{"node-name":"f0","active":true}}"#;
    g.bench_function("set_active_false_true", |b| {
        b.iter_custom(|iters| {
            let (mut off, mut on) = (Duration::ZERO, Duration::ZERO);
            for _ in 0..iters {
                let t = Instant::now();
                q.cmd(inactive).expect("inactivate");
                let t1 = Instant::now();
                q.cmd(active).expect("activate");
                off += t1 - t;
                on += t1.elapsed();
            }
            S.add("storage", "inactivate", "", off.as_secs_f64() * 1e6 / iters as f64);
            S.add("storage", "activate", "", on.as_secs_f64() * 1e6 / iters as f64);
            off + on
        })
    });
    g.bench_function("qmp_round_trip", |b| {
        b.iter_custom(|iters| {
            let t = Instant::now();
            for _ in 0..iters {
                q.cmd(r#"{"execute":"query-version"}"#).expect("query-version");
            }
            let d = t.elapsed();
            S.add("storage", "qmp_round_trip", "", d.as_secs_f64() * 1e6 / iters as f64);
            d
        })
    });
    g.finish();
}

fn summary() {
    let f = |g: &str, n: &str, p: &str| S.median(g, n, p).map_or("-".to_string(), |v| format!("{v:.1}"));
    let mut rows = Vec::new();
    for n in ROUTES {
        let p = n.to_string();
        let ratio = match (S.median("route_commit", "per_vector", &p), S.median("route_commit", "once", &p)) {
            (Some(a), Some(b)) if b > 0.0 => format!("{:.0}", a / b),
            _ => "-".into(),
        };
        rows.push(vec![
            n.to_string(),
            f("route_commit", "once", &p),
            f("route_commit", "per_device_64", &p),
            f("route_commit", "per_vector", &p),
            ratio,
        ]);
    }
    let mut text = format!("# window_costs ({})\n\nKVM_SET_GSI_ROUTING, µs per switchover's commits (medians):\n\n", machine());
    text.push_str(&table(&["MSI routes", "once", "per device (64)", "per vector", "per vector ÷ once"], &rows));
    text.push_str("\nOther operations (medians):\n\n");
    let ops = vec![
        vec!["eventfd write".into(), format!("{} ns", f("window_ops", "eventfd_write", ""))],
        vec!["copy one 4 KiB page".into(), format!("{} ns", f("window_ops", "page_copy_4k", ""))],
        vec!["scan the dirty bitmap of 1 GiB".into(), format!("{} ns", f("window_ops", "bitmap_scan_1gib", ""))],
        vec!["qemu-storage-daemon blockdev-set-active false".into(), format!("{} µs", f("storage", "inactivate", ""))],
        vec!["qemu-storage-daemon blockdev-set-active true".into(), format!("{} µs", f("storage", "activate", ""))],
        vec!["QMP round trip (query-version)".into(), format!("{} µs", f("storage", "qmp_round_trip", ""))],
    ];
    text.push_str(&table(&["operation", "median"], &ops));
    print!("\n{text}");
    if let Some(p) = save("window_costs.md", &text) {
        println!("saved {}", p.display());
    }
}

fn main() {
    let mut c = Criterion::default().configure_from_args();
    route_commits(&mut c);
    small_ops(&mut c);
    storage(&mut c);
    c.final_summary();
    summary();
}
