//! A device's configuration as the guest driver programmed it, and its
//! generation: what the destination stages in prepare, what arrives in the window,
//! and what [`crate::actions::VhostActions`] compares between the two
//! (`reconcile`).
//!
//! A guest may change a device while precopy runs: reload its driver (new
//! features, new ring addresses), reset one ring, change its active queue pairs,
//! rewrite MSI-X entries, move a BAR. The VMM bumps the device's generation at
//! each such change. The destination's prepare steps use the configuration the
//! source sent at migration start; in the window, a device whose generation
//! changed has its staged steps redone from the loaded configuration — and only
//! such a device.
//!
//! # Examples
//!
//! ```
//! use switchover_vhost::config::{DeviceConfig, MsiVector, RingSetup};
//! use switchover_vhost::memory::VringConfig;
//! let ring = |i: u64| RingSetup {
//!     vring: Some(VringConfig { size: 256, desc: 0x10000 * i, avail: 0x10000 * i + 0x1000, used: 0x10000 * i + 0x2000 }),
//!     enabled: true,
//!     vector: Some(i as u16),
//!     doorbell: 0xd000_0000 + 4 * i,
//! };
//! let staged = DeviceConfig {
//!     generation: 1,
//!     features: 0,
//!     rings: vec![ring(1), ring(2)],
//!     msix: vec![MsiVector { address: 0xfee0_0000, data: 0x41, masked: false }; 3],
//! };
//! // During precopy the guest reduces its queue pairs: ring 1 is disabled.
//! let mut loaded = staged.clone();
//! loaded.rings[1].enabled = false;
//! loaded.generation += 1;
//! let diff = staged.diff(&loaded);
//! assert_eq!(diff.enables, [1]);
//! assert!(!diff.features && diff.moved.is_empty());
//! assert!(staged.diff(&staged).is_empty());
//! ```

use crate::memory::VringConfig;

/// One ring as the guest set it up.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RingSetup {
    /// Where it lives; `None` if the guest never set it up (its descriptor table
    /// address is 0): it is skipped on start, as QEMU's `vhost_virtqueue_start`
    /// skips it.
    pub vring: Option<VringConfig>,
    /// Whether it is enabled: a net ring of an active queue pair (`ethtool -L`), a
    /// queue the guest enabled. A disabled ring is started but not enabled.
    pub enabled: bool,
    /// Its MSI-X vector; `None` for `NO_VECTOR` (no call eventfd: `SET_VRING_CALL`
    /// without a file descriptor).
    pub vector: Option<u16>,
    /// Guest-physical address of its doorbell (its ioeventfd), in the device's BAR.
    pub doorbell: u64,
}

/// One MSI-X table entry.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct MsiVector {
    /// Message address.
    pub address: u64,
    /// Message data.
    pub data: u32,
    /// Whether the guest masked it: no route is committed for it.
    pub masked: bool,
}

/// A device's configuration, with its generation.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeviceConfig {
    /// Bumped by the VMM whenever the guest changes features, rings, queue
    /// enables or resets, MSI-X entries, BARs or active queue pairs.
    pub generation: u64,
    /// The virtio features the guest driver acked (the frontend adds
    /// `VERSION_1` and `PROTOCOL_FEATURES`, and keeps only what the backend offers).
    pub features: u64,
    /// Its rings, by index.
    pub rings: Vec<RingSetup>,
    /// Its MSI-X table.
    pub msix: Vec<MsiVector>,
}

/// What differs between a staged and a loaded configuration.
///
/// ```
/// use switchover_vhost::config::ConfigDiff;
/// assert!(ConfigDiff::default().is_empty());
/// ```
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct ConfigDiff {
    /// The features changed (`SET_FEATURES` again).
    pub features: bool,
    /// Rings whose address or size changed, or that were set up or torn down
    /// (`SET_VRING_NUM`, `SET_VRING_ADDR` again).
    pub moved: Vec<u32>,
    /// Rings whose vector changed to or from `NO_VECTOR` (`SET_VRING_CALL` again).
    pub calls: Vec<u32>,
    /// Rings whose doorbell moved (ioeventfd re-registered).
    pub doorbells: Vec<u32>,
    /// Rings enabled or disabled (their `vring_enable` sends the loaded state).
    pub enables: Vec<u32>,
    /// Whether the MSI-X table or a ring's vector changed (routes come from the
    /// loaded table in the window's route commit).
    pub vectors: bool,
}

impl ConfigDiff {
    /// Nothing differs.
    pub fn is_empty(&self) -> bool {
        *self == ConfigDiff::default()
    }
}

impl DeviceConfig {
    /// What changed from `self` (staged) to `loaded`.
    pub fn diff(&self, loaded: &DeviceConfig) -> ConfigDiff {
        let mut d = ConfigDiff { features: self.features != loaded.features, ..ConfigDiff::default() };
        let n = self.rings.len().max(loaded.rings.len());
        let none = RingSetup { vring: None, enabled: false, vector: None, doorbell: 0 };
        for r in 0..n {
            let (a, b) = (self.rings.get(r).unwrap_or(&none), loaded.rings.get(r).unwrap_or(&none));
            let r = r as u32;
            if a.vring != b.vring {
                d.moved.push(r);
            }
            if a.vector.is_some() != b.vector.is_some() {
                d.calls.push(r);
            }
            if a.vector != b.vector {
                d.vectors = true;
            }
            if a.doorbell != b.doorbell {
                d.doorbells.push(r);
            }
            if a.enabled != b.enabled {
                d.enables.push(r);
            }
        }
        if self.msix != loaded.msix {
            d.vectors = true;
        }
        d
    }

    /// The MSI message ring `ring` raises, if it has an unmasked vector.
    ///
    /// ```
    /// use switchover_vhost::config::{DeviceConfig, MsiVector, RingSetup};
    /// let c = DeviceConfig {
    ///     generation: 0,
    ///     features: 0,
    ///     rings: vec![RingSetup { vring: None, enabled: true, vector: Some(1), doorbell: 0 }],
    ///     msix: vec![MsiVector { address: 0xfee0_0000, data: 0x40, masked: false }, MsiVector { address: 0xfee0_0000, data: 0x41, masked: true }],
    /// };
    /// assert_eq!(c.msi(0), None); // vector 1 is masked
    /// ```
    pub fn msi(&self, ring: u32) -> Option<MsiVector> {
        let v = self.rings.get(ring as usize)?.vector?;
        self.msix.get(usize::from(v)).copied().filter(|m| !m.masked)
    }
}

/// A configuration that does not decode.
///
/// ```
/// use switchover_vhost::config::{DecodeError, DeviceConfig};
/// assert_eq!(DeviceConfig::decode(&[1, 2, 3]), Err(DecodeError { at: 0 }));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("device configuration does not decode (at byte {at})")]
pub struct DecodeError {
    /// Where decoding stopped.
    pub at: usize,
}

const MAGIC: u32 = 0x5357_4346; // "SWCF"

struct Reader<'a> {
    b: &'a [u8],
    at: usize,
}

impl Reader<'_> {
    fn take<const N: usize>(&mut self) -> Result<[u8; N], DecodeError> {
        let s = self.b.get(self.at..self.at + N).ok_or(DecodeError { at: self.at })?;
        self.at += N;
        Ok(s.try_into().expect("N bytes"))
    }
    fn u8(&mut self) -> Result<u8, DecodeError> {
        Ok(self.take::<1>()?[0])
    }
    fn u16(&mut self) -> Result<u16, DecodeError> {
        Ok(u16::from_le_bytes(self.take()?))
    }
    fn u32(&mut self) -> Result<u32, DecodeError> {
        Ok(u32::from_le_bytes(self.take()?))
    }
    fn u64(&mut self) -> Result<u64, DecodeError> {
        Ok(u64::from_le_bytes(self.take()?))
    }
}

impl DeviceConfig {
    /// The configuration as bytes (little-endian, versioned): what a VMM may put
    /// in a [`switchover::state::DeviceBlob`].
    ///
    /// ```
    /// use switchover_vhost::config::{DeviceConfig, MsiVector, RingSetup};
    /// let c = DeviceConfig {
    ///     generation: 7,
    ///     features: 1 << 29,
    ///     rings: vec![RingSetup { vring: None, enabled: false, vector: None, doorbell: 0xd000_0004 }],
    ///     msix: vec![MsiVector { address: 0xfee0_1000, data: 0x4031, masked: true }],
    /// };
    /// assert_eq!(DeviceConfig::decode(&c.encode()), Ok(c));
    /// ```
    pub fn encode(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(32 + self.rings.len() * 40 + self.msix.len() * 13);
        v.extend_from_slice(&MAGIC.to_le_bytes());
        v.extend_from_slice(&self.generation.to_le_bytes());
        v.extend_from_slice(&self.features.to_le_bytes());
        v.extend_from_slice(&(self.rings.len() as u32).to_le_bytes());
        for r in &self.rings {
            let flags = u8::from(r.vring.is_some()) | u8::from(r.enabled) << 1 | u8::from(r.vector.is_some()) << 2;
            v.push(flags);
            let q = r.vring.unwrap_or(VringConfig { size: 0, desc: 0, avail: 0, used: 0 });
            v.extend_from_slice(&q.size.to_le_bytes());
            v.extend_from_slice(&q.desc.to_le_bytes());
            v.extend_from_slice(&q.avail.to_le_bytes());
            v.extend_from_slice(&q.used.to_le_bytes());
            v.extend_from_slice(&r.vector.unwrap_or(0xffff).to_le_bytes());
            v.extend_from_slice(&r.doorbell.to_le_bytes());
        }
        v.extend_from_slice(&(self.msix.len() as u32).to_le_bytes());
        for m in &self.msix {
            v.extend_from_slice(&m.address.to_le_bytes());
            v.extend_from_slice(&m.data.to_le_bytes());
            v.push(u8::from(m.masked));
        }
        v
    }

    /// The configuration [`DeviceConfig::encode`] wrote.
    ///
    /// # Errors
    /// [`DecodeError`]: not such bytes.
    pub fn decode(bytes: &[u8]) -> Result<DeviceConfig, DecodeError> {
        let mut r = Reader { b: bytes, at: 0 };
        if r.u32()? != MAGIC {
            return Err(DecodeError { at: 0 });
        }
        let generation = r.u64()?;
        let features = r.u64()?;
        let n = r.u32()? as usize;
        if n > bytes.len() / 40 {
            return Err(DecodeError { at: r.at });
        }
        let mut rings = Vec::with_capacity(n);
        for _ in 0..n {
            let flags = r.u8()?;
            let size = r.u16()?;
            let (desc, avail, used) = (r.u64()?, r.u64()?, r.u64()?);
            let vector = r.u16()?;
            let doorbell = r.u64()?;
            rings.push(RingSetup {
                vring: (flags & 1 != 0).then_some(VringConfig { size, desc, avail, used }),
                enabled: flags & 2 != 0,
                vector: (flags & 4 != 0).then_some(vector),
                doorbell,
            });
        }
        let n = r.u32()? as usize;
        if n > bytes.len() / 13 {
            return Err(DecodeError { at: r.at });
        }
        let mut msix = Vec::with_capacity(n);
        for _ in 0..n {
            msix.push(MsiVector { address: r.u64()?, data: r.u32()?, masked: r.u8()? != 0 });
        }
        if r.at != bytes.len() {
            return Err(DecodeError { at: r.at });
        }
        Ok(DeviceConfig { generation, features, rings, msix })
    }
}
