//! Go's text forms of the values whose JSON Kubernetes writes through Go formatting: RFC 3339
//! times, `time.Duration.String()` and standard base64.

/// `time.Unix(secs, nanos).UTC()` as Go's layout `2006-01-02T15:04:05Z` (or with `.000000`
/// microseconds). `None` when Go's `Time.MarshalJSON` would fail: a year outside 0..=9999.
pub(crate) fn rfc3339(secs: i64, nanos: i64, micros: bool) -> Option<String> {
    // Normalise like time.Unix does, so that nanos outside [0, 1e9) carry into the seconds.
    let secs = secs.checked_add(nanos.div_euclid(1_000_000_000))?;
    let nanos = nanos.rem_euclid(1_000_000_000);
    let (days, sod) = (secs.div_euclid(86_400), secs.rem_euclid(86_400));
    let (y, m, d) = civil_from_days(days);
    if !(0..=9999).contains(&y) {
        return None;
    }
    let (hh, mm, ss) = (sod / 3600, sod / 60 % 60, sod % 60);
    let mut s = format!("{y:04}-{m:02}-{d:02}T{hh:02}:{mm:02}:{ss:02}");
    if micros {
        // Go's `.000000` layout truncates to microseconds, it does not round.
        s.push_str(&format!(".{:06}", nanos / 1000));
    }
    s.push('Z');
    Some(s)
}

/// Proleptic Gregorian date of a day count from 1970-01-01 (H. Hinnant's `civil_from_days`).
fn civil_from_days(days: i64) -> (i64, u32, u32) {
    let z = days + 719_468;
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

/// Go's `time.Duration(nanos).String()`: `1h0m0s`, `1.5s`, `300ms`, `0s`.
pub(crate) fn duration(nanos: i64) -> String {
    let neg = nanos < 0;
    let mut u = nanos.unsigned_abs();
    // Built right to left, as Go does.
    let mut out: Vec<u8> = Vec::new();
    if u < 1_000_000_000 {
        out.push(b's');
        if u == 0 {
            return "0s".to_string();
        }
        let prec = if u < 1_000 {
            out.push(b'n');
            0
        } else if u < 1_000_000 {
            out.extend_from_slice(&[0xb5, 0xc2]); // "µ" (U+00B5), reversed like the rest
            3
        } else {
            out.push(b'm');
            6
        };
        u = frac(&mut out, u, prec);
        int(&mut out, u);
    } else {
        out.push(b's');
        u = frac(&mut out, u, 9);
        int(&mut out, u % 60);
        u /= 60;
        if u > 0 {
            out.push(b'm');
            int(&mut out, u % 60);
            u /= 60;
            if u > 0 {
                out.push(b'h');
                int(&mut out, u);
            }
        }
    }
    if neg {
        out.push(b'-');
    }
    out.reverse();
    String::from_utf8(out).expect("ASCII and µ")
}

/// Go's `fmtFrac`: the fraction `v / 10^prec` without trailing zeros (pushed reversed).
fn frac(out: &mut Vec<u8>, mut v: u64, prec: u32) -> u64 {
    let mut print = false;
    for _ in 0..prec {
        let digit = (v % 10) as u8;
        print = print || digit != 0;
        if print {
            out.push(b'0' + digit);
        }
        v /= 10;
    }
    if print {
        out.push(b'.');
    }
    v
}

fn int(out: &mut Vec<u8>, mut v: u64) {
    if v == 0 {
        out.push(b'0');
    }
    while v > 0 {
        out.push(b'0' + (v % 10) as u8);
        v /= 10;
    }
}

/// Standard base64 with padding, as Go's `encoding/json` writes `[]byte`.
pub(crate) fn base64(data: &[u8]) -> String {
    const ALPHABET: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    let mut s = String::with_capacity(data.len().div_ceil(3) * 4);
    for chunk in data.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                s.push(ALPHABET[(n >> (18 - 6 * i) & 63) as usize] as char);
            } else {
                s.push('=');
            }
        }
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn times() {
        assert_eq!(rfc3339(0, 0, false).unwrap(), "1970-01-01T00:00:00Z");
        assert_eq!(rfc3339(1_767_323_045, 0, false).unwrap(), "2026-01-02T03:04:05Z");
        assert_eq!(rfc3339(951_782_400, 0, false).unwrap(), "2000-02-29T00:00:00Z");
        assert_eq!(rfc3339(-1, 0, false).unwrap(), "1969-12-31T23:59:59Z");
        assert_eq!(rfc3339(1_767_323_045, 123_456_789, true).unwrap(), "2026-01-02T03:04:05.123456Z");
        assert_eq!(rfc3339(0, -1, true).unwrap(), "1969-12-31T23:59:59.999999Z");
        assert_eq!(rfc3339(-62_135_596_800, 0, false).unwrap(), "0001-01-01T00:00:00Z");
        assert_eq!(rfc3339(253_402_300_799, 0, false).unwrap(), "9999-12-31T23:59:59Z");
        assert!(rfc3339(253_402_300_800, 0, false).is_none());
        assert!(rfc3339(i64::MIN, 0, false).is_none());
        assert!(rfc3339(i64::MAX, i64::MAX, false).is_none());
    }

    #[test]
    fn durations() {
        let s = 1_000_000_000i64;
        for (d, want) in [
            (0, "0s"),
            (1, "1ns"),
            (1_100, "1.1µs"),
            (2_200_000, "2.2ms"),
            (3 * s + 300_000_000, "3.3s"),
            (4 * 60 * s + 5 * s, "4m5s"),
            (3600 * s, "1h0m0s"),
            (-3600 * s - 1, "-1h0m0.000000001s"),
            (i64::MIN, "-2562047h47m16.854775808s"),
        ] {
            assert_eq!(duration(d), want);
        }
    }

    #[test]
    fn base64_std() {
        for (d, want) in [("", ""), ("f", "Zg=="), ("fo", "Zm8="), ("foo", "Zm9v"), ("foob", "Zm9vYg==")] {
            assert_eq!(base64(d.as_bytes()), want);
        }
        assert_eq!(base64(&[0xfb, 0xff]), "+/8=");
    }
}
