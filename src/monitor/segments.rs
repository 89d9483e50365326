//! Segment size and stability over windows of scored rows, with the
//! definitions of `segscore segments stats` ([`crate::segments::stats`]):
//! each segment's rows are gathered into a window of the same shape as a
//! scored file ([`ScoredFile`]), and a completed window is compared with the
//! one before it by [`stats::compare`], the function the command runs.
//!
//! Windows tumble per segment every `window_rows` rows evaluated for it.
//! Members are entity ids when the request carried them (Score with ids,
//! bulk runs); rows without ids stand for themselves, so sizes and shares
//! still hold but entering/leaving is only reported for windows whose rows
//! all had ids. Ids are held in memory for two windows and never logged.

use std::collections::BTreeMap;

use parking_lot::Mutex;

use crate::segments::{
    stats::{self, ScoredFile, SegmentColumn, SegmentStats},
    Membership,
};

/// Marks a row that had no entity id; ids are caller text, and no id a
/// caller sends starts with a NUL (gRPC strings are UTF-8 but may hold
/// one; the collision would only merge two members).
const ANONYMOUS: char = '\0';

/// One segment's windows.
#[derive(Default)]
struct Windows {
    current: ScoredFile,
    current_anonymous: bool,
    /// The last completed window and whether its rows all had ids.
    last: Option<(ScoredFile, bool)>,
    before_last: Option<(ScoredFile, bool)>,
}

/// What the gauges show for one segment.
#[derive(Debug, Clone, PartialEq)]
pub struct SegmentWindow {
    /// `segments stats` of the last completed window against the one
    /// before it (before the first window completes: the rows so far,
    /// without a baseline). The baseline is dropped when either window had
    /// rows without ids.
    pub stats: SegmentStats,
    /// Whether `stats` is of a completed window.
    pub complete: bool,
}

/// Every segment's windows.
pub struct SegmentMonitor {
    window_rows: u64,
    segments: Mutex<BTreeMap<String, Windows>>,
}

impl SegmentMonitor {
    pub fn new(window_rows: u64) -> Self {
        Self {
            window_rows: window_rows.max(1),
            segments: Mutex::new(BTreeMap::new()),
        }
    }

    /// Adds one request's evaluation of `segment` over `rows` rows
    /// (`entity_ids`: one per row, or none).
    pub fn observe(
        &self,
        segment: &str,
        membership: &Membership,
        rows: usize,
        entity_ids: &[String],
    ) {
        let mut all = self.segments.lock();
        if !all.contains_key(segment) {
            all.insert(segment.to_owned(), Windows::default());
        }
        let Some(w) = all.get_mut(segment) else {
            return;
        };
        let mut members = membership.member_rows.iter().peekable();
        let mut errors = membership.errors.iter().map(|(r, _)| *r).peekable();
        for row in 0..rows as u32 {
            let member = members.next_if_eq(&&row).is_some();
            let error = errors.next_if_eq(&row).is_some();
            let column = w
                .current
                .segments
                .entry(segment.to_owned())
                .or_insert_with(SegmentColumn::default);
            if error {
                column.errors += 1;
            } else if member {
                let id = match entity_ids.get(row as usize) {
                    Some(id) => id.clone(),
                    None => {
                        w.current_anonymous = true;
                        format!("{ANONYMOUS}{}", w.current.rows)
                    }
                };
                column.members.insert(id);
            }
            if entity_ids.is_empty() {
                w.current_anonymous = true;
            }
            w.current.rows += 1;
            if w.current.rows as u64 >= self.window_rows {
                let done = std::mem::take(&mut w.current);
                let anonymous = std::mem::take(&mut w.current_anonymous);
                w.before_last = w.last.replace((done, anonymous));
            }
        }
    }

    /// Every segment's window statistics, by name.
    pub fn windows(&self) -> Vec<SegmentWindow> {
        let all = self.segments.lock();
        all.values()
            .filter_map(|w| {
                let (file, baseline, complete) = match (&w.last, &w.before_last) {
                    (Some((last, a)), Some((before, b))) => {
                        (last, (!a && !b).then_some(before), true)
                    }
                    (Some((last, _)), None) => (last, None, true),
                    (None, _) => (&w.current, None, false),
                };
                stats::compare(file, baseline)
                    .into_iter()
                    .next()
                    .map(|stats| SegmentWindow { stats, complete })
            })
            .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn membership(members: &[u32], errors: &[u32]) -> Membership {
        Membership {
            member_rows: members.to_vec(),
            errors: errors.iter().map(|&r| (r, "x".to_string())).collect(),
        }
    }

    #[test]
    fn windows_tumble_and_compare_like_segments_stats() {
        let m = SegmentMonitor::new(4);
        let ids = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        m.observe(
            "s",
            &membership(&[0, 1], &[3]),
            4,
            &ids(&["a", "b", "c", "d"]),
        );
        let w = &m.windows()[0];
        assert!(w.complete && w.stats.members == 2 && w.stats.errors == 1);
        m.observe(
            "s",
            &membership(&[1, 2, 3], &[]),
            4,
            &ids(&["a", "b", "c", "e"]),
        );
        let w = &m.windows()[0];
        let b = w.stats.baseline.as_ref().unwrap();
        assert_eq!(
            (w.stats.members, b.members, b.entered, b.left),
            (3, 2, 2, 1)
        );
        // Rows without ids keep sizes but drop the comparison.
        m.observe("s", &membership(&[0], &[]), 4, &[]);
        let w = &m.windows()[0];
        assert_eq!(w.stats.members, 1);
        assert!(w.stats.baseline.is_none());
    }
}
