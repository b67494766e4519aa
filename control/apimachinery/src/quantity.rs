//! Kubernetes resource quantities (`100m`, `1.5Gi`, `2e3`) as integers, with exact decimal
//! arithmetic (no floating point: `0.1` cpu is exactly 100 millicores).

/// `q × scale`, rounded up (as Kubernetes' `MilliValue`/`Value` do), saturating at `i64`'s range.
/// `None` for text that is not a quantity.
pub fn parse_scaled(q: &str, scale: i64) -> Option<i64> {
    let s = q.trim();
    let (neg, s) = match s.as_bytes().first()? {
        b'-' => (true, &s[1..]),
        b'+' => (false, &s[1..]),
        _ => (false, s),
    };
    let num_end = s.find(|c: char| !(c.is_ascii_digit() || c == '.')).unwrap_or(s.len());
    let (num, suffix) = s.split_at(num_end);
    let (int, frac) = num.split_once('.').unwrap_or((num, ""));
    if int.is_empty() && frac.is_empty() || frac.contains('.') {
        return None;
    }
    // Digits beyond what an i128 can hold would only matter for absurd quantities; keep 30.
    let digits: String = int.chars().chain(frac.chars()).collect();
    let digits = digits.trim_start_matches('0');
    let keep = digits.len().min(30);
    let mut mantissa: i128 = if digits.is_empty() { 0 } else { digits[..keep].parse().ok()? };
    let mut exp10: i32 = (digits.len() - keep) as i32 - frac.len() as i32;
    if digits.len() > keep && mantissa != 0 {
        mantissa += 1; // round the dropped digits up
    }
    let mut pow2: u32 = 0;
    match suffix {
        "" => {}
        "Ki" => pow2 = 10,
        "Mi" => pow2 = 20,
        "Gi" => pow2 = 30,
        "Ti" => pow2 = 40,
        "Pi" => pow2 = 50,
        "Ei" => pow2 = 60,
        "n" => exp10 -= 9,
        "u" => exp10 -= 6,
        "m" => exp10 -= 3,
        "k" => exp10 += 3,
        "M" => exp10 += 6,
        "G" => exp10 += 9,
        "T" => exp10 += 12,
        "P" => exp10 += 15,
        "E" => exp10 += 18,
        _ => {
            let e = suffix.strip_prefix(['e', 'E'])?;
            let e: i32 = e.parse().ok().filter(|v: &i32| v.abs() <= 1000)?;
            exp10 += e;
        }
    }
    let mut v: i128 = mantissa.checked_mul(scale as i128).unwrap_or(i128::MAX);
    v = v.checked_mul(1i128 << pow2).unwrap_or(i128::MAX);
    if exp10 >= 0 {
        for _ in 0..exp10 {
            v = v.checked_mul(10).unwrap_or(i128::MAX);
            if v == i128::MAX {
                break;
            }
        }
    } else {
        let mut den: i128 = 1;
        for _ in 0..(-exp10) {
            den = match den.checked_mul(10) {
                Some(d) => d,
                None => return Some(if neg { 0 } else { i64::from(v != 0) }),
            };
        }
        v = if neg { v / den } else { (v + den - 1) / den };
    }
    let v = v.min(i64::MAX as i128) as i64;
    Some(if neg { -v } else { v })
}

/// Millis of a quantity (cpu).
pub fn milli(q: &str) -> i64 {
    parse_scaled(q, 1000).unwrap_or(0)
}

/// Whole units of a quantity (memory bytes, pods, extended resources).
pub fn units(q: &str) -> i64 {
    parse_scaled(q, 1).unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cpu() {
        assert_eq!(milli("100m"), 100);
        assert_eq!(milli("0.1"), 100);
        assert_eq!(milli("1"), 1000);
        assert_eq!(milli("2.5"), 2500);
        assert_eq!(milli("1500u"), 2); // rounded up
        assert_eq!(milli("1e3"), 1_000_000);
        assert_eq!(milli("1k"), 1_000_000);
        assert_eq!(milli(".5"), 500);
    }

    #[test]
    fn memory() {
        assert_eq!(units("128Mi"), 128 << 20);
        assert_eq!(units("1.5Gi"), 3 << 29);
        assert_eq!(units("1G"), 1_000_000_000);
        assert_eq!(units("64Gi"), 64 << 30);
        assert_eq!(units("1E"), 1_000_000_000_000_000_000);
        assert_eq!(units("110"), 110);
        assert_eq!(units("0"), 0);
        assert_eq!(units("10Ei"), i64::MAX);
    }

    #[test]
    fn malformed() {
        assert_eq!(parse_scaled("abc", 1), None);
        assert_eq!(parse_scaled("", 1), None);
        assert_eq!(parse_scaled("1Zi", 1), None);
        assert_eq!(parse_scaled("1.2.3", 1), None);
    }
}
