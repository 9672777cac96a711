//! The frontend's requests, as the `vhost` crate's backend request handler
//! delivers them, turned into the [`Device`]'s operations.
//!
//! Offered: virtio `VERSION_1`, `VIRTIO_BLK_F_FLUSH`, `VHOST_F_LOG_ALL`; protocol
//! features `MQ`, `REPLY_ACK`, `LOG_SHMFD`, and (unless the backend runs without
//! them) `INFLIGHT_SHMFD` and `GET_VRING_BASE_INFLIGHT`.

use std::fs::File;
use std::io;
use std::sync::Arc;

use switchover_vhost::inflight::{InflightDesc, InflightRegion};
use vhost::vhost_user::message::{
    VhostTransferStateDirection, VhostTransferStatePhase, VhostUserConfigFlags, VhostUserInflight, VhostUserLog, VhostUserMemoryRegion,
    VhostUserProtocolFeatures, VhostUserShMemConfig, VhostUserSharedMsg, VhostUserSingleMemoryRegion, VhostUserVirtioFeatures,
    VhostUserVringAddrFlags, VhostUserVringState,
};
use vhost::vhost_user::{Error, GpuBackend, Result, VhostUserBackendReqHandlerMut};
use vhost::VhostUserMemoryRegionBase;

use super::device::Device;
use super::guest::{DirtyLog, GuestMap};

/// `VIRTIO_F_VERSION_1`.
const VERSION_1: u64 = 1 << 32;
/// `VIRTIO_BLK_F_FLUSH`.
const BLK_F_FLUSH: u64 = 1 << 9;
/// `VHOST_F_LOG_ALL`.
pub const LOG_ALL: u64 = 1 << 26;

/// The request handler of one connection.
#[derive(Debug)]
pub struct Handler {
    dev: Arc<Device>,
}

impl Handler {
    /// A handler for `dev`.
    pub fn new(dev: Arc<Device>) -> Handler {
        Handler { dev }
    }
}

fn fail(what: impl std::fmt::Display) -> Error {
    Error::ReqHandlerError(io::Error::other(what.to_string()))
}

fn ring(index: u32) -> Result<u16> {
    u16::try_from(index).map_err(|_| Error::InvalidParam)
}

impl VhostUserBackendReqHandlerMut for Handler {
    fn set_owner(&mut self) -> Result<()> {
        Ok(())
    }
    fn reset_owner(&mut self) -> Result<()> {
        for r in 0..self.dev.queues() {
            self.dev.stop_ring(r);
        }
        Ok(())
    }
    fn reset_device(&mut self) -> Result<()> {
        self.reset_owner()
    }
    fn get_features(&mut self) -> Result<u64> {
        Ok(VERSION_1 | BLK_F_FLUSH | LOG_ALL | VhostUserVirtioFeatures::PROTOCOL_FEATURES.bits())
    }
    fn set_features(&mut self, features: u64) -> Result<()> {
        self.dev.set_log_all(features & LOG_ALL != 0);
        Ok(())
    }
    fn set_mem_table(
        &mut self,
        ctx: &[VhostUserMemoryRegion],
        files: Vec<File>,
        _pl: Option<bool>,
    ) -> Result<Option<Vec<VhostUserMemoryRegionBase>>> {
        if ctx.len() != files.len() {
            return Err(Error::InvalidParam);
        }
        let regions = ctx.iter().zip(files).map(|(r, f)| (r.guest_phys_addr, r.memory_size, r.user_addr, r.mmap_offset, f)).collect();
        self.dev.set_mem(GuestMap::map(regions).map_err(fail)?);
        Ok(None)
    }
    fn set_vring_num(&mut self, index: u32, num: u32) -> Result<()> {
        let num = u16::try_from(num).ok().filter(|n| *n > 0 && *n <= 1024).ok_or(Error::InvalidParam)?;
        self.dev.set_num(ring(index)?, num).then_some(()).ok_or(Error::InvalidParam)
    }
    fn set_vring_addr(
        &mut self,
        index: u32,
        flags: VhostUserVringAddrFlags,
        descriptor: u64,
        used: u64,
        available: u64,
        log: u64,
    ) -> Result<()> {
        let g = |u| self.dev.gpa_of(u).ok_or_else(|| fail(format!("ring address {u:#x} outside the memory table")));
        let log_addr = flags.contains(VhostUserVringAddrFlags::VHOST_VRING_F_LOG).then_some(log);
        let ok = self.dev.set_addr(ring(index)?, g(descriptor)?, g(available)?, g(used)?, log_addr);
        ok.then_some(()).ok_or(Error::InvalidParam)
    }
    fn set_vring_base(&mut self, index: u32, base: u32) -> Result<()> {
        let base = u16::try_from(base).map_err(|_| Error::InvalidParam)?;
        self.dev.set_base(ring(index)?, base).then_some(()).ok_or(Error::InvalidParam)
    }
    fn get_vring_base(&mut self, index: u32) -> Result<VhostUserVringState> {
        // Never an error: the frontend waits for this reply.
        let base = u16::try_from(index).map(|r| self.dev.stop_ring(r)).unwrap_or(0);
        Ok(VhostUserVringState::new(index, u32::from(base)))
    }
    fn set_vring_kick(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        let fd = fd.ok_or_else(|| fail("a ring without a kick eventfd (polling) is not supported"))?;
        self.dev.start_ring(u16::from(index), fd).map_err(fail)
    }
    fn set_vring_call(&mut self, index: u8, fd: Option<File>) -> Result<()> {
        self.dev.set_call(u16::from(index), fd).then_some(()).ok_or(Error::InvalidParam)
    }
    fn set_vring_err(&mut self, _index: u8, _fd: Option<File>) -> Result<()> {
        Ok(())
    }
    fn get_protocol_features(&mut self) -> Result<VhostUserProtocolFeatures> {
        let mut f = VhostUserProtocolFeatures::MQ | VhostUserProtocolFeatures::REPLY_ACK | VhostUserProtocolFeatures::LOG_SHMFD;
        if self.dev.opts().inflight {
            f |= VhostUserProtocolFeatures::INFLIGHT_SHMFD | VhostUserProtocolFeatures::GET_VRING_BASE_INFLIGHT;
        }
        Ok(f)
    }
    fn set_protocol_features(&mut self, features: u64) -> Result<()> {
        let f = VhostUserProtocolFeatures::from_bits_truncate(features);
        self.dev.set_hand_over(f.contains(VhostUserProtocolFeatures::INFLIGHT_SHMFD | VhostUserProtocolFeatures::GET_VRING_BASE_INFLIGHT));
        Ok(())
    }
    fn get_queue_num(&mut self) -> Result<u64> {
        Ok(u64::from(self.dev.queues()))
    }
    fn set_vring_enable(&mut self, index: u32, enable: bool) -> Result<()> {
        self.dev.set_enabled(ring(index)?, enable).then_some(()).ok_or(Error::InvalidParam)
    }
    fn get_config(&mut self, _offset: u32, _size: u32, _flags: VhostUserConfigFlags) -> Result<Vec<u8>> {
        Err(Error::InvalidOperation("no config space"))
    }
    fn set_config(&mut self, _offset: u32, _buf: &[u8], _flags: VhostUserConfigFlags) -> Result<()> {
        Err(Error::InvalidOperation("no config space"))
    }
    fn set_gpu_socket(&mut self, _gpu_backend: GpuBackend) -> Result<()> {
        Err(Error::InvalidOperation("not a gpu"))
    }
    fn get_shared_object(&mut self, _uuid: VhostUserSharedMsg) -> Result<File> {
        Err(Error::InvalidOperation("no shared objects"))
    }
    fn get_inflight_fd(&mut self, inflight: &VhostUserInflight) -> Result<(VhostUserInflight, File)> {
        if !self.dev.opts().inflight {
            return Err(Error::InvalidOperation("no inflight region"));
        }
        let region = InflightRegion::create(inflight.num_queues, inflight.queue_size).map_err(fail)?;
        let d = region.desc();
        let file = File::from(region.try_clone_fd().map_err(fail)?);
        self.dev.set_region(Arc::new(region));
        Ok((VhostUserInflight::new(d.mmap_size, d.mmap_offset, d.num_queues, d.queue_size), file))
    }
    fn set_inflight_fd(&mut self, inflight: &VhostUserInflight, file: File) -> Result<()> {
        if !self.dev.opts().inflight {
            return Err(Error::InvalidOperation("no inflight region"));
        }
        let d = InflightDesc {
            mmap_size: inflight.mmap_size,
            mmap_offset: inflight.mmap_offset,
            num_queues: inflight.num_queues,
            queue_size: inflight.queue_size,
        };
        let region = InflightRegion::map(file.into(), d).map_err(fail)?;
        self.dev.set_region(Arc::new(region));
        Ok(())
    }
    fn get_max_mem_slots(&mut self) -> Result<u64> {
        Err(Error::InvalidOperation("no memory slots"))
    }
    fn add_mem_region(
        &mut self,
        _r: &VhostUserSingleMemoryRegion,
        _fd: File,
        _pl: Option<bool>,
    ) -> Result<Option<VhostUserMemoryRegionBase>> {
        Err(Error::InvalidOperation("no memory slots"))
    }
    fn remove_mem_region(&mut self, _r: &VhostUserSingleMemoryRegion) -> Result<()> {
        Err(Error::InvalidOperation("no memory slots"))
    }
    fn set_device_state_fd(&mut self, _d: VhostTransferStateDirection, _p: VhostTransferStatePhase, _fd: File) -> Result<Option<File>> {
        Err(Error::InvalidOperation("no device state"))
    }
    fn check_device_state(&mut self) -> Result<()> {
        Err(Error::InvalidOperation("no device state"))
    }
    fn get_shmem_config(&mut self) -> Result<VhostUserShMemConfig> {
        Err(Error::InvalidOperation("no shared memory"))
    }
    fn set_log_base(&mut self, log: &VhostUserLog, file: File) -> Result<()> {
        self.dev.set_log(DirtyLog::map(file, log.mmap_size, log.mmap_offset).map_err(fail)?);
        Ok(())
    }
}
