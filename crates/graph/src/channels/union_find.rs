//! Disjoint sets over channel slots.

/// Union-find with path halving and union by size.
///
/// Slots are stored as `u32` to halve its memory; [`UnionFind::new`] refuses more
/// than `u32::MAX` of them (the channel-slot limit keeps far below that).
#[derive(Debug, Clone)]
pub(crate) struct UnionFind {
    parent: Vec<u32>,
    size: Vec<u32>,
}

impl UnionFind {
    /// `n` singleton sets; `None` when `n` does not fit `u32` or the memory cannot be
    /// had (the caller reports it instead of aborting).
    pub(crate) fn new(n: usize) -> Option<Self> {
        let top = u32::try_from(n).ok()?;
        let mut parent = Vec::new();
        parent.try_reserve_exact(n).ok()?;
        parent.extend(0..top);
        let mut size = Vec::new();
        size.try_reserve_exact(n).ok()?;
        size.resize(n, 1);
        Some(Self { parent, size })
    }

    pub(crate) fn find(&mut self, mut x: usize) -> usize {
        while self.parent[x] as usize != x {
            let grand = self.parent[self.parent[x] as usize];
            self.parent[x] = grand;
            x = grand as usize;
        }
        x
    }

    pub(crate) fn union(&mut self, a: usize, b: usize) {
        let (mut a, mut b) = (self.find(a), self.find(b));
        if a == b {
            return;
        }
        if self.size[a] < self.size[b] {
            std::mem::swap(&mut a, &mut b);
        }
        // Both fit u32: every index is below `n`, and a set holds at most `n` slots.
        self.parent[b] = a as u32;
        self.size[a] += self.size[b];
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unions_are_transitive() {
        let mut u = UnionFind::new(6).unwrap();
        u.union(0, 1);
        u.union(2, 3);
        u.union(1, 3);
        assert_eq!(u.find(0), u.find(2));
        assert_ne!(u.find(0), u.find(4));
        assert_ne!(u.find(4), u.find(5));
    }

    #[test]
    fn more_slots_than_u32_holds_are_refused_not_truncated() {
        assert!(UnionFind::new(u32::MAX as usize + 1).is_none());
        assert!(UnionFind::new(0).is_some());
    }
}
