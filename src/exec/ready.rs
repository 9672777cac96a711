//! The ready set: a two-level bitset over plan ranks, so taking the most urgent
//! ready step is a scan of a few words.

/// Ready steps, by rank (rank 0 = most urgent).
#[derive(Debug, Clone, Default)]
pub(crate) struct ReadySet {
    words: Vec<u64>,
    summary: Vec<u64>,
    len: usize,
}

impl ReadySet {
    /// An empty set for ranks `0..n`.
    pub(crate) fn new(n: usize) -> ReadySet {
        let mut s = ReadySet::default();
        s.reset(n);
        s
    }

    /// Empties the set and sizes it for ranks `0..n`, reusing its memory.
    pub(crate) fn reset(&mut self, n: usize) {
        let words = n.div_ceil(64).max(1);
        self.words.clear();
        self.words.resize(words, 0);
        self.summary.clear();
        self.summary.resize(words.div_ceil(64), 0);
        self.len = 0;
    }

    /// Adds a rank (idempotent).
    #[inline]
    pub(crate) fn insert(&mut self, rank: u32) {
        let (w, b) = ((rank / 64) as usize, rank % 64);
        if self.words[w] & (1 << b) == 0 {
            self.words[w] |= 1 << b;
            self.summary[w / 64] |= 1 << (w % 64);
            self.len += 1;
        }
    }

    /// Removes and returns the most urgent (lowest) rank.
    #[inline]
    pub(crate) fn pop(&mut self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let (si, s) = self.summary.iter().enumerate().find(|(_, s)| **s != 0)?;
        let w = si * 64 + s.trailing_zeros() as usize;
        let word = self.words[w];
        let b = word.trailing_zeros();
        self.words[w] = word & !(1 << b);
        if self.words[w] == 0 {
            self.summary[si] &= !(1 << (w % 64));
        }
        self.len -= 1;
        Some((w * 64) as u32 + b)
    }

    /// Removes and returns the most urgent rank if it is below `limit`.
    #[inline]
    pub(crate) fn pop_below(&mut self, limit: u32) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let (si, s) = self.summary.iter().enumerate().find(|(_, s)| **s != 0)?;
        let w = si * 64 + s.trailing_zeros() as usize;
        let word = self.words[w];
        let b = word.trailing_zeros();
        let r = (w * 64) as u32 + b;
        if r >= limit {
            return None;
        }
        self.words[w] = word & !(1 << b);
        if self.words[w] == 0 {
            self.summary[si] &= !(1 << (w % 64));
        }
        self.len -= 1;
        Some(r)
    }

    /// The most urgent (lowest) rank, without removing it.
    #[inline]
    pub(crate) fn peek(&self) -> Option<u32> {
        if self.len == 0 {
            return None;
        }
        let (si, s) = self.summary.iter().enumerate().find(|(_, s)| **s != 0)?;
        let w = si * 64 + s.trailing_zeros() as usize;
        Some((w * 64) as u32 + self.words[w].trailing_zeros())
    }

    /// Whether the set is empty.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Number of ranks in the set.
    #[inline]
    pub(crate) fn len(&self) -> usize {
        self.len
    }

    /// Moves every rank of `self` into `other` (sized alike), leaving `self` empty.
    pub(crate) fn move_into(&mut self, other: &mut ReadySet) {
        if self.len == 0 {
            return;
        }
        for (si, s) in self.summary.iter_mut().enumerate() {
            let mut bits = std::mem::take(s);
            while bits != 0 {
                let w = si * 64 + bits.trailing_zeros() as usize;
                bits &= bits - 1;
                let moved = std::mem::take(&mut self.words[w]);
                let fresh = moved & !other.words[w];
                other.words[w] |= moved;
                other.summary[w / 64] |= 1 << (w % 64);
                other.len += fresh.count_ones() as usize;
            }
        }
        self.len = 0;
    }
}

#[cfg(test)]
mod tests {
    use super::ReadySet;

    #[test]
    fn pops_in_rank_order() {
        let mut s = ReadySet::new(5000);
        for r in [4999, 3, 64, 63, 4096, 3] {
            s.insert(r);
        }
        assert_eq!((s.len(), s.peek()), (5, Some(3)));
        let mut out = Vec::new();
        while let Some(r) = s.pop() {
            out.push(r);
        }
        assert_eq!(out, vec![3, 63, 64, 4096, 4999]);
        assert!(s.is_empty() && s.peek().is_none());
    }

    #[test]
    fn pop_below_takes_only_more_urgent_ranks() {
        let mut s = ReadySet::new(300);
        s.insert(70);
        s.insert(200);
        assert_eq!(s.pop_below(70), None);
        assert_eq!(s.pop_below(71), Some(70));
        assert_eq!(s.pop_below(u32::MAX), Some(200));
        assert_eq!(s.pop_below(u32::MAX), None);
    }

    #[test]
    fn move_into_merges_and_empties() {
        let (mut a, mut b) = (ReadySet::new(9000), ReadySet::new(9000));
        for r in [1, 700, 8999] {
            a.insert(r);
        }
        for r in [700, 5] {
            b.insert(r);
        }
        a.move_into(&mut b);
        assert!(a.is_empty() && a.pop().is_none());
        assert_eq!(b.len(), 4);
        let all: Vec<u32> = std::iter::from_fn(|| b.pop()).collect();
        assert_eq!(all, vec![1, 5, 700, 8999]);
    }

    #[test]
    fn reset_empties_and_resizes() {
        let mut s = ReadySet::new(10);
        s.insert(9);
        s.reset(200);
        assert!(s.is_empty());
        s.insert(199);
        assert_eq!(s.pop(), Some(199));
    }
}
