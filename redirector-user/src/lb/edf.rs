//! Earliest-deadline-first scheduling, Envoy's way of interleaving weighted
//! choices (`source/common/upstream/edf_scheduler.h`).
//!
//! Each entry has a deadline `now + 1 / weight`; a pick takes the earliest,
//! moves `now` to it and puts the entry back with a fresh deadline. So an
//! entry of weight 3 is picked three times for every pick of an entry of
//! weight 1, and the picks are spread out (a, a, b, a, …) rather than
//! bunched. Ties go to the entry added first, which keeps schedules
//! deterministic for tests. The weight used when an entry goes back is asked
//! for at that moment, so a weight may change between picks (weighted least
//! request divides it by the host's active requests, as Envoy does).

use std::{cmp::Ordering, collections::BinaryHeap};

#[derive(Clone, Debug)]
pub(crate) struct Edf<T> {
    heap: BinaryHeap<Entry<T>>,
    now: f64,
    seq: u64,
}

#[derive(Clone, Debug)]
struct Entry<T> {
    deadline: f64,
    seq: u64,
    item: T,
}

/// Reversed, so the max-heap yields the earliest deadline (then the lowest
/// insertion number).
impl<T> Ord for Entry<T> {
    fn cmp(&self, other: &Self) -> Ordering {
        other
            .deadline
            .total_cmp(&self.deadline)
            .then(other.seq.cmp(&self.seq))
    }
}

impl<T> PartialOrd for Entry<T> {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}

impl<T> PartialEq for Entry<T> {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}

impl<T> Eq for Entry<T> {}

impl<T> Default for Edf<T> {
    fn default() -> Self {
        Self {
            heap: BinaryHeap::new(),
            now: 0.0,
            seq: 0,
        }
    }
}

impl<T> Edf<T> {
    /// Adds `item`; entries with a weight that is not positive are never
    /// picked, so they are not added.
    pub(crate) fn add(&mut self, item: T, weight: f64) {
        if weight > 0.0 && weight.is_finite() {
            self.heap.push(Entry {
                deadline: self.now + 1.0 / weight,
                seq: self.seq,
                item,
            });
            self.seq += 1;
        }
    }

    /// The entry with the earliest deadline; it goes back with the weight
    /// `weight_of` gives it now (not at all if that is not positive).
    pub(crate) fn pick_and_add(&mut self, weight_of: impl FnOnce(&T) -> f64) -> Option<T>
    where
        T: Clone,
    {
        let entry = self.heap.pop()?;
        self.now = entry.deadline;
        let item = entry.item.clone();
        let weight = weight_of(&entry.item);
        self.add(entry.item, weight);
        Some(item)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn picks(edf: &mut Edf<char>, n: usize, weight: impl Fn(char) -> f64) -> String {
        (0..n)
            .map(|_| edf.pick_and_add(|&c| weight(c)).unwrap())
            .collect()
    }

    #[test]
    fn weights_four_to_one_interleave() {
        // Powers of two keep the deadlines exact.
        let w = |c| if c == 'a' { 4.0 } else { 1.0 };
        let mut edf = Edf::default();
        edf.add('a', w('a'));
        edf.add('b', w('b'));
        // At t = 1 b ties with a's fourth pick and wins on insertion order.
        assert_eq!(picks(&mut edf, 8, w), "aaabaaaa");
        let many = picks(&mut edf, 500, w);
        assert_eq!(many.matches('a').count(), 400);
    }

    #[test]
    fn equal_weights_alternate_in_insertion_order() {
        let mut edf = Edf::default();
        for c in ['x', 'y', 'z'] {
            edf.add(c, 2.0);
        }
        assert_eq!(picks(&mut edf, 6, |_| 2.0), "xyzxyz");
    }

    #[test]
    fn zero_weight_entries_are_dropped() {
        let mut edf = Edf::default();
        edf.add('a', 0.0);
        edf.add('b', 1.0);
        assert_eq!(edf.pick_and_add(|_| 0.0), Some('b'));
        // b went back with weight 0, so it is gone too.
        assert_eq!(edf.pick_and_add(|_| 1.0), None);
    }

    #[test]
    fn weights_can_change_between_picks() {
        // a halves its weight each time it is picked: b catches up.
        let mut edf = Edf::default();
        edf.add('a', 4.0);
        edf.add('b', 1.0);
        let mut wa = 4.0;
        let s: String = (0..5)
            .map(|_| {
                edf.pick_and_add(|&c| {
                    if c == 'a' {
                        wa /= 2.0;
                        wa
                    } else {
                        1.0
                    }
                })
                .unwrap()
            })
            .collect();
        // a at 0.25, then 0.25+0.5=0.75, b at 1.0, a at 0.75+1=1.75, b at 2.
        assert_eq!(s, "aabab");
    }
}
