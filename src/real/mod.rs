//! Real components (feature `real`): vhost-user frontends and backends over Unix
//! sockets, qemu-storage-daemon, and KVM ioeventfd/irqfd notifiers.

pub mod cli;
