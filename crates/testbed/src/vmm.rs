//! The rig's VMM state beside its backends: each device's configuration as the
//! guest programmed it ([`Devices`], with a generation per device), the copy of
//! guest memory from source to destination ([`RigMigration`]: precopy passes, the
//! dirty log, the final pass), and the hooks the roles call ([`RigHooks`]).
//!
//! # Examples
//!
//! ```
//! use std::sync::Arc;
//! use switchover::ids::DeviceId;
//! use switchover::topology::Topology;
//! use switchover_testbed::vmm::Devices;
//! let topo = Topology::builder().name("doc").net(1, 1).blk(1, 1).build().unwrap();
//! let d = Devices::initial(&topo);
//! let g = d.get(DeviceId(1)).unwrap().generation;
//! d.update(DeviceId(1), |c| c.rings[0].enabled = false); // the guest changed it
//! assert_eq!(d.get(DeviceId(1)).unwrap().generation, g + 1);
//! // The configurations cross as the state's device blobs.
//! let other = Devices::empty(&topo);
//! other.load(&d.blobs()).unwrap();
//! assert_eq!(other.get(DeviceId(1)), d.get(DeviceId(1)));
//! ```

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use parking_lot::Mutex;
use switchover::error::StepFailure;
use switchover::ids::DeviceId;
use switchover::roles::{HookError, VmmHooks};
use switchover::state::DeviceBlob;
use switchover::topology::{DeviceKind, Topology};
use switchover_vhost::config::{DeviceConfig, MsiVector, RingSetup};
use switchover_vhost::log::{DirtyLog, DirtyPages, Migration};

use crate::mem::{GuestMem, GPA_BASE};
use crate::side::DOORBELL_BASE;

/// One side's device configurations, by device id.
#[derive(Debug)]
pub struct Devices {
    configs: Mutex<Vec<Option<DeviceConfig>>>,
}

impl Devices {
    /// The configuration a guest driver gives every device of `topo` at boot: each
    /// ring in its own area of guest memory, enabled, on its own MSI-X vector (each
    /// vector a message of its own), its doorbell at `DOORBELL_BASE + 4 * g`. The
    /// last ring of the last blk device has its vector masked (a guest polling
    /// that queue), so that a masked vector is always part of the run.
    pub fn initial(topo: &Topology) -> Devices {
        let mut g = 0u32;
        let last_blk = topo.devices().iter().rev().find(|d| d.kind == DeviceKind::Blk).map(|d| d.id);
        let mut v = Vec::new();
        for d in topo.devices() {
            let rings: Vec<RingSetup> = (0..d.rings())
                .map(|r| RingSetup {
                    vring: Some(GuestMem::vring(g + r)),
                    enabled: true,
                    vector: Some(r as u16),
                    doorbell: DOORBELL_BASE + 4 * u64::from(g + r),
                })
                .collect();
            let msix = (0..d.rings())
                .map(|r| MsiVector {
                    address: 0xfee0_0000 | (u64::from((g + r) % 2) << 12),
                    data: 0x4000 | ((0x30 + g + r) & 0xff),
                    masked: last_blk == Some(d.id) && r + 1 == d.rings(),
                })
                .collect();
            v.push(Some(DeviceConfig { generation: 1, features: 0, rings, msix }));
            g += d.rings();
        }
        Devices { configs: Mutex::new(v) }
    }

    /// No configuration yet (a destination before the source's arrives).
    pub fn empty(topo: &Topology) -> Devices {
        Devices { configs: Mutex::new(vec![None; topo.devices().len()]) }
    }

    /// A device's configuration.
    pub fn get(&self, d: DeviceId) -> Option<DeviceConfig> {
        self.configs.lock().get(d.0 as usize).cloned().flatten()
    }

    /// The guest changes a device: `f` edits its configuration, its generation is
    /// bumped.
    pub fn update(&self, d: DeviceId, f: impl FnOnce(&mut DeviceConfig)) {
        if let Some(Some(c)) = self.configs.lock().get_mut(d.0 as usize) {
            f(c);
            c.generation += 1;
        }
    }

    /// Every device's configuration as device blobs.
    pub fn blobs(&self) -> Vec<DeviceBlob> {
        self.configs
            .lock()
            .iter()
            .enumerate()
            .filter_map(|(i, c)| c.as_ref().map(|c| DeviceBlob { device: i as u32, generation: c.generation, bytes: c.encode() }))
            .collect()
    }

    /// Loads device blobs (the staged snapshot, or the state of the window).
    ///
    /// # Errors
    /// A blob that does not decode, or names no device, or whose generation
    /// disagrees with its bytes.
    pub fn load(&self, blobs: &[DeviceBlob]) -> Result<(), HookError> {
        let mut decoded = Vec::with_capacity(blobs.len());
        for b in blobs {
            let c = DeviceConfig::decode(&b.bytes).map_err(|e| HookError::msg(format!("device {}: {e}", b.device)))?;
            if c.generation != b.generation {
                return Err(HookError::msg(format!(
                    "device {}: generation {} in a blob of generation {}",
                    b.device, c.generation, b.generation
                )));
            }
            decoded.push((b.device as usize, c));
        }
        let mut v = self.configs.lock();
        for (i, c) in decoded {
            let slot = v.get_mut(i).ok_or_else(|| HookError::msg(format!("no device {i}")))?;
            *slot = Some(c);
        }
        Ok(())
    }
}

/// What the rig's RAM migration did.
///
/// ```
/// let s = switchover_testbed::vmm::MemStats::default();
/// assert_eq!((s.passes, s.final_pass_pages), (0, 0));
/// ```
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MemStats {
    /// Precopy passes made.
    pub passes: u32,
    /// Pages the precopy passes copied.
    pub precopy_pages: u64,
    /// Pages the backends' log held in those passes.
    pub precopy_logged: u64,
    /// Pages the final pass copied.
    pub final_pass_pages: u64,
    /// Of those, pages only the window's log sync found.
    pub final_from_log: u64,
    /// Log syncs in the window (`mark_dirty` calls).
    pub log_syncs: u64,
    /// How long the final pass took.
    pub final_pass: Duration,
}

/// Guest memory's migration from the source's memory to the destination's: the
/// rig's [`Migration`].
///
/// Each precopy pass reads and clears the guest's own dirty pages and the
/// backends' log, then copies those pages; the first copies everything. In the
/// window, `log_sync` adds what the backends logged since the last pass, and the
/// final pass copies that with what the guest dirtied since.
#[derive(Debug)]
pub struct RigMigration {
    src: Arc<GuestMem>,
    dst: Arc<GuestMem>,
    log: Arc<DirtyLog>,
    pending: Mutex<DirtyPages>,
    /// Every page the backends' log ever reported (precopy and window).
    logged: Mutex<DirtyPages>,
    stats: Mutex<MemStats>,
    done: AtomicBool,
}

impl RigMigration {
    /// From `src` to `dst`, with a fresh shared log covering guest memory.
    ///
    /// # Errors
    /// The log could not be created.
    pub fn new(src: Arc<GuestMem>, dst: Arc<GuestMem>) -> std::io::Result<RigMigration> {
        let log = Arc::new(DirtyLog::new(GPA_BASE + src.size())?);
        let pending = Mutex::new(DirtyPages::new(GPA_BASE, src.size()));
        let logged = Mutex::new(DirtyPages::new(GPA_BASE, src.size()));
        Ok(RigMigration { src, dst, log, pending, logged, stats: Mutex::new(MemStats::default()), done: AtomicBool::new(false) })
    }

    /// The shared log.
    pub fn log(&self) -> &Arc<DirtyLog> {
        &self.log
    }

    /// One precopy pass (the first copies every page). Returns the pages copied.
    pub fn pass(&self) -> u64 {
        let first = self.stats.lock().passes == 0;
        let guest = self.src.take_guest_dirty();
        let mut logged = self.log.sync(GPA_BASE, self.src.size());
        let logged_n = logged.len() as u64;
        self.logged.lock().union(&logged);
        let pages = if first {
            self.src.all_pages()
        } else {
            logged.union(&guest);
            logged
        };
        let n = self.src.copy_pages(&self.dst, &pages);
        let mut s = self.stats.lock();
        s.passes += 1;
        s.precopy_pages += n;
        s.precopy_logged += logged_n;
        n
    }

    /// Every page the backends' log reported so far (in precopy passes and log
    /// syncs).
    pub fn logged(&self) -> DirtyPages {
        self.logged.lock().clone()
    }

    /// What it did so far.
    pub fn stats(&self) -> MemStats {
        *self.stats.lock()
    }

    /// Whether the final pass ran.
    pub fn final_done(&self) -> bool {
        self.done.load(Ordering::Acquire)
    }
}

impl Migration for RigMigration {
    fn dirty_log(&self) -> Option<(Arc<DirtyLog>, u64, u64)> {
        Some((self.log.clone(), GPA_BASE, self.src.size()))
    }
    fn mark_dirty(&self, pages: &DirtyPages) {
        self.pending.lock().union(pages);
        self.logged.lock().union(pages);
        self.stats.lock().log_syncs += 1;
    }
    fn final_pass(&self) -> Result<u64, StepFailure> {
        let t = Instant::now();
        let from_log = self.pending.lock().take();
        let guest = self.src.take_guest_dirty();
        let only_log = from_log.pages().filter(|p| !guest.pages().any(|q| q == *p)).count() as u64;
        let mut all = from_log;
        all.union(&guest);
        let n = self.src.copy_pages(&self.dst, &all);
        let mut s = self.stats.lock();
        s.final_pass_pages += n;
        s.final_from_log += only_log;
        s.final_pass += t.elapsed();
        self.done.store(true, Ordering::Release);
        Ok(n)
    }
}

/// What a side's hooks must do for the guest workload (the source's precopy
/// traffic, stopping and resuming the guest): the rig's guest driver.
pub trait GuestControl: Send + Sync {
    /// Source, after its prepare window: precopy with the guest running.
    ///
    /// # Errors
    /// The workload failed.
    fn precopy(&self) -> Result<(), String>;
    /// The window opens: the guest stops.
    fn stop(&self);
    /// The guest runs on this side again (source after a rollback) or from now on
    /// (destination).
    fn resume(&self, here: switchover::ids::Side);
}

/// A side's [`VmmHooks`]: the configuration of its devices carried as device
/// blobs, the guest stopped and resumed, precopy on the source.
pub struct RigHooks {
    side: switchover::ids::Side,
    devices: Arc<Devices>,
    guest: Arc<dyn GuestControl>,
    stopped_at: Mutex<Option<Instant>>,
    resumed: AtomicU64,
}

impl std::fmt::Debug for RigHooks {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RigHooks").field("side", &self.side).finish()
    }
}

impl RigHooks {
    /// Hooks of `side` on its devices and the guest.
    pub fn new(side: switchover::ids::Side, devices: Arc<Devices>, guest: Arc<dyn GuestControl>) -> RigHooks {
        RigHooks { side, devices, guest, stopped_at: Mutex::new(None), resumed: AtomicU64::new(0) }
    }
    /// When the guest was stopped here, if it was.
    pub fn stopped_at(&self) -> Option<Instant> {
        *self.stopped_at.lock()
    }
    /// How many times the guest was resumed here.
    pub fn resumed(&self) -> u64 {
        self.resumed.load(Ordering::Acquire)
    }
}

impl VmmHooks for RigHooks {
    fn snapshot_config(&self) -> Result<Vec<DeviceBlob>, HookError> {
        Ok(self.devices.blobs())
    }
    fn stage_config(&self, config: &[DeviceBlob]) -> Result<(), HookError> {
        self.devices.load(config)
    }
    fn precopy(&self) -> Result<(), HookError> {
        self.guest.precopy().map_err(HookError::msg)
    }
    fn stop_vcpus(&self) -> Result<(), HookError> {
        self.guest.stop();
        *self.stopped_at.lock() = Some(Instant::now());
        Ok(())
    }
    fn save_state(&self) -> Result<Vec<DeviceBlob>, HookError> {
        Ok(self.devices.blobs())
    }
    fn load_state(&self, state: &[DeviceBlob]) -> Result<(), HookError> {
        self.devices.load(state)
    }
    fn resume_vcpus(&self) -> Result<(), HookError> {
        self.guest.resume(self.side);
        self.resumed.fetch_add(1, Ordering::AcqRel);
        Ok(())
    }
}
