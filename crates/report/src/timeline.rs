//! The timeline picture of one run: an SVG a person can read in a browser.
//!
//! One lane per engine lane (the caller lane and each worker) and one row per
//! backend control channel, for each side; every step is one bar coloured by its
//! device kind. The blackout window is the middle band, between the marks where
//! it opens (the source stops its devices) and closes (the destination runs the
//! guest); prepare is drawn before it and cleanup after it. Each of the three
//! windows has its own linear time scale (the blackout gets half the width), so
//! a 40 ms window stays readable next to 160 ms of prepare; the axis labels are
//! milliseconds from the window's opening.
//!
//! * A blocking step is a bar on the lane that ran it.
//! * A split-phase request on a backend's control channel is a bar on that
//!   channel's row from when the channel began serving it (its send, or the
//!   previous reply on that channel) to its reply; a thin line before the bar is the
//!   time it waited in the channel's queue since its send, and a tick on the lane
//!   that sent it marks the send. With many channels (more than
//!   [`GROUP_CHANNELS_ABOVE`] on a side), the rows are thin and grouped by device
//!   kind, devices in name order.
//! * Steps on the blackout window's [critical path](crate::critical_path)
//!   are underlined.
//!
//! Every step is exactly one `<rect>` with a `data-step` attribute
//! ([`step_id`]) and a `<title>` (the tooltip), so tools and tests can find each
//! step; everything else (ticks, queue lines, underlines) is drawn in per-row
//! `<path>`s without that attribute.
//!
//! # Why a small writer and not a plotting crate
//!
//! The picture is thousands of rectangles, some lines and text at computed
//! positions, plus two things plotting crates do not offer: a `data-step`
//! attribute and a `<title>` tooltip on every bar, and a time axis broken into
//! three windows with their own scales. A plotting crate (e.g. plotters) would add
//! a dependency tree, font handling and a drawing-area abstraction, and would
//! still need post-processing of its SVG for the attributes; SVG itself is plain
//! text, so a few hundred lines of `write!` produce exactly the elements
//! wanted, with compact numbers (one decimal of a pixel) that keep the `rfc-huge`
//! picture (about 13 600 steps) under 3 MB.
//!
//! # Examples
//!
//! ```
//! use switchover_baseline::timed_steps;
//! use switchover_sim::{run, SimConfig};
//! use switchover_baseline::Strategy;
//! use switchover_report::timeline::{step_id, svg};
//! use switchover::topology::Topology;
//! let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.05), Strategy::Engine);
//! let steps = timed_steps(&r);
//! let text = svg(&r, "small");
//! assert!(text.starts_with("<svg"));
//! assert!(text.contains("SIMULATED"));
//! for s in &steps {
//!     let attr = format!("data-step=\"{}\"", step_id(s));
//!     assert_eq!(text.matches(&attr).count(), 1);
//! }
//! ```

use std::collections::BTreeMap;
use std::fmt::Write as _;

use crate::{critical_path, own_times};
use switchover::ids::Side;
use switchover::step::Server;
use switchover_baseline::TimedStep;
use switchover_baseline::{Strategy, StrategyRun};

/// Above this many control channels on one side, channel rows are thin and grouped
/// by device kind.
///
/// ```
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover_report::timeline::{svg, GROUP_CHANNELS_ABOVE};
/// use switchover::topology::Topology;
/// let many = Topology::builder().net(GROUP_CHANNELS_ABOVE as u32 + 1, 1).build().unwrap();
/// let few = Topology::preset("small").unwrap();
/// let picture = |t: Topology| svg(&run(&SimConfig::new(t).scale(0.02), Strategy::Engine), "");
/// assert!(picture(many).contains("net control channels"));
/// assert!(!picture(few).contains("net control channels"));
/// ```
pub const GROUP_CHANNELS_ABOVE: usize = 12;

const WIDTH: f64 = 1600.0;
const LEFT: f64 = 170.0;
const RIGHT: f64 = 24.0;
const LANE_H: f64 = 12.0;
const LANE_PITCH: f64 = 14.0;

/// The identity of a step in the picture and the trace:
/// `side:device[:ringN]:step`, with `:rollback` appended for rollback steps and
/// `:fence` for the destination's fence steps.
///
/// ```
/// use switchover_baseline::timed_steps;
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover_report::timeline::step_id;
/// use switchover::topology::Topology;
/// let r = run(&SimConfig::new(Topology::preset("single-net").unwrap()).scale(0.05), Strategy::Engine);
/// let steps = timed_steps(&r);
/// let ids: Vec<String> = steps.iter().map(step_id).collect();
/// assert!(ids.contains(&"src:net0:ring1:get_vring_base".to_string()));
/// assert!(ids.contains(&"dst:net0:set_mem_table".to_string()));
/// ```
pub fn step_id(s: &TimedStep) -> String {
    let mut id = format!("{}:{}", s.side.short(), s.device);
    if let Some(r) = s.ring {
        let _ = write!(id, ":ring{r}");
    }
    let _ = write!(id, ":{}", s.step);
    if s.rollback {
        id.push_str(":rollback");
    }
    if s.fence {
        id.push_str(":fence");
    }
    id
}

/// Whether a step is a request served by a backend's control channel.
fn on_channel(s: &TimedStep) -> bool {
    s.split && matches!(s.server, Some(Server::Channel(_)))
}

/// Escapes text for XML attributes and content.
fn esc(s: &str) -> String {
    let mut o = String::with_capacity(s.len());
    for c in s.chars() {
        match c {
            '&' => o.push_str("&amp;"),
            '<' => o.push_str("&lt;"),
            '>' => o.push_str("&gt;"),
            '"' => o.push_str("&quot;"),
            _ => o.push(c),
        }
    }
    o
}

/// A pixel coordinate with at most one decimal, no trailing `.0`.
fn px(v: f64) -> String {
    let r = (v * 10.0).round() / 10.0;
    if r == r.trunc() {
        format!("{}", r as i64)
    } else {
        format!("{r:.1}")
    }
}

fn ms3(ns: i64) -> String {
    format!("{:.3}", ns as f64 / 1e6)
}

/// The broken time axis: one linear segment per window that has steps.
struct Axis {
    /// `(t0_ns, t1_ns, x0, x1, name)`.
    segs: Vec<(i64, i64, f64, f64, &'static str)>,
}

impl Axis {
    fn new(t_min: i64, close: i64, t_max: i64) -> Axis {
        let (x0, x1) = (LEFT, WIDTH - RIGHT);
        let w = x1 - x0;
        let dp = (-t_min).max(0);
        let dc = (t_max - close).max(0);
        let db = close.max(1);
        let (fp, fc) = match (dp > 0, dc > 0) {
            (false, false) => (0.0, 0.0),
            (true, false) => (0.3, 0.0),
            (false, true) => (0.0, 0.3),
            (true, true) => {
                let share = (dp as f64 / (dp + dc) as f64).clamp(0.3, 0.7);
                (0.5 * share, 0.5 * (1.0 - share))
            }
        };
        let fb = 1.0 - fp - fc;
        let mut segs = Vec::new();
        let mut x = x0;
        if dp > 0 {
            segs.push((-dp, 0, x, x + w * fp, "prepare"));
            x += w * fp;
        }
        segs.push((0, db, x, x + w * fb, "blackout"));
        x += w * fb;
        if dc > 0 {
            segs.push((db, db + dc, x, x1, "cleanup"));
        }
        Axis { segs }
    }

    fn x(&self, t: i64) -> f64 {
        let seg = self.segs.iter().find(|s| t <= s.1).or(self.segs.last()).expect("at least the blackout segment");
        let (t0, t1, x0, x1, _) = *seg;
        let f = (t - t0) as f64 / (t1 - t0).max(1) as f64;
        x0 + f.clamp(0.0, 1.0) * (x1 - x0)
    }
}

/// A "nice" tick step (1, 2 or 5 × 10^k ns) for `span_ns` over about `n` ticks.
fn nice_step(span_ns: i64, n: f64) -> i64 {
    let raw = (span_ns as f64 / n.max(1.0)).max(1.0);
    let mag = 10f64.powf(raw.log10().floor());
    let m = raw / mag;
    let k = if m <= 1.0 {
        1.0
    } else if m <= 2.0 {
        2.0
    } else if m <= 5.0 {
        5.0
    } else {
        10.0
    };
    (k * mag) as i64
}

fn tick_label(ns: i64) -> String {
    let v = ns as f64 / 1e6;
    if v.abs() >= 10.0 || v == v.trunc() {
        format!("{v:.0}")
    } else if (v * 10.0) == (v * 10.0).round() {
        format!("{v:.1}")
    } else {
        format!("{v:.2}")
    }
}

/// One row of the picture.
struct Row {
    label: String,
    /// Rows of one group (the lanes, or the channels of one device kind) are drawn
    /// without a gap between them.
    group: usize,
    /// Thin grouped channel row: label drawn per group instead.
    thin: bool,
    height: f64,
    y: f64,
    /// Indices of steps drawn as bars here.
    bars: Vec<usize>,
    /// Send ticks (x) of split-phase requests started on this lane.
    sends: Vec<f64>,
    /// Queue lines (x0, x1) of requests waiting on this channel.
    queued: Vec<(f64, f64)>,
    /// Critical-path underlines (x0, x1).
    critical: Vec<(f64, f64)>,
}

impl Row {
    fn new(label: String, group: usize, height: f64, thin: bool) -> Row {
        Row { label, group, thin, height, y: 0.0, bars: vec![], sends: vec![], queued: vec![], critical: vec![] }
    }
}

/// Sort key for device names: kind prefix, then the numeric suffix.
fn name_key(name: &str) -> (String, u64) {
    let split = name.find(|c: char| c.is_ascii_digit()).unwrap_or(name.len());
    (name[..split].to_string(), name[split..].parse().unwrap_or(0))
}

fn kind_class(kind: &str, generic: &[String]) -> String {
    match kind {
        "net" => "n".into(),
        "blk" => "b".into(),
        k => format!("g{}", generic.iter().position(|g| g == k).unwrap_or(0) % GENERIC_COLOURS.len()),
    }
}

const NET_COLOUR: &str = "#4e79a7";
const BLK_COLOUR: &str = "#f28e2b";
const GENERIC_COLOURS: [&str; 4] = ["#59a14f", "#b07aa1", "#76b7b2", "#9c755f"];

/// The SVG timeline of `run`; `caption` (e.g. the topology summary) is shown under
/// the title. Simulated runs say SIMULATED in the title.
///
/// See the [module docs](self) for what is drawn.
///
/// ```
/// use switchover_baseline::timed_steps;
/// use switchover_sim::{run, SimConfig};
/// use switchover_baseline::Strategy;
/// use switchover_report::timeline::svg;
/// use switchover::topology::Topology;
/// let r = run(&SimConfig::new(Topology::preset("small").unwrap()).scale(0.02), Strategy::Serial);
/// let steps = timed_steps(&r);
/// let text = svg(&r, "small: 2 net, 2 blk");
/// assert!(text.starts_with("<svg") && text.trim_end().ends_with("</svg>"));
/// assert!(text.contains("small: 2 net, 2 blk"));
/// assert_eq!(text.matches("data-step=").count(), steps.len()); // one bar per step
/// ```
pub fn svg(run: &StrategyRun, caption: &str) -> String {
    let steps = &switchover_baseline::timed_steps(run);
    let own = own_times(steps);
    let close = run.downtime.as_nanos() as i64;
    let t_min = steps.iter().map(|s| s.start_ns).min().unwrap_or(0).min(0);
    let t_max = steps.iter().map(|s| s.end_ns).max().unwrap_or(close).max(close);
    let axis = Axis::new(t_min, close, t_max);
    let mut generic: Vec<String> =
        steps.iter().filter(|s| s.device_kind != "net" && s.device_kind != "blk").map(|s| s.device_kind.clone()).collect();
    generic.sort();
    generic.dedup();

    // Rows: per side, the lanes, then the channels (grouped by kind when many).
    let mut rows: Vec<Row> = Vec::new();
    let mut side_rows: Vec<(Side, usize, usize)> = Vec::new(); // side, first row, end row
    let mut group_labels: Vec<(usize, usize, String, String)> = Vec::new(); // first row, end row, two label lines
    let mut lane_row: BTreeMap<(Side, u16), usize> = BTreeMap::new();
    let mut chan_row: BTreeMap<(Side, String), usize> = BTreeMap::new();
    for side in [Side::Source, Side::Destination] {
        let mine: Vec<&TimedStep> = steps.iter().filter(|s| s.side == side).collect();
        if mine.is_empty() {
            continue;
        }
        let first = rows.len();
        let mut lanes: Vec<u16> = mine.iter().map(|s| s.lane).collect();
        if run.strategy == Strategy::Engine {
            lanes.extend(0..run.lanes as u16);
        }
        lanes.sort_unstable();
        lanes.dedup();
        for l in lanes {
            let label = match (l, run.strategy) {
                (0, Strategy::Engine) => "caller lane".to_string(),
                (0, _) => "caller thread".to_string(),
                (n, _) => format!("worker {n}"),
            };
            lane_row.insert((side, l), rows.len());
            rows.push(Row::new(label, 0, LANE_H, false));
        }
        let mut chans: Vec<(String, String)> =
            mine.iter().filter(|s| on_channel(s)).map(|s| (s.device_kind.clone(), s.device.clone())).collect();
        chans.sort_by_key(|(k, d)| (k != "net", k != "blk", k.clone(), name_key(d)));
        chans.dedup();
        let thin = chans.len() > GROUP_CHANNELS_ABOVE;
        let mut i = 0;
        while i < chans.len() {
            let kind = chans[i].0.clone();
            let g0 = rows.len();
            while i < chans.len() && chans[i].0 == kind {
                chan_row.insert((side, chans[i].1.clone()), rows.len());
                let label = format!("{} channel", chans[i].1);
                rows.push(Row::new(label, 1 + g0, if thin { 4.0 } else { 9.0 }, thin));
                i += 1;
            }
            if thin {
                let n = rows.len() - g0;
                let (a, b) = (&rows[g0].label, &rows[rows.len() - 1].label);
                let a = a.trim_end_matches(" channel");
                let b = b.trim_end_matches(" channel");
                group_labels.push((g0, rows.len(), format!("{kind} control channels"), format!("×{n}, {a} (top) … {b}")));
            }
        }
        side_rows.push((side, first, rows.len()));
    }

    // Vertical layout.
    let top = 112.0;
    let mut y = top;
    for (k, (_, first, end)) in side_rows.iter().enumerate() {
        y += if k == 0 { 18.0 } else { 30.0 };
        let mut prev_group: Option<usize> = None;
        for row in &mut rows[*first..*end] {
            if prev_group.is_some() && prev_group != Some(row.group) {
                y += 6.0;
            }
            row.y = y;
            y += if row.thin {
                row.height + 1.0
            } else if row.height < LANE_H {
                row.height + 3.0
            } else {
                LANE_PITCH
            };
            prev_group = Some(row.group);
        }
    }
    let plot_bottom = y + 6.0;
    let height = plot_bottom + 34.0;

    // Assign steps to rows.
    let path = critical_path(steps);
    let mut on_path = vec![false; steps.len()];
    for &i in &path {
        on_path[i] = true;
    }
    for (i, s) in steps.iter().enumerate() {
        if on_channel(s) {
            let r = chan_row[&(s.side, s.device.clone())];
            let serve = s.end_ns - own[i];
            if serve > s.start_ns {
                rows[r].queued.push((axis.x(s.start_ns), axis.x(serve)));
            }
            rows[r].bars.push(i);
            if on_path[i] {
                rows[r].critical.push((axis.x(serve), axis.x(s.end_ns)));
            }
            if let Some(&lr) = lane_row.get(&(s.side, s.lane)) {
                rows[lr].sends.push(axis.x(s.start_ns));
            }
        } else {
            let r = lane_row[&(s.side, s.lane)];
            rows[r].bars.push(i);
            if on_path[i] {
                rows[r].critical.push((axis.x(s.start_ns), axis.x(s.end_ns)));
            }
        }
    }

    let mut o = String::with_capacity(steps.len() * 160 + 16_384);
    let label = if run.simulated { "SIMULATED" } else { "REAL" };
    let title = format!("{label} switchover timeline: {} run, downtime {:.1} ms ({label})", run.strategy.name(), close as f64 / 1e6);
    let _ = write!(
        o,
        r#"<svg xmlns="http://www.w3.org/2000/svg" width="{w}" height="{h}" viewBox="0 0 {w} {h}" font-family="Helvetica,Arial,sans-serif" font-size="11">"#,
        w = px(WIDTH),
        h = px(height)
    );
    let _ = write!(o, "<title>{}</title>", esc(&title));
    let _ = write!(
        o,
        "<style>.n{{fill:{NET_COLOUR}}}.b{{fill:{BLK_COLOUR}}}{}.f{{stroke:#d00;stroke-width:1}}.r{{fill-opacity:.55;stroke:#000;stroke-width:.5;stroke-dasharray:1 1}}.x{{fill-opacity:.35;stroke:#704;stroke-width:.8;stroke-dasharray:3 1}}.l{{fill:#333}}.s{{stroke:#222;stroke-width:.6}}.q{{stroke:#999;stroke-width:.6}}.c{{stroke:#000;stroke-width:1.6}}.t{{fill:#555;font-size:10px}}.k{{stroke:#ccc;stroke-width:.5}}</style>",
        GENERIC_COLOURS.iter().enumerate().map(|(i, c)| format!(".g{i}{{fill:{c}}}")).collect::<String>()
    );
    let _ = write!(o, r##"<rect width="100%" height="100%" fill="#fff"/>"##);
    let _ = write!(o, r#"<text x="12" y="22" font-size="16" font-weight="bold">{}</text>"#, esc(&title));
    let sub = format!(
        "{} · {} lanes per side · outcome {} · {} steps · each window drawn to its own time scale",
        caption,
        run.lanes,
        run.outcome.name(),
        steps.len()
    );
    let _ = write!(o, r##"<text x="12" y="40" fill="#333">{}</text>"##, esc(&sub));

    // Legend.
    let mut lx = 12.0;
    let ly = 54.0;
    let mut kinds: Vec<(String, String)> = Vec::new();
    for k in ["net", "blk"] {
        if steps.iter().any(|s| s.device_kind == k) {
            kinds.push((k.to_string(), kind_class(k, &generic)));
        }
    }
    for g in &generic {
        kinds.push((g.clone(), kind_class(g, &generic)));
    }
    for (name, class) in &kinds {
        let _ = write!(
            o,
            r#"<rect x="{}" y="{}" width="14" height="10" class="{class}"/><text x="{}" y="{}">{} step</text>"#,
            px(lx),
            ly,
            px(lx + 18.0),
            ly + 9.0,
            esc(name)
        );
        lx += 30.0 + 7.0 * (name.len() as f64 + 5.0);
    }
    let legend_more: [(&str, &str); 4] = [
        ("s", "send of a split-phase request (lane)"),
        ("q", "request queued on its channel since its send"),
        ("c", "on the blackout's critical path"),
        ("f", "failed / timed out"),
    ];
    for (class, text) in legend_more {
        match class {
            "s" => {
                let _ = write!(o, r#"<path class="s" d="M{} {}v10"/>"#, px(lx + 6.0), ly);
            }
            "f" => {
                let _ = write!(o, r##"<rect x="{}" y="{}" width="14" height="10" fill="#eee" class="f"/>"##, px(lx), ly);
            }
            _ => {
                let _ = write!(o, r#"<path class="{class}" d="M{} {}h14"/>"#, px(lx), ly + 5.0);
            }
        }
        let _ = write!(o, r#"<text x="{}" y="{}">{}</text>"#, px(lx + 18.0), ly + 9.0, text);
        lx += 26.0 + 5.6 * text.len() as f64;
    }
    if steps.iter().any(|s| s.rollback) {
        let _ = write!(
            o,
            r#"<rect x="{}" y="{}" width="14" height="10" class="n r"/><text x="{}" y="{}">rollback step (source)</text>"#,
            px(lx),
            ly,
            px(lx + 18.0),
            ly + 9.0
        );
        lx += 26.0 + 5.6 * 22.0;
    }
    if steps.iter().any(|s| s.fence) {
        let _ = write!(
            o,
            r#"<rect x="{}" y="{}" width="14" height="10" class="n x"/><text x="{}" y="{}">fence step (destination)</text>"#,
            px(lx),
            ly,
            px(lx + 18.0),
            ly + 9.0
        );
    }

    // Window bands, marks, and the axis.
    let axis_y = top - 8.0;
    for &(t0, t1, x0, x1, name) in &axis.segs {
        let fill = if name == "blackout" { "#fde8e8" } else { "#f3f3f3" };
        let _ = write!(
            o,
            r#"<rect x="{}" y="{}" width="{}" height="{}" fill="{fill}"/>"#,
            px(x0),
            px(axis_y),
            px(x1 - x0),
            px(plot_bottom - axis_y)
        );
        let what = match name {
            "prepare" => "prepare: guest runs on the source",
            "blackout" => "BLACKOUT: guest frozen (downtime)",
            _ => "cleanup: guest runs on the destination",
        };
        let _ = write!(
            o,
            r#"<text x="{}" y="{}" text-anchor="middle" font-weight="bold">{what}</text><text x="{}" y="{}" text-anchor="middle" class="t">{} → {} ms</text>"#,
            px((x0 + x1) / 2.0),
            px(axis_y - 26.0),
            px((x0 + x1) / 2.0),
            px(axis_y - 14.0),
            tick_label(t0),
            tick_label(t1),
        );
        // Ticks.
        let step = nice_step(t1 - t0, (x1 - x0) / 90.0);
        let mut t = (t0 as f64 / step as f64).ceil() as i64 * step;
        let mut d = String::new();
        while t <= t1 {
            let x = axis.x(t);
            if x - x0 > 24.0 && x1 - x > 24.0 {
                let _ = write!(d, "M{} {}V{}", px(x), px(axis_y), px(plot_bottom));
                let _ = write!(
                    o,
                    r#"<text x="{}" y="{}" text-anchor="middle" class="t">{}</text>"#,
                    px(x),
                    px(plot_bottom + 12.0),
                    tick_label(t)
                );
            }
            t += step;
        }
        if !d.is_empty() {
            let _ = write!(o, r#"<path class="k" d="{d}"/>"#);
        }
    }
    for (t, text, anchor, dx) in
        [(0, "window opens: 0".to_string(), "end", -3.0), (close, format!("window closes: {}", tick_label(close)), "start", 3.0)]
    {
        let x = axis.x(t);
        let _ = write!(
            o,
            r##"<path d="M{x} {a}V{b}" stroke="#c00" stroke-width="1.5"/><text x="{tx}" y="{ty}" text-anchor="{anchor}" fill="#c00" font-weight="bold">{text}</text>"##,
            x = px(x),
            a = px(axis_y - 4.0),
            b = px(plot_bottom),
            tx = px(x + dx),
            ty = px(plot_bottom + 24.0),
        );
    }
    let _ = write!(o, r#"<text x="12" y="{}" class="t">ms from the window's opening</text>"#, px(plot_bottom + 12.0));
    // Where the source's stop ends and the destination's start begins: the vring
    // bases cross here.
    let handover =
        steps.iter().filter(|s| s.side == Side::Destination && s.window == switchover::ids::Window::Blackout).map(|s| s.start_ns).min();
    if let Some(t) = handover.filter(|&t| t > 0 && t < close) {
        let x = axis.x(t);
        let _ = write!(
            o,
            r##"<path d="M{x} {a}V{b}" stroke="#c00" stroke-dasharray="3 2"/><text x="{tx}" y="{ty}" text-anchor="end" fill="#c00">source stopped, bases cross: {}</text>"##,
            tick_label(t),
            x = px(x),
            a = px(axis_y),
            b = px(plot_bottom),
            tx = px(x - 3.0),
            ty = px(axis_y + 10.0),
        );
    }

    // Side headers and group labels.
    for (side, first, _) in &side_rows {
        let name = match side {
            Side::Source => "SOURCE (stops its devices)",
            Side::Destination => "DESTINATION (starts its devices)",
        };
        let _ = write!(o, r#"<text x="12" y="{}" font-weight="bold">{name}</text>"#, px(rows[*first].y - 5.0));
    }
    for (a, b, line1, line2) in &group_labels {
        let (y0, y1) = (rows[*a].y, rows[*b - 1].y + rows[*b - 1].height);
        let _ = write!(
            o,
            r##"<path d="M{x} {y0}V{y1}" stroke="#888"/><text x="{tx}" y="{ty}" text-anchor="end" class="l">{}</text><text x="{tx}" y="{ty2}" text-anchor="end" class="t">{}</text>"##,
            esc(line1),
            esc(line2),
            x = px(LEFT - 4.0),
            y0 = px(y0),
            y1 = px(y1),
            tx = px(LEFT - 8.0),
            ty = px((y0 + y1) / 2.0 - 1.0),
            ty2 = px((y0 + y1) / 2.0 + 11.0),
        );
    }

    // Rows.
    for row in &rows {
        if !row.thin {
            let _ = write!(
                o,
                r#"<text x="{}" y="{}" text-anchor="end" class="l">{}</text>"#,
                px(LEFT - 6.0),
                px(row.y + row.height - 2.0),
                esc(&row.label)
            );
        }
        let _ = write!(o, r#"<g transform="translate(0,{})">"#, px(row.y));
        if !row.queued.is_empty() {
            let mut d = String::new();
            let qy = px(row.height - 0.5);
            for (a, b) in &row.queued {
                let _ = write!(d, "M{} {qy}H{}", px(*a), px(*b));
            }
            let _ = write!(o, r#"<path class="q" d="{d}"/>"#);
        }
        for &i in &row.bars {
            let s = &steps[i];
            let (a, b) = if on_channel(s) { (s.end_ns - own[i], s.end_ns) } else { (s.start_ns, s.end_ns) };
            let (xa, xb) = (axis.x(a), axis.x(b));
            let mut class = kind_class(&s.device_kind, &generic);
            if !matches!(s.outcome, switchover::exec::StepOutcome::Done) {
                class.push_str(" f");
            }
            if s.rollback {
                class.push_str(" r");
            }
            if s.fence {
                class.push_str(" x");
            }
            let ring = s.ring.map(|r| format!(" ring {r}")).unwrap_or_default();
            let when = if on_channel(s) {
                format!("sent {}, served {} → {} ms", ms3(s.start_ns), ms3(a), ms3(b))
            } else {
                format!("{} → {} ms", ms3(a), ms3(b))
            };
            let _ = write!(
                o,
                r#"<rect data-step="{}" x="{}" width="{}" height="{}" class="{class}"><title>{} {}{ring} {}{} · lane {} · {when}{}</title></rect>"#,
                esc(&step_id(s)),
                px(xa),
                px((xb - xa).max(0.5)),
                px(row.height),
                s.side.short(),
                esc(&s.device),
                esc(&s.step),
                if s.rollback {
                    " (rollback)"
                } else if s.fence {
                    " (fence)"
                } else {
                    ""
                },
                s.lane,
                if matches!(s.outcome, switchover::exec::StepOutcome::Done) { String::new() } else { format!(" · {:?}", s.outcome) }
            );
        }
        if !row.sends.is_empty() {
            let mut xs = row.sends.clone();
            xs.sort_by(f64::total_cmp);
            xs.dedup_by(|a, b| (*a - *b).abs() < 0.3);
            let mut d = String::new();
            for x in xs {
                let _ = write!(d, "M{} 3v6", px(x));
            }
            let _ = write!(o, r#"<path class="s" d="{d}"/>"#);
        }
        if !row.critical.is_empty() {
            let mut d = String::new();
            let cy = px(row.height + 0.8);
            for (a, b) in &row.critical {
                let _ = write!(d, "M{} {cy}H{}", px(*a), px(b.max(a + 0.5)));
            }
            let _ = write!(o, r#"<path class="c" d="{d}"/>"#);
        }
        o.push_str("</g>");
    }
    o.push_str("</svg>\n");
    o
}
