//! Secrets and configs: the objects' names and data as Swarm limits them, and the files
//! a task sees of them (`--secret source=S,target=T,uid=,gid=,mode=`, `--config …`):
//! parsed as docker parses them, checked, and where they go in the container.

use shoal_proto::{ConfigSpec, FileReference, SecretSpec};

use super::field::{Field, SpecErrors};
use super::limits::check_labels;

/// A secret's data is more than 0 and less than this (Swarm's 500 KiB).
pub const MAX_SECRET_BYTES: usize = 500 * 1024;
/// A config's: Swarm's 1000 KiB.
pub const MAX_CONFIG_BYTES: usize = 1000 * 1024;
/// Secrets (or configs) one service may use.
pub const MAX_REFERENCES: usize = 100;
/// Where secrets are, in a container.
pub const SECRETS_DIR: &str = "/run/secrets";

/// Swarm's rule for secret and config names: up to 64 of `[a-zA-Z0-9-_.]`, a letter or
/// digit at both ends.
fn name(errs: &mut SpecErrors, kind: &str, n: &str) {
    let ends = |c: Option<char>| c.is_some_and(|c| c.is_ascii_alphanumeric());
    let ok = n.len() <= 64
        && ends(n.chars().next())
        && ends(n.chars().last())
        && n.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'));
    if !ok {
        errs.at(
            Field::new("annotations.name"),
            format!("{n:?} is not a valid {kind} name: use up to 64 of [a-zA-Z0-9-_.], with a letter or digit at both ends"),
        );
    }
}

fn object(
    kind: &str,
    annotations: &Option<shoal_proto::Annotations>,
    data: &[u8],
    max: usize,
) -> Result<(), SpecErrors> {
    let mut errs = SpecErrors::default();
    let a = annotations.clone().unwrap_or_default();
    name(&mut errs, kind, &a.name);
    if let Err(e) = check_labels(&a.labels) {
        errs.at(Field::new("annotations.labels"), e);
    }
    if data.is_empty() || data.len() >= max {
        errs.at(
            Field::new("data"),
            format!(
                "{} bytes: a {kind}'s data must be more than 0 bytes and less than {} KiB",
                data.len(),
                max / 1024
            ),
        );
    }
    errs.into_result()
}

pub fn secret(spec: &SecretSpec) -> Result<(), SpecErrors> {
    object("secret", &spec.annotations, &spec.data, MAX_SECRET_BYTES)
}

pub fn config(spec: &ConfigSpec) -> Result<(), SpecErrors> {
    object("config", &spec.annotations, &spec.data, MAX_CONFIG_BYTES)
}

/// Where a secret's file is in the container: `/run/secrets/<target>`.
pub fn secret_path(r: &FileReference) -> String {
    format!("{SECRETS_DIR}/{}", target(r))
}

/// Where a config's file is: its target if absolute, else `/<target>`.
pub fn config_path(r: &FileReference) -> String {
    let t = target(r);
    if t.starts_with('/') {
        t.to_string()
    } else {
        format!("/{t}")
    }
}

/// The target, the source's name when none was given (as docker's).
fn target(r: &FileReference) -> &str {
    if r.target.is_empty() {
        &r.source_name
    } else {
        &r.target
    }
}

/// The references of a container spec: known fields, targets that stay where they
/// belong (a secret's a file name in /run/secrets; no `..` anywhere), owners by number,
/// permissions within 0777, no file twice.
pub fn references(errs: &mut SpecErrors, secrets: &[FileReference], configs: &[FileReference]) {
    let mut paths = std::collections::BTreeSet::new();
    for (list, kind, path) in [
        (
            secrets,
            "secrets",
            secret_path as fn(&FileReference) -> String,
        ),
        (configs, "configs", config_path),
    ] {
        let at = Field::new("task.container").child(kind);
        if list.len() > MAX_REFERENCES {
            errs.at(
                at.clone(),
                format!("{} {kind}: at most {MAX_REFERENCES}", list.len()),
            );
            continue;
        }
        for (i, r) in list.iter().enumerate() {
            let here = at.at(i);
            if r.source_name.is_empty() && r.source_id.is_empty() {
                errs.at(
                    here.child("source"),
                    "a source (the secret's or config's name) is required",
                );
                continue;
            }
            let t = target(r);
            let bad_target = t.is_empty()
                || t.len() > 255
                || t.split('/').any(|c| c == ".." || c == ".")
                || t.chars().any(|c| c.is_control())
                || (kind == "secrets" && t.contains('/'))
                || (kind == "configs" && (t == "/" || t.ends_with('/')));
            if bad_target {
                let why = if kind == "secrets" {
                    "a secret's target is a file name in /run/secrets (no '/', no '..')"
                } else {
                    "a config's target is a file's path, absolute or from / (no '.' or '..' in it)"
                };
                errs.at(here.child("target"), format!("{t:?}: {why}"));
                continue;
            }
            for (f, v) in [("uid", &r.uid), ("gid", &r.gid)] {
                if !v.is_empty() && v.parse::<u32>().is_err() {
                    errs.at(here.child(f), format!("{v:?} is not a number"));
                }
            }
            if r.mode > 0o777 {
                errs.at(
                    here.child("mode"),
                    format!("{:#o}: permissions are at most 0777", r.mode),
                );
            }
            let p = path(r);
            if !paths.insert(p.clone()) {
                errs.at(
                    here.child("target"),
                    format!("{p} is the target of another file"),
                );
            }
        }
    }
}

/// Docker's `--secret` / `--config` value: `NAME`, or
/// `source=NAME[,target=T][,uid=U][,gid=G][,mode=M]` (`src`, `dst` too), `mode` as Go
/// reads a number (`0440` octal, `0x1ff`, or decimal).
pub fn parse_reference(s: &str) -> Result<FileReference, String> {
    let mut r = FileReference::default();
    if !s.contains('=') {
        r.source_name = s.to_string();
        return Ok(r);
    }
    for part in s.split(',') {
        let (k, v) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not KEY=VALUE"))?;
        match k.trim().to_ascii_lowercase().as_str() {
            "source" | "src" => r.source_name = v.into(),
            "target" | "dst" | "destination" => r.target = v.into(),
            "uid" => r.uid = v.into(),
            "gid" => r.gid = v.into(),
            "mode" => r.mode = parse_mode(v)?,
            other => {
                return Err(format!(
                    "unknown key {other:?} (use source, target, uid, gid, mode)"
                ))
            }
        }
    }
    if r.source_name.is_empty() {
        return Err(format!("{s:?}: source is required"));
    }
    Ok(r)
}

fn parse_mode(v: &str) -> Result<u32, String> {
    let bad = || format!("mode {v:?} is not a number");
    let n = if let Some(h) = v.strip_prefix("0x").or_else(|| v.strip_prefix("0X")) {
        u32::from_str_radix(h, 16).map_err(|_| bad())?
    } else if let Some(o) = v.strip_prefix("0o").or_else(|| v.strip_prefix("0O")) {
        u32::from_str_radix(o, 8).map_err(|_| bad())?
    } else if v.len() > 1 && v.starts_with('0') {
        u32::from_str_radix(&v[1..], 8).map_err(|_| bad())?
    } else {
        v.parse::<u32>().map_err(|_| bad())?
    };
    if n > 0o777 {
        return Err(format!("mode {v:?} ({n:#o}): permissions are at most 0777"));
    }
    Ok(n)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec(name: &str, data: &[u8]) -> SecretSpec {
        SecretSpec {
            annotations: Some(shoal_proto::Annotations {
                name: name.into(),
                ..Default::default()
            }),
            data: data.to_vec(),
        }
    }

    #[test]
    fn names_and_sizes_are_swarms() {
        assert!(secret(&spec("db.pass-1_x", b"x")).is_ok());
        for bad in ["", "-x", "x.", "a b", "é", &"x".repeat(65)] {
            let e = secret(&spec(bad, b"x")).unwrap_err().to_string();
            assert!(e.contains("annotations.name"), "{bad:?}: {e}");
        }
        let e = secret(&spec("s", b"")).unwrap_err().to_string();
        assert!(e.contains("more than 0 bytes"), "{e}");
        assert!(secret(&spec("s", &vec![1; MAX_SECRET_BYTES - 1])).is_ok());
        assert!(secret(&spec("s", &vec![1; MAX_SECRET_BYTES])).is_err());
        let c = ConfigSpec {
            annotations: spec("c", b"").annotations,
            data: vec![1; MAX_SECRET_BYTES + 1],
        };
        assert!(config(&c).is_ok(), "a config may be up to 1000 KiB");
    }

    #[test]
    fn references_parse_as_dockers() {
        let r = parse_reference("source=db,target=pw,uid=10,gid=20,mode=0400").unwrap();
        assert_eq!(
            (
                r.source_name.as_str(),
                r.target.as_str(),
                r.uid.as_str(),
                r.gid.as_str(),
                r.mode
            ),
            ("db", "pw", "10", "20", 0o400)
        );
        assert_eq!(parse_reference("db").unwrap().source_name, "db");
        assert_eq!(parse_reference("src=db,mode=256").unwrap().mode, 0o400);
        assert!(parse_reference("source=db,mode=999")
            .unwrap_err()
            .contains("at most 0777"));
        assert!(parse_reference("target=x")
            .unwrap_err()
            .contains("source is required"));
        assert!(parse_reference("source=db,colour=red")
            .unwrap_err()
            .contains("unknown key"));
    }

    #[test]
    fn targets_stay_where_they_belong() {
        let r = |s: &str| parse_reference(s).unwrap();
        let check = |secrets: &[FileReference], configs: &[FileReference]| {
            let mut errs = SpecErrors::default();
            references(&mut errs, secrets, configs);
            errs.into_result().map_err(|e| e.to_string())
        };
        assert!(check(&[r("db")], &[r("source=nginx,target=/etc/nginx.conf")]).is_ok());
        assert_eq!(secret_path(&r("db")), "/run/secrets/db");
        assert_eq!(config_path(&r("source=c,target=etc/x")), "/etc/x");
        for bad in [
            "source=db,target=../x",
            "source=db,target=a/b",
            "source=db,uid=root",
        ] {
            let e = check(&[r(bad)], &[]).unwrap_err();
            assert!(e.contains("task.container.secrets[0]"), "{bad}: {e}");
        }
        let e = check(&[], &[r("source=c,target=/etc/../shadow")]).unwrap_err();
        assert!(e.contains("task.container.configs[0].target"), "{e}");
        let e = check(&[r("db"), r("source=other,target=db")], &[]).unwrap_err();
        assert!(e.contains("target of another file"), "{e}");
    }
}
