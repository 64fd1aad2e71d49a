//! Timestamps: microseconds since the Unix epoch, written as RFC 3339 UTC
//! with exactly six fractional digits (`2026-11-28T11:15:20.123456Z`).
//!
//! One text form per instant keeps event encodings deterministic, so the
//! parser accepts only that form.

use std::fmt;
use std::str::FromStr;

/// An instant with microsecond resolution, between years 0000 and 9999.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Timestamp(i64);

const MICROS_PER_SEC: i64 = 1_000_000;
const SECS_PER_DAY: i64 = 86_400;
/// 0000-01-01T00:00:00Z and 9999-12-31T23:59:59.999999Z in micros.
const MIN_MICROS: i64 = -62_167_219_200 * MICROS_PER_SEC;
const MAX_MICROS: i64 = 253_402_300_800 * MICROS_PER_SEC - 1;

/// Text that is not a timestamp in the one accepted form.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "timestamp must look like 2026-11-28T11:15:20.123456Z (RFC 3339, UTC, six fractional digits)"
)]
pub struct TimestampError;

impl Timestamp {
    pub const UNIX_EPOCH: Timestamp = Timestamp(0);

    /// From microseconds since the epoch; `None` outside years 0000–9999.
    pub fn from_unix_micros(micros: i64) -> Option<Timestamp> {
        (MIN_MICROS..=MAX_MICROS)
            .contains(&micros)
            .then_some(Timestamp(micros))
    }
    pub fn unix_micros(self) -> i64 {
        self.0
    }
    /// Adds a (possibly negative) number of microseconds; `None` on leaving
    /// the representable range.
    pub fn checked_add_micros(self, micros: i64) -> Option<Timestamp> {
        self.0
            .checked_add(micros)
            .and_then(Timestamp::from_unix_micros)
    }
}

impl fmt::Display for Timestamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let secs = self.0.div_euclid(MICROS_PER_SEC);
        let micros = self.0.rem_euclid(MICROS_PER_SEC);
        let days = secs.div_euclid(SECS_PER_DAY);
        let sod = secs.rem_euclid(SECS_PER_DAY);
        let (y, m, d) = civil_from_days(days);
        write!(
            f,
            "{y:04}-{m:02}-{d:02}T{:02}:{:02}:{:02}.{micros:06}Z",
            sod / 3600,
            sod / 60 % 60,
            sod % 60
        )
    }
}

impl FromStr for Timestamp {
    type Err = TimestampError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let b = s.as_bytes();
        if b.len() != 27 {
            return Err(TimestampError);
        }
        let num = |range: std::ops::Range<usize>| -> Result<i64, TimestampError> {
            let part = &b[range];
            if !part.iter().all(u8::is_ascii_digit) {
                return Err(TimestampError);
            }
            Ok(part
                .iter()
                .fold(0i64, |acc, d| acc * 10 + i64::from(d - b'0')))
        };
        let punct = [
            (4, b'-'),
            (7, b'-'),
            (10, b'T'),
            (13, b':'),
            (16, b':'),
            (19, b'.'),
            (26, b'Z'),
        ];
        if punct.iter().any(|&(i, c)| b[i] != c) {
            return Err(TimestampError);
        }
        let (y, mo, d) = (num(0..4)?, num(5..7)?, num(8..10)?);
        let (h, mi, sec, us) = (num(11..13)?, num(14..16)?, num(17..19)?, num(20..26)?);
        if !(1..=12).contains(&mo)
            || d < 1
            || d > days_in_month(y, mo)
            || h > 23
            || mi > 59
            || sec > 59
        {
            return Err(TimestampError);
        }
        let secs = days_from_civil(y, mo, d) * SECS_PER_DAY + h * 3600 + mi * 60 + sec;
        Timestamp::from_unix_micros(secs * MICROS_PER_SEC + us).ok_or(TimestampError)
    }
}

fn is_leap(y: i64) -> bool {
    (y % 4 == 0 && y % 100 != 0) || y % 400 == 0
}

fn days_in_month(y: i64, m: i64) -> i64 {
    match m {
        2 if is_leap(y) => 29,
        2 => 28,
        4 | 6 | 9 | 11 => 30,
        _ => 31,
    }
}

// Howard Hinnant's civil-calendar algorithms (proleptic Gregorian).
fn days_from_civil(y: i64, m: i64, d: i64) -> i64 {
    let y = if m <= 2 { y - 1 } else { y };
    let era = y.div_euclid(400);
    let yoe = y - era * 400;
    let mp = (m + 9) % 12;
    let doy = (153 * mp + 2) / 5 + d - 1;
    let doe = yoe * 365 + yoe / 4 - yoe / 100 + doy;
    era * 146_097 + doe - 719_468
}

fn civil_from_days(z: i64) -> (i64, i64, i64) {
    let z = z + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z - era * 146_097;
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let d = doy - (153 * mp + 2) / 5 + 1;
    let m = if mp < 10 { mp + 3 } else { mp - 9 };
    (yoe + era * 400 + i64::from(m <= 2), m, d)
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn known_instants() {
        let cases = [
            (0, "1970-01-01T00:00:00.000000Z"),
            (1, "1970-01-01T00:00:00.000001Z"),
            (-1, "1969-12-31T23:59:59.999999Z"),
            (951_782_400_000_000, "2000-02-29T00:00:00.000000Z"),
            (1_795_864_520_123_456, "2026-11-28T11:15:20.123456Z"),
            (MIN_MICROS, "0000-01-01T00:00:00.000000Z"),
            (MAX_MICROS, "9999-12-31T23:59:59.999999Z"),
        ];
        for (micros, text) in cases {
            let ts = Timestamp::from_unix_micros(micros).unwrap();
            assert_eq!(ts.to_string(), text);
            assert_eq!(text.parse::<Timestamp>().unwrap(), ts);
        }
        assert_eq!(Timestamp::from_unix_micros(MAX_MICROS + 1), None);
    }

    #[test]
    fn rejects_other_forms() {
        for bad in [
            "2026-11-28T11:15:20Z",
            "2026-11-28T11:15:20.123Z",
            "2026-11-28T11:15:20.123456+00:00",
            "2026-11-28t11:15:20.123456Z",
            "2026-11-28 11:15:20.123456Z",
            "2026-02-29T00:00:00.000000Z",
            "2026-13-01T00:00:00.000000Z",
            "2026-11-31T00:00:00.000000Z",
            "2026-11-28T24:00:00.000000Z",
            "2026-11-28T11:60:00.000000Z",
            "2026-11-28T11:15:60.000000Z",
            "+026-11-28T11:15:20.123456Z",
            "2026-11-28T11:15:20.12345\u{e9}",
        ] {
            assert_eq!(bad.parse::<Timestamp>(), Err(TimestampError), "{bad}");
        }
    }

    proptest! {
        #[test]
        fn format_then_parse_round_trips(micros in MIN_MICROS..=MAX_MICROS) {
            let ts = Timestamp::from_unix_micros(micros).unwrap();
            let text = ts.to_string();
            prop_assert_eq!(text.len(), 27);
            prop_assert_eq!(text.parse::<Timestamp>().unwrap(), ts);
        }
    }
}
