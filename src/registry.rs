//! The service registry at work: a health checker per registered service that has a check,
//! calling it through [`crate::egress`] with its credential, counting consecutive results
//! against its thresholds, and writing each change of status down (an event, an audit record,
//! a line of history) through the domain.
//!
//! Checkers follow the records: every few seconds (and at once when a service is changed
//! through the API) the list of checked services is read again; a checker whose service is
//! gone or changed stops, and a new one starts from the new record.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;

use crate::domain::services::{self, Health, HealthCheck, Service};
use crate::egress::Egress;
use crate::ids::Id;
use crate::metrics::{Metrics, OutcomeLabels, ServiceLabels};
use crate::store::Store;
use crate::store::writer::{MutationCtx, Writer};
use crate::tenancy::OrgScope;
use crate::vault::VaultCell;

/// How often the checkers are matched against the records when nothing pokes them.
const RECONCILE_EVERY: Duration = Duration::from_secs(5);

/// What the registry is built from.
pub struct Parts {
    pub store: Store,
    pub writer: Writer,
    pub egress: Egress,
    pub vault: VaultCell,
    pub metrics: Arc<Metrics>,
    /// Fresh tokens for services whose credential is an OAuth connection.
    pub oauth: crate::oauth::OAuth,
}

/// A running checker: the record's version it checks by, and its task.
type Checker = (u64, tokio::task::JoinHandle<()>);

struct Inner {
    parts: Parts,
    checkers: Mutex<HashMap<(Id, Id), Checker>>,
    poke: Notify,
}

/// The registry's running part (cheap to clone).
#[derive(Clone)]
pub struct Registry {
    inner: Arc<Inner>,
}

/// What one check found.
struct Probe {
    ok: bool,
    slow: bool,
    detail: String,
}

impl Registry {
    pub fn new(parts: Parts) -> Self {
        Self { inner: Arc::new(Inner { parts, checkers: Mutex::default(), poke: Notify::new() }) }
    }

    /// Keeps a checker running for every checked service until the task is dropped.
    pub async fn run(self, mut stop: tokio::sync::watch::Receiver<bool>) {
        loop {
            self.reconcile().await;
            tokio::select! {
                () = tokio::time::sleep(RECONCILE_EVERY) => {}
                () = self.inner.poke.notified() => {}
                _ = stop.changed() => break,
            }
        }
        for (_, (_, task)) in lock(&self.inner.checkers).drain() {
            task.abort();
        }
    }

    /// Tells the registry a service changed (its checker starts over at once).
    pub fn poke(&self) {
        self.inner.poke.notify_one();
    }

    /// Re-seals every registered service's credential under `vault` (a vault rotation).
    pub async fn reseal(
        &self,
        vault: Arc<crate::vault::Vault>,
        actor: &str,
    ) -> Result<usize, crate::domain::DomainError> {
        let orgs = self.inner.parts.store.read(services::orgs_with_services).await?;
        let mut n = 0;
        for org in orgs {
            let ctx = MutationCtx {
                scope: OrgScope::from_own_record(org),
                actor: actor.to_owned(),
                request_id: None,
                client_addr: None,
            };
            n += services::reseal(&self.inner.parts.writer, vault.clone(), ctx).await?;
        }
        Ok(n)
    }

    async fn reconcile(&self) {
        let found = match self.inner.parts.store.read(services::checked).await {
            Ok(f) => f,
            Err(e) => {
                tracing::warn!(error = %e, "service registry: cannot read the services");
                return;
            }
        };
        let mut checkers = lock(&self.inner.checkers);
        let wanted: HashMap<(Id, Id), &Service> = found.iter().map(|(org, s)| ((*org, s.id), s)).collect();
        checkers.retain(|key, (version, task)| {
            let keep = wanted.get(key).is_some_and(|s| s.version == *version) && !task.is_finished();
            if !keep {
                task.abort();
                let labels = ServiceLabels { org: key.0.to_string(), service: key.1.to_string() };
                self.inner.parts.metrics.service_health.remove(&labels);
            }
            keep
        });
        for ((org, id), s) in wanted {
            if let std::collections::hash_map::Entry::Vacant(slot) = checkers.entry((org, id)) {
                slot.insert((s.version, tokio::spawn(self.inner.clone().check(org, s.clone()))));
            }
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // Held for map updates only, never across an await.
    m.lock().unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// The health a run of results points to, from `current`.
fn judge(current: Health, check: &HealthCheck, probe: &Probe, good: u32, bad: u32) -> Health {
    if !probe.ok {
        return if bad >= check.unhealthy_threshold { Health::Down } else { current };
    }
    let target = if probe.slow { Health::Degraded } else { Health::Up };
    match current {
        // Back from down only after enough good checks in a row.
        Health::Down if good < check.healthy_threshold => Health::Down,
        _ => target,
    }
}

fn gauge(h: Health) -> i64 {
    match h {
        Health::Unknown => 0,
        Health::Up => 1,
        Health::Degraded => 2,
        Health::Down => 3,
    }
}

impl Inner {
    /// Checks one service on its interval, for as long as its record stays as it is.
    async fn check(self: Arc<Self>, org: Id, s: Service) {
        let Some(check) = s.health_check.clone() else { return };
        let labels = ServiceLabels { org: org.to_string(), service: s.id.to_string() };
        let m = &self.parts.metrics;
        let mut current = s.health;
        m.service_health.get_or_create(&labels).set(gauge(current));
        let (mut good, mut bad) = (0u32, 0u32);
        let mut tick = tokio::time::interval(Duration::from_millis(check.interval_ms));
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            let probe = self.probe(org, &s, &check).await;
            let outcome = if !probe.ok {
                "failed"
            } else if probe.slow {
                "slow"
            } else {
                "ok"
            };
            m.service_health_checks.get_or_create(&OutcomeLabels { outcome: outcome.into() }).inc();
            if probe.ok {
                good = good.saturating_add(1);
                bad = 0;
            } else {
                bad = bad.saturating_add(1);
                good = 0;
            }
            let next = judge(current, &check, &probe, good, bad);
            if next == current {
                continue;
            }
            let ctx = MutationCtx::system(OrgScope::from_own_record(org));
            match services::record_health(&self.parts.writer, ctx, s.id, s.version, next, probe.detail).await {
                Ok(_) => {
                    current = next;
                    m.service_health.get_or_create(&labels).set(gauge(current));
                }
                Err(e) => tracing::warn!(error = %e, service = %s.id, "cannot record a service's health"),
            }
        }
    }

    /// One GET of the service's health path, its credential on it.
    async fn probe(&self, org: Id, s: &Service, check: &HealthCheck) -> Probe {
        let failed = |detail: String| Probe { ok: false, slow: false, detail };
        let Ok(url) = reqwest::Url::parse(&format!("{}{}", s.base_url, check.path)) else {
            return failed("the health URL does not parse".into());
        };
        let mut req = self.parts.egress.request(reqwest::Method::GET, url);
        // The organization is the one of the service record this checker was started from.
        match self.parts.oauth.service_header(OrgScope::from_own_record(org), s).await {
            Ok(Some((name, value))) => req = req.header(name, value),
            Ok(None) => {}
            Err(e) => return failed(e.to_string()),
        }
        let Ok(req) = req.build() else { return failed("the health request cannot be made".into()) };
        let started = std::time::Instant::now();
        let answer = tokio::time::timeout(Duration::from_millis(check.timeout_ms), self.parts.egress.send(req)).await;
        let took = started.elapsed();
        self.parts.metrics.service_health_check_seconds.observe(took.as_secs_f64());
        match answer {
            Err(_) => failed(format!("no answer within {} ms", check.timeout_ms)),
            Ok(Err(e)) => failed(e.to_string()),
            Ok(Ok(a)) if !(200..300).contains(&a.status) => failed(format!("status {}", a.status)),
            Ok(Ok(a)) => {
                let ms = took.as_millis();
                Probe {
                    ok: true,
                    slow: ms > u128::from(check.degraded_ms),
                    detail: format!("status {} in {ms} ms", a.status),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn probe(ok: bool, slow: bool) -> Probe {
        Probe { ok, slow, detail: String::new() }
    }

    #[test]
    fn health_follows_the_thresholds() {
        let c = HealthCheck { healthy_threshold: 2, unhealthy_threshold: 3, ..HealthCheck::default() };
        // Unknown: one good answer says up; failures count to the threshold.
        assert_eq!(judge(Health::Unknown, &c, &probe(true, false), 1, 0), Health::Up);
        assert_eq!(judge(Health::Unknown, &c, &probe(false, false), 0, 2), Health::Unknown);
        assert_eq!(judge(Health::Up, &c, &probe(false, false), 0, 2), Health::Up);
        assert_eq!(judge(Health::Up, &c, &probe(false, false), 0, 3), Health::Down);
        // Down: back only after two good answers in a row.
        assert_eq!(judge(Health::Down, &c, &probe(true, false), 1, 0), Health::Down);
        assert_eq!(judge(Health::Down, &c, &probe(true, false), 2, 0), Health::Up);
        // Slow answers: degraded, and back up when fast again.
        assert_eq!(judge(Health::Up, &c, &probe(true, true), 5, 0), Health::Degraded);
        assert_eq!(judge(Health::Degraded, &c, &probe(true, false), 6, 0), Health::Up);
    }
}
