//! The Boykov–Kolmogorov augmenting-path algorithm, written once against a
//! [`Topology`] so that the general graph and the implicit 3D grid share it.
//!
//! Y. Boykov and V. Kolmogorov, "An experimental comparison of min-cut/max-flow
//! algorithms for energy minimization in vision", IEEE TPAMI 26(9), 2004.
//!
//! Two search trees grow from the terminals: S (nodes reachable from the source through
//! residual arcs) and T (nodes that reach the sink). When they touch, the path through
//! them is augmented; the arcs it saturates cut nodes off their trees ("orphans"), which
//! look for a new parent in the same tree or become free. Unlike BFS-based methods
//! (Edmonds–Karp, Dinic) the trees are repaired rather than rebuilt after each
//! augmentation, which on vision grids (short paths, most nodes linked to a terminal)
//! beats them and push-relabel in practice, though its worst-case bound,
//! O(m · n² · |C|), is weaker.
//!
//! Every node `i` carries a signed residual terminal capacity `tr_cap[i]`: positive is
//! residual capacity from the source to `i`, negative from `i` to the sink (one of the
//! two is always zero after the trivial flow source → i → sink has been pushed).

use std::collections::VecDeque;

use super::Capacity;

/// The arcs of a graph: each arc has a head and a sister (the reverse arc).
pub(super) trait Topology {
    fn num_nodes(&self) -> usize;
    /// `(arc, head)` for every arc leaving `node`.
    fn arcs(&self, node: usize) -> impl Iterator<Item = (usize, usize)> + '_;
    fn head(&self, arc: usize) -> usize;
    fn sister(&self, arc: usize) -> usize;
}

/// `parent` of a node outside both trees.
const FREE: u32 = u32::MAX;
/// `parent` of a node attached directly to its terminal.
const TERMINAL: u32 = u32::MAX - 1;
/// `parent` of a node whose parent arc was just saturated.
const ORPHAN: u32 = u32::MAX - 2;
/// Arc ids must stay below the sentinels.
pub(super) const MAX_ARCS: usize = ORPHAN as usize;

/// `flags` bit: the node is in T (else S); meaningless for free nodes.
const IN_SINK_TREE: u8 = 1;
/// `flags` bit: the node is queued in `active` or is the node being grown.
const ACTIVE: u8 = 2;

/// Per-node state, kept together because the search reads all of it for each
/// neighbour it visits.
#[derive(Clone, Copy)]
struct Node<C> {
    tr_cap: C,
    /// The arc from the node to its parent in its tree, or one of the sentinels.
    parent: u32,
    /// `ts` and `dist` implement the distance heuristic of the paper: `dist` is the
    /// number of arcs to the terminal, known to be exact when `ts` equals `time`.
    ts: u32,
    dist: u32,
    flags: u8,
}

struct Solver<'a, T, C> {
    topo: &'a T,
    /// Residual capacity of every arc.
    r_cap: &'a mut [C],
    nodes: Vec<Node<C>>,
    active: VecDeque<u32>,
    orphans: VecDeque<u32>,
    time: u32,
    flow: C,
}

/// Runs the algorithm to completion. `tr_cap` holds the netted terminal capacities and
/// `flow` the flow already pushed straight from source to sink through single nodes.
/// Returns the max-flow value and, per node, whether it is on the source side of the
/// min cut: exactly the nodes reachable from the source in the final residual graph.
pub(super) fn solve<T: Topology, C: Capacity>(
    topo: &T,
    r_cap: &mut [C],
    tr_cap: Vec<C>,
    flow: C,
) -> (C, Vec<bool>) {
    let n = topo.num_nodes();
    debug_assert_eq!(tr_cap.len(), n);
    let mut s = Solver {
        topo,
        r_cap,
        nodes: tr_cap
            .into_iter()
            .map(|tr_cap| Node {
                tr_cap,
                parent: FREE,
                ts: 0,
                dist: 0,
                flags: 0,
            })
            .collect(),
        active: VecDeque::new(),
        orphans: VecDeque::new(),
        time: 0,
        flow,
    };
    for i in 0..n {
        let tr = s.nodes[i].tr_cap;
        if tr != C::ZERO {
            let node = &mut s.nodes[i];
            node.parent = TERMINAL;
            node.flags = if tr < C::ZERO { IN_SINK_TREE } else { 0 };
            node.dist = 1;
            s.activate(i);
        }
    }
    s.run();
    let source_side = s
        .nodes
        .iter()
        .map(|node| node.parent != FREE && node.flags & IN_SINK_TREE == 0)
        .collect();
    (s.flow, source_side)
}

impl<T: Topology, C: Capacity> Solver<'_, T, C> {
    #[inline]
    fn in_sink_tree(&self, i: usize) -> bool {
        self.nodes[i].flags & IN_SINK_TREE != 0
    }

    #[inline]
    fn activate(&mut self, i: usize) {
        if self.nodes[i].flags & ACTIVE == 0 {
            self.nodes[i].flags |= ACTIVE;
            self.active.push_back(i as u32);
        }
    }

    #[inline]
    fn make_orphan(&mut self, i: usize) {
        self.nodes[i].parent = ORPHAN;
        self.orphans.push_back(i as u32);
    }

    /// Residual capacity along the direction the tree of `node` pushes flow through
    /// `arc` (which leaves `node`): away from `node` in S, towards it in T.
    #[inline]
    fn tree_cap(&self, arc: usize, sink_tree: bool) -> C {
        if sink_tree {
            self.r_cap[self.topo.sister(arc)]
        } else {
            self.r_cap[arc]
        }
    }

    fn run(&mut self) {
        // A node that just led to an augmentation is grown again before the queue moves
        // on: its other arcs are likely to find more paths.
        let mut current: Option<usize> = None;
        loop {
            let p = match current.take() {
                Some(p) => p,
                None => match self.active.pop_front() {
                    Some(p) => p as usize,
                    None => return,
                },
            };
            self.nodes[p].flags &= !ACTIVE;
            if self.nodes[p].parent == FREE {
                continue;
            }
            if let Some((mid, s_node, t_node)) = self.grow(p) {
                self.nodes[p].flags |= ACTIVE;
                current = Some(p);
                self.time += 1;
                self.augment(mid, s_node, t_node);
                self.adopt();
            }
        }
    }

    /// Extends the tree of `p` over its free neighbours; returns the arc from S to T
    /// (and its two ends) when a neighbour belongs to the other tree.
    fn grow(&mut self, p: usize) -> Option<(usize, usize, usize)> {
        let sink_tree = self.in_sink_tree(p);
        let topo = self.topo;
        for (a, q) in topo.arcs(p) {
            if self.tree_cap(a, sink_tree) <= C::ZERO {
                continue;
            }
            if self.nodes[q].parent == FREE {
                self.nodes[q].parent = topo.sister(a) as u32;
                self.nodes[q].flags =
                    (self.nodes[q].flags & ACTIVE) | (self.nodes[p].flags & IN_SINK_TREE);
                self.nodes[q].ts = self.nodes[p].ts;
                self.nodes[q].dist = self.nodes[p].dist + 1;
                self.activate(q);
            } else if self.in_sink_tree(q) != sink_tree {
                return Some(if sink_tree {
                    (topo.sister(a), q, p)
                } else {
                    (a, p, q)
                });
            } else if self.nodes[q].ts <= self.nodes[p].ts
                && self.nodes[q].dist > self.nodes[p].dist
            {
                // q is in the same tree but p offers a shorter way to the terminal.
                self.nodes[q].parent = topo.sister(a) as u32;
                self.nodes[q].ts = self.nodes[p].ts;
                self.nodes[q].dist = self.nodes[p].dist + 1;
            }
        }
        None
    }

    /// Pushes the bottleneck along source → … → s_node → t_node → … → sink and turns
    /// the nodes whose parent arc it saturated into orphans.
    fn augment(&mut self, mid: usize, s_node: usize, t_node: usize) {
        let topo = self.topo;
        let mut b = self.r_cap[mid];
        let mut i = s_node;
        while self.nodes[i].parent != TERMINAL {
            let a = self.nodes[i].parent as usize;
            b = min(b, self.r_cap[topo.sister(a)]);
            i = topo.head(a);
        }
        b = min(b, self.nodes[i].tr_cap);
        let mut i = t_node;
        while self.nodes[i].parent != TERMINAL {
            let a = self.nodes[i].parent as usize;
            b = min(b, self.r_cap[a]);
            i = topo.head(a);
        }
        b = min(b, -self.nodes[i].tr_cap);

        // `b` is one of the residuals it was taken from, so that one becomes exactly
        // zero and the others stay non-negative, in floating point too.
        self.r_cap[topo.sister(mid)] += b;
        self.r_cap[mid] -= b;
        let mut i = s_node;
        while self.nodes[i].parent != TERMINAL {
            let a = self.nodes[i].parent as usize;
            let sister = topo.sister(a);
            self.r_cap[a] += b;
            self.r_cap[sister] -= b;
            let next = topo.head(a);
            if self.r_cap[sister] <= C::ZERO {
                self.make_orphan(i);
            }
            i = next;
        }
        self.nodes[i].tr_cap -= b;
        if self.nodes[i].tr_cap <= C::ZERO {
            self.make_orphan(i);
        }
        let mut i = t_node;
        while self.nodes[i].parent != TERMINAL {
            let a = self.nodes[i].parent as usize;
            self.r_cap[topo.sister(a)] += b;
            self.r_cap[a] -= b;
            let next = topo.head(a);
            if self.r_cap[a] <= C::ZERO {
                self.make_orphan(i);
            }
            i = next;
        }
        self.nodes[i].tr_cap += b;
        if self.nodes[i].tr_cap >= C::ZERO {
            self.make_orphan(i);
        }
        self.flow += b;
    }

    fn adopt(&mut self) {
        while let Some(i) = self.orphans.pop_front() {
            self.process_orphan(i as usize);
        }
    }

    /// Finds `i` a new parent in its tree, the one nearest the terminal among the
    /// neighbours whose path to the terminal is intact; failing that, frees `i` and
    /// orphans its children.
    fn process_orphan(&mut self, i: usize) {
        let topo = self.topo;
        let sink_tree = self.in_sink_tree(i);
        let mut best: Option<(usize, u32)> = None;
        for (a0, j0) in topo.arcs(i) {
            // The arc from j0 to i (S) or from i to j0 (T) must carry residual flow.
            let cap = if sink_tree {
                self.r_cap[a0]
            } else {
                self.r_cap[topo.sister(a0)]
            };
            if cap <= C::ZERO || self.nodes[j0].parent == FREE || self.in_sink_tree(j0) != sink_tree
            {
                continue;
            }
            let Some(d) = self.distance_to_terminal(j0) else {
                continue;
            };
            if best.is_none_or(|(_, bd)| d < bd) {
                best = Some((a0, d));
            }
            // Remember the distances along the walked path for later orphans.
            let mut j = j0;
            let mut dj = d;
            while self.nodes[j].ts != self.time {
                self.nodes[j].ts = self.time;
                self.nodes[j].dist = dj;
                dj -= 1;
                j = topo.head(self.nodes[j].parent as usize);
            }
        }
        if let Some((a0, d)) = best {
            self.nodes[i].parent = a0 as u32;
            self.nodes[i].ts = self.time;
            self.nodes[i].dist = d + 1;
            return;
        }
        for (a0, j) in topo.arcs(i) {
            if self.nodes[j].parent == FREE || self.in_sink_tree(j) != sink_tree {
                continue;
            }
            let cap = if sink_tree {
                self.r_cap[a0]
            } else {
                self.r_cap[topo.sister(a0)]
            };
            if cap > C::ZERO {
                // j may now grow into the space i leaves.
                self.activate(j);
            }
            let pj = self.nodes[j].parent;
            if pj != TERMINAL && pj != ORPHAN && topo.head(pj as usize) == i {
                self.make_orphan(j);
            }
        }
        self.nodes[i].parent = FREE;
    }

    /// Number of nodes from `j` up to its terminal, or `None` when the path meets an
    /// orphan. Marks a terminal-attached node it reaches as exact for this round.
    fn distance_to_terminal(&mut self, mut j: usize) -> Option<u32> {
        let mut d = 0;
        loop {
            if self.nodes[j].ts == self.time {
                return Some(d + self.nodes[j].dist);
            }
            d += 1;
            match self.nodes[j].parent {
                TERMINAL => {
                    self.nodes[j].ts = self.time;
                    self.nodes[j].dist = 1;
                    return Some(d);
                }
                ORPHAN => return None,
                a => j = self.topo.head(a as usize),
            }
        }
    }
}

#[inline]
fn min<C: PartialOrd>(a: C, b: C) -> C {
    if b < a { b } else { a }
}
