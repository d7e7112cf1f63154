//! The SmtpRelay CRD's upgrade, once at startup, before the controller runs.
//!
//! Helm installs a chart's `crds/` on the first install and never upgrades it, so after a
//! `helm upgrade` a newer operator would run against the older schema, and the API server
//! would silently prune every field that schema lacks (a `spec.tlsMinVersion` its user wrote
//! simply disappears). So the operator reads the served CRD and, when it is older than its
//! own, server-side applies its own over it (field manager `smtp-relay-operator`, forced, with
//! the resourceVersion it read as a precondition, so a CRD that changed in between is read
//! again, not overwritten).
//!
//! Older is what [`crate::crdgen::VERSION_ANNOTATION`] says, compared as semantic versions
//! ([`decide`]): a CRD without the annotation is older (it predates it); one a newer operator
//! wrote is never downgraded; one whose annotation is not a version is left alone (nothing
//! proves it older). The operator never creates the CRD (the chart's `crds/` or the user does,
//! and its RBAC has no `create`) and never deletes it: it needs `get` and `patch` on that one
//! CRD and nothing else. Whatever goes wrong (forbidden, a conflict that does not settle, the
//! API server away) is a warning naming the fix, and the operator runs on: nothing of a
//! relay's status depends on it.

use std::cmp::Ordering;
use std::time::Duration;

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube::api::{Patch, PatchParams};
use kube::{Api, Client, CustomResourceExt, ResourceExt};
use semver::Version;
use serde_json::Value;
use tracing::{debug, info, warn};

use crate::crdgen::{self, VERSION, VERSION_ANNOTATION};
use crate::floor::contract::MANAGER;
use crate::floor::crd::SmtpRelay;

/// The longest the upgrade may hold the operator's start: then it is given up (a warning).
pub const TIMEOUT: Duration = Duration::from_secs(20);
/// Requests made for one upgrade at most (a conflict or a failure that may pass is retried).
const ATTEMPTS: u32 = 5;
/// Delay before retrying a failure that may pass (doubling); a conflict is read again at once.
const FIRST_RETRY: Duration = Duration::from_millis(500);

/// What a user who does the upgrade by hand runs.
const APPLY_IT_YOURSELF: &str = "apply this version's CRD yourself: kubectl apply --server-side \
     --force-conflicts -f crds/smtprelay.dev_smtprelays.yaml (from the chart or the release of \
     this version)";

/// What to do with the served CRD, from the version it carries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// Older than this operator's, or without a version (it predates the annotation): apply
    /// this operator's.
    Upgrade,
    /// This operator's version: nothing to do.
    Current,
    /// A newer operator's: never downgraded.
    Newer,
    /// The annotation is no version: left alone, since nothing proves it older.
    Unreadable,
}

/// The decision for a served CRD annotated `served` (`None`: no annotation), this operator
/// being `ours`.
pub fn decide(served: Option<&str>, ours: &Version) -> Decision {
    let Some(served) = served else {
        return Decision::Upgrade;
    };
    // Precedence as semver.org defines it: build metadata takes no part.
    match Version::parse(served) {
        Err(_) => Decision::Unreadable,
        Ok(v) => match v.cmp_precedence(ours) {
            Ordering::Less => Decision::Upgrade,
            Ordering::Equal => Decision::Current,
            Ordering::Greater => Decision::Newer,
        },
    }
}

/// [`decide`] against this operator's own version; `None` if that is no semantic version (a
/// bug the unit tests rule out).
pub fn decide_for_this_operator(served: Option<&str>) -> Option<Decision> {
    Version::parse(VERSION)
        .ok()
        .map(|ours| decide(served, &ours))
}

/// What the upgrade found and did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Done {
    /// The served CRD was older (the version it carried, `None` without one) and is now this
    /// operator's.
    Upgraded { from: Option<String> },
    /// The served CRD is this operator's version.
    Current,
    /// A newer operator wrote the served CRD: left as it is.
    Newer { served: String },
    /// The served CRD's version annotation is no version: left as it is.
    Unreadable { served: String },
    /// No CRD is served: the operator never creates it.
    NotInstalled,
}

/// Why the upgrade did not happen.
#[derive(Debug, thiserror::Error)]
pub enum UpgradeError {
    /// This operator's own CRD does not serialize (a bug).
    #[error("this operator's CRD: {0}")]
    Crd(#[from] crate::floor::error::Error),
    /// This operator's own version is no semantic version (a bug).
    #[error("this operator's version: {0}")]
    Version(#[from] semver::Error),
    #[error("reading the served CRD: {}", short(.0))]
    Read(#[source] kube::Error),
    #[error("applying this operator's CRD: {}", short(.0))]
    Apply(#[source] kube::Error),
    #[error("no answer within {0:?}")]
    Timeout(Duration),
}

/// The API server's own words (its message and code), not the whole Status.
fn short(e: &kube::Error) -> String {
    match e {
        kube::Error::Api(s) => format!("{} ({} {})", s.message, s.code, s.reason),
        other => other.to_string(),
    }
}

impl UpgradeError {
    fn status(&self) -> Option<&kube::core::Status> {
        match self {
            UpgradeError::Read(kube::Error::Api(s)) | UpgradeError::Apply(kube::Error::Api(s)) => {
                Some(s)
            }
            _ => None,
        }
    }

    /// The API server refused the operator's ServiceAccount.
    pub fn is_forbidden(&self) -> bool {
        self.status().is_some_and(|s| s.is_forbidden())
    }

    /// The CRD changed between the read and the apply: read it again at once.
    fn is_conflict(&self) -> bool {
        self.status().is_some_and(|s| s.is_conflict())
    }

    /// A failure that may pass: the API server unreachable, overloaded or failing.
    fn may_pass(&self) -> bool {
        match self {
            UpgradeError::Read(e) | UpgradeError::Apply(e) => match e {
                kube::Error::Api(s) => s.code == 429 || s.code >= 500,
                _ => true,
            },
            UpgradeError::Crd(_) | UpgradeError::Version(_) | UpgradeError::Timeout(_) => false,
        }
    }

    /// What the user does about it.
    pub fn fix(&self) -> String {
        let rbac = if self.is_forbidden() {
            format!(
                "grant the operator get and patch on customresourcedefinitions/{} (the chart \
                 does with crds.upgrade=true and rbac.create=true; operator/RBAC.md), or ",
                SmtpRelay::crd_name()
            )
        } else {
            String::new()
        };
        format!(
            "{rbac}{APPLY_IT_YOURSELF}; the operator tries again when it next starts \
             (--crd-upgrade=false, chart value crds.upgrade=false, leaves the CRD to you)"
        )
    }
}

/// Upgrades the served SmtpRelay CRD to this operator's when it is older, within [`TIMEOUT`],
/// and logs what it found and did; a failure is a warning with its fix, never an error of the
/// operator.
pub async fn upgrade(client: Client) -> Result<Done, UpgradeError> {
    let api: Api<CustomResourceDefinition> = Api::all(client);
    let outcome = match tokio::time::timeout(TIMEOUT, upgrade_with_retries(&api)).await {
        Ok(outcome) => outcome,
        Err(_) => Err(UpgradeError::Timeout(TIMEOUT)),
    };
    log(&outcome);
    outcome
}

fn log(outcome: &Result<Done, UpgradeError>) {
    let crd = SmtpRelay::crd_name();
    match outcome {
        Ok(Done::Upgraded { from }) => info!(
            crd,
            from = from.as_deref().unwrap_or("unversioned"),
            to = VERSION,
            "upgraded the SmtpRelay CRD to this operator's"
        ),
        Ok(Done::Current) => info!(crd, version = VERSION, "the SmtpRelay CRD is current"),
        Ok(Done::Newer { served }) => info!(
            crd,
            served = served.as_str(),
            version = VERSION,
            "the SmtpRelay CRD is a newer operator's; left as it is (never downgraded)"
        ),
        Ok(Done::Unreadable { served }) => warn!(
            crd,
            annotation = VERSION_ANNOTATION,
            served = served.as_str(),
            fix = APPLY_IT_YOURSELF,
            "the SmtpRelay CRD's version annotation is no version, so it is left as it is; \
             if it is older than this operator, the API server drops the fields it lacks"
        ),
        Ok(Done::NotInstalled) => warn!(
            crd,
            "the SmtpRelay CRD is not installed, and the operator never creates it: install \
             the chart, or kubectl apply --server-side -f crds/smtprelay.dev_smtprelays.yaml"
        ),
        Err(e) => warn!(
            crd,
            error = %e,
            fix = e.fix(),
            "cannot upgrade the SmtpRelay CRD; until it is, the API server drops every field \
             this operator's schema added"
        ),
    }
}

async fn upgrade_with_retries(api: &Api<CustomResourceDefinition>) -> Result<Done, UpgradeError> {
    let ours = crdgen::crd_value()?;
    let version = Version::parse(VERSION)?;
    let mut delay = FIRST_RETRY;
    let mut attempt = 1;
    loop {
        match upgrade_once(api, &ours, &version).await {
            Err(e) if attempt < ATTEMPTS && (e.is_conflict() || e.may_pass()) => {
                debug!(error = %e, attempt, "upgrading the SmtpRelay CRD: trying again");
                if !e.is_conflict() {
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                attempt += 1;
            }
            outcome => return outcome,
        }
    }
}

/// One read, and the apply it calls for.
async fn upgrade_once(
    api: &Api<CustomResourceDefinition>,
    ours: &Value,
    version: &Version,
) -> Result<Done, UpgradeError> {
    let name = SmtpRelay::crd_name();
    let Some(served) = api.get_opt(name).await.map_err(UpgradeError::Read)? else {
        return Ok(Done::NotInstalled);
    };
    let annotation = served.annotations().get(VERSION_ANNOTATION).cloned();
    let shown = || annotation.clone().unwrap_or_default();
    match decide(annotation.as_deref(), version) {
        Decision::Current => Ok(Done::Current),
        Decision::Newer => Ok(Done::Newer { served: shown() }),
        Decision::Unreadable => Ok(Done::Unreadable { served: shown() }),
        Decision::Upgrade => {
            let body = with_resource_version(ours, served.resource_version());
            let params = PatchParams::apply(MANAGER).force();
            api.patch(name, &params, &Patch::Apply(&body))
                .await
                .map_err(UpgradeError::Apply)?;
            Ok(Done::Upgraded { from: annotation })
        }
    }
}

/// `crd` carrying `resource_version`: the apply then fails with a conflict (and the CRD is read
/// again) if anyone changed it since it was read.
fn with_resource_version(crd: &Value, resource_version: Option<String>) -> Value {
    let mut crd = crd.clone();
    if let (Some(meta), Some(rv)) = (
        crd.get_mut("metadata").and_then(Value::as_object_mut),
        resource_version,
    ) {
        meta.insert("resourceVersion".into(), Value::String(rv));
    }
    crd
}

#[cfg(test)]
mod tests {
    use super::*;

    use http::{Request, Response, StatusCode};
    use http_body_util::BodyExt;
    use kube::client::Body;
    use serde_json::json;

    fn v(s: &str) -> Version {
        Version::parse(s).unwrap_or_else(|e| panic!("{e}"))
    }

    #[test]
    fn this_operators_version_is_a_semantic_version() {
        assert!(Version::parse(VERSION).is_ok());
    }

    #[test]
    fn an_older_crd_is_upgraded() {
        let ours = v("1.4.2");
        for older in ["1.4.1", "1.3.9", "0.9.9", "1.4.2-rc.1", "1.4.2-0"] {
            assert_eq!(decide(Some(older), &ours), Decision::Upgrade, "{older}");
        }
    }

    #[test]
    fn the_same_version_is_current() {
        assert_eq!(decide(Some("1.4.2"), &v("1.4.2")), Decision::Current);
        // Build metadata takes no part in precedence.
        assert_eq!(
            decide(Some("1.4.2+build.7"), &v("1.4.2")),
            Decision::Current
        );
        assert_eq!(
            decide(Some("1.4.2-rc.1"), &v("1.4.2-rc.1")),
            Decision::Current
        );
    }

    #[test]
    fn a_newer_crd_is_never_downgraded() {
        let ours = v("1.4.2");
        for newer in ["1.4.3", "1.5.0", "2.0.0", "1.4.10", "1.4.3-alpha"] {
            assert_eq!(decide(Some(newer), &ours), Decision::Newer, "{newer}");
        }
        // Numbers compare as numbers, not text.
        assert_eq!(decide(Some("0.10.0"), &v("0.9.0")), Decision::Newer);
    }

    #[test]
    fn a_crd_without_the_annotation_is_older() {
        assert_eq!(decide(None, &v("0.1.0")), Decision::Upgrade);
    }

    #[test]
    fn a_malformed_annotation_leaves_the_crd_alone() {
        let ours = v("1.4.2");
        for bad in [
            "",
            "1.4",
            "1.4.2.0",
            "v1.4.2",
            " 1.4.2",
            "1.4.x",
            "01.4.2",
            "1.4.2-",
            "1.4.2-rc..1",
            "1.4.2-rc.01",
            "1.4.2+",
            "1.4.2-ü",
            "latest",
            "-1.4.2",
        ] {
            assert_eq!(decide(Some(bad), &ours), Decision::Unreadable, "{bad:?}");
        }
    }

    #[test]
    fn pre_releases_sort_as_semver_says() {
        // The example of semver.org, item 11.
        let chain = [
            "1.0.0-alpha",
            "1.0.0-alpha.1",
            "1.0.0-alpha.beta",
            "1.0.0-beta",
            "1.0.0-beta.2",
            "1.0.0-beta.11",
            "1.0.0-rc.1",
            "1.0.0",
        ];
        for pair in chain.windows(2) {
            assert!(v(pair[0]) < v(pair[1]), "{} < {}", pair[0], pair[1]);
        }
    }

    // The upgrade against a scripted API server.

    type Handle = tower_test::mock::Handle<Request<Body>, Response<Body>>;

    const PATH: &str =
        "/apis/apiextensions.k8s.io/v1/customresourcedefinitions/smtprelays.smtprelay.dev";

    fn respond(code: StatusCode, v: &Value) -> Response<Body> {
        Response::builder()
            .status(code)
            .body(Body::from(serde_json::to_vec(v).expect("json")))
            .expect("response")
    }

    fn status(code: u16, reason: &str) -> Response<Body> {
        let s = json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
            "reason": reason, "code": code, "message": reason});
        respond(StatusCode::from_u16(code).expect("code"), &s)
    }

    /// The served CRD: ours with `annotation` as its version (none when `None`) and one property
    /// fewer, at resourceVersion `rv`.
    fn served(annotation: Option<&str>, rv: &str) -> Response<Body> {
        let mut crd = crdgen::crd_value().expect("crd");
        crd["metadata"]["annotations"] = match annotation {
            Some(a) => json!({ VERSION_ANNOTATION: a }),
            None => json!({}),
        };
        crd["metadata"]["resourceVersion"] = json!(rv);
        let props = &mut crd["spec"]["versions"][0]["schema"]["openAPIV3Schema"]["properties"]
            ["spec"]["properties"];
        props
            .as_object_mut()
            .expect("properties")
            .remove("tlsMinVersion");
        respond(StatusCode::OK, &crd)
    }

    /// Runs the upgrade while `script` answers its requests.
    async fn run<F>(script: impl FnOnce(Handle) -> F) -> Result<Done, UpgradeError>
    where
        F: std::future::Future<Output = ()> + Send + 'static,
    {
        let (svc, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
        let server = tokio::spawn(script(handle));
        let outcome = upgrade(Client::new(svc, "default")).await;
        tokio::time::timeout(Duration::from_secs(5), server)
            .await
            .expect("script finishes")
            .expect("script passes");
        outcome
    }

    async fn expect_get(h: &mut Handle, resp: Response<Body>) {
        let (req, send) = h.next_request().await.expect("a request");
        assert_eq!((req.method().as_str(), req.uri().path()), ("GET", PATH));
        send.send_response(resp);
    }

    /// The next request is the apply; answers it with `resp` and returns its query and body.
    async fn expect_apply(h: &mut Handle, resp: Response<Body>) -> (String, Value) {
        let (req, send) = h.next_request().await.expect("a request");
        assert_eq!((req.method().as_str(), req.uri().path()), ("PATCH", PATH));
        assert_eq!(
            req.headers()["content-type"],
            "application/apply-patch+yaml",
            "a server-side apply"
        );
        let query = req.uri().query().unwrap_or_default().to_string();
        let bytes = req.into_body().collect().await.expect("body").to_bytes();
        send.send_response(resp);
        (query, serde_json::from_slice(&bytes).expect("json body"))
    }

    async fn expect_nothing_more(h: &mut Handle) {
        if let Ok(Some((req, _))) =
            tokio::time::timeout(Duration::from_millis(200), h.next_request()).await
        {
            panic!("unexpected request: {} {}", req.method(), req.uri());
        }
    }

    #[tokio::test]
    async fn an_older_crd_is_applied_over_with_the_version_read() {
        let done = run(|mut h| async move {
            expect_get(&mut h, served(Some("0.0.1"), "41")).await;
            let (query, body) = expect_apply(&mut h, served(Some(VERSION), "42")).await;
            assert!(
                query.contains("fieldManager=smtp-relay-operator"),
                "{query}"
            );
            assert!(query.contains("force=true"), "{query}");
            assert_eq!(body["metadata"]["resourceVersion"], "41", "a precondition");
            assert_eq!(body["metadata"]["annotations"][VERSION_ANNOTATION], VERSION);
            let mut ours = crdgen::crd_value().expect("crd");
            ours["metadata"]["resourceVersion"] = json!("41");
            assert_eq!(body, ours, "exactly the CRD crds/ holds");
            expect_nothing_more(&mut h).await;
        })
        .await;
        assert_eq!(
            done.expect("upgraded"),
            Done::Upgraded {
                from: Some("0.0.1".into())
            }
        );
    }

    #[tokio::test]
    async fn a_crd_without_a_version_is_upgraded() {
        let done = run(|mut h| async move {
            expect_get(&mut h, served(None, "7")).await;
            expect_apply(&mut h, served(Some(VERSION), "8")).await;
        })
        .await;
        assert_eq!(done.expect("upgraded"), Done::Upgraded { from: None });
    }

    #[tokio::test]
    async fn a_current_newer_or_unreadable_crd_is_only_read() {
        for (annotation, want) in [
            (VERSION, Done::Current),
            (
                "999.0.0",
                Done::Newer {
                    served: "999.0.0".into(),
                },
            ),
            (
                "next",
                Done::Unreadable {
                    served: "next".into(),
                },
            ),
        ] {
            let done = run(move |mut h| async move {
                expect_get(&mut h, served(Some(annotation), "3")).await;
                expect_nothing_more(&mut h).await;
            })
            .await;
            assert_eq!(done.expect("read"), want);
        }
    }

    #[tokio::test]
    async fn a_missing_crd_is_never_created() {
        let done = run(|mut h| async move {
            expect_get(&mut h, status(404, "NotFound")).await;
            expect_nothing_more(&mut h).await;
        })
        .await;
        assert_eq!(done.expect("read"), Done::NotInstalled);
    }

    #[tokio::test]
    async fn forbidden_is_a_warning_with_the_fix_and_not_retried() {
        for forbidden_at_apply in [false, true] {
            let err = run(move |mut h| async move {
                if forbidden_at_apply {
                    expect_get(&mut h, served(Some("0.0.1"), "5")).await;
                    expect_apply(&mut h, status(403, "Forbidden")).await;
                } else {
                    expect_get(&mut h, status(403, "Forbidden")).await;
                }
                expect_nothing_more(&mut h).await;
            })
            .await
            .expect_err("forbidden");
            assert!(err.is_forbidden(), "{err}");
            assert!(
                err.to_string().ends_with("Forbidden (403 Forbidden)"),
                "{err}"
            );
            let fix = err.fix();
            assert!(
                fix.contains("get and patch on customresourcedefinitions/smtprelays.smtprelay.dev")
                    && fix.contains("crds.upgrade")
                    && fix.contains("kubectl apply --server-side"),
                "{fix}"
            );
        }
    }

    #[tokio::test]
    async fn a_crd_changed_under_the_apply_is_read_again_and_never_downgraded() {
        let done = run(|mut h| async move {
            expect_get(&mut h, served(Some("0.0.1"), "10")).await;
            // A newer operator wrote it between the read and the apply.
            expect_apply(&mut h, status(409, "Conflict")).await;
            expect_get(&mut h, served(Some("999.0.0"), "11")).await;
            expect_nothing_more(&mut h).await;
        })
        .await;
        assert_eq!(
            done.expect("read again"),
            Done::Newer {
                served: "999.0.0".into()
            }
        );
    }

    #[tokio::test]
    async fn a_failing_api_server_is_retried_then_given_up() {
        let done = run(|mut h| async move {
            expect_get(&mut h, status(503, "ServiceUnavailable")).await;
            expect_get(&mut h, served(Some(VERSION), "1")).await;
        })
        .await;
        assert_eq!(done.expect("read on the second try"), Done::Current);

        let err = run(|mut h| async move {
            expect_get(&mut h, status(400, "BadRequest")).await;
            expect_nothing_more(&mut h).await;
        })
        .await
        .expect_err("not retried");
        assert!(!err.is_forbidden());
        assert!(err.fix().starts_with("apply this version's CRD yourself"));
    }
}
