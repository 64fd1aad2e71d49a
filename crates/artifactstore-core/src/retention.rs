//! Retention arithmetic (DESIGN.md §4): classes and the expiry they give a
//! new package, as pure functions of their inputs.

use std::collections::BTreeMap;

use crate::time::Timestamp;

/// How long a class keeps a package by default.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClassRule {
    /// Kept for this many seconds after creation.
    Period { seconds: u64 },
    /// Never expires and is never eligible for deletion.
    Permanent,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RetentionError {
    #[error("invalid duration {0:?}: use a number and unit, such as 30s, 7d or 3y")]
    InvalidDuration(String),
    #[error("a class needs a default duration or permanent = true, not both and not neither")]
    AmbiguousClass,
    #[error("expiry lies beyond year 9999")]
    OutOfRange,
}

impl ClassRule {
    /// A class from its config: a humantime duration (`30s`, `7d`, `3y`,
    /// where a year is 365.25 days) or `permanent`.
    pub fn from_config(
        default: Option<&str>,
        permanent: bool,
    ) -> Result<ClassRule, RetentionError> {
        match (default, permanent) {
            (Some(d), false) => {
                let dur = humantime::parse_duration(d)
                    .map_err(|_| RetentionError::InvalidDuration(d.to_owned()))?;
                if dur.as_secs() == 0 || dur.subsec_nanos() != 0 {
                    return Err(RetentionError::InvalidDuration(d.to_owned()));
                }
                Ok(ClassRule::Period {
                    seconds: dur.as_secs(),
                })
            }
            (None, true) => Ok(ClassRule::Permanent),
            _ => Err(RetentionError::AmbiguousClass),
        }
    }

    /// The `expires_at` a package created at `created_at` gets: `None` for a
    /// permanent class.
    pub fn expiry(&self, created_at: Timestamp) -> Result<Option<Timestamp>, RetentionError> {
        match self {
            ClassRule::Permanent => Ok(None),
            ClassRule::Period { seconds } => {
                let micros = i64::try_from(*seconds)
                    .ok()
                    .and_then(|s| s.checked_mul(1_000_000))
                    .ok_or(RetentionError::OutOfRange)?;
                created_at
                    .checked_add_micros(micros)
                    .map(Some)
                    .ok_or(RetentionError::OutOfRange)
            }
        }
    }

    /// The config text of the rule, e.g. `7days` (humantime's format).
    pub fn describe(&self) -> Option<String> {
        match self {
            ClassRule::Permanent => None,
            ClassRule::Period { seconds } => Some(
                humantime::format_duration(std::time::Duration::from_secs(*seconds)).to_string(),
            ),
        }
    }
}

/// The classes shipped when the config defines none: `scratch` 7d,
/// `build-output` 90d, `release-evidence` 3y, `permanent-record` permanent.
pub fn shipped_classes() -> BTreeMap<String, ClassRule> {
    const DAY: u64 = 86_400;
    BTreeMap::from([
        ("scratch".to_owned(), ClassRule::Period { seconds: 7 * DAY }),
        (
            "build-output".to_owned(),
            ClassRule::Period { seconds: 90 * DAY },
        ),
        // humantime's year: 365.25 days, so "3y" in a config means the same.
        (
            "release-evidence".to_owned(),
            ClassRule::Period {
                seconds: 3 * 31_557_600,
            },
        ),
        ("permanent-record".to_owned(), ClassRule::Permanent),
    ])
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    fn ts(s: &str) -> Timestamp {
        s.parse().unwrap()
    }

    #[test]
    fn config_rules() {
        assert_eq!(
            ClassRule::from_config(Some("30s"), false),
            Ok(ClassRule::Period { seconds: 30 })
        );
        assert_eq!(
            ClassRule::from_config(Some("7d"), false),
            Ok(ClassRule::Period { seconds: 604_800 })
        );
        assert_eq!(
            shipped_classes()["release-evidence"],
            ClassRule::from_config(Some("3y"), false).unwrap()
        );
        assert_eq!(
            shipped_classes()["build-output"],
            ClassRule::from_config(Some("90d"), false).unwrap()
        );
        assert_eq!(ClassRule::from_config(None, true), Ok(ClassRule::Permanent));
        for bad in ["", "7", "soon", "0s", "1500ms"] {
            assert!(ClassRule::from_config(Some(bad), false).is_err(), "{bad}");
        }
        assert_eq!(
            ClassRule::from_config(Some("1d"), true),
            Err(RetentionError::AmbiguousClass)
        );
        assert_eq!(
            ClassRule::from_config(None, false),
            Err(RetentionError::AmbiguousClass)
        );
    }

    #[test]
    fn expiry() {
        let t = ts("2026-11-28T11:15:20.123456Z");
        assert_eq!(ClassRule::Permanent.expiry(t), Ok(None));
        assert_eq!(
            ClassRule::Period { seconds: 2 }.expiry(t),
            Ok(Some(ts("2026-11-28T11:15:22.123456Z")))
        );
        assert_eq!(
            shipped_classes()["scratch"].expiry(t),
            Ok(Some(ts("2026-12-05T11:15:20.123456Z")))
        );
        assert_eq!(
            ClassRule::Period { seconds: u64::MAX }.expiry(t),
            Err(RetentionError::OutOfRange)
        );
        assert_eq!(
            ClassRule::Period {
                seconds: 8000 * 31_557_600
            }
            .expiry(t),
            Err(RetentionError::OutOfRange)
        );
    }

    proptest! {
        #[test]
        fn expiry_is_strictly_later_by_exactly_the_period(micros in 0i64..4_000_000_000_000_000, secs in 1u64..10_000_000_000) {
            let t = Timestamp::from_unix_micros(micros).unwrap();
            if let Ok(Some(e)) = (ClassRule::Period { seconds: secs }).expiry(t) {
                prop_assert!(e > t);
                prop_assert_eq!(e.unix_micros() - t.unix_micros(), secs as i64 * 1_000_000);
            }
        }
    }
}
