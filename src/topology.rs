//! What a VM has: its devices, their kinds and queues; presets and a builder.
//! (The TOML file format lives with the CLI, `switchover-cli`.)
//!
//! Devices are named by kind and index (`net0`…`net15`, `blk0`…`blk23`); errors and
//! reports use those names.
//!
//! # Examples
//!
//! ```
//! use switchover::topology::Topology;
//! let t = Topology::preset("rfc-huge").unwrap();
//! assert_eq!(t.devices().len(), 40);
//! assert_eq!(t.device_by_name("net15").unwrap().rings(), 64);
//! assert_eq!(t.total_rings(), 16 * 64 + 24 * 4);
//! ```

use std::fmt;
use std::time::Duration;

use crate::ids::{Affinity, DeviceId, Side, Window};

/// The kind of a device.
///
/// ```
/// use switchover::topology::{DeviceKind, Topology};
/// let t = Topology::preset("small").unwrap();
/// assert_eq!(t.devices()[0].kind, DeviceKind::Net);
/// assert_eq!(DeviceKind::Generic("vfio".into()).to_string(), "vfio");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum DeviceKind {
    /// vhost-user net: each queue pair is two rings (rx, tx).
    Net,
    /// vhost-user blk: one ring per queue.
    Blk,
    /// A device kind a VMM defines, with its own steps; the string is its kind name.
    Generic(String),
}

impl DeviceKind {
    /// The prefix of device names of this kind (`net`, `blk`, or the generic name).
    ///
    /// ```
    /// use switchover::topology::DeviceKind;
    /// assert_eq!(DeviceKind::Blk.prefix(), "blk");
    /// ```
    pub fn prefix(&self) -> &str {
        match self {
            DeviceKind::Net => "net",
            DeviceKind::Blk => "blk",
            DeviceKind::Generic(k) => k,
        }
    }
}

impl fmt::Display for DeviceKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.prefix())
    }
}

/// One step of a generic device kind, as a VMM declares it.
///
/// ```
/// use switchover::ids::{Affinity, Side, Window};
/// use switchover::topology::GenericStep;
/// let s = GenericStep::new("load_state", Side::Destination, Window::Prepare)
///     .cost(std::time::Duration::from_millis(40));
/// assert_eq!(s.affinity, Affinity::Any);
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GenericStep {
    /// Step name, unique within the device kind; reports show it.
    pub name: String,
    /// Which side runs it.
    pub side: Side,
    /// The window the engine runs it in.
    pub window: Window,
    /// Which lane may run it.
    pub affinity: Affinity,
    /// Names of steps of the same device (and side) that must finish first.
    pub after: Vec<String>,
    /// Expected duration (drives priorities; the simulated backend sleeps this long).
    pub cost: Duration,
    /// Whether the step needs the VMM's big lock: it then holds
    /// [`crate::resource::Resource::BIG_LOCK`], and must be caller-affine, or the plan
    /// is refused ([`crate::plan::PlanError::CallerOnly`]).
    pub big_lock: bool,
    /// The step (of the same device and side, declared with
    /// [`GenericStep::rollback_only`]) that undoes this one when the switchover rolls
    /// back after this step ran: a device stopped in the window is resumed, a daemon
    /// paused is unpaused. Rollback runs undo steps in reverse dependency order.
    pub undo: Option<String>,
    /// An undo step: run only by a rollback, never in a window of the switchover.
    pub rollback_only: bool,
}

impl GenericStep {
    /// A step with no predecessors, any-lane affinity and zero cost.
    ///
    /// ```
    /// use switchover::ids::{Affinity, Side, Window};
    /// use switchover::topology::GenericStep;
    /// let s = GenericStep::new("stop", Side::Source, Window::Blackout);
    /// assert_eq!((s.affinity, s.cost, s.after.len()), (Affinity::Any, std::time::Duration::ZERO, 0));
    /// ```
    pub fn new(name: &str, side: Side, window: Window) -> Self {
        GenericStep {
            name: name.into(),
            side,
            window,
            affinity: Affinity::Any,
            after: vec![],
            cost: Duration::ZERO,
            big_lock: false,
            undo: None,
            rollback_only: false,
        }
    }
    /// Sets the expected cost.
    ///
    /// ```
    /// use std::time::Duration;
    /// use switchover::ids::{Side, Window};
    /// use switchover::topology::GenericStep;
    /// let s = GenericStep::new("attach", Side::Destination, Window::Prepare).cost(Duration::from_millis(30));
    /// assert_eq!(s.cost, Duration::from_millis(30));
    /// ```
    pub fn cost(mut self, cost: Duration) -> Self {
        self.cost = cost;
        self
    }
    /// Sets the affinity.
    ///
    /// ```
    /// use switchover::ids::{Affinity, Side, Window};
    /// use switchover::topology::GenericStep;
    /// let s = GenericStep::new("unplug", Side::Source, Window::Cleanup).affinity(Affinity::Caller);
    /// assert_eq!(s.affinity, Affinity::Caller);
    /// ```
    pub fn affinity(mut self, a: Affinity) -> Self {
        self.affinity = a;
        self
    }
    /// Declares that the step needs the VMM's big lock (see [`GenericStep::big_lock`]).
    ///
    /// ```
    /// use std::sync::Arc;
    /// use switchover::ids::{Affinity, Side, Window};
    /// use switchover::plan::PlanError;
    /// use switchover::recipe::{build, NoCosts, RecipeOptions};
    /// use switchover::topology::{GenericStep, Topology};
    /// let locked_any = GenericStep::new("publish", Side::Source, Window::Blackout).needs_big_lock();
    /// let t = Arc::new(Topology::builder().generic(1, "vbd", vec![locked_any]).build().unwrap());
    /// // Needs the big lock but may run on a worker: refused when the plan is built.
    /// let e = build(&t, Side::Source, &RecipeOptions::engine(), &NoCosts).unwrap_err();
    /// assert!(matches!(e, PlanError::CallerOnly { .. }));
    /// let ok = GenericStep::new("publish", Side::Source, Window::Blackout).needs_big_lock().affinity(Affinity::Caller);
    /// let t = Arc::new(Topology::builder().generic(1, "vbd", vec![ok]).build().unwrap());
    /// assert!(build(&t, Side::Source, &RecipeOptions::engine(), &NoCosts).is_ok());
    /// ```
    pub fn needs_big_lock(mut self) -> Self {
        self.big_lock = true;
        self
    }
    /// Names the step that undoes this one in a rollback (see [`GenericStep::undo`]).
    ///
    /// ```
    /// use switchover::ids::{Side, Window};
    /// use switchover::topology::{GenericStep, Topology};
    /// let stop = GenericStep::new("stop", Side::Source, Window::Blackout).undone_by("resume");
    /// let resume = GenericStep::rollback_only("resume", Side::Source);
    /// assert!(Topology::builder().generic(1, "vfio", vec![stop.clone(), resume]).build().is_ok());
    /// // An undo that names no rollback-only step is refused.
    /// assert!(Topology::builder().generic(1, "vfio", vec![stop]).build().is_err());
    /// ```
    pub fn undone_by(mut self, name: &str) -> Self {
        self.undo = Some(name.into());
        self
    }
    /// An undo step of `side`: run only when a switchover rolls back (in the
    /// rollback's window, the guest still frozen), after the steps it undoes.
    ///
    /// ```
    /// use switchover::ids::Side;
    /// use switchover::topology::GenericStep;
    /// let s = GenericStep::rollback_only("unpause", Side::Source);
    /// assert!(s.rollback_only);
    /// ```
    pub fn rollback_only(name: &str, side: Side) -> Self {
        GenericStep { rollback_only: true, ..GenericStep::new(name, side, Window::Blackout) }
    }
    /// Adds a predecessor by name.
    ///
    /// ```
    /// use switchover::ids::{Side, Window};
    /// use switchover::topology::GenericStep;
    /// let s = GenericStep::new("activate", Side::Destination, Window::Blackout).after("attach");
    /// assert_eq!(s.after, ["attach"]);
    /// ```
    pub fn after(mut self, name: &str) -> Self {
        self.after.push(name.into());
        self
    }
}

/// One device of a topology.
///
/// ```
/// use switchover::topology::{DeviceKind, Topology};
/// let t = Topology::preset("small").unwrap();
/// let d = t.device_by_name("net1").unwrap();
/// assert_eq!((d.kind.clone(), d.queues, d.rings()), (DeviceKind::Net, 2, 4));
/// assert!(d.steps.is_empty());
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Device {
    /// Its id (index in the topology).
    pub id: DeviceId,
    /// Its kind.
    pub kind: DeviceKind,
    /// Its name, e.g. `net3`.
    pub name: String,
    /// Queue pairs (net) or queues (blk); 0 for generic devices.
    pub queues: u32,
    /// The steps of a generic device (empty for net and blk).
    pub steps: Vec<GenericStep>,
}

impl Device {
    /// Number of virtqueues (rings): 2 per net queue pair, 1 per blk queue.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// let t = Topology::builder().net(1, 4).blk(1, 2).build().unwrap();
    /// assert_eq!(t.devices()[0].rings(), 8);
    /// assert_eq!(t.devices()[1].rings(), 2);
    /// ```
    pub fn rings(&self) -> u32 {
        match self.kind {
            DeviceKind::Net => self.queues * 2,
            DeviceKind::Blk => self.queues,
            DeviceKind::Generic(_) => 0,
        }
    }
}

/// A malformed topology: names what is wrong.
///
/// ```
/// use switchover::topology::{Topology, TopologyError};
/// assert_eq!(Topology::builder().build(), Err(TopologyError::Empty));
/// let e = Topology::builder().blk(1, 0).build().unwrap_err();
/// assert_eq!(e.to_string(), "device blk0: queues is 0");
/// ```
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[non_exhaustive]
pub enum TopologyError {
    /// No preset of that name.
    #[error("unknown preset '{name}' (known: {known})")]
    UnknownPreset {
        /// The name asked for.
        name: String,
        /// The known names, comma separated.
        known: String,
    },
    /// A device entry is invalid.
    #[error("device {device}: {reason}")]
    Invalid {
        /// The device (or device group) named.
        device: String,
        /// What is wrong.
        reason: String,
    },
    /// The topology has no devices.
    #[error("topology has no devices")]
    Empty,
}

/// A VM's devices.
///
/// ```
/// use switchover::topology::Topology;
/// let t = Topology::preset("small").unwrap();
/// assert_eq!(t.summary(), "small: 2 net × 2 qp, 2 blk × 1 q (10 rings)");
/// ```
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Topology {
    name: String,
    devices: Vec<Device>,
}

/// Most devices a topology may have (a bound on what a file can make the library
/// allocate).
pub const MAX_DEVICES: u32 = 4096;

/// Names of the built-in presets.
///
/// ```
/// use switchover::topology::{Topology, PRESETS};
/// assert!(PRESETS.iter().all(|p| Topology::preset(p).is_ok()));
/// ```
pub const PRESETS: &[&str] = &["rfc-huge", "medium", "small", "single-net", "single-blk", "uneven"];

impl Topology {
    /// A builder for a topology in code.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// let t = Topology::builder().name("mine").net(2, 1).build().unwrap();
    /// assert_eq!(t.name(), "mine");
    /// assert_eq!(t.devices()[1].name, "net1");
    /// ```
    pub fn builder() -> TopologyBuilder {
        TopologyBuilder::default()
    }

    /// A built-in preset: `rfc-huge` (16 nets × 32 queue pairs, 24 blks × 4 queues,
    /// the VM of the 2021 RFC), `medium` (4 × 8, 4 × 4), `small` (2 × 2, 2 × 1),
    /// `single-net` (1 × 1), `single-blk` (1 × 1), `uneven` (nets of 1, 4, 16 and
    /// 64 queue pairs, blks of 1, 4 and 16 queues, and one generic device `gpu0`
    /// with steps in both sides' windows: `quiesce` 800 µs then `save_fw` 400 µs
    /// on the source, `load_fw` 600 µs on the destination).
    ///
    /// # Errors
    /// [`TopologyError::UnknownPreset`] for any other name.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// assert!(Topology::preset("nope").is_err());
    /// ```
    pub fn preset(name: &str) -> Result<Topology, TopologyError> {
        let b = Topology::builder().name(name);
        let b = match name {
            "rfc-huge" => b.net(16, 32).blk(24, 4),
            "medium" => b.net(4, 8).blk(4, 4),
            "small" => b.net(2, 2).blk(2, 1),
            "single-net" => b.net(1, 1),
            "single-blk" => b.blk(1, 1),
            "uneven" => {
                let us = Duration::from_micros;
                let steps = vec![
                    GenericStep::new("quiesce", Side::Source, Window::Blackout).cost(us(800)),
                    GenericStep::new("save_fw", Side::Source, Window::Blackout).cost(us(400)).after("quiesce"),
                    GenericStep::new("load_fw", Side::Destination, Window::Blackout).cost(us(600)),
                ];
                b.net(1, 1).net(1, 4).net(1, 16).net(1, 64).blk(1, 1).blk(1, 4).blk(1, 16).generic(1, "gpu", steps)
            }
            _ => {
                return Err(TopologyError::UnknownPreset { name: name.into(), known: PRESETS.join(", ") });
            }
        };
        b.build()
    }

    /// The topology's name (the preset or file it came from).
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// assert_eq!(Topology::preset("medium").unwrap().name(), "medium");
    /// ```
    pub fn name(&self) -> &str {
        &self.name
    }

    /// All devices, in id order.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// let t = Topology::preset("small").unwrap();
    /// let names: Vec<_> = t.devices().iter().map(|d| d.name.as_str()).collect();
    /// assert_eq!(names, ["net0", "net1", "blk0", "blk1"]);
    /// ```
    pub fn devices(&self) -> &[Device] {
        &self.devices
    }

    /// A device by id.
    ///
    /// ```
    /// use switchover::ids::DeviceId;
    /// use switchover::topology::Topology;
    /// let t = Topology::preset("small").unwrap();
    /// assert_eq!(t.device(DeviceId(2)).name, "blk0");
    /// ```
    pub fn device(&self, id: DeviceId) -> &Device {
        &self.devices[id.0 as usize]
    }

    /// A device by name.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// let t = Topology::preset("small").unwrap();
    /// assert_eq!(t.device_by_name("blk1").unwrap().queues, 1);
    /// assert!(t.device_by_name("blk2").is_none());
    /// ```
    pub fn device_by_name(&self, name: &str) -> Option<&Device> {
        self.devices.iter().find(|d| d.name == name)
    }

    /// Rings over all devices.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// assert_eq!(Topology::preset("small").unwrap().total_rings(), 2 * 2 * 2 + 2);
    /// ```
    pub fn total_rings(&self) -> u32 {
        self.devices.iter().map(Device::rings).sum()
    }

    /// A fingerprint of the devices (kinds, names, queues, the steps of generic
    /// kinds): two sides of one migration have the same; the roles refuse a
    /// message about another topology. FNV-1a, stable across builds.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// let a = Topology::preset("small").unwrap();
    /// assert_eq!(a.fingerprint(), Topology::preset("small").unwrap().fingerprint());
    /// assert_ne!(a.fingerprint(), Topology::preset("medium").unwrap().fingerprint());
    /// ```
    pub fn fingerprint(&self) -> u64 {
        let mut h: u64 = 0xcbf2_9ce4_8422_2325;
        let mut eat = |bytes: &[u8]| {
            for b in bytes {
                h ^= u64::from(*b);
                h = h.wrapping_mul(0x0000_0100_0000_01b3);
            }
            h ^= 0xff; // a separator, so that ("ab", "c") differs from ("a", "bc")
            h = h.wrapping_mul(0x0000_0100_0000_01b3);
        };
        for d in &self.devices {
            eat(d.kind.prefix().as_bytes());
            eat(d.name.as_bytes());
            eat(&d.queues.to_le_bytes());
            for st in &d.steps {
                eat(st.name.as_bytes());
                eat(&[st.side as u8, st.window as u8, u8::from(st.rollback_only)]);
            }
        }
        h
    }

    /// A one-line summary, e.g. `rfc-huge: 16 net × 32 qp, 24 blk × 4 q`.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// assert_eq!(Topology::preset("rfc-huge").unwrap().summary(), "rfc-huge: 16 net × 32 qp, 24 blk × 4 q (1120 rings)");
    /// ```
    pub fn summary(&self) -> String {
        let mut groups: Vec<(String, u32, u32)> = Vec::new();
        for d in &self.devices {
            let key = d.kind.prefix().to_string();
            match groups.iter_mut().find(|g| g.0 == key && g.2 == d.queues) {
                Some(g) => g.1 += 1,
                None => groups.push((key, 1, d.queues)),
            }
        }
        let parts: Vec<String> = groups
            .iter()
            .map(|(k, n, q)| match k.as_str() {
                "net" => format!("{n} net × {q} qp"),
                "blk" => format!("{n} blk × {q} q"),
                _ => format!("{n} {k}"),
            })
            .collect();
        format!("{}: {} ({} rings)", self.name, parts.join(", "), self.total_rings())
    }
}

/// Builds a [`Topology`] in code; devices are numbered per kind in the order added.
///
/// ```
/// use switchover::topology::Topology;
/// let t = Topology::builder().blk(1, 4).net(1, 1).blk(1, 2).build().unwrap();
/// let names: Vec<_> = t.devices().iter().map(|d| d.name.as_str()).collect();
/// assert_eq!(names, ["blk0", "net0", "blk1"]);
/// ```
#[derive(Debug, Default, Clone)]
pub struct TopologyBuilder {
    name: Option<String>,
    groups: Vec<(DeviceKind, u32, u32, Vec<GenericStep>)>,
}

impl TopologyBuilder {
    /// Names the topology.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// assert_eq!(Topology::builder().name("vm1").net(1, 1).build().unwrap().name(), "vm1");
    /// assert_eq!(Topology::builder().net(1, 1).build().unwrap().name(), "custom");
    /// ```
    pub fn name(mut self, n: &str) -> Self {
        self.name = Some(n.into());
        self
    }
    /// Adds `count` vhost-user net devices with `queue_pairs` each.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// let t = Topology::builder().net(3, 4).build().unwrap();
    /// assert_eq!((t.devices().len(), t.total_rings()), (3, 3 * 4 * 2));
    /// ```
    pub fn net(mut self, count: u32, queue_pairs: u32) -> Self {
        self.groups.push((DeviceKind::Net, count, queue_pairs, vec![]));
        self
    }
    /// Adds `count` vhost-user blk devices with `queues` each.
    ///
    /// ```
    /// use switchover::topology::Topology;
    /// let t = Topology::builder().blk(2, 4).build().unwrap();
    /// assert_eq!((t.devices().len(), t.total_rings()), (2, 8));
    /// ```
    pub fn blk(mut self, count: u32, queues: u32) -> Self {
        self.groups.push((DeviceKind::Blk, count, queues, vec![]));
        self
    }
    /// Adds `count` devices of a VMM-defined kind `kind` with the given steps.
    ///
    /// ```
    /// use switchover::ids::{Side, Window};
    /// use switchover::topology::{GenericStep, Topology};
    /// let t = Topology::builder()
    ///     .generic(1, "vfio", vec![GenericStep::new("stop", Side::Source, Window::Blackout)])
    ///     .build().unwrap();
    /// assert_eq!(t.devices()[0].name, "vfio0");
    /// ```
    pub fn generic(mut self, count: u32, kind: &str, steps: Vec<GenericStep>) -> Self {
        self.groups.push((DeviceKind::Generic(kind.into()), count, 0, steps));
        self
    }

    /// Validates and builds.
    ///
    /// # Errors
    /// [`TopologyError::Invalid`] for zero queues, too many queues or devices, bad
    /// generic steps (even in a group of no devices); [`TopologyError::Empty`] for
    /// no devices at all.
    ///
    /// ```
    /// use switchover::topology::{Topology, TopologyError};
    /// assert!(Topology::builder().net(1, 1).build().is_ok());
    /// // A group of no devices is allowed (a VM without nets), as long as one device remains.
    /// let no_nets = Topology::builder().net(0, 1).blk(1, 1).build().unwrap();
    /// assert_eq!(no_nets.devices().len(), 1);
    /// assert!(matches!(Topology::builder().net(0, 1).build(), Err(TopologyError::Empty)));
    /// // Its settings are still checked.
    /// assert!(matches!(Topology::builder().net(0, 0).blk(1, 1).build(), Err(TopologyError::Invalid { .. })));
    /// assert!(matches!(Topology::builder().net(1, 300).build(), Err(TopologyError::Invalid { .. })));
    /// ```
    pub fn build(self) -> Result<Topology, TopologyError> {
        let mut devices = Vec::new();
        let mut next_index: Vec<(String, u32)> = Vec::new();
        for (kind, count, queues, steps) in self.groups {
            let prefix = kind.prefix().to_string();
            let idx = match next_index.iter_mut().find(|(p, _)| *p == prefix) {
                Some((_, i)) => i,
                None => {
                    next_index.push((prefix.clone(), 0));
                    &mut next_index.last_mut().expect("just pushed").1
                }
            };
            let group = format!("{prefix}{}", *idx);
            // A group of no devices is allowed (a VM without nets, say); its
            // settings are still checked. A topology with no device at all is not.
            if devices.len() as u64 + u64::from(count) > u64::from(MAX_DEVICES) {
                return Err(TopologyError::Invalid { device: group, reason: format!("more than {MAX_DEVICES} devices in all") });
            }
            if prefix.is_empty() || !prefix.chars().all(|c| c.is_ascii_alphabetic() || c == '_' || c == '-') {
                return Err(TopologyError::Invalid { device: group, reason: format!("kind name '{prefix}' must be letters, '-' or '_'") });
            }
            match kind {
                DeviceKind::Net | DeviceKind::Blk if queues == 0 => {
                    let what = if kind == DeviceKind::Net { "queue_pairs" } else { "queues" };
                    return Err(TopologyError::Invalid { device: group, reason: format!("{what} is 0") });
                }
                DeviceKind::Net if queues > 256 => {
                    return Err(TopologyError::Invalid { device: group, reason: format!("queue_pairs {queues} > 256") });
                }
                DeviceKind::Blk if queues > 256 => {
                    return Err(TopologyError::Invalid { device: group, reason: format!("queues {queues} > 256") });
                }
                DeviceKind::Generic(_) => validate_generic(&group, &steps)?,
                _ => {}
            }
            for _ in 0..count {
                let id = DeviceId(devices.len() as u32);
                devices.push(Device { id, kind: kind.clone(), name: format!("{prefix}{}", *idx), queues, steps: steps.clone() });
                *idx += 1;
            }
        }
        if devices.is_empty() {
            return Err(TopologyError::Empty);
        }
        Ok(Topology { name: self.name.unwrap_or_else(|| "custom".into()), devices })
    }
}

fn validate_generic(group: &str, steps: &[GenericStep]) -> Result<(), TopologyError> {
    if steps.is_empty() {
        return Err(TopologyError::Invalid { device: group.into(), reason: "a generic device needs at least one step".into() });
    }
    for (i, s) in steps.iter().enumerate() {
        if steps[..i].iter().any(|o| o.name == s.name && o.side == s.side) {
            return Err(TopologyError::Invalid { device: group.into(), reason: format!("step '{}' declared twice", s.name) });
        }
        if s.rollback_only && (!s.after.is_empty() || s.undo.is_some()) {
            return Err(TopologyError::Invalid {
                device: group.into(),
                reason: format!("undo step '{}' can neither wait for other steps nor be undone", s.name),
            });
        }
        if let Some(u) = &s.undo {
            if !steps.iter().any(|o| &o.name == u && o.side == s.side && o.rollback_only) {
                return Err(TopologyError::Invalid {
                    device: group.into(),
                    reason: format!("step '{}' is undone by '{u}', which is not an undo step (rollback only) of the same side", s.name),
                });
            }
        }
        for a in &s.after {
            // Predecessors must be declared earlier on the same side: no cycles possible.
            if !steps[..i].iter().any(|o| &o.name == a && o.side == s.side && !o.rollback_only) {
                return Err(TopologyError::Invalid {
                    device: group.into(),
                    reason: format!("step '{}' is after '{a}', which is not an earlier step of the same side", s.name),
                });
            }
        }
    }
    Ok(())
}
