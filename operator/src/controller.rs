//! The reconcile loop: read, decide, apply with server-side apply, write status, publish Events.
//!
//! Bad input is never destructive: when the spec is rejected or a reference cannot be resolved,
//! the reconcile writes status (and a Warning Event) and changes nothing else, so the last good
//! configuration keeps running.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use k8s_openapi::api::apps::v1::StatefulSet;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{ListParams, Patch, PatchParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Api, Client, Resource, ResourceExt};
use tracing::warn;

use crate::apply::{apply_all, prune_secrets};
pub use crate::apply::{storage_change, Owned, APPLIED_HASH_ANNOTATION, MANAGER};
use crate::builders::{self, BuildOptions, Desired};
use crate::crd::SmtpRelay;
pub use crate::events::events_for;
use crate::events::truncate;
use crate::metrics::Metrics;
use crate::resolve::{self, RefSource};
use crate::status::{self, Outcome, Rollout};
pub use crate::watches::{run, RunConfig};
use crate::{Error, Result};

/// Shared state of the reconciles.
pub struct Context {
    pub client: Client,
    reporter: Reporter,
    pub metrics: Arc<Metrics>,
    pub opts: BuildOptions,
    failures: Mutex<HashMap<ObjectRef<SmtpRelay>, u32>>,
}

impl Context {
    pub fn new(
        client: Client,
        metrics: Arc<Metrics>,
        opts: BuildOptions,
        instance: Option<String>,
    ) -> Self {
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance,
        };
        Context {
            reporter,
            client,
            metrics,
            opts,
            failures: Mutex::new(HashMap::new()),
        }
    }

    /// Publishes `ev` as an Event of its own. [`events_for`] already publishes only on
    /// transitions; kube-runtime's Recorder would also fold every Event with the same reason
    /// into one series that keeps the first note, so a second, different problem (another
    /// missing Secret) would show the first one's message in `kubectl describe`. A Recorder
    /// per Event has no series to fold into.
    async fn publish(&self, ev: &Event, relay: &SmtpRelay) -> kube::Result<()> {
        Recorder::new(self.client.clone(), self.reporter.clone())
            .publish(ev, &relay.object_ref(&()))
            .await
    }

    fn reset_backoff(&self, relay: &SmtpRelay) {
        if let Ok(mut f) = self.failures.lock() {
            f.remove(&ObjectRef::from_obj(relay));
        }
    }

    fn next_backoff(&self, relay: &SmtpRelay) -> Duration {
        let n = match self.failures.lock() {
            Ok(mut f) => {
                let n = f.entry(ObjectRef::from_obj(relay)).or_insert(0);
                *n = n.saturating_add(1);
                *n
            }
            Err(_) => 1,
        };
        backoff(n)
    }
}

/// Exponential backoff: 5 s, 10 s, 20 s, … capped at 5 minutes.
pub fn backoff(failures: u32) -> Duration {
    let exp = failures.saturating_sub(1).min(6);
    Duration::from_secs((5u64 << exp).min(300))
}

/// Validates, resolves and builds; user errors become an [`Outcome`], API errors an `Err`.
pub async fn plan(
    relay: &SmtpRelay,
    src: &impl RefSource,
    opts: &BuildOptions,
) -> Result<std::result::Result<Desired, Outcome>> {
    let checked = match crate::validate::CheckedSpec::new(relay) {
        Ok(checked) => checked,
        Err(outcome) => return Ok(Err(outcome)),
    };
    let mut resolved = match resolve::resolve(relay, src).await {
        Ok(r) => r,
        Err(e) if e.is_user_error() => {
            return Ok(Err(Outcome::Unresolved {
                reason: e.reason(),
                message: e.to_string(),
            }))
        }
        Err(e) => return Err(e.into()),
    };
    let now = jiff::Timestamp::now().as_second();
    let mut certificate_issued = None;
    if let Some((pair, note)) = resolve::issued_certificate(relay, src, now).await? {
        resolved.inbound_tls = Some(pair);
        certificate_issued = note;
    }
    // What the pods will read, judged by the relay's own rules before anything is written.
    let validated = match checked.judge(resolved) {
        Ok(validated) => validated,
        Err(outcome) => return Ok(Err(outcome)),
    };
    let hash_key = resolve::config_hash_key(relay, src).await?;
    match builders::build(&validated, &hash_key, opts) {
        Ok(d) => Ok(Ok(Desired {
            certificate_issued,
            ..d
        })),
        Err(Error::InvalidSpec(message)) => Ok(Err(Outcome::InvalidSpec { message })),
        Err(e) => Err(e),
    }
}

/// One reconciliation of one SmtpRelay.
pub async fn reconcile(relay: Arc<SmtpRelay>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile_started();
    let name = relay.name_any();
    let ns = relay
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    if relay.metadata.deletion_timestamp.is_some() {
        // Owned objects are garbage-collected through their owner references.
        return Ok(Action::await_change());
    }
    let client = &ctx.client;
    let sts_api: Api<StatefulSet> = Api::namespaced(client.clone(), &ns);

    let mut planned = plan(&relay, client, &ctx.opts).await?;
    if let Ok(desired) = &planned {
        if let Some(live) = sts_api.get_opt(&name).await? {
            if let Some(message) = storage_change(&desired.stateful_set, &live) {
                planned = Err(Outcome::InvalidSpec { message });
            }
        }
    }

    let applied = match planned {
        Ok(desired) => match apply_all(client, &relay, &desired).await? {
            Ok(sts) => Ok((desired, sts)),
            Err(conflict) => Err(conflict),
        },
        Err(outcome) => Err(outcome),
    };
    let (outcome, sts) = match applied {
        Ok((desired, sts)) => {
            let rollout = Rollout::from_stateful_set(Some(&sts), relay.spec.replicas);
            prune_secrets(client, &relay, &desired, rollout).await?;
            if let Some(note) = &desired.certificate_issued {
                let ev = Event {
                    type_: EventType::Normal,
                    reason: "CertificateIssued".into(),
                    note: Some(truncate(note, 1000)),
                    action: "Issue".into(),
                    secondary: None,
                };
                if let Err(e) = ctx.publish(&ev, &relay).await {
                    warn!(relay = %name, error = %e, "publishing event failed");
                }
            }
            (
                Outcome::Applied {
                    config_hash: desired.config_hash.clone(),
                },
                Some(sts),
            )
        }
        Err(outcome) => {
            let label = match &outcome {
                Outcome::InvalidSpec { .. } => "InvalidSpec",
                Outcome::NameConflict { .. } => "NameConflict",
                Outcome::ApplyRefused { .. } => "ApplyRefused",
                Outcome::Unresolved { reason, .. } => reason,
                Outcome::Applied { .. } => "none",
            };
            ctx.metrics.failure(label);
            warn!(relay = %name, namespace = %ns, reason = label, "input rejected or refused: see status");
            (outcome, sts_api.get_opt(&name).await?)
        }
    };

    let pods = match &sts {
        Some(_) => relay_pods(client, &relay).await?,
        None => Vec::new(),
    };
    let rollout = Rollout::from_stateful_set(sts.as_ref(), relay.spec.replicas).with_pods(&pods);
    let now = Time(jiff::Timestamp::now());
    let new_status = status::compute(&relay, &outcome, rollout, now);
    for ev in events_for(&relay, &outcome, &new_status) {
        if let Err(e) = ctx.publish(&ev, &relay).await {
            warn!(relay = %name, error = %e, "publishing event failed");
        }
    }
    if relay.status.as_ref() != Some(&new_status) {
        let api: Api<SmtpRelay> = Api::namespaced(client.clone(), &ns);
        let patch = Patch::Merge(serde_json::json!({ "status": new_status }));
        api.patch_status(&name, &PatchParams::default(), &patch)
            .await?;
    }
    ctx.reset_backoff(&relay);

    let ready = status::ready_condition(Some(&new_status)).is_some_and(|c| c.status == "True");
    Ok(match (&outcome, ready) {
        (Outcome::Applied { .. }, true) => Action::requeue(Duration::from_secs(300)),
        (Outcome::Applied { .. }, false) => Action::requeue(Duration::from_secs(15)),
        // Secrets and ConfigMaps in the way are watched (see `mapping`); the StatefulSet,
        // Service and PDB watches see only the operator's own objects, so look again soon.
        (Outcome::NameConflict { .. }, _) => Action::requeue(Duration::from_secs(30)),
        // A policy or quota may change without touching the relay: look again.
        (Outcome::ApplyRefused { .. }, _) => Action::requeue(Duration::from_secs(30)),
        _ => Action::requeue(Duration::from_secs(300)),
    })
}

/// The relay's pods (its StatefulSet's selector), so status can say what keeps one from
/// running.
async fn relay_pods(client: &Client, relay: &SmtpRelay) -> Result<Vec<Pod>> {
    let ns = relay
        .namespace()
        .ok_or(Error::MissingObjectKey(".metadata.namespace"))?;
    let selector = builders::selector_labels(relay)
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let api: Api<Pod> = Api::namespaced(client.clone(), &ns);
    Ok(api
        .list(&ListParams::default().labels(&selector))
        .await?
        .items)
}

/// Failed reconciles (API errors) retry with per-object exponential backoff.
pub fn error_policy(relay: Arc<SmtpRelay>, error: &Error, ctx: Arc<Context>) -> Action {
    ctx.metrics.failure(error.metric_label());
    let delay = ctx.next_backoff(&relay);
    warn!(relay = %relay.name_any(), namespace = ?relay.namespace(), error = %error, retry_in = ?delay, "reconcile failed");
    Action::requeue(delay)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::apply::{apply_error, drifted_field};
    use crate::builders::fixtures::{hash_key, relay, validated};
    use crate::builders::hash::object_hash;
    use crate::builders::HASH_KEY_KEY;
    use crate::crd::SecretRef;
    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use k8s_openapi::api::apps::v1::StatefulSetStatus;
    use kube::client::Body;
    use std::future::Future;

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    fn mock() -> (Arc<Context>, Handle) {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let client = Client::new(svc, "mail");
        let ctx = Context::new(
            client,
            Arc::new(Metrics::default()),
            BuildOptions::default(),
            Some("test".into()),
        );
        (Arc::new(ctx), handle)
    }

    fn json(code: StatusCode, v: serde_json::Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(&v).expect("json")))
            .expect("response")
    }

    fn not_found() -> Response<Body> {
        json(
            StatusCode::NOT_FOUND,
            serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
        )
    }

    /// Answers the next request after checking its method and path; returns its body.
    async fn expect(
        handle: &mut Handle,
        method: &str,
        path: &str,
        resp: Response<Body>,
    ) -> serde_json::Value {
        let (req, send) = handle.next_request().await.expect("a request");
        assert_eq!(
            (req.method().as_str(), req.uri().path()),
            (method, path),
            "unexpected request"
        );
        let bytes = req.into_body().collect().await.expect("body").to_bytes();
        send.send_response(resp);
        serde_json::from_slice(&bytes).unwrap_or(serde_json::Value::Null)
    }

    /// Answers what a rejected input produces after the StatefulSet is read: a Warning Event
    /// with `reason`, then the status patch of relay r1. Returns the patch.
    async fn expect_warning_then_status(handle: &mut Handle, reason: &str) -> serde_json::Value {
        let event = expect(
            handle,
            "POST",
            "/apis/events.k8s.io/v1/namespaces/mail/events",
            json(StatusCode::CREATED, serde_json::json!({})),
        )
        .await;
        assert_eq!(event["reason"], reason);
        assert_eq!(event["type"], "Warning");
        expect(
            handle,
            "PATCH",
            "/apis/smtprelay.dev/v1alpha1/namespaces/mail/smtprelays/r1/status",
            json(
                StatusCode::OK,
                serde_json::to_value(relay("r1")).expect("json"),
            ),
        )
        .await
    }

    async fn run_with<F>(relay: SmtpRelay, ctx: Arc<Context>, script: F) -> Result<Action>
    where
        F: Future<Output = ()> + Send + 'static,
    {
        let server = tokio::spawn(script);
        let res = tokio::time::timeout(Duration::from_secs(5), reconcile(Arc::new(relay), ctx))
            .await
            .expect("reconcile finishes");
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("script finishes")
            .expect("script passes");
        res
    }

    #[tokio::test]
    async fn missing_secret_patches_status_only() {
        let (ctx, mut handle) = mock();
        let mut r = relay("r1");
        r.spec.sasl_users_secret_ref = Some(SecretRef {
            name: "users".into(),
        });
        let res = run_with(r, ctx.clone(), async move {
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/mail/secrets/users",
                not_found(),
            )
            .await;
            expect(
                &mut handle,
                "GET",
                "/apis/apps/v1/namespaces/mail/statefulsets/r1",
                not_found(),
            )
            .await;
            let patch = expect_warning_then_status(&mut handle, "SecretNotFound").await;
            let ready = &patch["status"]["conditions"][0];
            assert_eq!(
                (
                    ready["type"].as_str(),
                    ready["status"].as_str(),
                    ready["reason"].as_str()
                ),
                (Some("Ready"), Some("False"), Some("SecretNotFound"))
            );
            assert!(ready["message"]
                .as_str()
                .unwrap_or_default()
                .contains("mail/users"));
            assert!(
                patch.get("spec").is_none(),
                "status patch never touches spec"
            );
            // Nothing else: no apply of any child.
            if let Ok(Some((req, _))) =
                tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
            {
                panic!("unexpected request: {} {}", req.method(), req.uri());
            }
        })
        .await;
        assert_eq!(
            res.expect("reconciled"),
            Action::requeue(Duration::from_secs(300))
        );
    }

    #[tokio::test]
    async fn invalid_spec_changes_nothing_but_status() {
        let (ctx, mut handle) = mock();
        let mut r = relay("r1");
        r.spec.networks = vec!["10.0.0.0/33".into()];
        run_with(r, ctx, async move {
            expect(
                &mut handle,
                "GET",
                "/apis/apps/v1/namespaces/mail/statefulsets/r1",
                not_found(),
            )
            .await;
            let patch = expect_warning_then_status(&mut handle, "InvalidSpec").await;
            assert_eq!(patch["status"]["conditions"][1]["reason"], "InvalidSpec");
        })
        .await
        .expect("reconciled");
    }

    /// The live objects as the API would return them after a previous apply.
    fn live<K: Owned>(obj: &K) -> serde_json::Value {
        let mut obj = obj.clone();
        let hash = object_hash(&obj.hash_view());
        obj.annotations_mut()
            .insert(APPLIED_HASH_ANNOTATION.into(), hash);
        serde_json::to_value(obj).expect("json")
    }

    #[tokio::test]
    async fn identical_reapply_writes_nothing() {
        let (ctx, mut handle) = mock();
        let mut r = relay("r1");
        let desired = builders::build(
            &validated(&r, resolve::Resolved::default()),
            &hash_key(),
            &BuildOptions::default(),
        )
        .expect("builds");
        // The live StatefulSet: what was applied, plus what the API server and the StatefulSet
        // controller add.
        let mut sts: StatefulSet =
            serde_json::from_value(live(&desired.stateful_set)).expect("sts");
        sts.metadata.generation = Some(1);
        sts.metadata.resource_version = Some("42".into());
        sts.status = Some(StatefulSetStatus {
            observed_generation: Some(1),
            replicas: 1,
            ready_replicas: Some(1),
            updated_replicas: Some(1),
            current_revision: Some("a".into()),
            update_revision: Some("a".into()),
            ..StatefulSetStatus::default()
        });
        let outcome = Outcome::Applied {
            config_hash: desired.config_hash.clone(),
        };
        let rollout = Rollout::from_stateful_set(Some(&sts), 1);
        r.status = Some(status::compute(
            &r,
            &outcome,
            rollout,
            Time(jiff::Timestamp::UNIX_EPOCH),
        ));

        let res = run_with(r, ctx, async move {
            let sts_path = "/apis/apps/v1/namespaces/mail/statefulsets/r1";
            let key_path = "/api/v1/namespaces/mail/secrets/r1-hash-key";
            let live_key = live(&desired.hash_key_secret);
            let live_sts = serde_json::to_value(&sts).expect("json");
            // As after an operator restart: the key is read back, so the hash is the same.
            expect(
                &mut handle,
                "GET",
                key_path,
                json(StatusCode::OK, live_key.clone()),
            )
            .await;
            expect(
                &mut handle,
                "GET",
                sts_path,
                json(StatusCode::OK, live_sts.clone()),
            )
            .await;
            expect(&mut handle, "GET", key_path, json(StatusCode::OK, live_key)).await;
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/mail/configmaps/r1-config",
                json(StatusCode::OK, live(&desired.config_map)),
            )
            .await;
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/mail/services/r1-headless",
                json(StatusCode::OK, live(&desired.headless_service)),
            )
            .await;
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/mail/services/r1",
                json(StatusCode::OK, live(&desired.service)),
            )
            .await;
            expect(&mut handle, "GET", sts_path, json(StatusCode::OK, live_sts)).await;
            expect(
                &mut handle,
                "GET",
                "/apis/policy/v1/namespaces/mail/poddisruptionbudgets/r1",
                not_found(),
            )
            .await;
            for s in ["r1-relayhost", "r1-sasl-users", "r1-tls"] {
                expect(
                    &mut handle,
                    "GET",
                    &format!("/api/v1/namespaces/mail/secrets/{s}"),
                    not_found(),
                )
                .await;
            }
            // The pods, for what keeps one from running (none here).
            let req = expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/mail/pods",
                json(
                    StatusCode::OK,
                    serde_json::json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []}),
                ),
            )
            .await;
            assert_eq!(req, serde_json::Value::Null, "a GET has no body");
            // No apply, no event, no status patch.
            if let Ok(Some((req, _))) =
                tokio::time::timeout(Duration::from_millis(200), handle.next_request()).await
            {
                panic!("unexpected write: {} {}", req.method(), req.uri());
            }
        })
        .await;
        assert_eq!(
            res.expect("reconciled"),
            Action::requeue(Duration::from_secs(300))
        );
    }

    #[tokio::test]
    async fn changed_config_is_server_side_applied_with_one_manager() {
        let (ctx, mut handle) = mock();
        let r = relay("r1");
        let desired = builders::build(
            &validated(&r, resolve::Resolved::default()),
            &hash_key(),
            &BuildOptions::default(),
        )
        .expect("builds");
        run_with(r, ctx, async move {
            let key_path = "/api/v1/namespaces/mail/secrets/r1-hash-key";
            expect(&mut handle, "GET", key_path, not_found()).await;
            expect(
                &mut handle,
                "GET",
                "/apis/apps/v1/namespaces/mail/statefulsets/r1",
                not_found(),
            )
            .await;
            // Every child is read before anything is written: none exists yet.
            for path in [
                key_path,
                "/api/v1/namespaces/mail/configmaps/r1-config",
                "/api/v1/namespaces/mail/services/r1-headless",
                "/api/v1/namespaces/mail/services/r1",
                "/apis/apps/v1/namespaces/mail/statefulsets/r1",
            ] {
                expect(&mut handle, "GET", path, not_found()).await;
            }
            // A new relay: the generated key is stored before anything carries the hash.
            let applied = expect(
                &mut handle,
                "PATCH",
                key_path,
                json(StatusCode::OK, live(&desired.hash_key_secret)),
            )
            .await;
            let key = applied["data"][HASH_KEY_KEY].as_str().unwrap_or_default();
            assert_eq!(key.len(), 44, "32 bytes, base64: {key}");
            assert_eq!(
                applied["metadata"]["ownerReferences"][0]["uid"], "uid-1",
                "owned by the relay"
            );
            let (req, send) = handle.next_request().await.expect("request");
            assert_eq!(
                req.uri().path(),
                "/api/v1/namespaces/mail/configmaps/r1-config"
            );
            assert_eq!(req.method(), "PATCH");
            let q = req.uri().query().unwrap_or_default().to_string();
            assert!(
                q.contains("fieldManager=smtp-relay-operator") && q.contains("force=true"),
                "{q}"
            );
            assert_eq!(
                req.headers()["content-type"],
                "application/apply-patch+yaml"
            );
            send.send_response(json(StatusCode::OK, live(&desired.config_map)));
            // The rest of the sequence is covered above; stop answering here.
        })
        .await
        .expect_err("the unanswered request fails the reconcile");
    }

    #[tokio::test]
    async fn an_object_the_relay_does_not_control_is_never_adopted() {
        let (ctx, mut handle) = mock();
        let r = relay("r1");
        let desired = builders::build(
            &validated(&r, resolve::Resolved::default()),
            &hash_key(),
            &BuildOptions::default(),
        )
        .expect("builds");
        let res = run_with(r, ctx, async move {
            let key_path = "/api/v1/namespaces/mail/secrets/r1-hash-key";
            let sts_path = "/apis/apps/v1/namespaces/mail/statefulsets/r1";
            expect(&mut handle, "GET", key_path, not_found()).await;
            expect(&mut handle, "GET", sts_path, not_found()).await;
            expect(&mut handle, "GET", key_path, not_found()).await;
            // The user's own ConfigMap under the child's name: no owner reference.
            let mut users = desired.config_map.clone();
            users.metadata.owner_references = None;
            expect(
                &mut handle,
                "GET",
                "/api/v1/namespaces/mail/configmaps/r1-config",
                json(StatusCode::OK, serde_json::to_value(&users).expect("json")),
            )
            .await;
            for path in [
                "/api/v1/namespaces/mail/services/r1-headless",
                "/api/v1/namespaces/mail/services/r1",
                sts_path,
            ] {
                expect(&mut handle, "GET", path, not_found()).await;
            }
            // No child is written: the StatefulSet is read for status, then the Event and
            // the status patch name the ConfigMap.
            expect(&mut handle, "GET", sts_path, not_found()).await;
            let patch = expect_warning_then_status(&mut handle, "NameConflict").await;
            let ready = patch["status"]["conditions"]
                .as_array()
                .and_then(|c| c.iter().find(|c| c["type"] == "Ready"))
                .cloned()
                .expect("a Ready condition");
            assert_eq!(ready["status"], "False");
            assert_eq!(ready["reason"], "NameConflict");
            let message = ready["message"].as_str().unwrap_or_default();
            assert!(message.contains("ConfigMap mail/r1-config"), "{message}");
        })
        .await;
        res.expect("reconciled");
    }

    #[test]
    fn backoff_grows_and_caps() {
        assert_eq!(backoff(1), Duration::from_secs(5));
        assert_eq!(backoff(2), Duration::from_secs(10));
        assert_eq!(backoff(4), Duration::from_secs(40));
        assert_eq!(backoff(100), Duration::from_secs(300));
        assert_eq!(backoff(0), Duration::from_secs(5));
    }

    #[test]
    fn storage_changes_are_refused_but_equal_quantities_pass() {
        let r = relay("r1");
        let opts = BuildOptions::default();
        let base = builders::build(
            &validated(&r, resolve::Resolved::default()),
            &hash_key(),
            &opts,
        )
        .expect("builds")
        .stateful_set;
        let mut same = r.clone();
        same.spec.storage.size = "1024Mi".into();
        let same = builders::build(
            &validated(&same, resolve::Resolved::default()),
            &hash_key(),
            &opts,
        )
        .expect("builds")
        .stateful_set;
        assert_eq!(storage_change(&same, &base), None);
        let mut bigger = r.clone();
        bigger.spec.storage.size = "2Gi".into();
        let bigger = builders::build(
            &validated(&bigger, resolve::Resolved::default()),
            &hash_key(),
            &opts,
        )
        .expect("builds")
        .stateful_set;
        let msg = storage_change(&bigger, &base).expect("refused");
        assert!(msg.contains("spec.storage") && msg.contains("1Gi"));
        let mut class = r.clone();
        class.spec.storage.storage_class_name = Some("fast".into());
        let class = builders::build(
            &validated(&class, resolve::Resolved::default()),
            &hash_key(),
            &opts,
        )
        .expect("builds")
        .stateful_set;
        assert!(storage_change(&class, &base).is_some());
    }

    #[test]
    fn cleartext_relayhost_password_is_flagged_once() {
        use crate::crd::{CredentialsSecretRef, RelayhostTlsSpec, TlsLevelSpec};
        let mut r = relay("r1");
        r.spec.relayhost.credentials_secret_ref = Some(CredentialsSecretRef {
            name: "login".into(),
            username_key: "username".into(),
            password_key: "password".into(),
        });
        let ok = Outcome::Applied {
            config_hash: "h".into(),
        };
        let now = || Time(jiff::Timestamp::UNIX_EPOCH);
        let cond = |s: &crate::crd::SmtpRelayStatus| {
            s.conditions
                .iter()
                .find(|c| c.type_ == status::RELAYHOST_PASSWORD_PROTECTED)
                .map(|c| (c.status.clone(), c.reason.clone()))
                .unwrap()
        };
        // Credentials and no level: encrypt, nothing to flag.
        let s = status::compute(&r, &ok, Rollout::default(), now());
        assert_eq!(cond(&s), ("True".into(), "TLSRequired".into()));
        assert!(events_for(&r, &ok, &s)
            .iter()
            .all(|e| e.type_ != EventType::Warning));
        // An explicit may with credentials: accepted, flagged by a condition and one Warning.
        r.spec.relayhost.tls = Some(RelayhostTlsSpec {
            level: Some(TlsLevelSpec::May),
            ca_secret_key_ref: None,
            ca_config_map_key_ref: None,
        });
        let s = status::compute(&r, &ok, Rollout::default(), now());
        assert_eq!(cond(&s), ("False".into(), "CleartextAllowed".into()));
        let warnings: Vec<_> = events_for(&r, &ok, &s)
            .into_iter()
            .filter(|e| e.type_ == EventType::Warning)
            .collect();
        assert_eq!(warnings.len(), 1);
        assert_eq!(warnings[0].reason, "CleartextAllowed");
        r.status = Some(s.clone());
        assert!(events_for(&r, &ok, &s)
            .iter()
            .all(|e| e.type_ != EventType::Warning));
    }

    #[test]
    fn drift_is_what_the_operator_set_and_no_longer_holds() {
        use serde_json::json;
        let desired = json!({"containers": [{"name": "relay", "image": "a", "readOnly": false,
            "env": [{"name": "X", "value": "1"}], "resources": {"limits": {"cpu": "0.5"}}}]});
        // Defaults added, omitempty fields dropped, others' additions, canonical quantities.
        let live = json!({"containers": [{"name": "relay", "image": "a",
            "env": [{"name": "X", "value": "1"}, {"name": "THEIRS", "value": "2"}],
            "resources": {"limits": {"cpu": "500m"}}, "imagePullPolicy": "IfNotPresent"}],
            "restartPolicy": "Always"});
        assert_eq!(drifted_field(&desired, &live, ""), None);
        let edited = json!({"containers": [{"name": "relay", "image": "b",
            "env": [{"name": "X", "value": "1"}]}]});
        assert_eq!(
            drifted_field(&desired, &edited, "").as_deref(),
            Some(".containers[0]")
        );
        let removed = json!({"containers": [{"name": "relay", "image": "a", "env": []}]});
        assert!(drifted_field(&desired, &removed, "").is_some());
    }

    #[test]
    fn a_refused_apply_names_the_object_and_other_errors_retry() {
        let api = |code: u16| {
            kube::Error::Api(Box::new(kube::core::Status {
                code,
                message: "denied by policy x".into(),
                ..Default::default()
            }))
        };
        match apply_error(api(403), "StatefulSet", "mail", "r1") {
            Error::Refused(m) => {
                assert_eq!(
                    m,
                    "the API server refused StatefulSet mail/r1: denied by policy x"
                )
            }
            other => panic!("{other:?}"),
        }
        assert!(matches!(
            apply_error(api(422), "Secret", "mail", "r1-tls"),
            Error::Refused(_)
        ));
        for transient in [409, 429, 500, 503] {
            assert!(
                matches!(
                    apply_error(api(transient), "StatefulSet", "mail", "r1"),
                    Error::Kube(_)
                ),
                "{transient} is retried with backoff"
            );
        }
    }

    #[test]
    fn events_only_on_transitions() {
        let mut r = relay("r1");
        let bad = Outcome::Unresolved {
            reason: "SecretNotFound",
            message: "m".into(),
        };
        let s1 = status::compute(
            &r,
            &bad,
            Rollout::default(),
            Time(jiff::Timestamp::UNIX_EPOCH),
        );
        let evs = events_for(&r, &bad, &s1);
        assert_eq!(evs.len(), 1);
        assert_eq!(evs[0].type_, EventType::Warning);
        r.status = Some(s1.clone());
        assert!(
            events_for(&r, &bad, &s1).is_empty(),
            "same failure again: no new event"
        );

        let ok = Outcome::Applied {
            config_hash: "h".into(),
        };
        let done = Rollout {
            exists: true,
            replicas: 1,
            ready_replicas: 1,
            up_to_date: true,
            problem: None,
        };
        let s2 = status::compute(&r, &ok, done.clone(), Time(jiff::Timestamp::UNIX_EPOCH));
        let reasons: Vec<_> = events_for(&r, &ok, &s2)
            .into_iter()
            .map(|e| e.reason)
            .collect();
        assert_eq!(reasons, ["ConfigApplied", "Ready"]);
        r.status = Some(s2.clone());
        assert!(events_for(&r, &ok, &s2).is_empty());

        // A pod that cannot start: one Warning naming it, not one per reconcile.
        let crashing = Rollout {
            ready_replicas: 0,
            problem: Some(status::PodProblem {
                reason: "CrashLoopBackOff".into(),
                message: "pod r1-0, container relay: CrashLoopBackOff".into(),
                stalled: true,
            }),
            ..done
        };
        let s3 = status::compute(&r, &ok, crashing, Time(jiff::Timestamp::UNIX_EPOCH));
        let evs = events_for(&r, &ok, &s3);
        assert_eq!(evs.len(), 1);
        assert_eq!(
            (evs[0].type_, evs[0].reason.as_str()),
            (EventType::Warning, "CrashLoopBackOff")
        );
        assert!(evs[0]
            .note
            .as_deref()
            .unwrap()
            .starts_with("pod r1-0, container relay"));
        r.status = Some(s3.clone());
        assert!(events_for(&r, &ok, &s3).is_empty());
    }
}
