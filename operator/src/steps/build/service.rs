//! The client-facing Service `<name>` and the headless Service `<name>-headless` that gives the
//! StatefulSet's pods stable names and exposes their metrics.

use k8s_openapi::api::core::v1::{Service, ServicePort, ServiceSpec};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::ResourceExt;

use crate::floor::contract::{
    child_meta, selector_labels, submission_ports, Names, METRICS_PORT, PROXY_PORT_NAME, SMTP_PORT,
};
use crate::floor::crd::{ServiceType, SmtpRelay, TrafficPolicy};
use crate::floor::error::Result;

fn port(name: &str, port: i32) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        protocol: Some("TCP".into()),
        target_port: Some(IntOrString::String(name.into())),
        ..ServicePort::default()
    }
}

pub fn service(relay: &SmtpRelay) -> Result<Service> {
    let s = &relay.spec.service;
    let mut meta = child_meta(relay, relay.name_any(), "relay")?;
    if !s.annotations.is_empty() {
        meta.annotations = Some(s.annotations.clone());
    }
    let external = s.type_ != ServiceType::ClusterIP;
    let mut smtp = port("smtp", s.port);
    if s.proxy_protocol {
        // Behind a PROXY-protocol load balancer: the pods' port that reads its header.
        smtp.target_port = Some(IntOrString::String(PROXY_PORT_NAME.into()));
    }
    Ok(Service {
        metadata: meta,
        spec: Some(ServiceSpec {
            type_: Some(s.type_.as_str().into()),
            selector: Some(selector_labels(relay)),
            ports: Some(
                std::iter::once(smtp)
                    .chain(
                        submission_ports(&relay.spec)
                            .into_iter()
                            .map(|(name, number)| port(name, number)),
                    )
                    .collect(),
            ),
            // Local by default: with Cluster, kube-proxy rewrites the source address to a
            // node's, and `networks` would be matching nodes instead of clients.
            external_traffic_policy: external.then(|| {
                s.external_traffic_policy
                    .unwrap_or(TrafficPolicy::Local)
                    .as_str()
                    .into()
            }),
            load_balancer_ip: s
                .load_balancer_ip
                .clone()
                .filter(|_| s.type_ == ServiceType::LoadBalancer),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}

pub fn headless_service(relay: &SmtpRelay) -> Result<Service> {
    let name = Names::headless_service(&relay.name_any());
    Ok(Service {
        metadata: child_meta(relay, name, "relay")?,
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            selector: Some(selector_labels(relay)),
            publish_not_ready_addresses: Some(true),
            ports: Some(vec![port("smtp", SMTP_PORT), port("metrics", METRICS_PORT)]),
            ..ServiceSpec::default()
        }),
        status: None,
    })
}
