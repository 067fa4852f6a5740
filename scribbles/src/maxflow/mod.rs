//! Exact s-t max-flow / min-cut for graphs with terminal and pairwise edges.
//!
//! The energies of binary segmentation (a unary cost per voxel for each label, a cost
//! per pair of neighbours that disagree) are minimised exactly by a minimum cut, so
//! graphs here are built the way those energies are written: every node gets a capacity
//! from the source and one to the sink ([`Graph::add_terminal_weights`]), and pairs of
//! nodes get an edge with a capacity in each direction ([`Graph::add_edge`]).
//!
//! The solver is Boykov–Kolmogorov (see `bk.rs`), the standard for vision grids. It is
//! exact: with integer capacities the flow is the exact optimum; with floats, every
//! augmentation saturates its bottleneck arc exactly, so the result is optimal up to the
//! rounding of the sums. Two front ends share it:
//!
//! * [`Graph`]: any graph, stored as a compressed adjacency array (12 bytes per arc
//!   with `f32` capacities).
//! * [`GridGraph`]: the 6-connected 3D grid, whose arcs are implicit (4 bytes per arc
//!   with `f32`, no index arrays): the segmentation's graph.
//!
//! The cut returned is the one with the smallest source side: a node is on the source
//! side exactly when it is reachable from the source through arcs with residual
//! capacity. Ties therefore go to the sink, which the segmentation maps to background.

mod bk;

use std::fmt::Debug;
use std::ops::{Add, AddAssign, Neg, Sub, SubAssign};

use bk::Topology;

/// A number usable as an arc capacity: `i32`, `i64`, `f32` or `f64`.
///
/// Integer flows must fit the type: the sum of the capacities leaving the source is a
/// safe bound.
pub trait Capacity:
    Copy
    + PartialOrd
    + Debug
    + Add<Output = Self>
    + Sub<Output = Self>
    + Neg<Output = Self>
    + AddAssign
    + SubAssign
{
    const ZERO: Self;
    /// Whether `self` can be a capacity: not negative, and finite (not NaN) for floats.
    fn is_valid_capacity(self) -> bool;
}

macro_rules! int_capacity {
    ($($t:ty),*) => {$(
        impl Capacity for $t {
            const ZERO: Self = 0;
            fn is_valid_capacity(self) -> bool {
                self >= 0
            }
        }
    )*};
}
macro_rules! float_capacity {
    ($($t:ty),*) => {$(
        impl Capacity for $t {
            const ZERO: Self = 0.0;
            fn is_valid_capacity(self) -> bool {
                self.is_finite() && self >= 0.0
            }
        }
    )*};
}
int_capacity!(i32, i64);
float_capacity!(f32, f64);

/// The result of a max-flow computation.
#[derive(Debug, Clone, PartialEq)]
pub struct Cut<C> {
    /// The maximum flow value, equal to the capacity of the minimum cut.
    pub flow: C,
    /// Per node, whether it lies on the source side of the minimum cut (the smallest
    /// such side when several cuts are minimal).
    pub source_side: Vec<bool>,
}

/// Terminal capacities accumulated the way the solver wants them: the flow through
/// source → i → sink is pushed at once, leaving one signed residual per node.
#[derive(Debug, Clone)]
struct Terminals<C> {
    tr_cap: Vec<C>,
    flow: C,
}

impl<C: Capacity> Terminals<C> {
    fn new(n: usize) -> Self {
        Self {
            tr_cap: vec![C::ZERO; n],
            flow: C::ZERO,
        }
    }

    fn add(&mut self, node: usize, source: C, sink: C) {
        assert!(
            source.is_valid_capacity() && sink.is_valid_capacity(),
            "terminal capacities of node {node} must be finite and non-negative: \
             {source:?}, {sink:?}"
        );
        let old = self.tr_cap[node];
        let (mut source, mut sink) = (source, sink);
        if old > C::ZERO {
            source += old;
        } else {
            sink -= old;
        }
        let through = if source < sink { source } else { sink };
        self.flow += through;
        self.tr_cap[node] = source - sink;
    }
}

fn check_edge<C: Capacity>(u: usize, v: usize, cap: C, rev_cap: C) {
    assert!(
        cap.is_valid_capacity() && rev_cap.is_valid_capacity(),
        "capacities of edge {u}–{v} must be finite and non-negative: {cap:?}, {rev_cap:?}"
    );
}

/// A directed graph with a source and a sink, for small or irregular problems.
///
/// Edges are collected as added and laid out as adjacency arrays when
/// [`max_flow`](Self::max_flow) runs.
#[derive(Debug, Clone)]
pub struct Graph<C> {
    terminals: Terminals<C>,
    /// `(u, v, capacity u → v, capacity v → u)`.
    edges: Vec<(u32, u32, C, C)>,
}

impl<C: Capacity> Graph<C> {
    /// A graph of `num_nodes` nodes (numbered from 0) and no edges.
    ///
    /// Panics when `num_nodes` does not fit the solver's 32-bit indices.
    pub fn new(num_nodes: usize) -> Self {
        assert!(num_nodes < bk::MAX_ARCS, "too many nodes: {num_nodes}");
        Self {
            terminals: Terminals::new(num_nodes),
            edges: Vec::new(),
        }
    }

    pub fn num_nodes(&self) -> usize {
        self.terminals.tr_cap.len()
    }

    /// Adds capacity from the source to `node` (paid when `node` ends on the sink side)
    /// and from `node` to the sink (paid when it ends on the source side). Repeated calls
    /// add up.
    ///
    /// Panics on a negative or non-finite capacity or a node out of range.
    pub fn add_terminal_weights(&mut self, node: usize, source: C, sink: C) {
        self.terminals.add(node, source, sink);
    }

    /// Adds an edge with capacity `cap` from `u` to `v` (paid when `u` is on the source
    /// side and `v` on the sink side) and `rev_cap` from `v` to `u`. Parallel edges add
    /// up; an edge from a node to itself never crosses a cut and is dropped.
    ///
    /// Panics on a negative or non-finite capacity or a node out of range.
    pub fn add_edge(&mut self, u: usize, v: usize, cap: C, rev_cap: C) {
        let n = self.num_nodes();
        assert!(
            u < n && v < n,
            "edge {u}–{v} outside the graph of {n} nodes"
        );
        check_edge(u, v, cap, rev_cap);
        if u != v {
            assert!(2 * self.edges.len() + 2 < bk::MAX_ARCS, "too many edges");
            self.edges.push((u as u32, v as u32, cap, rev_cap));
        }
    }

    /// Computes the maximum flow and a minimum cut.
    pub fn max_flow(&self) -> Cut<C> {
        let n = self.num_nodes();
        // Compressed adjacency: the arcs leaving node i are first[i]..first[i + 1].
        let mut first = vec![0u32; n + 1];
        for &(u, v, _, _) in &self.edges {
            first[u as usize + 1] += 1;
            first[v as usize + 1] += 1;
        }
        for i in 0..n {
            first[i + 1] += first[i];
        }
        let arcs = 2 * self.edges.len();
        let mut next = first.clone();
        let mut head = vec![0u32; arcs];
        let mut sister = vec![0u32; arcs];
        let mut r_cap = vec![C::ZERO; arcs];
        for &(u, v, cap, rev_cap) in &self.edges {
            let a = next[u as usize];
            let b = next[v as usize];
            next[u as usize] += 1;
            next[v as usize] += 1;
            let (a, b) = (a as usize, b as usize);
            (head[a], sister[a], r_cap[a]) = (v, b as u32, cap);
            (head[b], sister[b], r_cap[b]) = (u, a as u32, rev_cap);
        }
        let topo = Adjacency {
            first,
            head,
            sister,
        };
        let (flow, source_side) = bk::solve(
            &topo,
            &mut r_cap,
            self.terminals.tr_cap.clone(),
            self.terminals.flow,
        );
        Cut { flow, source_side }
    }
}

struct Adjacency {
    first: Vec<u32>,
    head: Vec<u32>,
    sister: Vec<u32>,
}

impl Topology for Adjacency {
    fn num_nodes(&self) -> usize {
        self.first.len() - 1
    }

    #[inline]
    fn arcs(&self, node: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let arcs = self.first[node] as usize..self.first[node + 1] as usize;
        arcs.map(|a| (a, self.head[a] as usize))
    }

    #[inline]
    fn head(&self, arc: usize) -> usize {
        self.head[arc] as usize
    }

    #[inline]
    fn sister(&self, arc: usize) -> usize {
        self.sister[arc] as usize
    }
}

/// A 3D grid graph: node `i + dims[0] * (j + dims[1] * k)` for voxel (i, j, k) (the
/// order of [`medlabel_imaging::Volume`]), each linked to its 6 face neighbours.
///
/// Arc capacities live in one array of 6 per node, indexed by direction (−i, +i, −j,
/// +j, −k, +k), and neighbours are found by index arithmetic, so a grid costs
/// `6 · size_of::<C>()` bytes per node for its arcs, plus up to about 30 bytes of
/// solver state and queues (about 50 bytes per node with `f32`).
#[derive(Debug, Clone)]
pub struct GridGraph<C> {
    dims: [usize; 3],
    terminals: Terminals<C>,
    caps: Vec<C>,
}

impl<C: Capacity> GridGraph<C> {
    /// A grid of `dims` voxels with all capacities zero.
    ///
    /// Panics when the grid is empty or does not fit the solver's 32-bit arc indices.
    pub fn new(dims: [usize; 3]) -> Self {
        let n = dims.iter().try_fold(1usize, |acc, &d| acc.checked_mul(d));
        let n = n.filter(|&n| n > 0 && n.saturating_mul(6) < bk::MAX_ARCS);
        let n = n.unwrap_or_else(|| panic!("grid {dims:?} is empty or too large"));
        Self {
            dims,
            terminals: Terminals::new(n),
            caps: vec![C::ZERO; 6 * n],
        }
    }

    pub fn num_nodes(&self) -> usize {
        self.terminals.tr_cap.len()
    }

    /// As [`Graph::add_terminal_weights`].
    pub fn add_terminal_weights(&mut self, node: usize, source: C, sink: C) {
        self.terminals.add(node, source, sink);
    }

    /// Sets the edge between `node` and its successor along `axis` (0, 1 or 2, i.e.
    /// `node + 1`, `node + dims[0]` or `node + dims[0] · dims[1]`): capacity `cap`
    /// towards the successor and `rev_cap` back. Setting it again replaces it.
    ///
    /// Panics when `node` is the last along `axis` or a capacity is negative or not
    /// finite.
    pub fn set_edge(&mut self, node: usize, axis: usize, cap: C, rev_cap: C) {
        let stride = [1, self.dims[0], self.dims[0] * self.dims[1]][axis];
        let coord = node / stride % self.dims[axis];
        assert!(
            coord + 1 < self.dims[axis] && node < self.num_nodes(),
            "node {node} has no successor along axis {axis} in grid {:?}",
            self.dims
        );
        check_edge(node, node + stride, cap, rev_cap);
        self.caps[6 * node + 2 * axis + 1] = cap;
        self.caps[6 * (node + stride) + 2 * axis] = rev_cap;
    }

    /// Computes the maximum flow and a minimum cut, reusing the grid's memory.
    pub fn max_flow(self) -> Cut<C> {
        let [nx, ny, nz] = self.dims;
        let (sx, sy) = (nx, nx * ny);
        let mut exists = Vec::with_capacity(self.num_nodes());
        for k in 0..nz {
            for j in 0..ny {
                for i in 0..nx {
                    let bit = |has: bool, dir: u8| u8::from(has) << dir;
                    exists.push(
                        bit(i > 0, 0)
                            | bit(i + 1 < nx, 1)
                            | bit(j > 0, 2)
                            | bit(j + 1 < ny, 3)
                            | bit(k > 0, 4)
                            | bit(k + 1 < nz, 5),
                    );
                }
            }
        }
        let topo = Grid {
            offsets: [
                -1,
                1,
                -(sx as isize),
                sx as isize,
                -(sy as isize),
                sy as isize,
            ],
            exists,
        };
        let mut caps = self.caps;
        let (flow, source_side) =
            bk::solve(&topo, &mut caps, self.terminals.tr_cap, self.terminals.flow);
        Cut { flow, source_side }
    }
}

/// Arc `6 · node + dir` leads to `node + offsets[dir]`; its sister is the arc in the
/// opposite direction (`dir ^ 1`) out of the head.
struct Grid {
    offsets: [isize; 6],
    /// Bit `dir` set when the neighbour in direction `dir` is inside the grid.
    exists: Vec<u8>,
}

impl Topology for Grid {
    fn num_nodes(&self) -> usize {
        self.exists.len()
    }

    #[inline]
    fn arcs(&self, node: usize) -> impl Iterator<Item = (usize, usize)> + '_ {
        let exists = self.exists[node];
        (0..6)
            .filter(move |dir| exists & (1 << dir) != 0)
            .map(move |dir| (6 * node + dir, node.wrapping_add_signed(self.offsets[dir])))
    }

    #[inline]
    fn head(&self, arc: usize) -> usize {
        (arc / 6).wrapping_add_signed(self.offsets[arc % 6])
    }

    #[inline]
    fn sister(&self, arc: usize) -> usize {
        6 * self.head(arc) + ((arc % 6) ^ 1)
    }
}
