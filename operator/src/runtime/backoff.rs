//! Retry delays of the controller's watches.
//!
//! kube-runtime's `Controller::owns`/`watches` put all watches behind ONE shared trigger
//! backoff (0.8 s doubling to 30 s, reset only after 120 s without errors). After an API server
//! outage every watch has failed, and their stale errors are drained one shared backoff step at
//! a time, so the operator stays deaf for a minute or more once the server is back. Instead,
//! each watch gets its own [`WatchBackoff`] and the merged trigger stream gets [`NoDelay`].
//!
//! The numbers: the first retry after 0.5 s, doubling to at most 10 s, with up to +25 % jitter
//! so the six watches (and several replicas) do not retry in lockstep; a watch's delays start
//! over once it has gone 60 s without an error. While the API server is down that is at most
//! six requests per 10 s from one operator, and once it is back every watch resumes within one
//! (short) delay of its own, whatever the other watches went through.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use kube::runtime::utils::Backoff;
use kube::runtime::watcher::{self, Event};
use kube::runtime::WatchStreamExt;
use tokio::time::Instant;

/// Delay of a watch's first retry.
pub const WATCH_INITIAL_DELAY: Duration = Duration::from_millis(500);
/// Longest delay between two retries of a watch.
pub const WATCH_MAX_DELAY: Duration = Duration::from_secs(10);
/// A watch that has gone this long without an error starts over at [`WATCH_INITIAL_DELAY`].
pub const WATCH_RESET_AFTER: Duration = Duration::from_secs(60);

/// What a watch has reported since its last error, shared between the stream and its backoff.
#[derive(Debug, Default)]
pub struct WatchHealth {
    /// The watch has worked since the last error.
    ok: AtomicBool,
    /// The last error was a `410 Gone`.
    expired: AtomicBool,
}

impl WatchHealth {
    /// Notes one item of a watcher stream. `Event::Init` only starts a (re)list, which may yet
    /// fail, so it does not count as working.
    pub fn observe<K>(&self, item: &Result<Event<K>, watcher::Error>) {
        match item {
            Ok(Event::Init) => {}
            Ok(_) => self.ok.store(true, Ordering::Relaxed),
            Err(e) => self.expired.store(is_expired(e), Ordering::Relaxed),
        }
    }
}

/// A `410 Gone`/`Expired`: the watch must relist, the API server is fine.
pub fn is_expired(e: &watcher::Error) -> bool {
    match e {
        watcher::Error::WatchError(status) => status.code == 410,
        watcher::Error::InitialListFailed(kube::Error::Api(status))
        | watcher::Error::WatchStartFailed(kube::Error::Api(status))
        | watcher::Error::WatchFailed(kube::Error::Api(status)) => status.code == 410,
        _ => false,
    }
}

/// Applies a [`WatchBackoff`] to one watcher stream, telling it when the watch works again.
pub fn watch_with_backoff<K, S>(stream: S) -> impl Stream<Item = S::Item> + Send
where
    S: Stream<Item = Result<Event<K>, watcher::Error>> + Send,
    K: Send,
{
    let health = Arc::new(WatchHealth::default());
    let seen = health.clone();
    stream
        .inspect(move |item| seen.observe(item))
        .backoff(WatchBackoff::default().with_health(health))
}

/// Exponential backoff (factor 2, capped, jittered) of one watch; it starts over once the watch
/// has worked again or after a quiet period.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    initial: Duration,
    max: Duration,
    reset_after: Duration,
    jitter: bool,
    next: Duration,
    last: Option<Instant>,
    health: Option<Arc<WatchHealth>>,
}

impl Default for WatchBackoff {
    fn default() -> Self {
        WatchBackoff::new(
            WATCH_INITIAL_DELAY,
            WATCH_MAX_DELAY,
            WATCH_RESET_AFTER,
            true,
        )
    }
}

impl WatchBackoff {
    pub fn new(initial: Duration, max: Duration, reset_after: Duration, jitter: bool) -> Self {
        WatchBackoff {
            initial,
            max,
            reset_after,
            jitter,
            next: initial,
            last: None,
            health: None,
        }
    }

    /// Follows what `health` reports of the watch.
    pub fn with_health(mut self, health: Arc<WatchHealth>) -> Self {
        self.health = Some(health);
        self
    }

    /// The delay before the next retry after an error at `now` (without jitter), given whether
    /// the watch worked since the previous error and whether this one is a `410 Gone`.
    pub fn delay_after(&mut self, now: Instant, worked: bool, expired: bool) -> Duration {
        if worked {
            self.next = self.initial;
        }
        if expired {
            self.last = Some(now);
            return self.next.min(self.initial);
        }
        self.next_at(now)
    }

    /// The delay before the next retry, for an error seen at `now` (without jitter).
    pub fn next_at(&mut self, now: Instant) -> Duration {
        if self
            .last
            .is_some_and(|last| now.saturating_duration_since(last) > self.reset_after)
        {
            self.next = self.initial;
        }
        self.last = Some(now);
        let delay = self.next.min(self.max);
        self.next = delay.saturating_mul(2).min(self.max);
        delay
    }
}

/// Adds up to a quarter of `delay`.
fn jittered(delay: Duration) -> Duration {
    let r = getrandom::u32().unwrap_or(0);
    delay + delay.mul_f64(f64::from(r) / f64::from(u32::MAX) / 4.0)
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let (worked, expired) = match &self.health {
            Some(h) => (
                h.ok.swap(false, Ordering::Relaxed),
                h.expired.swap(false, Ordering::Relaxed),
            ),
            None => (false, false),
        };
        let delay = self.delay_after(Instant::now(), worked, expired);
        Some(if self.jitter { jittered(delay) } else { delay })
    }
}

impl Backoff for WatchBackoff {
    /// Ignored: `StreamBackoff` resets on every `Ok` item, and a watcher emits `Ok(Event::Init)`
    /// before each (re)list even when the list then fails, so resetting here would retry a down
    /// API server every 0.5 s forever. [`WatchHealth`] tells real progress instead.
    fn reset(&mut self) {}
}

/// The controller's trigger backoff: never sleeps. Every watch feeding the trigger stream backs
/// off on its own ([`WatchBackoff`]), so a shared delay would only hold back healthy watches
/// (and a graceful shutdown) for the errors of another one.
#[derive(Debug, Clone, Copy, Default)]
pub struct NoDelay;

impl Iterator for NoDelay {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        Some(Duration::ZERO)
    }
}

impl Backoff for NoDelay {
    fn reset(&mut self) {}
}

#[cfg(test)]
mod tests {
    use super::*;

    fn plain() -> WatchBackoff {
        WatchBackoff::new(
            WATCH_INITIAL_DELAY,
            WATCH_MAX_DELAY,
            WATCH_RESET_AFTER,
            false,
        )
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    #[test]
    fn doubles_up_to_the_cap() {
        let mut b = plain();
        let t = Instant::now();
        let delays: Vec<_> = (0..8).map(|i| b.next_at(t + ms(i * 100))).collect();
        assert_eq!(
            delays,
            [500, 1000, 2000, 4000, 8000, 10_000, 10_000, 10_000].map(ms)
        );
    }

    #[test]
    fn starts_over_after_a_quiet_period() {
        let mut b = plain();
        let t = Instant::now();
        for i in 0..5 {
            b.next_at(t + Duration::from_secs(i));
        }
        // Errors keep coming within the reset period: still capped, not reset.
        assert_eq!(b.next_at(t + Duration::from_secs(64)), WATCH_MAX_DELAY);
        // Quiet for longer than the reset period: back to the first delay.
        assert_eq!(b.next_at(t + Duration::from_secs(125)), WATCH_INITIAL_DELAY);
        assert_eq!(b.next_at(t + Duration::from_secs(126)), ms(1000));
    }

    #[test]
    fn an_ok_item_between_errors_does_not_reset() {
        // A relist emits Ok(Init) before failing again: the delays must still grow.
        let mut b = plain();
        b.next();
        Backoff::reset(&mut b);
        b.next();
        Backoff::reset(&mut b);
        assert_eq!(b.next(), Some(ms(2000)));
    }

    #[test]
    fn starts_over_once_the_watch_worked() {
        let mut b = plain();
        let t = Instant::now();
        for i in 0..4 {
            b.delay_after(t + ms(i), false, false);
        }
        assert_eq!(b.delay_after(t + ms(5), true, false), WATCH_INITIAL_DELAY);
        assert_eq!(b.delay_after(t + ms(6), false, false), ms(1000));
    }

    #[test]
    fn gone_retries_soon_without_escalating() {
        let mut b = plain();
        let t = Instant::now();
        for i in 0..4 {
            b.delay_after(t + ms(i), false, false);
        }
        // After an outage the first watch with an old resourceVersion gets 410.
        assert_eq!(b.delay_after(t + ms(5), false, true), WATCH_INITIAL_DELAY);
        assert_eq!(b.delay_after(t + ms(6), false, false), ms(8000));
    }

    #[test]
    fn health_follows_the_stream() {
        let h = WatchHealth::default();
        h.observe::<()>(&Ok(Event::Init));
        assert!(!h.ok.load(Ordering::Relaxed));
        h.observe::<()>(&Ok(Event::InitDone));
        assert!(h.ok.load(Ordering::Relaxed));
        let gone =
            kube::core::Status::failure("too old resource version", "Expired").with_code(410);
        h.observe::<()>(&Err(watcher::Error::WatchError(Box::new(gone))));
        assert!(h.expired.load(Ordering::Relaxed));
        h.observe::<()>(&Err(watcher::Error::NoResourceVersion));
        assert!(!h.expired.load(Ordering::Relaxed));
    }

    #[test]
    fn jitter_adds_at_most_a_quarter() {
        let mut b = WatchBackoff::default();
        for base in [500, 1000, 2000, 4000, 8000, 10_000, 10_000] {
            let d = b.next().expect("never gives up");
            assert!(
                d >= ms(base) && d <= ms(base * 5 / 4),
                "{d:?} for {base} ms"
            );
        }
    }

    #[test]
    fn trigger_never_sleeps_nor_gives_up() {
        assert!(NoDelay.take(100).all(|d| d.is_zero()));
    }
}
