//! Which whole segments may be deleted. Pure, so the rule is tested without a disk.

use super::segment::SegmentMeta;
use super::Offset;

/// The limits retention applies.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RetentionLimits {
    pub retention_ms: Option<u64>,
    pub retention_bytes: Option<u64>,
    /// Records at or above this offset are still needed by someone.
    pub floor: Offset,
}

/// How many of the oldest `segments` to delete, given the time `now_ms`.
///
/// Oldest first, stopping at the first segment that must stay, so the log stays one
/// contiguous run of offsets. The last (active) segment is never a candidate. A segment
/// goes only if every record in it is below the floor and it is either older than
/// `retention_ms` (by its newest record) or the log is larger than `retention_bytes`.
pub(crate) fn deletable_prefix(
    segments: &[SegmentMeta],
    limits: RetentionLimits,
    now_ms: u64,
) -> usize {
    let mut total_bytes: u64 = segments.iter().map(|s| s.data_bytes).sum();
    let mut count = 0;
    for segment in segments.iter().take(segments.len().saturating_sub(1)) {
        let below_floor = segment.end <= limits.floor;
        let too_old = limits
            .retention_ms
            .is_some_and(|ms| now_ms.saturating_sub(segment.max_timestamp_ms) > ms);
        let too_big = limits.retention_bytes.is_some_and(|max| total_bytes > max);
        if !(below_floor && (too_old || too_big)) {
            break;
        }
        total_bytes -= segment.data_bytes;
        count += 1;
    }
    count
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seg(first: u64, end: u64, ts: u64) -> SegmentMeta {
        SegmentMeta {
            first: Offset(first),
            end: Offset(end),
            data_bytes: 1000,
            max_timestamp_ms: ts,
        }
    }

    fn limits(ms: Option<u64>, bytes: Option<u64>, floor: u64) -> RetentionLimits {
        RetentionLimits {
            retention_ms: ms,
            retention_bytes: bytes,
            floor: Offset(floor),
        }
    }

    #[test]
    fn age_deletes_old_segments_below_the_floor_only() {
        let s = [
            seg(0, 10, 100),
            seg(10, 20, 200),
            seg(20, 30, 900),
            seg(30, 35, 1000),
        ];
        assert_eq!(deletable_prefix(&s, limits(Some(500), None, 30), 1000), 2);
        // The floor inside the second segment keeps it and everything after.
        assert_eq!(deletable_prefix(&s, limits(Some(500), None, 15), 1000), 1);
        assert_eq!(deletable_prefix(&s, limits(Some(500), None, 0), 1000), 0);
    }

    #[test]
    fn bytes_delete_oldest_until_under_the_limit() {
        let s = [
            seg(0, 10, 0),
            seg(10, 20, 0),
            seg(20, 30, 0),
            seg(30, 40, 0),
        ];
        assert_eq!(deletable_prefix(&s, limits(None, Some(2000), 40), 0), 2);
        assert_eq!(deletable_prefix(&s, limits(None, Some(3000), 40), 0), 1);
    }

    #[test]
    fn never_the_active_segment_and_nothing_without_limits() {
        let s = [seg(0, 10, 0), seg(10, 20, 0)];
        assert_eq!(
            deletable_prefix(&s, limits(Some(0), Some(0), u64::MAX), 10_000),
            1
        );
        assert_eq!(
            deletable_prefix(&s, limits(None, None, u64::MAX), 10_000),
            0
        );
        assert_eq!(
            deletable_prefix(&s[..1], limits(Some(0), Some(0), u64::MAX), 10_000),
            0
        );
    }
}
