//! Durations (`"30s"`, `"250ms"`, `"1h30m"`) and sizes (`"64KiB"`, `"1GiB"`, `"10MB"`) as they
//! are written in the config file.

use std::time::Duration;

/// Parses a duration such as `"30s"`, `"250ms"`, `"5m"`, `"1h30m"` or `"2d"`.
///
/// ```
/// use std::time::Duration;
/// assert_eq!(edge_routing::parse_duration("1m30s"), Ok(Duration::from_secs(90)));
/// assert_eq!(edge_routing::parse_duration("250ms"), Ok(Duration::from_millis(250)));
/// assert!(edge_routing::parse_duration("10").is_err());
/// ```
pub fn parse_duration(s: &str) -> Result<Duration, String> {
    let text = s.trim();
    if text.is_empty() {
        return Err("empty duration; write e.g. \"30s\", \"5m\" or \"250ms\"".into());
    }
    let mut total = Duration::ZERO;
    let mut rest = text;
    while !rest.is_empty() {
        let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
        if digits == 0 {
            return Err(format!(
                "{s:?} is not a duration; write e.g. \"30s\", \"5m\" or \"250ms\""
            ));
        }
        let n: u64 = rest[..digits]
            .parse()
            .map_err(|_| format!("{s:?}: number too large"))?;
        rest = &rest[digits..];
        let unit_len = rest.bytes().take_while(u8::is_ascii_alphabetic).count();
        let unit = &rest[..unit_len];
        rest = &rest[unit_len..];
        let part = match unit {
            "ms" => Duration::from_millis(n),
            "s" => Duration::from_secs(n),
            "m" => Duration::from_secs(n.saturating_mul(60)),
            "h" => Duration::from_secs(n.saturating_mul(3600)),
            "d" => Duration::from_secs(n.saturating_mul(86400)),
            "" => {
                return Err(format!(
                    "{s:?} has no unit; write e.g. \"{n}s\" (units: ms, s, m, h, d)"
                ))
            }
            other => {
                return Err(format!(
                    "{s:?}: unknown unit {other:?} (units: ms, s, m, h, d)"
                ))
            }
        };
        total = total.saturating_add(part);
    }
    Ok(total)
}

/// Parses a size in bytes: a plain number, or a number with `B`, `KB`, `MB`, `GB` (powers of
/// 1000) or `KiB`, `MiB`, `GiB`, `TiB` (powers of 1024).
///
/// ```
/// assert_eq!(edge_routing::parse_size("64KiB"), Ok(65536));
/// assert_eq!(edge_routing::parse_size("10MB"), Ok(10_000_000));
/// assert_eq!(edge_routing::parse_size("512"), Ok(512));
/// assert!(edge_routing::parse_size("lots").is_err());
/// ```
pub fn parse_size(s: &str) -> Result<u64, String> {
    let text = s.trim();
    let digits = text.bytes().take_while(u8::is_ascii_digit).count();
    if digits == 0 {
        return Err(format!(
            "{s:?} is not a size; write e.g. \"64KiB\", \"10MiB\" or \"1GiB\""
        ));
    }
    let n: u64 = text[..digits]
        .parse()
        .map_err(|_| format!("{s:?}: number too large"))?;
    let mult: u64 = match text[digits..].trim() {
        "" | "B" => 1,
        "KB" | "kB" => 1000,
        "MB" => 1_000_000,
        "GB" => 1_000_000_000,
        "KiB" => 1 << 10,
        "MiB" => 1 << 20,
        "GiB" => 1 << 30,
        "TiB" => 1 << 40,
        other => {
            return Err(format!(
                "{s:?}: unknown unit {other:?} (units: B, KB, MB, GB, KiB, MiB, GiB, TiB)"
            ))
        }
    };
    n.checked_mul(mult)
        .ok_or_else(|| format!("{s:?}: size too large"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_table() {
        let ok = [
            ("0s", 0),
            ("30s", 30_000),
            ("1h30m", 5_400_000),
            ("2d", 172_800_000),
            ("1500ms", 1500),
        ];
        for (text, ms) in ok {
            assert_eq!(
                parse_duration(text),
                Ok(Duration::from_millis(ms)),
                "{text}"
            );
        }
        for bad in ["", "s", "10", "10 parsecs", "-1s", "1.5s"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
    }

    #[test]
    fn sizes_table() {
        let ok = [
            ("1", 1),
            ("1KiB", 1024),
            ("1 MiB", 1 << 20),
            ("2GiB", 2 << 30),
            ("3KB", 3000),
        ];
        for (text, n) in ok {
            assert_eq!(parse_size(text), Ok(n), "{text}");
        }
        for bad in ["", "KiB", "1 parsec", "-1", "99999999999999999999TiB"] {
            assert!(parse_size(bad).is_err(), "{bad:?} should be rejected");
        }
    }
}
