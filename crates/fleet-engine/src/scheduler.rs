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
    /// The simulated network gives up on a session cut off by a partition: its keep-alive
    /// expired (`connecting` false) or its connect attempt timed out.
    SimCutOff { session: u32, connecting: bool },
    /// A message parked for its link latency is due to be written (wall clock).
    SendParked { slot: u32 },
    /// A session end that waits for the messages the same step parked (its last words).
    CloseParked { session: u32, clean: bool },
    /// The scenario's fleet event number `index`.
    FleetEvent { index: u32 },
    /// A rollout's job reaches the device.
    OtaNotify { rollout: u16 },
    /// Virtual clock, a gateway's own deadline (`dev` is its slot in the shard): power-on or
    /// the next connect attempt of its session number `session`.
    GatewayWake { session: u32 },
    /// The simulated broker accepts a gateway's session.
    GatewayConnected { session: u32, started: SimTime },
    /// A gateway's session cut off by a partition: its keep-alive expired (`connecting` false)
    /// or its connect attempt timed out.
    GatewayCutOff { session: u32, connecting: bool },
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

/// Width of one calendar bucket, microseconds (about 4 ms).
const BUCKET_US: u64 = 4_096;
/// Buckets in the calendar: a window of about 67 s. Deadlines further out wait in a heap and
/// move into the calendar as it turns.
const BUCKETS: usize = 16_384;
const WINDOW_US: u64 = BUCKET_US * BUCKETS as u64;
/// Second level: half-window buckets (about 33 s) for the next ~37 hours, so hourly and daily
/// deadlines of a large fleet wait in plain vectors instead of a heap (a heap pop was 40 % of a
/// 1,000,000-device virtual run); a coarse bucket moves into the calendar half a window ahead.
const COARSE_US: u64 = WINDOW_US / 2;
const COARSE_BUCKETS: usize = 4_096;
const COARSE_WINDOW_US: u64 = COARSE_US * COARSE_BUCKETS as u64;

/// A calendar queue: deadlines within the next ~67 s sit in 4 ms buckets (push is O(1)), a
/// bucket is sorted only when the clock reaches it, and deadlines further out wait in a binary
/// heap. It pops entries in exactly the order a single binary heap would, (time, insertion
/// order), but without a heap's O(log n) cache misses per operation (a heap pop was a fifth of
/// a virtual run's time).
#[derive(Debug)]
pub struct Scheduler {
    /// The bucket the clock is in, drained and sorted latest-first (pop from the end). Entries
    /// pushed for this bucket are inserted in order.
    current: Vec<Entry>,
    /// Entries pushed for before the current bucket (on the wall clock the calendar may have
    /// turned ahead of `now` to find the next deadline): all earlier than everything else.
    early: BinaryHeap<Entry>,
    /// Start of the current bucket (a multiple of BUCKET_US).
    cursor_us: u64,
    wheel: Vec<Vec<Entry>>,
    /// One bit per bucket: set when it holds entries.
    occupied: Vec<u64>,
    in_wheel: usize,
    /// Second level: entries from `moved_until` to `moved_until + COARSE_WINDOW_US`.
    coarse: Vec<Vec<Entry>>,
    coarse_occupied: Vec<u64>,
    in_coarse: usize,
    /// Coarse buckets before this time have been moved into the calendar.
    moved_until: u64,
    far: BinaryHeap<Entry>,
    next_order: u64,
}

impl Default for Scheduler {
    fn default() -> Self {
        Self::with_capacity(0)
    }
}

impl Scheduler {
    pub fn with_capacity(n: usize) -> Self {
        Scheduler {
            current: Vec::new(),
            early: BinaryHeap::new(),
            cursor_us: 0,
            wheel: (0..BUCKETS).map(|_| Vec::new()).collect(),
            occupied: vec![0; BUCKETS / 64],
            in_wheel: 0,
            coarse: (0..COARSE_BUCKETS).map(|_| Vec::new()).collect(),
            coarse_occupied: vec![0; COARSE_BUCKETS / 64],
            in_coarse: 0,
            moved_until: COARSE_US,
            far: BinaryHeap::with_capacity(n.min(1 << 16)),
            next_order: 0,
        }
    }

    pub fn push(&mut self, at: SimTime, dev: u32, due: Due) {
        let e = Entry {
            at,
            order: self.next_order,
            dev,
            due,
        };
        self.next_order += 1;
        self.place(e);
    }

    fn place(&mut self, e: Entry) {
        let t = e.at.as_micros();
        if t < self.cursor_us {
            self.early.push(e);
        } else if t < self.cursor_us + BUCKET_US {
            // This bucket: keep `current` sorted latest-first.
            let pos = self.current.partition_point(|x| x < &e);
            self.current.insert(pos, e);
        } else if t < self.cursor_us + WINDOW_US {
            let b = ((t / BUCKET_US) as usize) % BUCKETS;
            self.wheel[b].push(e);
            self.occupied[b / 64] |= 1 << (b % 64);
            self.in_wheel += 1;
        } else if t >= self.moved_until && t < self.moved_until + COARSE_WINDOW_US {
            let c = ((t / COARSE_US) as usize) % COARSE_BUCKETS;
            self.coarse[c].push(e);
            self.coarse_occupied[c / 64] |= 1 << (c % 64);
            self.in_coarse += 1;
        } else {
            self.far.push(e);
        }
    }

    /// Moves the coarse buckets the calendar's first half now reaches into it, then the far
    /// deadlines the coarse level now reaches into it.
    fn refill(&mut self) {
        while self.moved_until < self.cursor_us + WINDOW_US / 2 {
            if self.in_coarse == 0 {
                self.moved_until = (self.cursor_us + WINDOW_US / 2).div_ceil(COARSE_US) * COARSE_US;
                break;
            }
            let c = ((self.moved_until / COARSE_US) as usize) % COARSE_BUCKETS;
            let entries = std::mem::take(&mut self.coarse[c]);
            self.coarse_occupied[c / 64] &= !(1 << (c % 64));
            self.in_coarse -= entries.len();
            self.moved_until += COARSE_US;
            for e in entries {
                self.place(e);
            }
        }
        while let Some(first) = self.far.peek() {
            if first.at.as_micros() >= self.moved_until + COARSE_WINDOW_US {
                break;
            }
            let Some(e) = self.far.pop() else { break };
            self.place(e);
        }
    }

    /// Start of the first occupied coarse bucket (some must be occupied).
    fn first_coarse(&self) -> u64 {
        let from = ((self.moved_until / COARSE_US) as usize) % COARSE_BUCKETS;
        let words = self.coarse_occupied.len();
        let (mut w, bit) = (from / 64, from % 64);
        let mut word = self.coarse_occupied[w] & (!0u64 << bit);
        for _ in 0..=words {
            if word != 0 {
                let b = w * 64 + word.trailing_zeros() as usize;
                let steps = (b + COARSE_BUCKETS - from) % COARSE_BUCKETS;
                return self.moved_until + steps as u64 * COARSE_US;
            }
            w = (w + 1) % words;
            word = self.coarse_occupied[w];
        }
        self.moved_until
    }

    /// Moves the clock to the next bucket that holds entries and makes it current. False when
    /// nothing is left.
    fn advance(&mut self) -> bool {
        // Moving coarse buckets may put entries behind the clock (into `early`): they come first.
        while self.current.is_empty() && self.early.is_empty() {
            if self.in_wheel == 0 {
                // Nothing within the window: jump to the first coarse bucket, or the earliest
                // far deadline.
                if self.in_coarse > 0 {
                    let start = self.first_coarse();
                    self.cursor_us = self.cursor_us.max(start / BUCKET_US * BUCKET_US);
                } else {
                    let Some(first) = self.far.peek() else {
                        return false;
                    };
                    let t = first.at.as_micros();
                    self.cursor_us = t / BUCKET_US * BUCKET_US;
                    self.moved_until = self.moved_until.max(t / COARSE_US * COARSE_US);
                }
                self.refill();
                if self.in_wheel == 0 && self.current.is_empty() {
                    continue;
                }
                if self.current.is_empty() {
                    // The bucket the clock is in may hold entries now.
                    let b = ((self.cursor_us / BUCKET_US) as usize) % BUCKETS;
                    self.current = std::mem::take(&mut self.wheel[b]);
                    self.occupied[b / 64] &= !(1 << (b % 64));
                    self.in_wheel -= self.current.len();
                }
            } else {
                let from = ((self.cursor_us / BUCKET_US) as usize + 1) % BUCKETS;
                let steps = self.next_occupied(from);
                self.cursor_us += (steps as u64 + 1) * BUCKET_US;
                let b = ((self.cursor_us / BUCKET_US) as usize) % BUCKETS;
                // Take the bucket's own allocation; the emptied `current` is dropped, so idle
                // buckets hold no memory.
                self.current = std::mem::take(&mut self.wheel[b]);
                self.occupied[b / 64] &= !(1 << (b % 64));
                self.in_wheel -= self.current.len();
            }
            // Coarse and far deadlines that the window now reaches join the calendar.
            self.refill();
            // `Entry`'s order is reversed (earliest is greatest, for the heap): ascending puts
            // the earliest last, where `pop` takes it.
            self.current.sort_unstable();
        }
        true
    }

    /// How many buckets after `from` (0 = `from` itself) the next occupied one is.
    fn next_occupied(&self, from: usize) -> usize {
        let words = self.occupied.len();
        let (mut w, bit) = (from / 64, from % 64);
        let mut word = self.occupied[w] & (!0u64 << bit);
        let mut scanned = 0usize;
        loop {
            if word != 0 {
                let b = w * 64 + word.trailing_zeros() as usize;
                return (b + BUCKETS - from) % BUCKETS;
            }
            scanned += 1;
            if scanned > words {
                return BUCKETS - 1; // unreachable while in_wheel > 0
            }
            w = (w + 1) % words;
            word = self.occupied[w];
        }
    }

    /// The earliest deadline, if any.
    pub fn peek_time(&mut self) -> Option<SimTime> {
        if !self.advance() {
            return None;
        }
        match self.early.peek() {
            Some(e) => Some(e.at),
            None => self.current.last().map(|e| e.at),
        }
    }

    /// The earliest entry if it is due at or before `now`.
    pub fn pop_due(&mut self, now: SimTime) -> Option<Entry> {
        if self.peek_time()? <= now {
            self.pop()
        } else {
            None
        }
    }

    pub fn pop(&mut self) -> Option<Entry> {
        if !self.advance() {
            return None;
        }
        match self.early.pop() {
            Some(e) => Some(e),
            None => self.current.pop(),
        }
    }

    pub fn len(&self) -> usize {
        self.early.len() + self.current.len() + self.in_wheel + self.in_coarse + self.far.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
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
    fn far_deadlines_and_deadlines_in_the_past_come_out_in_order() {
        let mut s = Scheduler::default();
        s.push(SimTime(3_600_000_000), 1, Due::Wake); // an hour ahead: the far heap
        s.push(SimTime(10), 2, Due::Wake);
        assert_eq!(s.pop().map(|e| e.dev), Some(2));
        s.push(SimTime(5), 3, Due::Wake); // behind the clock (a late wall-clock deadline)
        s.push(SimTime(70_000_000), 4, Due::Wake); // past the window from here
        assert_eq!(s.pop().map(|e| e.dev), Some(3));
        assert_eq!(s.pop().map(|e| e.dev), Some(4));
        assert_eq!(s.pop().map(|e| e.dev), Some(1));
        assert!(s.pop().is_none());
        assert!(s.is_empty());
    }

    #[test]
    fn pop_due_leaves_future_entries() {
        let mut s = Scheduler::default();
        s.push(SimTime(10), 0, Due::Wake);
        assert!(s.pop_due(SimTime(9)).is_none());
        assert!(s.pop_due(SimTime(10)).is_some());
    }

    proptest::proptest! {
        /// Against a binary heap of the same entries: the same order, whatever mix of pushes
        /// (near, far, behind the clock) and pops.
        #[test]
        fn pops_in_the_order_a_binary_heap_would(ops in proptest::collection::vec((0u8..5, 0u64..200_000_000), 1..400)) {
            let mut s = Scheduler::default();
            let mut model = BinaryHeap::new();
            let mut order = 0u64;
            let mut clock = 0u64;
            for (kind, dt) in ops {
                if kind == 0 {
                    let got = s.pop();
                    let want = model.pop();
                    proptest::prop_assert_eq!(got.map(|e: Entry| (e.at, e.dev)), want.map(|e: Entry| (e.at, e.dev)));
                    if let Some(e) = got { clock = e.at.as_micros(); }
                } else {
                    // kind 1: near future, 2: far future, 3: behind the clock
                    // 4: hours to days ahead (the coarse level and beyond)
                    let at = match kind { 1 => clock + dt % 5_000_000, 2 => clock + dt, 4 => clock + dt * 1_000, _ => clock.saturating_sub(dt % 10_000) };
                    let dev = order as u32;
                    s.push(SimTime(at), dev, Due::Wake);
                    model.push(Entry { at: SimTime(at), order, dev, due: Due::Wake });
                    order += 1;
                }
                proptest::prop_assert_eq!(s.len(), model.len());
            }
            while let Some(want) = model.pop() {
                proptest::prop_assert_eq!(s.pop().map(|e| (e.at, e.dev)), Some((want.at, want.dev)));
            }
            proptest::prop_assert!(s.pop().is_none());
        }
    }
}
