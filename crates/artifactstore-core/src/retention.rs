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

/// The longest reason accepted for a retention change, in bytes.
pub const MAX_REASON_LEN: usize = 4096;

/// Why a retention change was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ChangeError {
    #[error("a reason is required (non-blank, at most {MAX_REASON_LEN} bytes)")]
    ReasonRequired,
    #[error("the package's class is permanent: it never expires, so it cannot be extended")]
    Permanent,
    #[error("the new expiry must be strictly later than the current one ({current})")]
    NotLater { current: Timestamp },
}

/// Every retention change carries a reason an auditor can read.
pub fn check_reason(reason: &str) -> Result<(), ChangeError> {
    if reason.trim().is_empty() || reason.len() > MAX_REASON_LEN {
        return Err(ChangeError::ReasonRequired);
    }
    Ok(())
}

/// An extension moves `expires_at` strictly later; a permanent package
/// (`current` is `None`) has nothing to extend.
pub fn check_extension(
    current: Option<Timestamp>,
    new: Timestamp,
    reason: &str,
) -> Result<(), ChangeError> {
    check_reason(reason)?;
    match current {
        None => Err(ChangeError::Permanent),
        Some(current) if new <= current => Err(ChangeError::NotLater { current }),
        Some(_) => Ok(()),
    }
}

/// Whether a sweep at `now` makes a package eligible for deletion: its
/// expiry has passed, no hold is active, and it is not eligible already
/// (one event per transition).
pub fn becomes_eligible(
    expires_at: Option<Timestamp>,
    active_holds: u64,
    eligible: bool,
    now: Timestamp,
) -> bool {
    !eligible && active_holds == 0 && expires_at.is_some_and(|e| e <= now)
}

/// Whether the collector may delete a package at `now`: the sweeper marked
/// it eligible, its expiry has passed and no hold is active. The collector
/// asks this of state read inside its deleting transaction, so a hold or an
/// extension that commits first always wins.
pub fn collectable(
    expires_at: Option<Timestamp>,
    active_holds: u64,
    eligible: bool,
    now: Timestamp,
) -> bool {
    eligible && active_holds == 0 && expires_at.is_some_and(|e| e <= now)
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

    #[test]
    fn extension_rules() {
        let t = ts("2026-11-28T11:15:20.123456Z");
        let later = ts("2026-11-28T11:15:20.123457Z");
        assert_eq!(check_extension(Some(t), later, "audit"), Ok(()));
        assert_eq!(
            check_extension(Some(t), t, "audit"),
            Err(ChangeError::NotLater { current: t })
        );
        assert_eq!(
            check_extension(Some(later), t, "audit"),
            Err(ChangeError::NotLater { current: later })
        );
        assert_eq!(
            check_extension(None, later, "audit"),
            Err(ChangeError::Permanent)
        );
        for bad in ["", "   ", "\n\t"] {
            assert_eq!(
                check_extension(Some(t), later, bad),
                Err(ChangeError::ReasonRequired)
            );
        }
        assert_eq!(
            check_reason(&"x".repeat(MAX_REASON_LEN + 1)),
            Err(ChangeError::ReasonRequired)
        );
        assert_eq!(check_reason(&"x".repeat(MAX_REASON_LEN)), Ok(()));
    }

    #[test]
    fn eligibility_rules() {
        let t = ts("2026-11-28T11:15:20.123456Z");
        let before = ts("2026-11-28T11:15:20.123455Z");
        assert!(
            becomes_eligible(Some(t), 0, false, t),
            "expiry reached exactly"
        );
        assert!(!becomes_eligible(Some(t), 0, false, before), "not yet");
        assert!(!becomes_eligible(Some(before), 1, false, t), "held");
        assert!(
            !becomes_eligible(Some(before), 0, true, t),
            "already eligible: one event per transition"
        );
        assert!(!becomes_eligible(None, 0, false, t), "permanent");
    }

    #[test]
    fn collection_rules() {
        let t = ts("2026-11-28T11:15:20.123456Z");
        let before = ts("2026-11-28T11:15:20.123455Z");
        assert!(collectable(Some(before), 0, true, t));
        assert!(collectable(Some(t), 0, true, t), "expiry reached exactly");
        assert!(!collectable(Some(before), 0, false, t), "never marked");
        assert!(!collectable(Some(before), 1, true, t), "a hold wins");
        assert!(
            !collectable(Some(t), 0, true, before),
            "extended past now (or a clock that went back)"
        );
        assert!(!collectable(None, 0, true, t), "permanent");
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
