//! `k8s.io/apimachinery/pkg/util/duration.HumanDuration`, the AGE format.

use chrono::{DateTime, TimeDelta, Utc};
use serde_json::Value;

use crate::json::time_of;

const SECOND: i64 = 1_000_000_000;
const MINUTE: i64 = 60 * SECOND;
const HOUR: i64 = 60 * MINUTE;

/// Formats a duration the way kubectl shows ages: about two significant
/// figures, e.g. `5s`, `119s`, `2m3s`, `10m`, `3h5m`, `10h`, `2d3h`, `25d`,
/// `3y45d`, `9y`.
///
/// Negative durations down to -1s (clock skew between machines) read `0s`;
/// further in the future is `<invalid>`.
pub fn human_duration(d: TimeDelta) -> String {
    // Go's time.Duration is int64 nanoseconds and time.Sub saturates, so a
    // timestamp centuries away prints as ~292y rather than overflowing.
    let ns = d.num_nanoseconds().unwrap_or(if d > TimeDelta::zero() { i64::MAX } else { i64::MIN });
    human_duration_ns(ns)
}

fn human_duration_ns(ns: i64) -> String {
    // Integer division truncates toward zero, as Go's int(d.Seconds()) does.
    let seconds = ns / SECOND;
    if seconds < -1 {
        return "<invalid>".to_string();
    } else if seconds < 0 {
        return "0s".to_string();
    } else if seconds < 60 * 2 {
        return format!("{seconds}s");
    }
    let minutes = ns / MINUTE;
    if minutes < 10 {
        let s = (ns / SECOND) % 60;
        return if s == 0 { format!("{minutes}m") } else { format!("{minutes}m{s}s") };
    } else if minutes < 60 * 3 {
        return format!("{minutes}m");
    }
    let hours = ns / HOUR;
    if hours < 8 {
        let m = (ns / MINUTE) % 60;
        if m == 0 { format!("{hours}h") } else { format!("{hours}h{m}m") }
    } else if hours < 48 {
        format!("{hours}h")
    } else if hours < 24 * 8 {
        let h = hours % 24;
        if h == 0 { format!("{}d", hours / 24) } else { format!("{}d{h}h", hours / 24) }
    } else if hours < 24 * 365 * 2 {
        format!("{}d", hours / 24)
    } else if hours < 24 * 365 * 8 {
        let dy = (hours / 24) % 365;
        if dy == 0 { format!("{}y", hours / 24 / 365) } else { format!("{}y{dy}d", hours / 24 / 365) }
    } else {
        format!("{}y", hours / 24 / 365)
    }
}

/// printers.go `translateTimestampSince`: the age of a timestamp field, or
/// `<unknown>` when it is unset.
pub(crate) fn since(timestamp: &Value, now: DateTime<Utc>) -> String {
    match time_of(timestamp) {
        Some(t) => human_duration(now - t),
        None => "<unknown>".to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(s: i64) -> String {
        human_duration(TimeDelta::seconds(s))
    }

    #[test]
    fn kubectl_age_table() {
        let m = 60;
        let h = 60 * m;
        let d = 24 * h;
        let y = 365 * d;
        let cases: &[(i64, &str)] = &[
            (0, "0s"),
            (5, "5s"),
            (59, "59s"),
            (119, "119s"),
            (2 * m, "2m"),
            (2 * m + 3, "2m3s"),
            (9 * m + 59, "9m59s"),
            (10 * m, "10m"),
            (10 * m + 30, "10m"),
            (179 * m, "179m"),
            (3 * h, "3h"),
            (3 * h + 5 * m, "3h5m"),
            (7 * h + 59 * m, "7h59m"),
            (8 * h, "8h"),
            (47 * h, "47h"),
            (2 * d, "2d"),
            (2 * d + 3 * h, "2d3h"),
            (7 * d + 23 * h, "7d23h"),
            (8 * d, "8d"),
            (25 * d, "25d"),
            (729 * d, "729d"),
            (2 * y, "2y"),
            (3 * y + 45 * d, "3y45d"),
            (8 * y, "8y"),
            (20 * y + 100 * d, "20y"),
            (-1, "0s"),
            (-2, "<invalid>"),
        ];
        for (s, want) in cases {
            assert_eq!(secs(*s), *want, "{s}s");
        }
        assert_eq!(human_duration(TimeDelta::milliseconds(-1500)), "0s");
        assert_eq!(human_duration(TimeDelta::days(365 * 2000)), "292y");
    }

    #[test]
    fn since_unknown_for_unset() {
        let now = DateTime::parse_from_rfc3339("2024-01-01T00:01:00Z").unwrap().with_timezone(&Utc);
        assert_eq!(since(&Value::Null, now), "<unknown>");
        assert_eq!(since(&Value::from("2024-01-01T00:00:00Z"), now), "60s");
    }
}
