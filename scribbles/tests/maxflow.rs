//! The max-flow solver against brute force (every partition of small graphs), against
//! itself on the two front ends, and on hand-made graphs whose answer is known.

use medlabel_scribbles::maxflow::{Capacity, Cut, Graph, GridGraph};
use rand::{Rng, SeedableRng};
use rand_chacha::ChaCha8Rng;

/// A graph kept as plain lists, so that tests can evaluate cuts themselves.
#[derive(Debug, Clone)]
struct Problem<C> {
    source: Vec<C>,
    sink: Vec<C>,
    edges: Vec<(usize, usize, C, C)>,
}

impl<C: Capacity> Problem<C> {
    fn graph(&self) -> Graph<C> {
        let mut g = Graph::new(self.source.len());
        for (i, (&s, &t)) in self.source.iter().zip(&self.sink).enumerate() {
            g.add_terminal_weights(i, s, t);
        }
        for &(u, v, c, r) in &self.edges {
            g.add_edge(u, v, c, r);
        }
        g
    }

    /// Capacity of the cut whose source side is `in_s`.
    fn cut_value(&self, in_s: impl Fn(usize) -> bool) -> C {
        let mut total = C::ZERO;
        for i in 0..self.source.len() {
            total += if in_s(i) {
                self.sink[i]
            } else {
                self.source[i]
            };
        }
        for &(u, v, c, r) in &self.edges {
            if in_s(u) && !in_s(v) {
                total += c;
            }
            if in_s(v) && !in_s(u) {
                total += r;
            }
        }
        total
    }
}

/// The minimum cut value over all 2^n partitions, and the intersection of the source
/// sides of all minimum cuts (itself a minimum cut: min cuts form a lattice).
fn brute_force(p: &Problem<i64>) -> (i64, u32) {
    let n = p.source.len();
    let mut best = i64::MAX;
    let mut smallest = 0u32;
    for mask in 0u32..1 << n {
        let value = p.cut_value(|i| mask >> i & 1 == 1);
        if value < best {
            best = value;
            smallest = mask;
        } else if value == best {
            smallest &= mask;
        }
    }
    (best, smallest)
}

fn as_mask(cut: &Cut<i64>) -> u32 {
    cut.source_side
        .iter()
        .enumerate()
        .map(|(i, &s)| u32::from(s) << i)
        .sum()
}

fn random_problem(rng: &mut ChaCha8Rng, n: usize) -> Problem<i64> {
    // A third of the capacities are zero so that ties, disconnected parts and nodes
    // without terminal links are common.
    let cap = |rng: &mut ChaCha8Rng| {
        if rng.random_bool(0.33) {
            0
        } else {
            rng.random_range(1..20)
        }
    };
    let source = (0..n).map(|_| cap(rng)).collect();
    let sink = (0..n).map(|_| cap(rng)).collect();
    let density = rng.random_range(0.1..0.9);
    let mut edges = Vec::new();
    for u in 0..n {
        for v in u + 1..n {
            if rng.random_bool(density) {
                edges.push((u, v, cap(rng), cap(rng)));
            }
        }
    }
    // Some parallel edges, listed in either order.
    for _ in 0..rng.random_range(0..3) {
        let (u, v) = (rng.random_range(0..n), rng.random_range(0..n));
        if u != v {
            edges.push((u, v, cap(rng), cap(rng)));
        }
    }
    Problem {
        source,
        sink,
        edges,
    }
}

#[test]
fn random_small_graphs_match_brute_force() {
    let mut rng = ChaCha8Rng::seed_from_u64(20_240_601);
    for round in 0..3000 {
        let n = rng.random_range(1..=12);
        let p = random_problem(&mut rng, n);
        let (best, smallest) = brute_force(&p);
        let cut = p.graph().max_flow();
        assert_eq!(cut.flow, best, "round {round}: flow of {p:?}");
        assert_eq!(
            p.cut_value(|i| cut.source_side[i]),
            best,
            "round {round}: the returned cut is not minimal for {p:?}"
        );
        assert_eq!(
            as_mask(&cut),
            smallest,
            "round {round}: not the smallest source side for {p:?}"
        );
    }
}

#[test]
fn float_capacities_reach_the_brute_force_optimum() {
    let mut rng = ChaCha8Rng::seed_from_u64(7);
    for round in 0..500 {
        let n = rng.random_range(1..=10);
        let ints = random_problem(&mut rng, n);
        // Irrational-looking capacities, so that sums round.
        let f = |c: i64| c as f64 * std::f64::consts::PI / 3.0;
        let p = Problem {
            source: ints.source.iter().map(|&c| f(c)).collect(),
            sink: ints.sink.iter().map(|&c| f(c)).collect(),
            edges: ints
                .edges
                .iter()
                .map(|&(u, v, c, r)| (u, v, f(c), f(r)))
                .collect(),
        };
        let best = (0u32..1 << n)
            .map(|mask| p.cut_value(|i| mask >> i & 1 == 1))
            .fold(f64::INFINITY, f64::min);
        let cut = p.graph().max_flow();
        let tolerance = 1e-9 * best.max(1.0);
        assert!(
            (cut.flow - best).abs() < tolerance,
            "round {round}: {cut:?} vs {best}"
        );
        let value = p.cut_value(|i| cut.source_side[i]);
        assert!(
            (value - best).abs() < tolerance,
            "round {round}: {value} vs {best}"
        );
    }
}

/// Random grid problems solved by both front ends: the flows and, since the smallest
/// source side is unique, the partitions must agree exactly.
#[test]
fn grid_graph_agrees_with_general_graph() {
    let mut rng = ChaCha8Rng::seed_from_u64(99);
    for round in 0..200 {
        let dims: [usize; 3] = if round < 100 {
            [rng.random_range(1..=3), rng.random_range(1..=2), 2]
        } else {
            std::array::from_fn(|_| rng.random_range(1..=12))
        };
        let n = dims.iter().product();
        let mut grid = GridGraph::<i64>::new(dims);
        let mut p = Problem {
            source: vec![0; n],
            sink: vec![0; n],
            edges: Vec::new(),
        };
        for i in 0..n {
            let (s, t) = (rng.random_range(0..30), rng.random_range(0..30));
            grid.add_terminal_weights(i, s, t);
            p.source[i] = s;
            p.sink[i] = t;
        }
        let strides = [1, dims[0], dims[0] * dims[1]];
        for node in 0..n {
            for axis in 0..3 {
                if node / strides[axis] % dims[axis] + 1 < dims[axis] {
                    let (c, r) = (rng.random_range(0..20), rng.random_range(0..20));
                    grid.set_edge(node, axis, c, r);
                    p.edges.push((node, node + strides[axis], c, r));
                }
            }
        }
        let expected = p.graph().max_flow();
        if n <= 12 {
            assert_eq!(brute_force(&p).0, expected.flow, "round {round}");
        }
        assert_eq!(grid.max_flow(), expected, "round {round}: dims {dims:?}");
    }
}

#[test]
fn textbook_network() {
    // The flow network of Cormen et al. (s, v1..v4, t) with maximum flow 23; the
    // source's and sink's arcs become terminal weights.
    let mut g = Graph::new(4);
    g.add_terminal_weights(0, 16, 0);
    g.add_terminal_weights(1, 13, 0);
    g.add_terminal_weights(2, 0, 20);
    g.add_terminal_weights(3, 0, 4);
    g.add_edge(0, 1, 10, 4);
    g.add_edge(0, 2, 12, 0);
    g.add_edge(2, 1, 9, 0);
    g.add_edge(1, 3, 14, 0);
    g.add_edge(3, 2, 7, 0);
    let cut = g.max_flow();
    assert_eq!(cut.flow, 23);
    // The smallest minimum cut is {s, v1, v2, v4} | {v3, t}: 12 + 7 + 4.
    assert_eq!(cut.source_side, [true, true, false, true]);
}

#[test]
fn disconnected_components_add_up() {
    let mut g = Graph::new(5);
    // Component {0, 1}: source 5 → 0 → 1 → sink 3, bottleneck 3.
    g.add_terminal_weights(0, 5, 0);
    g.add_terminal_weights(1, 0, 3);
    g.add_edge(0, 1, 4, 0);
    // Component {2, 3}: bottleneck 2 on the edge.
    g.add_terminal_weights(2, 9, 0);
    g.add_terminal_weights(3, 0, 9);
    g.add_edge(2, 3, 2, 7);
    // Node 4 touches neither terminal.
    let cut = g.max_flow();
    assert_eq!(cut.flow, 5);
    assert_eq!(cut.source_side, [true, true, true, false, false]);
}

#[test]
fn zero_capacities_cut_nothing() {
    let mut g = Graph::<f32>::new(3);
    g.add_terminal_weights(0, 0.0, 0.0);
    g.add_edge(0, 1, 0.0, 0.0);
    g.add_edge(1, 2, 0.0, 0.0);
    let cut = g.max_flow();
    assert_eq!(cut.flow, 0.0);
    assert_eq!(cut.source_side, [false; 3]);
}

#[test]
fn only_source_or_only_sink_links() {
    for to_source in [true, false] {
        let mut g = GridGraph::<f32>::new([4, 3, 2]);
        for i in 0..g.num_nodes() {
            let w = 1.0 + i as f32;
            if to_source {
                g.add_terminal_weights(i, w, 0.0);
            } else {
                g.add_terminal_weights(i, 0.0, w);
            }
            if i % 4 != 3 {
                g.set_edge(i, 0, 0.5, 0.5);
            }
        }
        let cut = g.max_flow();
        assert_eq!(cut.flow, 0.0);
        assert!(cut.source_side.iter().all(|&s| s == to_source));
    }
}

#[test]
fn both_terminals_on_one_node_push_flow_directly() {
    let mut g = Graph::new(2);
    g.add_terminal_weights(0, 7, 3);
    g.add_terminal_weights(0, 1, 4); // adds up to 8 / 7
    g.add_terminal_weights(1, 0, 5);
    g.add_edge(0, 1, 10, 10);
    let cut = g.max_flow();
    // 7 straight through node 0, then 1 more via node 1.
    assert_eq!(cut.flow, 8);
    assert_eq!(cut.source_side, [false, false]);
}

#[test]
fn large_capacities_stay_exact() {
    // A chain whose weakest link is 10^15 + 1 next to links of 10^15 + 2 and more;
    // f64 would still be exact here, i64 must be.
    let big = 1_000_000_000_000_000i64;
    let n = 50;
    let mut g = Graph::new(n);
    g.add_terminal_weights(0, 3 * big, 0);
    g.add_terminal_weights(n - 1, 0, 3 * big);
    for i in 0..n - 1 {
        let c = if i == 31 { big + 1 } else { big + 2 + i as i64 };
        g.add_edge(i, i + 1, c, 0);
    }
    let cut = g.max_flow();
    assert_eq!(cut.flow, big + 1);
    assert!(cut.source_side[..=31].iter().all(|&s| s));
    assert!(cut.source_side[32..].iter().all(|&s| !s));
}

#[test]
fn self_loops_are_ignored() {
    let mut g = Graph::new(2);
    g.add_terminal_weights(0, 4, 0);
    g.add_terminal_weights(1, 0, 4);
    g.add_edge(0, 0, 100, 100);
    g.add_edge(0, 1, 1, 0);
    assert_eq!(g.max_flow().flow, 1);
}

#[test]
#[should_panic(expected = "must be finite and non-negative")]
fn negative_capacities_are_refused() {
    Graph::new(2).add_edge(0, 1, 1.0, -1.0);
}

#[test]
#[should_panic(expected = "must be finite and non-negative")]
fn nan_capacities_are_refused() {
    GridGraph::new([2, 1, 1]).add_terminal_weights(0, f32::NAN, 0.0);
}

#[test]
#[should_panic(expected = "has no successor along axis 1")]
fn grid_edges_stay_inside_the_grid() {
    GridGraph::new([3, 2, 2]).set_edge(4, 1, 1.0f32, 1.0);
}
