//! Nodes of batch trees whose root signature verified, by position: the native counterpart of
//! `merkle.VerifiedTrees` (same rule). An envelope whose leaf and path meet a known node of its
//! tree, with every higher sibling of its path equal byte for byte to the known node at that
//! position, belongs to the tree: the walk stops there instead of hashing up to the root.

use std::collections::{HashMap, VecDeque};

use crate::wire::node_hash;

pub type Range = (u16, u16); // leaves [start, end) under a node (sizes are at most 65535)

/// For each sibling on leaf `index`'s path, bottom-up: the node's range, the sibling's range,
/// and whether the sibling is on the left (RFC 9162 tree shape). None if `index >= size`.
pub fn path_ranges(index: u16, size: u16) -> Option<Vec<(Range, Range, bool)>> {
    if index >= size {
        return None;
    }
    let mut out = Vec::with_capacity(16);
    let (index, mut start, mut end) = (u32::from(index), 0u32, u32::from(size));
    while end - start > 1 {
        let n = end - start - 1;
        let mid = start + (1u32 << (31 - n.leading_zeros()));
        if index < mid {
            out.push((range(start, mid), range(mid, end), false));
            end = mid;
        } else {
            out.push((range(mid, end), range(start, mid), true));
            start = mid;
        }
    }
    out.reverse();
    Some(out)
}

fn range(start: u32, end: u32) -> Range {
    (start as u16, end as u16) // both at most the size, a u16
}

type Nodes = HashMap<Range, [u8; 32]>;

/// Verified nodes of up to `capacity` trees, keyed by (key, size, signature); oldest go first.
pub struct VerifiedTrees {
    trees: HashMap<Vec<u8>, Nodes>,
    order: VecDeque<Vec<u8>>,
    capacity: usize,
}

impl VerifiedTrees {
    pub fn new(capacity: usize) -> Self {
        VerifiedTrees {
            trees: HashMap::new(),
            order: VecDeque::new(),
            capacity: capacity.max(1),
        }
    }

    /// Whether `leaf` with `path` is in the verified tree `tree` (false: unknown, verify in
    /// full). Learns the nodes it walked through when it is.
    pub fn contains(
        &mut self,
        tree: &[u8],
        index: u16,
        size: u16,
        leaf: [u8; 32],
        path: &[u8],
    ) -> bool {
        let Some(known) = self.trees.get_mut(tree) else {
            return false;
        };
        let Some(ranges) = path_ranges(index, size) else {
            return false;
        };
        if path.len() != 32 * ranges.len() {
            return false;
        }
        let sibling = |j: usize| -> [u8; 32] { path[32 * j..32 * j + 32].try_into().expect("32") };
        let mut learned: Vec<(Range, [u8; 32])> = Vec::new();
        let mut r = leaf;
        for (level, (node, sib, left)) in ranges.iter().enumerate() {
            if known.get(node) == Some(&r) {
                for (j, (_, higher, _)) in ranges.iter().enumerate().skip(level) {
                    if known.get(higher) != Some(&sibling(j)) {
                        return false;
                    }
                }
                known.extend(learned);
                return true;
            }
            learned.push((*node, r));
            learned.push((*sib, sibling(level)));
            r = if *left {
                node_hash(&sibling(level), &r)
            } else {
                node_hash(&r, &sibling(level))
            };
        }
        if known.get(&(0, size)) == Some(&r) {
            known.extend(learned);
            return true;
        }
        false
    }

    /// Record a leaf, its path and the root they lead to, once the root signature verified.
    pub fn add(&mut self, tree: Vec<u8>, index: u16, size: u16, leaf: [u8; 32], path: &[u8]) {
        let Some(ranges) = path_ranges(index, size) else {
            return;
        };
        if path.len() != 32 * ranges.len() {
            return;
        }
        let mut nodes: Vec<(Range, [u8; 32])> = Vec::with_capacity(2 * ranges.len() + 1);
        let mut r = leaf;
        for ((node, sib, left), p) in ranges.iter().zip(path.chunks_exact(32)) {
            let p: [u8; 32] = p.try_into().expect("32");
            nodes.push((*node, r));
            nodes.push((*sib, p));
            r = if *left {
                node_hash(&p, &r)
            } else {
                node_hash(&r, &p)
            };
        }
        nodes.push(((0, size), r));
        if !self.trees.contains_key(&tree) {
            self.order.push_back(tree.clone());
            while self.order.len() > self.capacity {
                if let Some(old) = self.order.pop_front() {
                    self.trees.remove(&old);
                }
            }
        }
        self.trees.entry(tree).or_default().extend(nodes);
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::build;

    #[test]
    fn known_nodes_shortcut_the_walk_and_refuse_any_changed_byte() {
        for n in 1..40usize {
            let leaves: Vec<[u8; 32]> = (0..n as u8).map(|i| [i; 32]).collect();
            let (_, paths) = build(&leaves);
            let mut trees = VerifiedTrees::new(4);
            let tree = b"tree".to_vec();
            assert!(!trees.contains(&tree, 0, n as u16, leaves[0], &paths[0]));
            trees.add(tree.clone(), 0, n as u16, leaves[0], &paths[0]);
            for (i, p) in paths.iter().enumerate() {
                assert_eq!(path_ranges(i as u16, n as u16).unwrap().len() * 32, p.len());
                assert!(
                    trees.contains(&tree, i as u16, n as u16, leaves[i], p),
                    "{n} {i}"
                );
                let mut other = leaves[i];
                other[0] ^= 1;
                assert!(!trees.contains(&tree, i as u16, n as u16, other, p));
                for k in 0..p.len() / 32 {
                    let mut bad = p.clone();
                    bad[32 * k + 5] ^= 1;
                    assert!(!trees.contains(&tree, i as u16, n as u16, leaves[i], &bad));
                }
            }
        }
    }
}
