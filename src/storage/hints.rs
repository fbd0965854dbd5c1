//! Where recent reads of the log passed, so a read that starts behind the last one's end
//! (a catch-up read resumes at the first record the previous read could not return)
//! does not scan its segment from the start again.
//!
//! A hint says the record at `offset` of segment `segment` starts at byte `file_pos`.
//! Positions of written frames never change (a group commit only rewrites the partial
//! last block with the same bytes and more), so a hint stays true while its segment
//! exists (and a hint of a deleted segment matches no segment again: first offsets are
//! never reused within a run). Reads leave one every [`HINT_SPACING_BYTES`] they scan, plus one where they
//! started and one where they stopped; the newest [`HINTS_MAX`] are kept.

use super::Offset;

/// Bytes a read scans between two hints it leaves.
pub(crate) const HINT_SPACING_BYTES: u64 = 256 << 10;
/// Hints kept per log: 16 MiB of recently read positions at the spacing above.
pub(crate) const HINTS_MAX: usize = 64;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct ReadHint {
    pub segment: Offset,
    pub offset: Offset,
    pub file_pos: u64,
}

/// The newest hints, oldest first.
#[derive(Debug, Default)]
pub(crate) struct ReadHints {
    hints: Vec<ReadHint>,
}

impl ReadHints {
    /// The hint in `segment` closest below or at `next`, if one lies before `limit`.
    pub(crate) fn best(&self, segment: Offset, next: Offset, limit: Offset) -> Option<ReadHint> {
        self.hints
            .iter()
            .filter(|h| h.segment == segment && h.offset <= next && h.offset < limit)
            .max_by_key(|h| h.offset)
            .copied()
    }

    /// Remembers `hints`, dropping the oldest beyond [`HINTS_MAX`].
    pub(crate) fn note(&mut self, hints: impl IntoIterator<Item = ReadHint>) {
        for hint in hints {
            self.hints
                .retain(|h| h.segment != hint.segment || h.offset != hint.offset);
            self.hints.push(hint);
        }
        let excess = self.hints.len().saturating_sub(HINTS_MAX);
        self.hints.drain(..excess);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(segment: u64, offset: u64, file_pos: u64) -> ReadHint {
        ReadHint {
            segment: Offset(segment),
            offset: Offset(offset),
            file_pos,
        }
    }

    #[test]
    fn the_closest_hint_at_or_below_the_start_in_the_same_segment_wins() {
        let mut hints = ReadHints::default();
        hints.note([
            hint(0, 10, 100),
            hint(0, 50, 500),
            hint(0, 90, 900),
            hint(100, 120, 64),
        ]);
        assert_eq!(
            hints.best(Offset(0), Offset(60), Offset(100)),
            Some(hint(0, 50, 500))
        );
        assert_eq!(
            hints.best(Offset(0), Offset(50), Offset(100)),
            Some(hint(0, 50, 500))
        );
        assert_eq!(hints.best(Offset(0), Offset(9), Offset(100)), None);
        assert_eq!(
            hints.best(Offset(100), Offset(130), Offset(200)),
            Some(hint(100, 120, 64))
        );
        // A hint at or past the range's limit is of no use to this read.
        assert_eq!(
            hints.best(Offset(0), Offset(95), Offset(90)),
            Some(hint(0, 50, 500))
        );
    }

    #[test]
    fn only_the_newest_hints_are_kept_and_a_repeated_one_is_refreshed() {
        let mut hints = ReadHints::default();
        hints.note((0..HINTS_MAX as u64).map(|i| hint(0, i, i * 10)));
        hints.note([hint(0, 0, 0)]);
        hints.note([hint(0, 1000, 10_000)]);
        // Offset 1 was the oldest once offset 0 was noted again.
        assert_eq!(
            hints.best(Offset(0), Offset(1), Offset(2000)),
            Some(hint(0, 0, 0))
        );
        assert_eq!(hints.hints.len(), HINTS_MAX);
        assert_eq!(
            hints.best(Offset(0), Offset(5000), Offset(9000)),
            Some(hint(0, 1000, 10_000))
        );
    }
}
