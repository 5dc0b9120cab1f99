//! Rate limits: login attempts per address and per account (with growing back-off), and
//! request budgets per user and per organization. Each answers 429 with `Retry-After`.
//!
//! Built on governor's GCRA limiters, driven by tokio's clock (so tests can pause time). Keyed
//! state is bounded: every `SWEEP_EVERY` checks, keys whose budget is full again are dropped,
//! and the back-off table is emptied of expired entries.

use std::collections::HashMap;
use std::hash::Hash;
use std::net::IpAddr;
use std::num::NonZeroU32;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use governor::clock::Clock;
use governor::middleware::NoOpMiddleware;
use governor::state::keyed::DefaultKeyedStateStore;
use governor::{Quota, RateLimiter};
use serde::{Deserialize, Serialize};

use crate::ids::Id;

/// Limits from the configuration.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct LimitsConfig {
    /// Login attempts per client address per minute.
    pub login_per_addr_per_min: u32,
    /// Failed login attempts per account per minute before it is locked out for a while.
    pub login_failures_per_account_per_min: u32,
    /// First lock-out after the account limit trips; it doubles each time it trips again.
    pub login_lockout_s: u64,
    /// Longest lock-out.
    pub login_lockout_max_s: u64,
    /// Requests per second per user (burst: twice this).
    pub user_requests_per_s: u32,
    /// Requests per second per organization (burst: twice this).
    pub org_requests_per_s: u32,
}

impl Default for LimitsConfig {
    fn default() -> Self {
        Self {
            login_per_addr_per_min: 30,
            login_failures_per_account_per_min: 5,
            login_lockout_s: 30,
            login_lockout_max_s: 3600,
            user_requests_per_s: 50,
            org_requests_per_s: 1000,
        }
    }
}

/// Time since the limiter was made, on tokio's clock.
#[derive(Clone)]
pub struct TokioClock {
    base: tokio::time::Instant,
}

impl Clock for TokioClock {
    type Instant = Duration;
    fn now(&self) -> Duration {
        self.base.elapsed()
    }
}

type Keyed<K> = RateLimiter<K, DefaultKeyedStateStore<K>, TokioClock, NoOpMiddleware<Duration>>;

/// Checks between sweeps of idle keys.
const SWEEP_EVERY: u64 = 4096;

/// Which limit refused, for metrics and audit.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Limiter {
    LoginAddr,
    LoginAccount,
    User,
    Org,
    /// A registered service's budget at the gateway.
    Service,
}

impl Limiter {
    pub fn as_str(self) -> &'static str {
        match self {
            Limiter::LoginAddr => "login_addr",
            Limiter::LoginAccount => "login_account",
            Limiter::User => "user",
            Limiter::Org => "org",
            Limiter::Service => "service",
        }
    }
}

/// A refusal: which limit, and how long until trying again makes sense.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Limited {
    pub limiter: Limiter,
    pub retry_after: Duration,
}

pub struct Limits {
    clock: TokioClock,
    config: LimitsConfig,
    login_addr: Keyed<IpAddr>,
    login_account: Keyed<(Id, String)>,
    user: Keyed<Id>,
    org: Keyed<Id>,
    /// Account → (times the limit tripped in a row, locked until).
    lockouts: Mutex<HashMap<(Id, String), (u32, Duration)>>,
    checks: AtomicU64,
}

fn nz(n: u32) -> NonZeroU32 {
    NonZeroU32::new(n.max(1)).unwrap_or(NonZeroU32::MIN)
}

impl Limits {
    pub fn new(config: LimitsConfig) -> Self {
        let clock = TokioClock { base: tokio::time::Instant::now() };
        let per_s = |n: u32| Quota::per_second(nz(n)).allow_burst(nz(n.saturating_mul(2)));
        Self {
            login_addr: keyed(Quota::per_minute(nz(config.login_per_addr_per_min)), &clock),
            login_account: keyed(Quota::per_minute(nz(config.login_failures_per_account_per_min)), &clock),
            user: keyed(per_s(config.user_requests_per_s), &clock),
            org: keyed(per_s(config.org_requests_per_s), &clock),
            lockouts: Mutex::default(),
            checks: AtomicU64::new(0),
            clock,
            config,
        }
    }

    /// Before a login attempt: the address budget, and any lock-out of the account.
    pub fn login_attempt(&self, addr: Option<IpAddr>, org: Id, login: &str) -> Result<(), Limited> {
        self.tick();
        if let Some(a) = addr {
            check(&self.login_addr, &a, &self.clock, Limiter::LoginAddr)?;
        }
        let now = self.clock.now();
        let key = (org, login.to_lowercase());
        if let Some((_, until)) = self.lockouts.lock().ok().and_then(|m| m.get(&key).copied()) {
            if until > now {
                return Err(Limited { limiter: Limiter::LoginAccount, retry_after: until.saturating_sub(now) });
            }
        }
        Ok(())
    }

    /// After a failed login. `Err` when this failure trips the account's limit: it is then
    /// locked out for a time that doubles with each trip in a row.
    pub fn login_failed(&self, org: Id, login: &str) -> Result<(), Limited> {
        let key = (org, login.to_lowercase());
        if self.login_account.check_key(&key).is_ok() {
            return Ok(());
        }
        let now = self.clock.now();
        let mut map = self
            .lockouts
            .lock()
            .map_err(|_| Limited { limiter: Limiter::LoginAccount, retry_after: Duration::from_secs(1) })?;
        let strikes = map.get(&key).map_or(0, |(s, _)| *s) + 1;
        let base = Duration::from_secs(self.config.login_lockout_s);
        let lock =
            base.saturating_mul(1 << (strikes - 1).min(20)).min(Duration::from_secs(self.config.login_lockout_max_s));
        map.insert(key, (strikes, now + lock));
        Err(Limited { limiter: Limiter::LoginAccount, retry_after: lock })
    }

    /// After a successful login: the account's strikes are forgiven.
    pub fn login_succeeded(&self, org: Id, login: &str) {
        if let Ok(mut m) = self.lockouts.lock() {
            m.remove(&(org, login.to_lowercase()));
        }
    }

    /// A request by `user` of `org`.
    pub fn request(&self, org: Id, user: Id) -> Result<(), Limited> {
        self.tick();
        check(&self.user, &user, &self.clock, Limiter::User)?;
        check(&self.org, &org, &self.clock, Limiter::Org)
    }

    fn tick(&self) {
        if self.checks.fetch_add(1, Ordering::Relaxed) % SWEEP_EVERY == SWEEP_EVERY - 1 {
            self.login_addr.retain_recent();
            self.login_account.retain_recent();
            self.user.retain_recent();
            self.org.retain_recent();
            let now = self.clock.now();
            if let Ok(mut m) = self.lockouts.lock() {
                // A lock-out long past its end carries no strikes forward.
                let max = Duration::from_secs(self.config.login_lockout_max_s);
                m.retain(|_, (_, until)| *until + max > now);
            }
        }
    }
}

fn keyed<K: Clone + Hash + Eq>(quota: Quota, clock: &TokioClock) -> Keyed<K> {
    RateLimiter::new(quota, DefaultKeyedStateStore::default(), clock.clone())
}

type Direct =
    RateLimiter<governor::state::NotKeyed, governor::state::InMemoryState, TokioClock, NoOpMiddleware<Duration>>;

/// One budget of its own (a registered service's at the gateway): `per_s` calls a second, in
/// bursts of up to twice that.
pub struct Budget {
    clock: TokioClock,
    limiter: Direct,
    limiter_kind: Limiter,
}

impl Budget {
    pub fn per_second(per_s: u32, limiter_kind: Limiter) -> Self {
        let clock = TokioClock { base: tokio::time::Instant::now() };
        let quota = Quota::per_second(nz(per_s)).allow_burst(nz(per_s.saturating_mul(2)));
        Self { limiter: RateLimiter::direct_with_clock(quota, clock.clone()), clock, limiter_kind }
    }

    /// Takes one call from the budget, or says how long until there is room.
    pub fn check(&self) -> Result<(), Limited> {
        self.limiter.check().map_err(|not_until| Limited {
            limiter: self.limiter_kind,
            retry_after: not_until.wait_time_from(self.clock.now()),
        })
    }
}

fn check<K: Clone + Hash + Eq>(l: &Keyed<K>, key: &K, clock: &TokioClock, limiter: Limiter) -> Result<(), Limited> {
    l.check_key(key).map_err(|not_until| Limited { limiter, retry_after: not_until.wait_time_from(clock.now()) })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn login_throttling_trips_backs_off_and_recovers() {
        let limits = Limits::new(LimitsConfig::default());
        let org = Id::new();
        for _ in 0..5 {
            assert!(limits.login_attempt(None, org, "eve").is_ok());
            assert!(limits.login_failed(org, "eve").is_ok());
        }
        // The sixth failure in a minute trips: locked for 30 s.
        let first = limits.login_failed(org, "eve").expect_err("trips");
        assert_eq!(first.retry_after, Duration::from_secs(30));
        let refused = limits.login_attempt(None, org, "EVE").expect_err("locked, whatever the case");
        assert_eq!(refused.limiter, Limiter::LoginAccount);
        // Others are not affected.
        assert!(limits.login_attempt(None, org, "bob").is_ok());
        tokio::time::advance(Duration::from_secs(31)).await;
        assert!(limits.login_attempt(None, org, "eve").is_ok(), "recovers after the lock-out");
        // Tripping again doubles the lock-out.
        let second = (0..10).find_map(|_| limits.login_failed(org, "eve").err()).expect("trips again");
        assert_eq!(second.retry_after, Duration::from_secs(60));
        tokio::time::advance(Duration::from_secs(61)).await;
        assert!(limits.login_attempt(None, org, "eve").is_ok());
        limits.login_succeeded(org, "eve");
        tokio::time::advance(Duration::from_secs(60)).await;
        assert!(limits.login_failed(org, "eve").is_ok(), "a success forgives, the budget refills");
    }

    #[tokio::test(start_paused = true)]
    async fn request_budgets_refill() {
        let config = LimitsConfig { user_requests_per_s: 5, ..LimitsConfig::default() };
        let limits = Limits::new(config);
        let (org, user) = (Id::new(), Id::new());
        for _ in 0..10 {
            assert!(limits.request(org, user).is_ok(), "burst of twice the rate");
        }
        let over = limits.request(org, user).expect_err("over budget");
        assert_eq!(over.limiter, Limiter::User);
        assert!(over.retry_after > Duration::ZERO && over.retry_after <= Duration::from_millis(200));
        assert!(limits.request(org, Id::new()).is_ok(), "another user has their own budget");
        tokio::time::advance(Duration::from_millis(200)).await;
        assert!(limits.request(org, user).is_ok());
    }

    #[tokio::test(start_paused = true)]
    async fn addresses_have_a_budget() {
        let limits = Limits::new(LimitsConfig { login_per_addr_per_min: 3, ..LimitsConfig::default() });
        let addr: IpAddr = [127, 0, 0, 9].into();
        for i in 0..3 {
            assert!(limits.login_attempt(Some(addr), Id::new(), &format!("u{i}")).is_ok());
        }
        let r = limits.login_attempt(Some(addr), Id::new(), "u9").expect_err("address over budget");
        assert_eq!(r.limiter, Limiter::LoginAddr);
        tokio::time::advance(Duration::from_secs(20)).await;
        assert!(limits.login_attempt(Some(addr), Id::new(), "u9").is_ok());
    }
}
