//! Docker's `--*-add` / `--*-rm` edits of a service's lists and maps, applied to its
//! current spec. Only what is edited is touched: an untouched empty part stays absent,
//! or the task spec would differ and every task be replaced.

use shoal_proto::port_config::Protocol;
use shoal_proto::*;

use super::field::{Edit, Field, SpecError, SpecErrors};

/// What `service update` adds and removes. Values are parsed already (`env_add` holds
/// `KEY=VALUE`, `publish_rm` a published port and its protocol).
#[derive(Clone, Debug, Default)]
pub struct ServiceEdit {
    pub env_add: Vec<String>,
    /// Variable names.
    pub env_rm: Vec<String>,
    pub label_add: Vec<(String, String)>,
    pub label_rm: Vec<String>,
    pub container_label_add: Vec<(String, String)>,
    pub container_label_rm: Vec<String>,
    pub constraint_add: Vec<String>,
    pub constraint_rm: Vec<String>,
    /// Replaces a mount at the same target.
    pub mount_add: Vec<Mount>,
    /// Targets.
    pub mount_rm: Vec<String>,
    pub network_add: Vec<NetworkAttachmentConfig>,
    /// Network IDs (the spec holds IDs; a front end resolves names first), each with
    /// the name it was given as.
    pub network_rm: Vec<(String, String)>,
    /// Replaces a port published at the same number and protocol.
    pub publish_add: Vec<PortConfig>,
    pub publish_rm: Vec<(u32, Protocol)>,
    /// Replace a reference with the same file path.
    pub secret_add: Vec<FileReference>,
    /// Names (or IDs) of the secrets whose references go.
    pub secret_rm: Vec<String>,
    pub config_add: Vec<FileReference>,
    pub config_rm: Vec<String>,
}

impl ServiceEdit {
    /// Applies the edits; a removal of what is not there is an error naming it (as
    /// Docker's), and nothing else stops the rest.
    pub fn apply(&self, spec: &mut ServiceSpec) -> Result<(), SpecErrors> {
        let mut errs = SpecErrors::default();
        let task = spec.task.get_or_insert_with(TaskSpec::default);
        let c = task.container.get_or_insert_with(ContainerSpec::default);
        let key = |e: &str| e.split_once('=').map_or(e, |(k, _)| k).to_string();
        for e in &self.env_add {
            let k = key(e);
            c.env.retain(|x| key(x) != k);
            c.env.push(e.clone());
        }
        c.env.retain(|x| !self.env_rm.contains(&key(x)));
        let mounts = Field::new("task.container.mounts");
        for t in &self.mount_rm {
            if !c.mounts.iter().any(|m| &m.target == t) {
                errs.push(
                    SpecError::new(mounts.clone(), "the service has no mount at that target")
                        .value(t)
                        .edit(Edit::Rm),
                );
            }
            c.mounts.retain(|m| &m.target != t);
        }
        for m in &self.mount_add {
            c.mounts.retain(|x| x.target != m.target);
            c.mounts.push(m.clone());
        }
        type PathOf = fn(&FileReference) -> String;
        for (list, add, rm, field, path) in [
            (
                &mut c.secrets,
                &self.secret_add,
                &self.secret_rm,
                "task.container.secrets",
                super::files::secret_path as PathOf,
            ),
            (
                &mut c.configs,
                &self.config_add,
                &self.config_rm,
                "task.container.configs",
                super::files::config_path as PathOf,
            ),
        ] {
            for name in rm {
                if !list
                    .iter()
                    .any(|r| &r.source_name == name || &r.source_id == name)
                {
                    errs.push(
                        SpecError::new(Field::new(field), "the service does not use it")
                            .value(name)
                            .edit(Edit::Rm),
                    );
                }
                list.retain(|r| &r.source_name != name && &r.source_id != name);
            }
            for r in add {
                list.retain(|x| path(x) != path(r));
                list.push(r.clone());
            }
        }
        for (k, v) in &self.container_label_add {
            c.labels.insert(k.clone(), v.clone());
        }
        for k in &self.container_label_rm {
            c.labels.remove(k);
        }
        for (id, given) in &self.network_rm {
            if !task.networks.iter().any(|x| &x.target == id) {
                errs.push(
                    SpecError::new(
                        Field::new("task.networks"),
                        "the service is not attached to that network",
                    )
                    .value(given)
                    .edit(Edit::Rm),
                );
            }
            task.networks.retain(|x| &x.target != id);
        }
        task.networks.extend(self.network_add.iter().cloned());
        if !self.publish_add.is_empty() || !self.publish_rm.is_empty() {
            let ep = spec.endpoint.get_or_insert_with(EndpointSpec::default);
            for (port, proto) in &self.publish_rm {
                let before = ep.ports.len();
                ep.ports
                    .retain(|p| !(p.published_port == *port && p.protocol == *proto as i32));
                if ep.ports.len() == before {
                    errs.push(
                        SpecError::new(
                            Field::new("endpoint.ports"),
                            "the service does not publish that port",
                        )
                        .value(format!(
                            "{port}/{}",
                            super::parse::protocol_name(*proto as i32)
                        ))
                        .edit(Edit::Rm),
                    );
                }
            }
            for p in &self.publish_add {
                ep.ports.retain(|x| {
                    !(x.published_port == p.published_port
                        && p.published_port != 0
                        && x.protocol == p.protocol)
                });
                ep.ports.push(p.clone());
            }
        }
        if !self.constraint_add.is_empty() || !self.constraint_rm.is_empty() {
            let placement = task.placement.get_or_insert_with(Placement::default);
            for k in &self.constraint_add {
                if !placement.constraints.contains(k) {
                    placement.constraints.push(k.clone());
                }
            }
            placement
                .constraints
                .retain(|x| !self.constraint_rm.contains(x));
        }
        if !self.label_add.is_empty() || !self.label_rm.is_empty() {
            let labels = &mut spec
                .annotations
                .get_or_insert_with(Annotations::default)
                .labels;
            for (k, v) in &self.label_add {
                labels.insert(k.clone(), v.clone());
            }
            for k in &self.label_rm {
                labels.remove(k);
            }
        }
        errs.into_result()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> ServiceSpec {
        ServiceSpec {
            task: Some(TaskSpec {
                container: Some(ContainerSpec {
                    image: "busybox".into(),
                    env: vec!["A=1".into(), "B=2".into()],
                    mounts: vec![Mount {
                        target: "/data".into(),
                        source: "vol".into(),
                        ..Default::default()
                    }],
                    ..Default::default()
                }),
                networks: vec![NetworkAttachmentConfig {
                    target: "n1".into(),
                    ..Default::default()
                }],
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn edits_add_replace_and_remove() {
        let mut s = spec();
        ServiceEdit {
            env_add: vec!["A=9".into(), "C=3".into()],
            env_rm: vec!["B".into()],
            mount_rm: vec!["/data".into()],
            network_rm: vec![("n1".into(), "front".into())],
            publish_add: vec![PortConfig {
                published_port: 80,
                target_port: 8080,
                ..Default::default()
            }],
            constraint_add: vec!["node.role==worker".into()],
            label_add: vec![("team".into(), "a".into())],
            ..Default::default()
        }
        .apply(&mut s)
        .unwrap();
        let task = s.task.as_ref().unwrap();
        let c = task.container.as_ref().unwrap();
        assert_eq!(c.env, ["A=9", "C=3"]);
        assert!(c.mounts.is_empty() && task.networks.is_empty());
        assert_eq!(
            task.placement.as_ref().unwrap().constraints,
            ["node.role==worker"]
        );
        assert_eq!(s.endpoint.as_ref().unwrap().ports.len(), 1);
        assert_eq!(s.annotations.as_ref().unwrap().labels["team"], "a");
        // untouched parts stay absent
        let mut s = spec();
        ServiceEdit::default().apply(&mut s).unwrap();
        assert_eq!(s, spec());
    }

    #[test]
    fn removing_what_is_not_there_names_it() {
        let mut s = spec();
        let e = ServiceEdit {
            mount_rm: vec!["/nowhere".into()],
            network_rm: vec![("n9".into(), "nonet".into())],
            publish_rm: vec![(9999, Protocol::Tcp)],
            ..Default::default()
        }
        .apply(&mut s)
        .unwrap_err();
        let got: Vec<(String, Option<String>, Option<Edit>)> =
            e.0.iter()
                .map(|e| (e.field.path().to_string(), e.value.clone(), e.edit))
                .collect();
        assert_eq!(
            got,
            [
                (
                    "task.container.mounts".to_string(),
                    Some("/nowhere".to_string()),
                    Some(Edit::Rm)
                ),
                ("task.networks".into(), Some("nonet".into()), Some(Edit::Rm)),
                (
                    "endpoint.ports".into(),
                    Some("9999/tcp".into()),
                    Some(Edit::Rm)
                ),
            ]
        );
    }
}
