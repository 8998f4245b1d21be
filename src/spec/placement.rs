//! Swarm's placement language: constraints (`node.labels.zone==east`,
//! `node.role!=manager`) and spread preferences (`spread=node.labels.zone`), parsed and
//! matched against nodes. The scheduler and the global orchestrator place tasks with
//! it; the validation refuses what it cannot parse.

use shoal_proto::{Node, NodeRole};

/// One constraint: `node.labels.zone==east`.
#[derive(Clone, Debug, PartialEq)]
pub struct Constraint {
    key: String,
    equal: bool,
    value: String,
}

/// The keys a constraint may name, besides `node.labels.*` and `engine.labels.*`.
const KEYS: [&str; 5] = [
    "node.id",
    "node.hostname",
    "node.role",
    "node.platform.os",
    "node.platform.arch",
];

/// Parses Swarm's constraint expressions, refusing what Swarm would refuse.
pub fn parse_constraint(c: &str) -> Result<Constraint, String> {
    let (key, equal, value) = if let Some((k, v)) = c.split_once("==") {
        (k, true, v)
    } else if let Some((k, v)) = c.split_once("!=") {
        (k, false, v)
    } else {
        return Err(format!("constraint {c:?} has no == or != operator"));
    };
    let key = key.trim();
    let value = value.trim();
    if !KEYS.contains(&key)
        && !key.starts_with("node.labels.")
        && !key.starts_with("engine.labels.")
    {
        return Err(format!("constraint {c:?}: unknown key {key:?} (node.id, node.hostname, node.role, node.platform.os, node.platform.arch, node.labels.*, engine.labels.*)"));
    }
    if value.is_empty() {
        return Err(format!("constraint {c:?} has no value"));
    }
    if key == "node.role" && !["manager", "worker"].contains(&value) {
        return Err(format!("constraint {c:?}: node.role is manager or worker"));
    }
    Ok(Constraint {
        key: key.into(),
        equal,
        value: value.into(),
    })
}

impl Constraint {
    pub fn matches(&self, n: &Node) -> bool {
        let d = n.description.as_ref();
        let actual: Option<String> = match self.key.as_str() {
            "node.id" => Some(n.id.clone()),
            "node.hostname" => d.map(|d| d.hostname.clone()),
            "node.role" => Some(
                if n.role == NodeRole::Manager as i32 {
                    "manager"
                } else {
                    "worker"
                }
                .into(),
            ),
            "node.platform.os" => d.and_then(|d| d.platform.as_ref()).map(|p| p.os.clone()),
            "node.platform.arch" => d
                .and_then(|d| d.platform.as_ref())
                .map(|p| p.architecture.clone()),
            k => label_of(n, k),
        };
        // names compare case-insensitively, as in Swarm
        let eq = actual.is_some_and(|a| a.eq_ignore_ascii_case(&self.value));
        eq == self.equal
    }
}

/// Whether `n` meets every constraint (an unparsable one is an error).
pub fn node_matches_constraints(n: &Node, constraints: &[String]) -> Result<bool, String> {
    for c in constraints {
        if !parse_constraint(c)?.matches(n) {
            return Ok(false);
        }
    }
    Ok(true)
}

/// A node's value for `node.labels.X` / `engine.labels.X` (None: no such label).
pub fn label_of(n: &Node, descriptor: &str) -> Option<String> {
    if let Some(l) = descriptor.strip_prefix("node.labels.") {
        n.spec
            .as_ref()
            .and_then(|s| s.annotations.as_ref())
            .and_then(|a| a.labels.get(l).cloned())
    } else if let Some(l) = descriptor.strip_prefix("engine.labels.") {
        n.description
            .as_ref()
            .and_then(|d| d.engine.as_ref())
            .and_then(|e| e.labels.get(l).cloned())
    } else {
        None
    }
}

/// Validates `spread=node.labels.X` (Swarm's one placement preference) and returns its
/// descriptor (`node.labels.X`).
pub fn parse_preference(p: &str) -> Result<String, String> {
    let d = p
        .strip_prefix("spread=")
        .ok_or_else(|| format!("{p:?}: the only preference is spread=node.labels.NAME"))?;
    match d
        .strip_prefix("node.labels.")
        .or(d.strip_prefix("engine.labels."))
    {
        Some(l) if !l.is_empty() => Ok(d.to_string()),
        _ => Err(format!(
            "{p:?}: spread takes node.labels.NAME or engine.labels.NAME"
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use shoal_proto::{Annotations, NodeDescription, NodeSpec, Platform};

    fn node() -> Node {
        Node {
            id: "n1".into(),
            role: NodeRole::Worker as i32,
            spec: Some(NodeSpec {
                annotations: Some(Annotations {
                    labels: [("zone".to_string(), "East".to_string())].into(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            description: Some(NodeDescription {
                hostname: "edge-1".into(),
                platform: Some(Platform {
                    architecture: "x86_64".into(),
                    os: "linux".into(),
                }),
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    #[test]
    fn constraints_parse_and_match_as_swarms_do() {
        let n = node();
        for (c, want) in [
            ("node.labels.zone==east", true),
            ("node.labels.zone!=east", false),
            ("node.labels.rack==1", false),
            ("node.labels.rack!=1", true),
            ("node.role==worker", true),
            ("node.role != manager", true),
            ("node.hostname==edge-1", true),
            ("node.id==n1", true),
            ("node.platform.os==linux", true),
            ("node.platform.arch==arm64", false),
            ("engine.labels.x==y", false),
        ] {
            assert_eq!(node_matches_constraints(&n, &[c.into()]), Ok(want), "{c}");
        }
        assert!(parse_constraint("node.color==red")
            .unwrap_err()
            .contains("unknown key"));
        assert!(parse_constraint("node.role==boss")
            .unwrap_err()
            .contains("manager or worker"));
        assert!(parse_constraint("node.id==")
            .unwrap_err()
            .contains("no value"));
        assert!(parse_constraint("node.id")
            .unwrap_err()
            .contains("no == or !="));
        assert!(node_matches_constraints(&n, &["bad".into()]).is_err());
    }

    #[test]
    fn preferences_spread_over_labels_only() {
        assert_eq!(
            parse_preference("spread=node.labels.zone").unwrap(),
            "node.labels.zone"
        );
        assert!(parse_preference("binpack=x")
            .unwrap_err()
            .contains("only preference"));
        assert!(parse_preference("spread=node.labels.")
            .unwrap_err()
            .contains("spread takes"));
        assert_eq!(
            label_of(&node(), "node.labels.zone").as_deref(),
            Some("East")
        );
        assert_eq!(label_of(&node(), "node.hostname"), None);
    }
}
