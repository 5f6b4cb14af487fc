//! Time as the rules see it: wall-clock instants as unix milliseconds, and the contract's
//! duration grammar (`ms`, `s`, `m`, `h`, at most one year). Reading a clock is `os/time.rs`'s
//! business; the rules are handed the time.

use std::time::Duration;

/// Milliseconds since the unix epoch.
pub type Millis = u64;

/// The longest duration a setting may hold: one year. Every configured duration is added to an
/// `Instant` or a wall-clock time somewhere; a bound keeps that arithmetic far from overflow (a
/// `wait` of 2^51 hours would otherwise panic) and nothing sensible waits longer.
pub const MAX_DURATION: Duration = Duration::from_secs(365 * 24 * 3600);

/// Parse a duration such as `"250ms"`, `"90s"`, `"5m"`, `"1h"` or `"1h30m"`, at most
/// [`MAX_DURATION`] (`"8760h"`).
pub fn parse_duration(text: &str) -> Result<Duration, String> {
    let bad = || {
        format!(
            "bad duration {text:?}: write a number and a unit, e.g. \"250ms\", \"90s\", \"5m\", \"1h\""
        )
    };
    let too_long = || format!("duration {text:?} is too long: at most one year (\"8760h\")");
    let mut rest = text.trim();
    if rest.is_empty() {
        return Err(bad());
    }
    let mut total = Duration::ZERO;
    while !rest.is_empty() {
        let digits = rest
            .find(|c: char| !c.is_ascii_digit())
            .unwrap_or(rest.len());
        if digits == 0 {
            return Err(bad());
        }
        // More digits than a u64 holds is "too long", not "bad": the number itself was fine.
        let n: u64 = rest[..digits].parse().map_err(|_| too_long())?;
        rest = &rest[digits..];
        let unit = rest
            .find(|c: char| c.is_ascii_digit())
            .unwrap_or(rest.len());
        let millis_per = match &rest[..unit] {
            "ms" => 1,
            "s" => 1_000,
            "m" => 60_000,
            "h" => 3_600_000,
            _ => return Err(bad()),
        };
        let part = n
            .checked_mul(millis_per)
            .map(Duration::from_millis)
            .ok_or_else(too_long)?;
        total = total.checked_add(part).ok_or_else(too_long)?;
        if total > MAX_DURATION {
            return Err(too_long());
        }
        rest = &rest[unit..];
    }
    Ok(total)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_durations() {
        assert_eq!(parse_duration("250ms"), Ok(Duration::from_millis(250)));
        assert_eq!(parse_duration("90s"), Ok(Duration::from_secs(90)));
        assert_eq!(parse_duration("5m"), Ok(Duration::from_secs(300)));
        assert_eq!(parse_duration("1h30m"), Ok(Duration::from_secs(5400)));
        for bad in ["", "5", "m", "5 minutes", "-1s", "1.5s", "5d"] {
            assert!(parse_duration(bad).is_err(), "{bad:?} should be rejected");
        }
        assert_eq!(parse_duration("8760h"), Ok(MAX_DURATION));
        assert_eq!(parse_duration("8759h60m"), Ok(MAX_DURATION));
        for long in [
            "8760h1ms",
            "8761h",
            "2562047788015216h",
            "18446744073709551615ms1ms",
            "99999999999999999999999s",
        ] {
            let e = parse_duration(long).unwrap_err();
            assert!(e.contains("at most one year"), "{long}: {e}");
        }
    }
}
