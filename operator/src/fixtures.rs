//! Test fixtures: sample relays, and a scripted API server the reconcile talks to in unit
//! tests. A test runs the reconcile against a script of named scenarios ([`ApiServer`]'s
//! methods), each answering the requests one step of the reconcile makes, in order, and failing
//! on anything unexpected.

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response, StatusCode};
use http_body_util::BodyExt;
use k8s_openapi::api::core::v1::Secret;
use kube::api::ObjectMeta;
use kube::client::Body;
use kube::core::{PartialObjectMeta, PartialObjectMetaExt};
use kube::runtime::controller::Action;
use kube::runtime::reflector::store::Writer;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::Event;
use kube::{Client, Resource, ResourceExt};
use serde_json::{json, Value};

use crate::context::Context;
use crate::controller::reconcile;
use crate::floor::contract::{BuildOptions, APPLIED_HASH_ANNOTATION};
use crate::floor::crd::{SmtpRelay, SmtpRelaySpec};
use crate::floor::error::Result;
use crate::floor::inputs::{HashKey, HASH_KEY_LEN};
use crate::floor::verdict::Desired;
use crate::observe::fingerprint::Stores;
use crate::runtime::metrics::Metrics;
use crate::steps::apply::Owned;
use crate::steps::build::hash::object_hash;
use crate::steps::judge::Validated;

/// `relay` with `resolved`, through the validation every built relay goes through.
pub fn validated(relay: &SmtpRelay, resolved: crate::floor::inputs::Resolved) -> Validated<'_> {
    crate::steps::judge::CheckedSpec::new(relay)
        .unwrap_or_else(|o| panic!("spec refused: {o:?}"))
        .judge(resolved)
        .unwrap_or_else(|o| panic!("refused by the relay's rules: {o:?}"))
}

/// A fixed config-hash key for tests.
pub fn hash_key() -> HashKey {
    HashKey::from_bytes([7; HASH_KEY_LEN])
}

/// A minimal relay as the API server would return it (defaults applied), in namespace `mail`.
pub fn relay(name: &str) -> SmtpRelay {
    let spec: SmtpRelaySpec = serde_json::from_value(json!({
        "domain": "example.net",
        "networks": ["10.0.0.0/24"],
        "relayhost": {"host": "mail.example.net"}
    }))
    .expect("valid spec");
    let mut r = SmtpRelay::new(name, spec);
    r.metadata.namespace = Some("mail".into());
    r.metadata.uid = Some("uid-1".into());
    r.metadata.generation = Some(1);
    r
}

/// A JSON response.
pub fn ok(v: Value) -> Response<Body> {
    respond(StatusCode::OK, v)
}

fn respond(code: StatusCode, v: Value) -> Response<Body> {
    Response::builder()
        .status(code)
        .body(Body::from(serde_json::to_vec(&v).expect("json")))
        .expect("response")
}

/// The API server's 404.
pub fn not_found() -> Response<Body> {
    respond(
        StatusCode::NOT_FOUND,
        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404, "message": "not found"}),
    )
}

/// An object as the API returns it after the operator applied it (its applied-hash set).
pub fn live<K: Owned>(obj: &K) -> Value {
    let mut obj = obj.clone();
    let hash = object_hash(&obj.hash_view());
    obj.annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.into(), hash);
    serde_json::to_value(obj).expect("json")
}

/// The path of a namespaced object in `mail`.
pub fn path(kind: &str, name: &str) -> String {
    let group = match crate::floor::owned::OwnedKind::from_plural(kind) {
        Some(owned) => owned.api_path(),
        None if kind == "smtprelays" => "/apis/smtprelay.dev/v1alpha1",
        None => "/api/v1",
    };
    format!("{group}/namespaces/mail/{kind}/{name}")
}

/// A context whose client talks to the returned scripted API server.
pub fn context() -> (Arc<Context>, ApiServer) {
    let (ctx, api) = context_of();
    (Arc::new(ctx), api)
}

/// [`context`] with the watches' caches.
pub fn context_with_stores(stores: Stores) -> (Arc<Context>, ApiServer) {
    let (ctx, api) = context_of();
    (Arc::new(ctx.with_stores(stores)), api)
}

fn context_of() -> (Context, ApiServer) {
    let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let client = Client::new(svc, "mail");
    let ctx = Context::new(
        client,
        Arc::new(Metrics::default()),
        BuildOptions::default(),
        Some("test".into()),
    );
    (ctx, ApiServer(handle))
}

/// A watch's cache, synced, holding `objects`.
pub fn store<K>(objects: Vec<K>) -> Store<K>
where
    K: Resource<DynamicType = ()> + Clone,
{
    let mut w = Writer::<K>::default();
    w.apply_watcher_event(&Event::Init);
    for o in objects {
        w.apply_watcher_event(&Event::InitApply(o));
    }
    w.apply_watcher_event(&Event::InitDone);
    w.as_reader()
}

/// An object's metadata as a metadata watch caches it, in namespace `mail`.
pub fn cached<K: Resource<DynamicType = ()>>(name: &str, rv: &str) -> PartialObjectMeta<K> {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some("mail".into()),
        resource_version: Some(rv.into()),
        ..Default::default()
    }
    .into_request_partial::<K>()
}

/// Synced caches holding the Secrets `secrets` and nothing else.
pub fn stores_with_secrets(secrets: &[&str]) -> Stores {
    Stores {
        secrets: store(secrets.iter().map(|s| cached(s, "1")).collect()),
        config_maps: store(vec![]),
        stateful_sets: store(vec![]),
        services: store(vec![]),
        pdbs: store(vec![]),
        network_policies: store(vec![]),
        pods: store(vec![]),
    }
}

/// Reconciles `relay` while `script` answers the API requests; both must finish in time.
pub async fn reconcile_with<F>(relay: SmtpRelay, ctx: Arc<Context>, script: F) -> Result<Action>
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

/// What the live children look like to a scenario.
pub enum Live<'a> {
    /// None of them exists yet.
    Nothing,
    /// Each is as the operator last applied it.
    Applied(&'a Desired),
}

/// The scripted API server.
pub struct ApiServer(tower_test::mock::Handle<Request<Body>, Response<Body>>);

impl ApiServer {
    /// Answers the next request after checking its method and path; returns its body (`Null`
    /// when it has none).
    pub async fn expect(&mut self, method: &str, path: &str, resp: Response<Body>) -> Value {
        let (req, send) = self.0.next_request().await.expect("a request");
        assert_eq!(
            (req.method().as_str(), req.uri().path()),
            (method, path),
            "unexpected request"
        );
        let bytes = req.into_body().collect().await.expect("body").to_bytes();
        send.send_response(resp);
        serde_json::from_slice(&bytes).unwrap_or(Value::Null)
    }

    /// The next request, unanswered, for a test that checks more than its path.
    pub async fn next(
        &mut self,
    ) -> (
        Request<Body>,
        tower_test::mock::SendResponse<Response<Body>>,
    ) {
        self.0.next_request().await.expect("a request")
    }

    /// Fails on any further request.
    pub async fn expect_nothing_more(&mut self) {
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(200), self.0.next_request()).await
        {
            panic!("unexpected request: {} {}", req.method(), req.uri());
        }
    }

    /// Scenario "running read": the live StatefulSet, and its pods when it exists (none here).
    pub async fn running_read(&mut self, children: &Live<'_>) {
        match children {
            Live::Nothing => {
                self.expect("GET", &path("statefulsets", "r1"), not_found())
                    .await;
            }
            Live::Applied(d) => {
                self.expect("GET", &path("statefulsets", "r1"), ok(live_sts(d)))
                    .await;
                self.pods_listed().await;
            }
        }
    }

    /// Scenario "dereference": the config-hash key is read, as it is when the spec is valid and
    /// every reference resolved.
    pub async fn dereferenced(&mut self, children: &Live<'_>) {
        let key = match children {
            Live::Nothing => not_found(),
            Live::Applied(d) => ok(live(&d.hash_key_secret)),
        };
        self.expect("GET", &path("secrets", "r1-hash-key"), key)
            .await;
    }

    /// Scenario "children read": every child the relay wants is read, in the order the apply
    /// step reads them, before anything is written; `answer(kind, name)` says what each one's GET
    /// returns.
    pub async fn children_read(
        &mut self,
        d: &Desired,
        answer: impl Fn(&str, &str) -> Response<Body>,
    ) {
        let mut names = vec![d.hash_key_secret.name_any()];
        names.extend(
            [
                &d.ca_key_secret,
                &d.relayhost_secret,
                &d.sasl_users_secret,
                &d.tls_secret,
            ]
            .into_iter()
            .flatten()
            .map(Secret::name_any),
        );
        for name in names {
            self.expect("GET", &path("secrets", &name), answer("secrets", &name))
                .await;
        }
        for (kind, name) in [("configmaps", d.config_map.name_any())]
            .into_iter()
            .chain(d.ca_config_map.iter().map(|c| ("configmaps", c.name_any())))
            .chain([
                ("services", d.headless_service.name_any()),
                ("services", d.service.name_any()),
                ("statefulsets", d.stateful_set.name_any()),
            ])
            .chain(d.pdb.iter().map(|p| ("poddisruptionbudgets", p.name_any())))
            .chain(
                d.network_policy
                    .iter()
                    .map(|p| ("networkpolicies", p.name_any())),
            )
            .chain(d.drain_guard.iter().map(|g| ("configmaps", g.name_any())))
        {
            self.expect("GET", &path(kind, &name), answer(kind, &name))
                .await;
        }
    }

    /// The relay's pods are listed (what keeps one from running, which are draining); none
    /// here.
    async fn pods_listed(&mut self) {
        let body = self
            .expect(
                "GET",
                "/api/v1/namespaces/mail/pods",
                ok(json!({"apiVersion": "v1", "kind": "PodList", "metadata": {}, "items": []})),
            )
            .await;
        assert_eq!(body, Value::Null, "a GET has no body");
    }

    /// Scenario "refused": the input was rejected or refused; a Warning Event with `reason` is
    /// published and relay r1's status patched. Returns the status patch.
    pub async fn refused(&mut self, reason: &str) -> Value {
        let event = self
            .expect(
                "POST",
                "/apis/events.k8s.io/v1/namespaces/mail/events",
                respond(StatusCode::CREATED, json!({})),
            )
            .await;
        assert_eq!(event["reason"], reason);
        assert_eq!(event["type"], "Warning");
        let patch = self
            .expect(
                "PATCH",
                &format!("{}/status", path("smtprelays", "r1")),
                ok(serde_json::to_value(relay("r1")).expect("json")),
            )
            .await;
        assert!(
            patch.get("spec").is_none(),
            "status patch never touches spec"
        );
        patch
    }
}

/// The live StatefulSet of `d`: what was applied, plus what the API server and the StatefulSet
/// controller add (a complete, ready rollout of one replica).
pub fn live_sts(d: &Desired) -> Value {
    use k8s_openapi::api::apps::v1::{StatefulSet, StatefulSetStatus};
    let mut sts: StatefulSet = serde_json::from_value(live(&d.stateful_set)).expect("sts");
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
    serde_json::to_value(sts).expect("json")
}
