//! Docker's small languages for a service's parts, parsed into the spec's types:
//! mounts (`type=bind,source=…,target=…`), published ports (`8080:80/udp` or
//! `published=8080,target=80,mode=host`), network attachments (`NET,alias=A`). Errors say
//! what is wrong with the value; the caller says which flag or key it came from.

use shoal_proto::port_config::{Protocol, PublishMode};
use shoal_proto::{mount, Mount, NetworkAttachmentConfig, PortConfig};

use super::units::parse_bytes;

/// `type=bind|volume|tmpfs,source=…,target=…[,readonly][,tmpfs-size=…]`.
pub fn parse_mount(s: &str) -> Result<Mount, String> {
    let mut m = Mount {
        r#type: mount::Type::Volume as i32,
        ..Default::default()
    };
    for part in s.split(',') {
        let (k, v) = part.split_once('=').unwrap_or((part, ""));
        match k {
            "type" => {
                m.r#type = match v {
                    "bind" => mount::Type::Bind,
                    "volume" => mount::Type::Volume,
                    "tmpfs" => mount::Type::Tmpfs,
                    _ => return Err(format!("type {v:?} is not supported (bind, volume, tmpfs)")),
                } as i32
            }
            "source" | "src" => m.source = v.into(),
            "target" | "destination" | "dst" => m.target = v.into(),
            "readonly" | "ro" => m.read_only = v.is_empty() || v == "true" || v == "1",
            "tmpfs-size" => {
                m.tmpfs_size_bytes = parse_bytes(v).map_err(|e| format!("tmpfs-size {e}"))? as i64
            }
            _ => return Err(format!("unknown key {k:?}")),
        }
    }
    if m.target.is_empty() {
        return Err("target is required".into());
    }
    Ok(m)
}

/// `NAME[,alias=A…]` or `name=NAME[,alias=A…]` (the managers resolve the name).
pub fn parse_network(s: &str) -> Result<NetworkAttachmentConfig, String> {
    let mut a = NetworkAttachmentConfig::default();
    for (i, part) in s.split(',').enumerate() {
        match part.split_once('=') {
            Some(("name" | "target", v)) => a.target = v.to_string(),
            Some(("alias", v)) if !v.is_empty() => a.aliases.push(v.to_string()),
            Some((k, _)) if k == "driver-opt" || k == "ip" || k == "ip6" => {
                return Err(format!("{k} is not supported yet"))
            }
            Some((k, _)) => {
                return Err(format!(
                    "unknown option {k:?} (use name=NET and alias=NAME)"
                ))
            }
            None if i == 0 => a.target = part.to_string(),
            None => return Err(format!("{part:?} is not KEY=VALUE")),
        }
    }
    if a.target.is_empty() {
        return Err("which network? (NAME or name=NAME)".into());
    }
    Ok(a)
}

/// `tcp` or `udp`.
pub fn parse_protocol(p: &str) -> Result<Protocol, String> {
    match p {
        "tcp" => Ok(Protocol::Tcp),
        "udp" => Ok(Protocol::Udp),
        "sctp" => Err("protocol sctp is not supported (tcp or udp)".into()),
        _ => Err(format!("protocol {p:?}: use tcp or udp")),
    }
}

/// A protocol's name, as Docker prints it.
pub fn protocol_name(p: i32) -> &'static str {
    if p == Protocol::Udp as i32 {
        "udp"
    } else {
        "tcp"
    }
}

fn parse_port(what: &str, v: &str) -> Result<u32, String> {
    match v.parse::<u32>() {
        Ok(n) if (1..=65535).contains(&n) => Ok(n),
        _ if v.contains('-') => Err(format!("{what} {v:?}: port ranges are not supported")),
        _ => Err(format!("{what} {v:?} is not a port between 1 and 65535")),
    }
}

/// `published=P,target=T[,mode=ingress|host][,protocol=tcp|udp]`, or `[P:]T[/udp]`.
pub fn parse_publish(s: &str) -> Result<PortConfig, String> {
    let mut p = PortConfig::default();
    if s.contains('=') {
        for part in s.split(',') {
            let (k, v) = part
                .split_once('=')
                .ok_or_else(|| format!("{part:?} is not KEY=VALUE"))?;
            match k {
                "published" => p.published_port = parse_port("published", v)?,
                "target" => p.target_port = parse_port("target", v)?,
                "mode" => {
                    p.publish_mode = match v {
                        "ingress" => PublishMode::Ingress,
                        "host" => PublishMode::Host,
                        _ => return Err(format!("mode {v:?}: use ingress or host")),
                    } as i32
                }
                "protocol" => p.protocol = parse_protocol(v)? as i32,
                _ => {
                    return Err(format!(
                        "unknown option {k:?} (published, target, mode, protocol)"
                    ))
                }
            }
        }
    } else {
        let (ports, proto) = s.split_once('/').unwrap_or((s, "tcp"));
        p.protocol = parse_protocol(proto)? as i32;
        match ports.split_once(':') {
            Some((published, target)) => {
                if target.contains(':') {
                    return Err("an address to bind to is not supported (use P:T)".into());
                }
                p.published_port = parse_port("published", published)?;
                p.target_port = parse_port("target", target)?;
            }
            None => p.target_port = parse_port("target", ports)?,
        }
    }
    if p.target_port == 0 {
        return Err("which target port? (target=T)".into());
    }
    if p.publish_mode == PublishMode::Host as i32 && p.published_port == 0 {
        return Err("mode=host needs a published port".into());
    }
    Ok(p)
}

/// `PUBLISHED[/PROTOCOL]`, as `--publish-rm` names a port.
pub fn parse_published(s: &str) -> Result<(u32, Protocol), String> {
    let (port, proto) = s.split_once('/').unwrap_or((s, "tcp"));
    let port: u32 = port
        .parse()
        .map_err(|_| "use PUBLISHED[/tcp|udp]".to_string())?;
    Ok((port, parse_protocol(proto)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mounts() {
        let m = parse_mount("type=tmpfs,target=/t,tmpfs-size=1m").unwrap();
        assert_eq!(
            (m.r#type, m.tmpfs_size_bytes),
            (mount::Type::Tmpfs as i32, 1 << 20)
        );
        let m = parse_mount("type=bind,src=/a,dst=/b,ro").unwrap();
        assert_eq!((m.source.as_str(), m.target.as_str()), ("/a", "/b"));
        assert!(m.read_only);
        assert_eq!(
            parse_mount("target=/v").unwrap().r#type,
            mount::Type::Volume as i32
        );
        assert!(parse_mount("type=nfs,target=/x")
            .unwrap_err()
            .contains("type \"nfs\" is not supported"));
        assert!(parse_mount("source=x")
            .unwrap_err()
            .contains("target is required"));
        assert!(parse_mount("target=/x,colour=red")
            .unwrap_err()
            .contains("unknown key \"colour\""));
        assert!(parse_mount("target=/x,tmpfs-size=lots")
            .unwrap_err()
            .contains("tmpfs-size \"lots\" is not a size"));
    }

    #[test]
    fn networks() {
        let a = parse_network("front,alias=web,alias=www").unwrap();
        assert_eq!(a.target, "front");
        assert_eq!(a.aliases, ["web", "www"]);
        assert_eq!(parse_network("name=back").unwrap().target, "back");
        assert!(parse_network("x,ip=10.0.0.2")
            .unwrap_err()
            .contains("not supported"));
        assert!(parse_network("x,colour=red")
            .unwrap_err()
            .contains("unknown option"));
        assert!(parse_network("alias=a")
            .unwrap_err()
            .contains("which network"));
        assert!(parse_network("x,y")
            .unwrap_err()
            .contains("is not KEY=VALUE"));
    }

    #[test]
    fn published_ports() {
        let p = parse_publish("8080:80/udp").unwrap();
        assert_eq!(
            (p.published_port, p.target_port, p.protocol),
            (8080, 80, Protocol::Udp as i32)
        );
        let p = parse_publish("published=9,target=10,mode=host").unwrap();
        assert_eq!(p.publish_mode, PublishMode::Host as i32);
        assert_eq!(parse_publish("80").unwrap().published_port, 0);
        assert!(parse_publish("80-90:80").unwrap_err().contains("ranges"));
        assert!(parse_publish("0.0.0.0:80:80")
            .unwrap_err()
            .contains("address"));
        assert!(parse_publish("70000:80")
            .unwrap_err()
            .contains("between 1 and 65535"));
        assert!(parse_publish("80/sctp").unwrap_err().contains("sctp"));
        assert!(parse_publish("target=80,mode=host")
            .unwrap_err()
            .contains("mode=host needs a published port"));
        assert!(parse_publish("published=8")
            .unwrap_err()
            .contains("which target"));
        assert!(parse_publish("target=80,x=y")
            .unwrap_err()
            .contains("unknown option"));
        assert_eq!(parse_published("53/udp").unwrap(), (53, Protocol::Udp));
        assert!(parse_published("x").is_err());
        assert_eq!(protocol_name(Protocol::Udp as i32), "udp");
    }
}
