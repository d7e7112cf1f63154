//! Leader election with a `coordination.k8s.io/v1` Lease, so two operator replicas can run for
//! HA with one reconciling. Uses only get, create and update on leases (no patch), which is all
//! the chart grants. The decision of what to do with a Lease is a pure function ([`decide`]).

use std::time::Duration;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::{ObjectMeta, PostParams};
use kube::{Api, Client};
use tracing::{info, warn};

/// What to do with the Lease as found.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// We hold it: renew.
    Renew,
    /// Nobody holds it, or the holder let it expire: take it over.
    Acquire,
    /// Someone else holds a live lease: stand by.
    Standby,
}

/// Decides from the Lease spec, our identity and the current time.
pub fn decide(
    spec: Option<&LeaseSpec>,
    me: &str,
    now: jiff::Timestamp,
    default_duration: Duration,
) -> Decision {
    let Some(spec) = spec else {
        return Decision::Acquire;
    };
    match spec.holder_identity.as_deref() {
        Some(h) if h == me => Decision::Renew,
        None | Some("") => Decision::Acquire,
        Some(_) => {
            let secs = spec
                .lease_duration_seconds
                .map(|s| i64::from(s.max(1)))
                .unwrap_or(default_duration.as_secs() as i64);
            let last = spec.renew_time.as_ref().or(spec.acquire_time.as_ref());
            match last {
                Some(MicroTime(t)) => {
                    let expires = t.checked_add(jiff::SignedDuration::from_secs(secs));
                    match expires {
                        Ok(exp) if exp > now => Decision::Standby,
                        _ => Decision::Acquire,
                    }
                }
                None => Decision::Acquire,
            }
        }
    }
}

/// A Lease-based elector.
pub struct LeaderElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
}

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> Self {
        LeaderElector {
            api: Api::namespaced(client, namespace),
            name: name.into(),
            identity: identity.into(),
            duration,
        }
    }

    pub fn lease_duration(&self) -> Duration {
        self.duration
    }

    fn duration_secs(&self) -> i32 {
        i32::try_from(self.duration.as_secs()).unwrap_or(15)
    }

    /// One attempt to acquire or renew. `Ok(true)` while we hold the lease.
    pub async fn try_acquire_or_renew(&self) -> crate::floor::error::Result<bool> {
        let now = jiff::Timestamp::now();
        let live = self.api.get_opt(&self.name).await?;
        let decision = decide(
            live.as_ref().and_then(|l| l.spec.as_ref()),
            &self.identity,
            now,
            self.duration,
        );
        match (decision, live) {
            (Decision::Standby, _) => Ok(false),
            (_, None) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(self.duration_secs()),
                        acquire_time: Some(MicroTime(now)),
                        renew_time: Some(MicroTime(now)),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
            (decision, Some(mut lease)) => {
                let mut spec = lease.spec.take().unwrap_or_default();
                if decision == Decision::Acquire {
                    spec.holder_identity = Some(self.identity.clone());
                    spec.acquire_time = Some(MicroTime(now));
                    spec.lease_transitions =
                        Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
                }
                spec.renew_time = Some(MicroTime(now));
                spec.lease_duration_seconds = Some(self.duration_secs());
                lease.spec = Some(spec);
                // `replace` sends the resourceVersion we read: a concurrent writer makes it fail
                // with 409, and we simply are not the leader this round.
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(true),
                    Err(kube::Error::Api(e)) if e.code == 409 => Ok(false),
                    Err(e) => Err(e.into()),
                }
            }
        }
    }

    /// Waits until this replica holds the lease.
    pub async fn acquire(&self) {
        let mut announced = false;
        loop {
            match self.try_acquire_or_renew().await {
                Ok(true) => {
                    info!(lease = %self.name, identity = %self.identity, "became leader");
                    return;
                }
                Ok(false) => {
                    if !announced {
                        info!(lease = %self.name, "another replica leads; standing by");
                        announced = true;
                    }
                }
                Err(e) => warn!(lease = %self.name, error = %e, "leader election attempt failed"),
            }
            tokio::time::sleep(self.duration / 3).await;
        }
    }

    /// Renews until the lease is lost (another holder, or no successful renewal within the lease
    /// duration); returns then.
    pub async fn hold(&self) {
        let mut last_ok = tokio::time::Instant::now();
        loop {
            tokio::time::sleep(self.duration / 3).await;
            match self.try_acquire_or_renew().await {
                Ok(true) => last_ok = tokio::time::Instant::now(),
                Ok(false) => {
                    warn!(lease = %self.name, "leadership taken over by another replica");
                    return;
                }
                Err(e) => {
                    warn!(lease = %self.name, error = %e, "renewing the lease failed");
                    if last_ok.elapsed() >= self.duration {
                        return;
                    }
                }
            }
        }
    }

    /// Gives the lease up on shutdown so a standby takes over at once.
    pub async fn release(&self) {
        let Ok(Some(mut lease)) = self.api.get_opt(&self.name).await else {
            return;
        };
        let Some(spec) = lease.spec.as_mut() else {
            return;
        };
        if spec.holder_identity.as_deref() != Some(self.identity.as_str()) {
            return;
        }
        spec.holder_identity = None;
        spec.lease_duration_seconds = Some(1);
        if let Err(e) = self
            .api
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            warn!(lease = %self.name, error = %e, "releasing the lease failed");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(secs: i64) -> jiff::Timestamp {
        jiff::Timestamp::from_second(secs).expect("time")
    }

    fn lease(holder: Option<&str>, renewed: i64, duration: i32) -> LeaseSpec {
        LeaseSpec {
            holder_identity: holder.map(String::from),
            renew_time: Some(MicroTime(at(renewed))),
            lease_duration_seconds: Some(duration),
            ..LeaseSpec::default()
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn decisions() {
        assert_eq!(decide(None, "me", at(100), D), Decision::Acquire);
        assert_eq!(
            decide(Some(&lease(Some("me"), 0, 15)), "me", at(100), D),
            Decision::Renew
        );
        assert_eq!(
            decide(Some(&lease(Some("other"), 90, 15)), "me", at(100), D),
            Decision::Standby
        );
        assert_eq!(
            decide(Some(&lease(Some("other"), 80, 15)), "me", at(100), D),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&lease(None, 99, 15)), "me", at(100), D),
            Decision::Acquire
        );
        assert_eq!(
            decide(Some(&lease(Some(""), 99, 15)), "me", at(100), D),
            Decision::Acquire
        );
        let no_time = LeaseSpec {
            holder_identity: Some("other".into()),
            ..LeaseSpec::default()
        };
        assert_eq!(decide(Some(&no_time), "me", at(100), D), Decision::Acquire);
    }
}
