//! Docker's units: durations (`1m30s`), sizes (`64m`), numbers of CPUs (`0.5`), and
//! `KEY=VALUE` pairs. Each parser's error says what is wrong with the value and names
//! no front end: the caller says where the value came from.

use std::collections::HashMap;
use std::time::Duration;

/// Go-style durations as Docker takes them: `300ms`, `5s`, `1m30s`, `2h`.
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let mut total = Duration::ZERO;
    let mut num = String::new();
    let mut chars = s.chars().peekable();
    if s.is_empty() {
        return Err("empty duration".into());
    }
    while let Some(c) = chars.next() {
        if c.is_ascii_digit() || c == '.' {
            num.push(c);
            continue;
        }
        let mut unit = c.to_string();
        while let Some(n) = chars.peek().filter(|n| n.is_ascii_alphabetic()) {
            unit.push(*n);
            chars.next();
        }
        let v: f64 = num
            .parse()
            .map_err(|_| format!("{s:?} is not a duration (e.g. 500ms, 5s, 1m30s)"))?;
        let secs = match unit.as_str() {
            "ns" => v / 1e9,
            "us" | "µs" => v / 1e6,
            "ms" => v / 1e3,
            "s" => v,
            "m" => v * 60.0,
            "h" => v * 3600.0,
            _ => return Err(format!("{s:?}: unknown unit {unit:?} (use ms, s, m, h)")),
        };
        total += Duration::try_from_secs_f64(secs)
            .map_err(|_| format!("{s:?} is too long a duration"))?;
        num.clear();
    }
    if !num.is_empty() {
        return Err(format!("{s:?} has no unit (e.g. 5s)"));
    }
    Ok(total)
}

/// Docker-style byte sizes: `512`, `64k`, `64m`, `1g` (also `64MiB`, `64mb`).
pub fn parse_bytes(s: &str) -> Result<u64, String> {
    let t = s.trim().to_ascii_lowercase();
    let t = t.trim_end_matches("ib").trim_end_matches('b');
    let (num, mul) = match t.chars().last() {
        Some('k') => (&t[..t.len() - 1], 1u64 << 10),
        Some('m') => (&t[..t.len() - 1], 1 << 20),
        Some('g') => (&t[..t.len() - 1], 1 << 30),
        Some('t') => (&t[..t.len() - 1], 1 << 40),
        _ => (t, 1),
    };
    let n: f64 = num
        .parse()
        .map_err(|_| format!("{s:?} is not a size (e.g. 512, 64k, 64m, 1g)"))?;
    if !(n >= 0.0 && n.is_finite()) {
        return Err(format!("{s:?} is not a size"));
    }
    let bytes = n * mul as f64;
    if bytes > i64::MAX as f64 {
        return Err(format!("{s:?} is too large a size (at most 8 EiB)"));
    }
    Ok(bytes as u64)
}

/// A size as the spec keeps it (bytes, signed as in Docker's API).
pub fn parse_size(s: &str) -> Result<i64, String> {
    parse_bytes(s).map(|b| b as i64)
}

/// A number of CPUs as the spec keeps it (billionths); how many a host has is the
/// managers' to check.
pub fn nano_cpus(c: f64) -> Result<i64, String> {
    if !(c > 0.0 && c.is_finite()) || c * 1e9 >= i64::MAX as f64 {
        return Err(format!("{c}: must be a positive number of CPUs"));
    }
    Ok((c * 1e9).round() as i64)
}

/// `KEY=VALUE` with a key: an environment variable as an edit gives it.
pub fn key_value(s: &str) -> Result<(String, String), String> {
    match s.split_once('=') {
        Some((k, v)) if !k.is_empty() => Ok((k.to_string(), v.to_string())),
        _ => Err("use KEY=VALUE".into()),
    }
}

/// A label, `KEY=VALUE` or `KEY` (an empty value), as Docker reads `--label`.
pub fn label(s: &str) -> Result<(String, String), String> {
    let (k, v) = s.split_once('=').unwrap_or((s, ""));
    if k.is_empty() {
        return Err("a label needs a name".into());
    }
    Ok((k.to_string(), v.to_string()))
}

/// Labels, the last of a key winning; the first bad one's error with the value.
pub fn labels(list: &[String]) -> Result<HashMap<String, String>, (String, String)> {
    let mut m = HashMap::new();
    for l in list {
        let (k, v) = label(l).map_err(|e| (l.clone(), e))?;
        m.insert(k, v);
    }
    Ok(m)
}

/// A duration as the spec keeps it.
pub fn to_proto(d: Duration) -> prost_types::Duration {
    prost_types::Duration {
        seconds: d.as_secs().min(i64::MAX as u64) as i64,
        nanos: d.subsec_nanos() as i32,
    }
}

/// A spec's duration (negative ones read as zero, as a node reads them).
pub fn from_proto(d: &prost_types::Duration) -> Duration {
    Duration::new(d.seconds.max(0) as u64, d.nanos.max(0) as u32)
}

/// A spec's duration in nanoseconds, as Docker's JSON gives them (0 when unset).
pub fn nanos(d: &Option<prost_types::Duration>) -> i64 {
    d.as_ref()
        .map(|d| d.seconds.saturating_mul(1_000_000_000) + d.nanos as i64)
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations() {
        assert_eq!(parse_duration("500ms").unwrap(), Duration::from_millis(500));
        assert_eq!(parse_duration("1m30s").unwrap(), Duration::from_secs(90));
        assert_eq!(parse_duration("2h").unwrap(), Duration::from_secs(7200));
        assert!(parse_duration("5").unwrap_err().contains("no unit"));
        assert!(parse_duration("5y").unwrap_err().contains("unknown unit"));
        assert!(parse_duration("").unwrap_err().contains("empty"));
        assert!(parse_duration("1e400h").is_err(), "no panic on overflow");
        assert_eq!(to_proto(Duration::from_millis(1500)).nanos, 500_000_000);
        assert_eq!(
            from_proto(&prost_types::Duration {
                seconds: -5,
                nanos: 0
            }),
            Duration::ZERO
        );
        assert_eq!(
            nanos(&Some(to_proto(Duration::from_secs(5)))),
            5_000_000_000
        );
        assert_eq!(nanos(&None), 0);
    }

    #[test]
    fn sizes() {
        assert_eq!(parse_bytes("64m").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("1.5k").unwrap(), 1536);
        assert_eq!(parse_bytes("64MiB").unwrap(), 64 << 20);
        assert_eq!(parse_bytes("512").unwrap(), 512);
        assert!(parse_bytes("lots").unwrap_err().contains("is not a size"));
        assert!(parse_bytes("99999999999999999999g")
            .unwrap_err()
            .contains("too large"));
        assert_eq!(parse_size("1g").unwrap(), 1 << 30);
    }

    #[test]
    fn cpus_and_pairs() {
        assert_eq!(nano_cpus(0.5).unwrap(), 500_000_000);
        for bad in [0.0, -1.0, f64::NAN, f64::INFINITY, 1e300] {
            assert!(nano_cpus(bad).is_err(), "{bad}");
        }
        assert_eq!(key_value("A=b=c").unwrap(), ("A".into(), "b=c".into()));
        assert!(key_value("NOVALUE").is_err() && key_value("=x").is_err());
        assert_eq!(label("team").unwrap(), ("team".into(), "".into()));
        assert!(label("=x").is_err());
        let m = labels(&["a=1".into(), "a=2".into()]).unwrap();
        assert_eq!(m["a"], "2");
        assert_eq!(labels(&["=x".into()]).unwrap_err().0, "=x");
    }
}
