//! The ready set: a two-level bitset over plan ranks, so taking the most urgent
//! ready step is a scan of a few words.

/// Ready steps, by rank (rank 0 = most urgent).
#[derive(Debug, Clone)]
pub(crate) struct ReadySet {
    words: Vec<u64>,
    summary: Vec<u64>,
    len: usize,
}

impl ReadySet {
    /// An empty set for ranks `0..n`.
    pub(crate) fn new(n: usize) -> ReadySet {
        let words = n.div_ceil(64).max(1);
        ReadySet { words: vec![0; words], summary: vec![0; words.div_ceil(64)], len: 0 }
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

    /// The most urgent (lowest) rank, without removing it.
    #[inline]
    pub(crate) fn peek(&self) -> Option<u32> {
        let (si, s) = self.summary.iter().enumerate().find(|(_, s)| **s != 0)?;
        let w = si * 64 + s.trailing_zeros() as usize;
        Some((w * 64) as u32 + self.words[w].trailing_zeros())
    }

    /// Whether the set is empty.
    #[inline]
    pub(crate) fn is_empty(&self) -> bool {
        self.len == 0
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
        let mut out = Vec::new();
        while let Some(r) = s.pop() {
            out.push(r);
        }
        assert_eq!(out, vec![3, 63, 64, 4096, 4999]);
        assert!(s.is_empty());
    }
}
