//! Write pacing for busy sockets: a socket that is sent frames fast and wrote within the last
//! `window` holds what arrives until the window has passed, then writes all of it at once; a
//! socket sent a frame now and then writes each at once.
//!
//! Each socket write on TCP costs the kernel about the same whatever it carries (on loopback the
//! receiver's side of it too), so a socket that is sent frames faster than one per window gets
//! them in one write per window instead of one write per frame. A quiet socket sees no added
//! delay; a busy one at most `window`. A window of zero writes every frame as it comes.

use std::time::Duration;

use tokio::time::Instant;

/// Frames a held write is expected to carry, at least, for holding to be worth its delay.
const BATCH_MIN: f64 = 3.0;
/// Frames a held write aims to carry: a socket sent frames faster than this a window is held
/// only as long as it takes to gather about this many.
const BATCH_TARGET: f64 = 8.0;

/// When a socket may write next.
#[derive(Debug)]
pub struct Pacer {
    window: Duration,
    /// When the socket last wrote paced frames.
    last: Option<Instant>,
    /// When the held frames go out, while some are held.
    due: Option<Instant>,
    /// Frames a second this socket has been written lately (smoothed).
    rate: f64,
}

impl Pacer {
    pub fn new(window: Duration) -> Self {
        Self { window, last: None, due: None, rate: 0.0 }
    }

    /// Something arrived to be written: true to write it now, false to hold it (and whatever
    /// comes after it) until [`Pacer::due`] fires. Held only if the socket's recent rate would
    /// put [`BATCH_MIN`] frames or more into a window, and then only until the last write is
    /// the window ago, or the time [`BATCH_TARGET`] frames take to come if that is sooner: a
    /// socket sent a frame now and then is not slowed at all, a very busy one hardly.
    pub fn ready(&mut self, now: Instant) -> bool {
        if self.due.is_some() {
            return false;
        }
        if self.rate * self.window.as_secs_f64() < BATCH_MIN {
            return true;
        }
        let hold = self.window.min(Duration::from_secs_f64(BATCH_TARGET / self.rate));
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
        let mut p = Pacer::new(20 * MS);
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
        let mut p = Pacer::new(10 * MS);
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

    #[tokio::test(start_paused = true)]
    async fn a_zero_window_never_holds() {
        let mut p = Pacer::new(Duration::ZERO);
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
