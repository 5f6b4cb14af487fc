//! The wall clock as unix milliseconds, its RFC 3339 rendering, and durations for people. The
//! duration grammar of the settings is a rule (`protocol::time::parse_duration`), re-exported here.
//!
//! Hand-written on purpose (measured against humantime): the rendering is 15 lines that take any
//! u64 (humantime goes through `SystemTime`, whose addition panics on a damaged state's absurd
//! time) and cost 3.7 KB less in the hook binary; the duration grammar is the contract's exact one
//! (`ms`, `s`, `m`, `h`), where humantime also reads `5M` as five months and `1.5s`, and has no
//! upper bound.
//!
//! State files store plain milliseconds; people and `status --json` see RFC 3339 UTC. Liveness
//! decisions that can use a monotonic clock do so (see `wait.rs`); this is only for leases and
//! display.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

pub use buildlock_protocol::time::{MAX_DURATION, Millis, parse_duration};

pub fn now() -> Millis {
    let real = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or(Duration::ZERO)
        .as_millis() as Millis;
    // A test-only skew (BUILDLOCK_TEST_CLOCK_OFFSET), so that the clock-skew tests need no
    // LD_PRELOAD tool; 0 unless set.
    real.saturating_add_signed(crate::os::env::clock_offset_ms())
}

/// `2026-11-22T10:00:00Z` (seconds precision, UTC).
pub fn rfc3339(ms: Millis) -> String {
    let secs = ms / 1000;
    let (days, rem) = (secs / 86_400, secs % 86_400);
    let (y, m, d) = civil_from_days(days as i64);
    format!(
        "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60
    )
}

/// Howard Hinnant's days-to-civil algorithm.
fn civil_from_days(z: i64) -> (i64, u32, u32) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = (doy - (153 * mp + 2) / 5 + 1) as u32;
    let m = if mp < 10 { mp + 3 } else { mp - 9 } as u32;
    let y = yoe + era * 400 + i64::from(m <= 2);
    (y, m, d)
}

/// A short human rendering of a span: `850ms`, `42s`, `3m10s`, `1h05m`.
pub fn human(d: Duration) -> String {
    let ms = d.as_millis();
    let s = d.as_secs();
    match s {
        0 => format!("{ms}ms"),
        1..60 => format!("{s}s"),
        60..3600 => format!("{}m{:02}s", s / 60, s % 60),
        _ => format!("{}h{:02}m", s / 3600, s % 3600 / 60),
    }
}

/// A random duration in `[0, max)`, from a small xorshift generator seeded by time and pid.
pub fn jitter(max: Duration) -> Duration {
    use std::cell::Cell;
    thread_local! {
        static SEED: Cell<u64> = Cell::new(
            (now() ^ (u64::from(std::process::id()) << 32)) | 1
        );
    }
    let nanos = max.as_nanos() as u64;
    if nanos == 0 {
        return Duration::ZERO;
    }
    let r = SEED.with(|s| {
        let mut x = s.get();
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        s.set(x);
        x
    });
    Duration::from_nanos(r % nanos)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn formats_rfc3339() {
        assert_eq!(rfc3339(0), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_795_341_600_000), "2026-11-22T10:00:00Z");
        assert_eq!(rfc3339(951_782_400_000), "2000-02-29T00:00:00Z");
        // A damaged state's absurd time still renders (SystemTime arithmetic would panic).
        assert!(rfc3339(u64::MAX).ends_with('Z'));
    }

    #[test]
    fn renders_human_spans() {
        assert_eq!(human(Duration::from_millis(850)), "850ms");
        assert_eq!(human(Duration::from_secs(190)), "3m10s");
        assert_eq!(human(Duration::from_secs(3900)), "1h05m");
    }
}
