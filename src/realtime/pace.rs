//! Write pacing for busy sockets on a busy server: a socket that is sent frames fast and wrote
//! within the last window holds what arrives until the window has passed, then writes all of it
//! at once; a socket sent a frame now and then writes each at once.
//!
//! Each socket write on TCP costs the kernel about the same whatever it carries (on loopback the
//! receiver's side of it too), so a socket that is sent frames faster than one per window gets
//! them in one write per window instead of one write per frame. That only pays when the server
//! is short of time: the window in force grows with how busy the runtime's workers are
//! ([`Busy`]), from nothing while they are idle half the time or more to the configured
//! `window` once they are nearly always busy. A quiet socket or an idle server sees no added
//! delay; a busy socket on a saturated server at most `window`. A window of zero writes every
//! frame as it comes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

/// Worker busyness (fraction of the time not parked) at or below which nothing is held.
const BUSY_LOW: f64 = 0.5;
/// Busyness from which the whole configured window is used.
const BUSY_HIGH: f64 = 0.85;
/// How often [`Busy::sample`] looks at the runtime while it is doing anything.
const SAMPLE_EVERY: Duration = Duration::from_millis(25);
/// How often it looks while the runtime is idle, so an idle server is not woken 40 times a
/// second for nothing (the pacing only matters once the workers are busy).
const IDLE_SAMPLE_EVERY: Duration = Duration::from_millis(250);
/// Busyness under which the runtime counts as idle for sampling.
const IDLE_BELOW: f64 = 0.05;

/// How busy the runtime's workers have been lately: the share of their time spent running
/// tasks rather than parked, smoothed over about a tenth of a second. Shared by every socket's
/// pacer; kept up to date by [`Busy::sample`].
#[derive(Clone, Debug)]
pub struct Busy(Arc<AtomicU32>);

impl Busy {
    /// A gauge that reads idle until [`Busy::sample`] runs.
    pub fn new() -> Self {
        Self(Arc::default())
    }

    /// A gauge fixed at `fraction` (0 to 1), for tests.
    #[cfg(test)]
    pub fn fixed(fraction: f64) -> Self {
        let b = Self::new();
        b.set(fraction);
        b
    }

    /// The smoothed share of time the workers were busy, 0 to 1.
    pub fn get(&self) -> f64 {
        f64::from(self.0.load(Ordering::Relaxed)) / 1000.0
    }

    fn set(&self, fraction: f64) {
        // Per mille, which is all the precision the pacing needs.
        #[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)] // clamped to 0..=1000
        self.0.store((fraction.clamp(0.0, 1.0) * 1000.0).round() as u32, Ordering::Relaxed);
    }

    /// The share of the configured window to hold for: 0 at [`BUSY_LOW`] or less, rising to 1
    /// at [`BUSY_HIGH`].
    fn window_share(&self) -> f64 {
        ((self.get() - BUSY_LOW) / (BUSY_HIGH - BUSY_LOW)).clamp(0.0, 1.0)
    }

    /// Reads the runtime's worker busy time every [`SAMPLE_EVERY`] (every
    /// [`IDLE_SAMPLE_EVERY`] while it is idle) for as long as the server runs (call on the
    /// runtime whose workers serve the sockets).
    pub async fn sample(self) {
        let metrics = tokio::runtime::Handle::current().metrics();
        let workers = metrics.num_workers().max(1);
        let busy_total = || (0..workers).map(|w| metrics.worker_total_busy_duration(w)).sum::<Duration>();
        let (mut at, mut busy) = (Instant::now(), busy_total());
        loop {
            tokio::time::sleep(if self.get() < IDLE_BELOW { IDLE_SAMPLE_EVERY } else { SAMPLE_EVERY }).await;
            let (now, total) = (Instant::now(), busy_total());
            let wall = now.duration_since(at).as_secs_f64();
            if wall > 0.0 {
                #[allow(clippy::cast_precision_loss)] // a handful of workers
                let share = total.saturating_sub(busy).as_secs_f64() / (wall * workers as f64);
                self.set(0.7 * self.get() + 0.3 * share.clamp(0.0, 1.0));
            }
            (at, busy) = (now, total);
        }
    }
}

impl Default for Busy {
    fn default() -> Self {
        Self::new()
    }
}

/// Frames a held write is expected to carry, at least, for holding to be worth its delay.
const BATCH_MIN: f64 = 3.0;
/// Frames a held write aims to carry: a socket sent frames faster than this a window is held
/// only as long as it takes to gather about this many.
const BATCH_TARGET: f64 = 8.0;

/// When a socket may write next.
#[derive(Debug)]
pub struct Pacer {
    /// The longest hold, used in full once the server is saturated.
    window: Duration,
    busy: Busy,
    /// When the socket last wrote paced frames.
    last: Option<Instant>,
    /// When the held frames go out, while some are held.
    due: Option<Instant>,
    /// Frames a second this socket has been written lately (smoothed).
    rate: f64,
}

impl Pacer {
    pub fn new(window: Duration, busy: Busy) -> Self {
        Self { window, busy, last: None, due: None, rate: 0.0 }
    }

    /// Something arrived to be written: true to write it now, false to hold it (and whatever
    /// comes after it) until [`Pacer::due`] fires. The window in force is the configured one
    /// scaled by how busy the server is. Held only if the socket's recent rate would put
    /// [`BATCH_MIN`] frames or more into that window, and then only until the last write is
    /// the window ago, or the time [`BATCH_TARGET`] frames take to come if that is sooner: a
    /// socket sent a frame now and then is not slowed at all, a very busy one hardly.
    pub fn ready(&mut self, now: Instant) -> bool {
        if self.due.is_some() {
            return false;
        }
        let window = self.window.mul_f64(self.busy.window_share());
        if self.rate * window.as_secs_f64() < BATCH_MIN {
            return true;
        }
        let hold = window.min(Duration::from_secs_f64(BATCH_TARGET / self.rate));
        match self.last {
            Some(last) if now < last + hold => {
                self.due = Some(last + hold);
                false
            }
            _ => true,
        }
    }

    /// True while frames are held for a write at the end of the window.
    pub fn holding(&self) -> bool {
        self.due.is_some()
    }

    /// Ends when the held frames are due; never while none are held.
    pub async fn due(&self) {
        match self.due {
            Some(at) => tokio::time::sleep_until(at).await,
            None => std::future::pending().await,
        }
    }

    /// The socket wrote `frames` at `now`; with `more_waiting` (more than one write's worth had
    /// queued), what waits is held for the next window rather than written at once.
    pub fn wrote(&mut self, now: Instant, frames: usize, more_waiting: bool) {
        if let Some(last) = self.last {
            // A long quiet spell counts as one window's worth, so the rate falls fast but not to 0.
            let gap = now.duration_since(last).as_secs_f64().clamp(1e-4, self.window.as_secs_f64().max(1e-3) * 4.0);
            #[allow(clippy::cast_precision_loss)] // at most a few hundred frames
            let now_rate = frames as f64 / gap;
            self.rate = 0.7 * self.rate + 0.3 * now_rate;
        }
        self.last = Some(now);
        self.due = None;
        if more_waiting {
            self.ready(now);
        }
    }

    /// Nothing was left to write after all: hold nothing, and leave the window as it was.
    pub fn cancel(&mut self) {
        self.due = None;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    #[tokio::test(start_paused = true)]
    async fn a_socket_sent_a_frame_now_and_then_is_never_held() {
        let mut p = Pacer::new(20 * MS, Busy::fixed(1.0));
        let mut t = Instant::now();
        // One frame every 15 ms: about one a window, nothing to gain by holding.
        for _ in 0..50 {
            t += 15 * MS;
            assert!(p.ready(t), "a frame every 15 ms goes out at once");
            p.wrote(t, 1, false);
        }
        assert!(!p.holding());
    }

    #[tokio::test(start_paused = true)]
    async fn a_busy_socket_writes_once_per_window_and_an_idle_one_at_once_again() {
        let mut p = Pacer::new(10 * MS, Busy::fixed(1.0));
        // A frame every millisecond, each written as it came: then the pacer holds them for one
        // write per eight frames or so.
        let start = Instant::now() - 20 * MS;
        for i in 0..20 {
            p.wrote(start + i * MS, 1, false);
        }
        assert!(p.rate > 300.0, "rate {}", p.rate);
        let t0 = Instant::now();
        p.wrote(t0, 1, false);
        assert!(!p.ready(t0 + 3 * MS), "held within the window");
        assert!(p.holding());
        assert!(!p.ready(t0 + 6 * MS));
        p.due().await;
        let held = Instant::now() - t0;
        assert!(held > 6 * MS && held <= 10 * MS, "due once about eight frames came, within the window: {held:?}");
        p.wrote(Instant::now(), 10, false);
        assert!(!p.holding());
        // A write that left a backlog behind: the rest waits for the next window.
        p.wrote(Instant::now(), 10, true);
        assert!(p.holding(), "a backlog is held for the next window");
        p.cancel();
        // Quiet for longer than the window: the next frame goes out at once again.
        assert!(p.ready(Instant::now() + 25 * MS));
    }

    /// A pacer that has seen a frame every 3 ms (written one by one), the last at `now`: eight
    /// frames take 24 ms to come, so a 20 ms window is not cut short by the batch target.
    fn busy_socket(window: Duration, busy: &Busy, now: Instant) -> Pacer {
        let mut p = Pacer::new(window, busy.clone());
        for i in (1..=20).rev() {
            p.wrote(now - i * 3 * MS, 1, false);
        }
        p.wrote(now, 1, false);
        p
    }

    #[tokio::test(start_paused = true)]
    async fn the_window_in_force_grows_with_how_busy_the_server_is() {
        let t0 = Instant::now();
        // Workers idle half the time: nothing is held, however busy the socket.
        let idle = Busy::fixed(BUSY_LOW);
        let mut p = busy_socket(20 * MS, &idle, t0);
        assert!(p.ready(t0 + MS), "an idle server writes at once");
        // Nearly always busy: the whole window (capped by the eight-frame target) is used.
        let saturated = Busy::fixed(0.95);
        let mut p = busy_socket(20 * MS, &saturated, t0);
        assert!(!p.ready(t0 + MS));
        p.due().await;
        let full = Instant::now() - t0;
        assert!(full >= 19 * MS && full <= 21 * MS, "a saturated server holds the whole window: {full:?}");
        // Half-way between: about half the window.
        let t1 = Instant::now();
        let half = Busy::fixed(f64::midpoint(BUSY_LOW, BUSY_HIGH));
        let mut p = busy_socket(20 * MS, &half, t1);
        assert!(!p.ready(t1 + MS));
        p.due().await;
        let held = Instant::now() - t1;
        assert!(held >= 9 * MS && held <= 11 * MS, "half busy holds half as long: {held:?}");
        // The gauge moves, the pacer follows: idle again, the next frame goes at once.
        half.set(0.0);
        p.wrote(Instant::now(), 10, false);
        assert!(p.ready(Instant::now() + MS));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 1)]
    async fn the_busy_gauge_follows_the_runtime() {
        let busy = Busy::new();
        assert!(busy.get() < f64::EPSILON, "reads idle before sampling");
        let sampler = tokio::spawn(busy.clone().sample());
        // Keep the runtime's only worker busy for a while (the test body itself runs beside the
        // workers, not on one), then let it idle.
        let gauge = busy.clone();
        let spin = tokio::spawn(async move {
            // Until the gauge says busy: past the idle sampling period, the fast sampling then
            // needs a few samples to move the smoothed value, and a loaded machine delays the
            // samples, so no fixed time is long enough everywhere. The bound only keeps a broken
            // gauge from hanging the test.
            let spin_until = std::time::Instant::now() + IDLE_SAMPLE_EVERY + Duration::from_secs(20);
            while gauge.get() <= 0.5 && std::time::Instant::now() < spin_until {
                // A millisecond of work per poll, like a socket task writing a batch.
                let poll_until = std::time::Instant::now() + Duration::from_millis(1);
                while std::time::Instant::now() < poll_until {
                    std::hint::spin_loop();
                }
                tokio::task::yield_now().await;
            }
        });
        spin.await.expect("spin");
        let while_busy = busy.get();
        // Idle now: the next samples bring it down (as soon as the sampler gets to run).
        let mut after = busy.get();
        for _ in 0..400 {
            tokio::time::sleep(Duration::from_millis(50)).await;
            after = busy.get();
            if after < while_busy {
                break;
            }
        }
        sampler.abort();
        assert!(while_busy > 0.5, "a spinning worker reads busy: {while_busy}");
        assert!(after < while_busy, "and less busy once it sleeps: {while_busy} then {after}");
    }

    #[tokio::test(start_paused = true)]
    async fn a_zero_window_never_holds() {
        let mut p = Pacer::new(Duration::ZERO, Busy::fixed(1.0));
        let t0 = Instant::now();
        for _ in 0..100 {
            assert!(p.ready(t0));
            p.wrote(t0, 5, false);
        }
        assert!(!p.holding());
        let due = tokio::time::timeout(Duration::from_secs(1), p.due()).await;
        assert!(due.is_err(), "nothing held, nothing due");
    }
}
