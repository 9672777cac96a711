//! What the actions expect a step to cost, and a backend's measured round trip:
//! what [`super::StepActions::expect`] and [`super::StepActions::probe`] answer, for
//! the prediction ([`crate::predict`]).

use std::time::Duration;

/// A measured round trip on a backend's control channel
/// ([`crate::exec::StepActions::probe`]).
///
/// ```
/// use std::time::Duration;
/// use switchover::predict::RoundTrip;
/// let rt = RoundTrip { alone: Duration::from_micros(35), per_request: Duration::from_micros(9) };
/// assert_eq!(rt.transport(), Duration::from_micros(26));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RoundTrip {
    /// One request alone, from sending it to its reply.
    pub alone: Duration,
    /// Per request, of several sent back to back: how long the backend is busy
    /// with one (the channel's throughput).
    pub per_request: Duration,
}

impl RoundTrip {
    /// The part of a round trip that is not the backend's work: sending, waking
    /// the backend and the reader, the reply.
    pub fn transport(&self) -> Duration {
        self.alone.saturating_sub(self.per_request)
    }
}

/// What the actions expect a step to cost ([`crate::exec::StepActions::expect`]).
///
/// ```
/// use std::time::Duration;
/// use switchover::predict::Expected;
/// let e = Expected::request(Duration::from_micros(10), Duration::from_micros(40));
/// assert_eq!((e.service, e.answer), (Duration::from_micros(10), Some(Duration::from_micros(40))));
/// assert_eq!(Expected::unanswered(Duration::from_micros(10)).answer, None);
/// assert_eq!(Expected::blocking(Duration::from_micros(3)).answer, Some(Duration::from_micros(3)));
/// ```
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Expected {
    /// How long the step keeps whoever does the work busy (a backend, a lane):
    /// requests on one control channel queue behind each other for this long.
    pub service: Duration,
    /// From the step's start to its answer with nothing queued before it
    /// (service plus the round trip's transport); `None` for a request answered
    /// as soon as it is sent (no reply).
    pub answer: Option<Duration>,
}

impl Expected {
    /// Work done on the lane: it answers when done.
    pub fn blocking(d: Duration) -> Expected {
        Expected { service: d, answer: Some(d) }
    }
    /// A request with a reply.
    pub fn request(service: Duration, answer: Duration) -> Expected {
        Expected { service, answer: Some(answer) }
    }
    /// A request without a reply.
    pub fn unanswered(service: Duration) -> Expected {
        Expected { service, answer: None }
    }
}
