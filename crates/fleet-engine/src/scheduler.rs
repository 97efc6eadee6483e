//! The shard's timer structure: a binary heap of deadlines ordered by (time, insertion order).
//!
//! Insertion order breaks ties, and a device's entries are only ever inserted while that device
//! (or a fleet event, inserted before any device) is processed, so the order in which one
//! device sees its inputs is the same whatever other devices share its shard. That is what makes
//! per-device event logs identical for any shard count.

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use fleet_core::SimTime;

/// What a deadline is for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Due {
    /// The device's own wake-up (valid only if it is still the device's scheduled wake).
    Wake,
    /// The simulated network delivers the session's CONNACK.
    SimConnected { session: u32, started: SimTime },
    /// The simulated broker acknowledges a telemetry message.
    SimAck {
        session: u32,
        scheduled: SimTime,
        from_buffer: bool,
    },
    /// A message parked for its link latency is due to be written (wall clock).
    SendParked { slot: u32 },
    /// A session end that waits for the messages the same step parked (its last words).
    CloseParked { session: u32, clean: bool },
    /// The scenario's fleet event number `index`.
    FleetEvent { index: u32 },
}

#[derive(Clone, Copy, Debug)]
pub struct Entry {
    pub at: SimTime,
    order: u64,
    /// Local device index in the shard (unused for fleet events).
    pub dev: u32,
    pub due: Due,
}

impl PartialEq for Entry {
    fn eq(&self, other: &Self) -> bool {
        self.at == other.at && self.order == other.order
    }
}
impl Eq for Entry {}
impl PartialOrd for Entry {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Entry {
    fn cmp(&self, other: &Self) -> Ordering {
        // BinaryHeap is a max-heap: reverse so the earliest comes first.
        other.at.cmp(&self.at).then(other.order.cmp(&self.order))
    }
}

#[derive(Debug, Default)]
pub struct Scheduler {
    heap: BinaryHeap<Entry>,
    next_order: u64,
}

impl Scheduler {
    pub fn with_capacity(n: usize) -> Self {
        Scheduler {
            heap: BinaryHeap::with_capacity(n),
            next_order: 0,
        }
    }

    pub fn push(&mut self, at: SimTime, dev: u32, due: Due) {
        self.heap.push(Entry {
            at,
            order: self.next_order,
            dev,
            due,
        });
        self.next_order += 1;
    }

    pub fn peek_time(&self) -> Option<SimTime> {
        self.heap.peek().map(|e| e.at)
    }

    /// The earliest entry if it is due at or before `now`.
    pub fn pop_due(&mut self, now: SimTime) -> Option<Entry> {
        if self.heap.peek()?.at <= now {
            self.heap.pop()
        } else {
            None
        }
    }

    pub fn pop(&mut self) -> Option<Entry> {
        self.heap.pop()
    }

    pub fn len(&self) -> usize {
        self.heap.len()
    }

    pub fn is_empty(&self) -> bool {
        self.heap.is_empty()
    }

    /// True if any entry other than device wakes remains (acks, sends, events).
    pub fn has_network_work(&self) -> bool {
        self.heap.iter().any(|e| {
            matches!(
                e.due,
                Due::SimAck { .. }
                    | Due::SimConnected { .. }
                    | Due::SendParked { .. }
                    | Due::CloseParked { .. }
            )
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_come_out_by_time_then_insertion_order() {
        let mut s = Scheduler::default();
        s.push(SimTime(5), 1, Due::Wake);
        s.push(SimTime(3), 2, Due::Wake);
        s.push(SimTime(5), 3, Due::Wake);
        s.push(SimTime(1), 4, Due::Wake);
        let order: Vec<u32> = std::iter::from_fn(|| s.pop()).map(|e| e.dev).collect();
        assert_eq!(order, vec![4, 2, 1, 3]);
    }

    #[test]
    fn pop_due_leaves_future_entries() {
        let mut s = Scheduler::default();
        s.push(SimTime(10), 0, Due::Wake);
        assert!(s.pop_due(SimTime(9)).is_none());
        assert!(s.pop_due(SimTime(10)).is_some());
    }
}
