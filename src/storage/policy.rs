//! The fsync policy: when a group commit is fdatasync'ed and what an acknowledged record survives.

use std::fmt;
use std::str::FromStr;

/// Records between fdatasyncs for the `batch` alias: at ~5k syncs/s on these disks a sync
/// per 64 records costs little and bounds the power-loss window to a few ms of traffic.
pub const BATCH_ALIAS_RECORDS: u32 = 64;
/// Milliseconds between fdatasyncs for the `periodic` alias: the classic 10 ms window.
pub const PERIODIC_ALIAS_MS: u32 = 10;

/// When the WAL fdatasyncs, and therefore what `Wal::wait_durable` promises.
///
/// The ladder, strongest first. "Acknowledged" means `wait_durable` resolved.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FsyncPolicy {
    /// Every group commit is written and fdatasync'ed before its waiters resolve.
    /// An acknowledged record survives `kill -9` **and power loss**.
    Always,
    /// Waiters resolve once the group commit's DMA write completed; an fdatasync runs
    /// once at least N records were written since the last one. An acknowledged record
    /// survives `kill -9` (it is in the kernel/device); **power loss may lose up to the
    /// last N records** (plus the group commit that crossed the threshold).
    EveryN(u32),
    /// Waiters resolve once the DMA write completed; an fdatasync runs when M ms passed
    /// since the last one and something was written. Survives `kill -9`; **power loss may
    /// lose up to the last M ms of acknowledged records**.
    IntervalMs(u32),
    /// Waiters resolve at once, on append; the committer still writes as soon as it can
    /// but never fdatasyncs except in `sync_all`/`close`. **`kill -9` may lose the last
    /// group not yet written; power loss may lose anything since the last close.**
    None,
}

/// A policy string that could not be parsed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FsyncPolicyParseError(String);

impl fmt::Display for FsyncPolicyParseError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "invalid fsync policy {:?}: expected \"always\" (alias \"immediate\"), \
             \"every_n:N\" with N >= 1 (alias \"batch\" = every_n:{BATCH_ALIAS_RECORDS}), \
             \"interval_ms:M\" with M >= 1 (alias \"periodic\" = interval_ms:{PERIODIC_ALIAS_MS}) \
             or \"none\"",
            self.0
        )
    }
}

impl std::error::Error for FsyncPolicyParseError {}

impl FromStr for FsyncPolicy {
    type Err = FsyncPolicyParseError;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let err = || FsyncPolicyParseError(s.to_owned());
        let positive = |v: &str| {
            v.trim()
                .parse::<u32>()
                .ok()
                .filter(|n| *n > 0)
                .ok_or_else(err)
        };
        let t = s.trim().to_ascii_lowercase();
        match t.as_str() {
            "always" | "immediate" => Ok(FsyncPolicy::Always),
            "batch" => Ok(FsyncPolicy::EveryN(BATCH_ALIAS_RECORDS)),
            "periodic" => Ok(FsyncPolicy::IntervalMs(PERIODIC_ALIAS_MS)),
            "none" => Ok(FsyncPolicy::None),
            _ => {
                if let Some(n) = t.strip_prefix("every_n:") {
                    Ok(FsyncPolicy::EveryN(positive(n)?))
                } else if let Some(m) = t.strip_prefix("interval_ms:") {
                    Ok(FsyncPolicy::IntervalMs(positive(m)?))
                } else {
                    Err(err())
                }
            }
        }
    }
}

impl fmt::Display for FsyncPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            FsyncPolicy::Always => f.write_str("always"),
            FsyncPolicy::EveryN(n) => write!(f, "every_n:{n}"),
            FsyncPolicy::IntervalMs(m) => write!(f, "interval_ms:{m}"),
            FsyncPolicy::None => f.write_str("none"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn canonical_forms_round_trip() {
        for p in [
            FsyncPolicy::Always,
            FsyncPolicy::EveryN(1),
            FsyncPolicy::EveryN(500),
            FsyncPolicy::IntervalMs(20),
            FsyncPolicy::None,
        ] {
            assert_eq!(p.to_string().parse::<FsyncPolicy>(), Ok(p));
        }
    }

    #[test]
    fn aliases_map_to_documented_values() {
        assert_eq!("immediate".parse(), Ok(FsyncPolicy::Always));
        assert_eq!(
            "batch".parse(),
            Ok(FsyncPolicy::EveryN(BATCH_ALIAS_RECORDS))
        );
        assert_eq!(
            "Periodic".parse(),
            Ok(FsyncPolicy::IntervalMs(PERIODIC_ALIAS_MS))
        );
    }

    #[test]
    fn bad_values_name_what_is_accepted() {
        for bad in [
            "",
            "sometimes",
            "every_n:0",
            "every_n:",
            "interval_ms:x",
            "every_n:-3",
        ] {
            let e = bad.parse::<FsyncPolicy>().expect_err(bad).to_string();
            assert!(e.contains("every_n:N") && e.contains("always"), "{e}");
        }
    }
}
