//! Time as the sampler sees it. The agent uses the system's clock; the
//! sampler's tests drive a [`ManualClock`], so their windows, read counts
//! and energies are exact instead of depending on how busy the machine is.

use std::thread::{self, Thread};
use std::time::Instant;

pub(crate) trait Clock: Send + Sync {
    fn now(&self) -> Instant;
    fn sleep_until(&self, t: Instant);
    /// Waits until `t` or until [`wake`](Self::wake); may also return early
    /// for no reason, as `thread::park` may.
    fn park_until(&self, t: Instant);
    /// Ends the current or next [`park_until`](Self::park_until) of `sampler`.
    fn wake(&self, sampler: &Thread);
}

pub(crate) struct SystemClock;

impl Clock for SystemClock {
    fn now(&self) -> Instant {
        Instant::now()
    }

    fn sleep_until(&self, t: Instant) {
        let now = Instant::now();
        if t > now {
            thread::sleep(t - now);
        }
    }

    fn park_until(&self, t: Instant) {
        let now = Instant::now();
        if t > now {
            thread::park_timeout(t - now);
        }
    }

    fn wake(&self, sampler: &Thread) {
        sampler.unpark();
    }
}

#[cfg(test)]
pub(crate) use manual::ManualClock;

#[cfg(test)]
mod manual {
    use std::sync::{Condvar, Mutex, MutexGuard};
    use std::thread::Thread;
    use std::time::{Duration, Instant};

    use super::Clock;

    /// A clock that moves only when the sampler waits. Sleeps (the idle
    /// baseline, retry pauses) jump to their end at once. Parks (the ticks
    /// during the work) run up to a horizon the work sets with
    /// [`run_for`](Self::run_for), so the window ends exactly when the work
    /// says; a clock made [`free_running`](Self::free_running) has none.
    pub(crate) struct ManualClock {
        start: Instant,
        state: Mutex<State>,
        changed: Condvar,
    }

    struct State {
        now: Duration,
        horizon: Option<Duration>,
        /// The tick the sampler waits for, while it waits.
        waiting_for: Option<Duration>,
        woken: bool,
        /// Called with (from, to) each time the time moves, before any read
        /// at `to`: where a fake device writes its sensor files.
        on_advance: Box<dyn FnMut(Duration, Duration) + Send>,
    }

    impl State {
        fn advance(&mut self, to: Duration) {
            if to > self.now {
                (self.on_advance)(self.now, to);
                self.now = to;
            }
        }
    }

    impl ManualClock {
        pub(crate) fn new(on_advance: impl FnMut(Duration, Duration) + Send + 'static) -> Self {
            Self::with_horizon(Some(Duration::ZERO), on_advance)
        }

        pub(crate) fn free_running() -> Self {
            Self::with_horizon(None, |_, _| {})
        }

        fn with_horizon(
            horizon: Option<Duration>,
            on_advance: impl FnMut(Duration, Duration) + Send + 'static,
        ) -> Self {
            let state = State {
                now: Duration::ZERO,
                horizon,
                waiting_for: None,
                woken: false,
                on_advance: Box::new(on_advance),
            };
            ManualClock { start: Instant::now(), state: Mutex::new(state), changed: Condvar::new() }
        }

        fn lock(&self) -> MutexGuard<'_, State> {
            self.state.lock().unwrap()
        }

        /// Lets the sampler's ticks run for `span` from now; returns once it
        /// waits for a tick past the end, with the clock at the end.
        pub(crate) fn run_for(&self, span: Duration) {
            let mut state = self.lock();
            let end = state.now + span;
            state.horizon = Some(end);
            self.changed.notify_all();
            let mut state = self.changed.wait_while(state, |s| s.waiting_for.is_none_or(|t| t <= end)).unwrap();
            state.advance(end);
        }
    }

    impl Clock for ManualClock {
        fn now(&self) -> Instant {
            self.start + self.lock().now
        }

        fn sleep_until(&self, t: Instant) {
            self.lock().advance(t - self.start);
        }

        fn park_until(&self, t: Instant) {
            let t = t - self.start;
            let mut state = self.lock();
            state.waiting_for = Some(t);
            self.changed.notify_all();
            let mut state =
                self.changed.wait_while(state, |s| !s.woken && s.horizon.is_some_and(|horizon| horizon < t)).unwrap();
            state.waiting_for = None;
            if state.woken {
                state.woken = false;
            } else {
                state.advance(t);
            }
        }

        fn wake(&self, _sampler: &Thread) {
            self.lock().woken = true;
            self.changed.notify_all();
        }
    }
}
