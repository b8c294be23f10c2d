//! Budget-aware derivation (DESIGN §8.1): the k architectures of highest
//! score (Σ log p under α) whose predicted cost fits a limit, exactly; and
//! architectures drawn uniformly among those that fit (random search).
//!
//! The calibrated predictor is additive per choice block, so "maximise
//! Σ_b log p_b(op) subject to fixed + Σ_b cost_b(op) ≤ limit" is a
//! multiple-choice knapsack. A dynamic programme over the blocks on a
//! discretised cost axis, with every cost rounded *down*, gives for each
//! suffix of blocks and remaining budget an upper bound of the best score
//! reachable; a best-first search over partial architectures, checking the
//! exact costs, then pops complete architectures in order of their score:
//! the optimum first, then the next best, and so on. Rounding down keeps the
//! bound optimistic, so no feasible architecture is ever lost to the grid.
//! The same grid counts the completions that fit, which is what drawing
//! uniformly among the fitting architectures takes.

use std::cmp::Ordering;
use std::collections::{BinaryHeap, HashSet};

use edgeloop_train::CostModel;
use rand::Rng;

/// Cells of the discretised cost axis between 0 and the budget left for the
/// choice blocks: finer only tightens the bound, never changes the answer.
const GRID: usize = 1024;

/// Scores closer than this are ties (see `Partial::cmp`).
const TIE: f64 = 1e-9;

/// One derived architecture.
#[derive(Debug, Clone, PartialEq)]
pub struct Derived {
    /// The chosen candidate of each block.
    pub selection: Vec<usize>,
    /// What ranks it: Σ_b log p_b(selection_b) in [`k_best`]; the
    /// strategy's own figure for drawn ones (NaN until scored).
    pub score: f64,
    /// Predicted cost: `costs.fixed` plus the chosen candidates' costs.
    pub predicted: f64,
}

/// The predicted cost of `selection`, summed in block order (the order the
/// search uses, so both agree to the last bit at the boundary).
pub fn predicted_cost(costs: &CostModel, selection: &[usize]) -> f64 {
    costs.per_block.iter().zip(selection).fold(costs.fixed, |acc, (c, &i)| acc + c[i])
}

/// The selection of least predicted cost (the cheapest candidate of every block).
pub fn cheapest(costs: &CostModel) -> Vec<usize> {
    costs
        .per_block
        .iter()
        .map(|c| c.iter().enumerate().min_by(|a, b| a.1.total_cmp(b.1)).map_or(0, |(i, _)| i))
        .collect()
}

/// A partial architecture: candidates chosen for the first `selection.len()` blocks.
struct Partial {
    /// Upper bound of the score of any feasible completion.
    bound: f64,
    score: f64,
    /// `costs.fixed` plus the chosen candidates' costs so far.
    cost: f64,
    selection: Vec<usize>,
    /// Insertion order, for a deterministic pop order among equal bounds.
    seq: u64,
}

impl PartialEq for Partial {
    fn eq(&self, other: &Self) -> bool {
        self.cmp(other) == Ordering::Equal
    }
}
impl Eq for Partial {}
impl PartialOrd for Partial {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl Ord for Partial {
    /// Highest bound first; among equal bounds the deeper (so complete
    /// architectures come out without exploring every tie), then the older.
    /// Bounds equal to 1e-9 are equal: sums of the same log-probabilities
    /// in another order differ in the last bits, and must still tie.
    fn cmp(&self, other: &Self) -> Ordering {
        let key = |b: f64| (b / TIE).round() as i64;
        key(self.bound)
            .cmp(&key(other.bound))
            .then(self.selection.len().cmp(&other.selection.len()))
            .then(other.seq.cmp(&self.seq))
    }
}

/// Partial architectures a derivation expands at most: a lower bound far
/// from where α's mass is can leave many likely architectures to skip.
const MAX_EXPANSIONS: usize = 2_000_000;

/// The `k` architectures of highest Σ log p whose predicted cost is at most
/// `limit` (and at least `floor`), best first; fewer when fewer fit, none
/// when nothing does. `log_probs[b][i]` and `costs.per_block[b][i]`
/// describe candidate i of block b; costs must not be negative.
pub fn k_best(costs: &CostModel, log_probs: &[Vec<f64>], floor: f64, limit: f64, k: usize) -> Vec<Derived> {
    assert_eq!(costs.per_block.len(), log_probs.len(), "one row of log-probabilities per block");
    let blocks = costs.per_block.len();
    let Some(grid) = Grid::new(costs, limit).filter(|_| k > 0) else {
        return Vec::new();
    };
    // The most the blocks from b on can add: a partial architecture that
    // cannot reach `floor` even so is dropped (the score bound ignores the
    // floor, so it stays optimistic and the order exact).
    let mut most = vec![0.0; blocks + 1];
    for b in (0..blocks).rev() {
        most[b] = most[b + 1] + costs.per_block[b].iter().copied().fold(0.0, f64::max);
    }
    let free = |cost: f64| grid.free(cost);
    let block_cells = grid.block_cells(costs);
    // best[b][u]: the best score of blocks b.. within u cells (rounded-down costs).
    let mut best = vec![vec![f64::NEG_INFINITY; GRID + 1]; blocks + 1];
    best[blocks].fill(0.0);
    for b in (0..blocks).rev() {
        for u in 0..=GRID {
            best[b][u] = block_cells[b]
                .iter()
                .zip(&log_probs[b])
                .filter(|(c, _)| **c <= u)
                .map(|(c, lp)| lp + best[b + 1][u - c])
                .fold(f64::NEG_INFINITY, f64::max);
        }
    }
    let mut found = Vec::new();
    let mut seq = 0;
    let mut queue = BinaryHeap::new();
    if let Some(u) = free(costs.fixed).filter(|&u| best[0][u].is_finite()) {
        queue.push(Partial { bound: best[0][u], score: 0.0, cost: costs.fixed, selection: Vec::new(), seq });
    }
    let mut expansions = 0;
    while let Some(partial) = queue.pop() {
        expansions += 1;
        if expansions > MAX_EXPANSIONS {
            break;
        }
        let b = partial.selection.len();
        if b == blocks {
            found.push(Derived { selection: partial.selection, score: partial.score, predicted: partial.cost });
            if found.len() == k {
                break;
            }
            continue;
        }
        for (i, (&c, &lp)) in costs.per_block[b].iter().zip(&log_probs[b]).enumerate() {
            let cost = partial.cost + c;
            let Some(u) = free(cost) else { continue };
            if cost + most[b + 1] < floor {
                continue;
            }
            let bound = partial.score + lp + best[b + 1][u];
            if bound.is_finite() {
                seq += 1;
                let mut selection = partial.selection.clone();
                selection.push(i);
                queue.push(Partial { bound, score: partial.score + lp, cost, selection, seq });
            }
        }
    }
    found
}

/// Up to `n` distinct architectures drawn uniformly among those whose
/// predicted cost is within [`floor`, `limit`] (fewer when fewer fit or the
/// floor leaves few), unscored, in the order drawn. Each block's candidate
/// is drawn in proportion to the completions that still fit on the grid
/// (a superset of the exact ones, as costs round down), and a draw whose
/// exact cost misses is rejected: uniform over exactly the fitting ones.
pub fn sample_within(costs: &CostModel, floor: f64, limit: f64, n: usize, rng: &mut impl Rng) -> Vec<Derived> {
    let Some(grid) = Grid::new(costs, limit) else {
        return Vec::new();
    };
    let blocks = costs.per_block.len();
    let block_cells = grid.block_cells(costs);
    // fits[b][u]: completions of blocks b.. within u cells (f64: counts of a
    // 21-block space pass 1e17).
    let mut fits = vec![vec![0.0; GRID + 1]; blocks + 1];
    fits[blocks].fill(1.0);
    for b in (0..blocks).rev() {
        for u in 0..=GRID {
            fits[b][u] = block_cells[b].iter().filter(|&&c| c <= u).map(|&c| fits[b + 1][u - c]).sum();
        }
    }
    let Some(start) = grid.free(costs.fixed).filter(|&u| fits[0][u] > 0.0) else {
        return Vec::new();
    };
    let mut seen = HashSet::new();
    let mut drawn = Vec::new();
    // Enough tries for a floor that leaves a small share of the space.
    for _ in 0..n.saturating_mul(200).max(1000) {
        if drawn.len() == n {
            break;
        }
        let mut u = start;
        let mut selection = Vec::with_capacity(blocks);
        for b in 0..blocks {
            let weights: Vec<f64> =
                block_cells[b].iter().map(|&c| if c <= u { fits[b + 1][u - c] } else { 0.0 }).collect();
            let mut pick = rng.random_range(0.0..weights.iter().sum::<f64>());
            let i = weights.iter().position(|&w| {
                pick -= w;
                pick < 0.0 && w > 0.0
            });
            // Rounding can leave the pick past the last weight: take the last that fits.
            let i = i.unwrap_or_else(|| weights.iter().rposition(|&w| w > 0.0).expect("a fitting candidate"));
            u -= block_cells[b][i];
            selection.push(i);
        }
        let predicted = predicted_cost(costs, &selection);
        if (floor..=limit).contains(&predicted) && seen.insert(selection.clone()) {
            drawn.push(Derived { selection, score: f64::NAN, predicted });
        }
    }
    drawn
}

/// The cost left for the choice blocks under a limit, cut in [`GRID`] cells.
struct Grid {
    limit: f64,
    capacity: f64,
    cell: f64,
}

impl Grid {
    /// None when not even the fixed cost fits (or the limit is NaN).
    fn new(costs: &CostModel, limit: f64) -> Option<Grid> {
        let capacity = limit - costs.fixed;
        (capacity >= 0.0).then(|| Grid { limit, capacity, cell: capacity / GRID as f64 })
    }

    /// A cost in cells, rounded down; costs beyond the capacity never fit.
    fn cells(&self, c: f64) -> usize {
        if c > self.capacity {
            GRID + 1
        } else if self.cell > 0.0 {
            ((c / self.cell).floor() as usize).min(GRID)
        } else {
            0
        }
    }

    fn block_cells(&self, costs: &CostModel) -> Vec<Vec<usize>> {
        costs.per_block.iter().map(|c| c.iter().map(|&c| self.cells(c)).collect()).collect()
    }

    /// Cells still free once `cost` (fixed included) is spent; generous by a
    /// hair so that rounding in the division never makes a bound too tight.
    fn free(&self, cost: f64) -> Option<usize> {
        let left = self.limit - cost;
        if left < 0.0 {
            None
        } else if self.cell > 0.0 {
            Some((((left / self.cell) * (1.0 + 1e-12) + 1e-9).floor() as usize).min(GRID))
        } else {
            Some(GRID)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use rand::rngs::SmallRng;
    use rand::{Rng, SeedableRng};

    /// Every selection of `counts` candidates per block.
    fn all_selections(counts: &[usize]) -> Vec<Vec<usize>> {
        counts.iter().fold(vec![Vec::new()], |acc, &n| {
            acc.into_iter().flat_map(|s| (0..n).map(move |i| [s.clone(), vec![i]].concat())).collect()
        })
    }

    fn brute_force(costs: &CostModel, log_probs: &[Vec<f64>], floor: f64, limit: f64, k: usize) -> Vec<Derived> {
        let counts: Vec<usize> = costs.per_block.iter().map(Vec::len).collect();
        let mut all: Vec<Derived> = all_selections(&counts)
            .into_iter()
            .map(|selection| {
                let score = selection.iter().zip(log_probs).map(|(&i, lp)| lp[i]).sum::<f64>();
                Derived { predicted: predicted_cost(costs, &selection), score, selection }
            })
            .filter(|d| floor <= d.predicted && d.predicted <= limit)
            .collect();
        all.sort_by(|a, b| b.score.total_cmp(&a.score));
        all.truncate(k);
        all
    }

    fn log_softmax(v: &[f64]) -> Vec<f64> {
        let max = v.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let lse = max + v.iter().map(|x| (x - max).exp()).sum::<f64>().ln();
        v.iter().map(|x| x - lse).collect()
    }

    #[test]
    fn equals_brute_force_on_random_problems() {
        let mut rng = SmallRng::seed_from_u64(11);
        for case in 0..300 {
            let blocks = rng.random_range(1..5);
            let per_block: Vec<Vec<f64>> = (0..blocks)
                .map(|_| (0..rng.random_range(1..8)).map(|_| rng.random_range(0.0..1.0)).collect())
                .collect();
            let costs = CostModel { fixed: rng.random_range(0.0..0.5), per_block };
            let log_probs: Vec<Vec<f64>> = costs
                .per_block
                .iter()
                .map(|c| log_softmax(&c.iter().map(|_| rng.random_range(-2.0..2.0)).collect::<Vec<_>>()))
                .collect();
            let limit: f64 = rng.random_range(0.0..3.0);
            // Half the cases with a floor too.
            let floor = if case % 2 == 0 { 0.0 } else { rng.random_range(0.0..limit.max(1e-9)) };
            let k = rng.random_range(1..12);
            let exact = brute_force(&costs, &log_probs, floor, limit, k);
            let derived = k_best(&costs, &log_probs, floor, limit, k);
            assert_eq!(derived.len(), exact.len(), "case {case}");
            for (d, e) in derived.iter().zip(&exact) {
                assert_eq!(d.selection, e.selection, "case {case}: {derived:?} vs {exact:?}");
                assert_eq!(d.predicted, e.predicted);
                assert!((d.score - e.score).abs() < 1e-12);
            }
        }
    }

    #[test]
    fn equals_brute_force_over_every_arch_of_tiny_with_a_calibrated_table() {
        use crate::calibrate::Calibration;
        use crate::predict::{Predictor, Stat};
        use edgeloop_space::Arch;
        let dir = tempfile::tempdir().unwrap();
        let (space, table) = crate::predict::tests::tiny_table(dir.path(), 0.05, 0.02);
        // Overhead 0.05 ms and a factor of 1.13 on every layer's share.
        let calibration = Calibration {
            scale: 1.0,
            scale_p50: Some(1.13),
            scale_p90: None,
            overhead_ms: Some(0.05),
            archs: Vec::new(),
            samples: Vec::new(),
            fitted_at: String::new(),
        };
        let predictor = Predictor::calibrated(&table, Some(&calibration), Stat::P50).unwrap();
        let costs = super::super::costs::cost_model(&predictor, &space).unwrap();
        let counts: Vec<usize> = space.blocks.iter().map(|b| b.candidates.len()).collect();
        let all = all_selections(&counts);
        assert_eq!(all.len(), 1764);
        let predicted: Vec<f64> = all
            .iter()
            .map(|sel| {
                let ops = sel.iter().zip(&space.blocks).map(|(&i, b)| b.candidates[i]).collect();
                predictor.predict(&space, &Arch { space: "tiny".into(), width: 1.0, ops }).unwrap().total_ms
            })
            .collect();
        let (lo, hi) = predicted.iter().fold((f64::MAX, f64::MIN), |(l, h), &p| (l.min(p), h.max(p)));
        let mut rng = SmallRng::seed_from_u64(5);
        for case in 0..40 {
            let log_probs: Vec<Vec<f64>> = counts
                .iter()
                .map(|&n| log_softmax(&(0..n).map(|_| rng.random_range(-1.5..1.5)).collect::<Vec<_>>()))
                .collect();
            let limit = rng.random_range(lo - 0.01..hi + 0.01);
            let floor = if case % 2 == 0 { 0.0 } else { 0.85 * limit };
            let k = rng.random_range(1..10);
            let mut brute: Vec<(f64, &Vec<usize>, f64)> = all
                .iter()
                .zip(&predicted)
                .filter(|(_, p)| floor <= **p && **p <= limit)
                .map(|(sel, p)| (sel.iter().zip(&log_probs).map(|(&i, lp)| lp[i]).sum::<f64>(), sel, *p))
                .collect();
            brute.sort_by(|a, b| b.0.total_cmp(&a.0));
            brute.truncate(k);
            let derived = k_best(&costs, &log_probs, floor, limit, k);
            assert_eq!(derived.len(), brute.len(), "case {case}");
            for (d, (score, sel, p)) in derived.iter().zip(&brute) {
                assert_eq!(&d.selection, *sel, "case {case}");
                assert!((d.score - score).abs() < 1e-9 && (d.predicted - p).abs() < 1e-9, "case {case}");
            }
        }
    }

    #[test]
    fn budget_below_the_fixed_cost_or_nothing_asked_gives_nothing() {
        let costs = CostModel { fixed: 1.0, per_block: vec![vec![0.0, 0.5]] };
        let lp = vec![vec![-0.1, -2.0]];
        assert!(k_best(&costs, &lp, 0.0, 0.99, 3).is_empty());
        assert!(k_best(&costs, &lp, 0.0, 2.0, 0).is_empty());
        // A floor above everything the blocks can add.
        assert!(k_best(&costs, &lp, 1.6, 2.0, 3).is_empty());
        // Exactly the fixed cost: only the free candidate fits.
        let only = k_best(&costs, &lp, 0.0, 1.0, 3);
        assert_eq!(only.iter().map(|d| d.selection.clone()).collect::<Vec<_>>(), vec![vec![0]]);
        assert_eq!(cheapest(&costs), vec![0]);
    }

    #[test]
    fn uniform_probabilities_still_end_quickly() {
        // 21 blocks of 7 equally likely candidates (proxyless-mobile's shape):
        // every architecture ties, and the search must not explore them all.
        let per_block: Vec<Vec<f64>> =
            (0..21).map(|b| (0..7).map(|i| 0.01 * ((b * 7 + i) % 13) as f64).collect()).collect();
        let costs = CostModel { fixed: 0.1, per_block };
        let lp = vec![vec![-(7f64.ln()); 7]; 21];
        let derived = k_best(&costs, &lp, 0.0, 0.6, 5);
        assert_eq!(derived.len(), 5);
        assert!(derived.iter().all(|d| d.predicted <= 0.6));
    }

    #[test]
    fn draws_are_uniform_over_exactly_the_fitting_architectures() {
        // 3 blocks of 4 candidates: 64 architectures, about half within the limit.
        let costs = CostModel {
            fixed: 0.2,
            per_block: vec![vec![0.0, 0.13, 0.31, 0.47], vec![0.05, 0.2, 0.29, 0.41], vec![0.0, 0.11, 0.26, 0.5]],
        };
        let (floor, limit) = (0.55, 0.95);
        let fitting: Vec<Vec<usize>> = all_selections(&[4, 4, 4])
            .into_iter()
            .filter(|s| (floor..=limit).contains(&predicted_cost(&costs, s)))
            .collect();
        assert!(fitting.len() > 10 && fitting.len() < 50, "{}", fitting.len());
        let mut rng = SmallRng::seed_from_u64(3);
        // All of them when asked for more than there are, each once.
        let every = sample_within(&costs, floor, limit, 100, &mut rng);
        let mut got: Vec<Vec<usize>> = every.iter().map(|d| d.selection.clone()).collect();
        got.sort();
        assert_eq!(got, fitting);
        assert!(every.iter().all(|d| d.predicted == predicted_cost(&costs, &d.selection) && d.score.is_nan()));
        // One at a time, many times: each as often as the others (χ², p > 0.001).
        let draws = 20_000;
        let mut counts = std::collections::HashMap::new();
        for _ in 0..draws {
            *counts.entry(sample_within(&costs, floor, limit, 1, &mut rng).remove(0).selection).or_insert(0.0) += 1.0;
        }
        let expected = draws as f64 / fitting.len() as f64;
        let chi2: f64 =
            fitting.iter().map(|s| (counts.get(s).copied().unwrap_or(0.0) - expected).powi(2) / expected).sum();
        // The 0.999 quantile of χ² with 49 degrees of freedom is about 85.
        assert!(chi2 < 85.0, "χ² {chi2} over {} architectures", fitting.len());
        // Nothing fits: nothing drawn.
        assert!(sample_within(&costs, 0.0, 0.19, 5, &mut rng).is_empty());
    }
}
