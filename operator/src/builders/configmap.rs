//! The ConfigMap `<name>-config` holding `relay.yaml`.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::ResourceExt;
use smtp_relay::config_file::RelayConfigFile;

use super::{child_meta, Names, CONFIG_KEY};
use crate::crd::SmtpRelay;
use crate::{Error, Result};

pub fn config_map(relay: &SmtpRelay, file: &RelayConfigFile) -> Result<ConfigMap> {
    let yaml = serde_yaml::to_string(file).map_err(|e| Error::Serialization(e.to_string()))?;
    Ok(ConfigMap {
        metadata: child_meta(relay, Names::config_map(&relay.name_any()), "config")?,
        data: Some(BTreeMap::from([(CONFIG_KEY.to_string(), yaml)])),
        ..ConfigMap::default()
    })
}
