//! Budget-aware derivation (DESIGN §8.1): the k most likely architectures
//! whose predicted cost fits a limit, exactly.
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

use std::cmp::Ordering;
use std::collections::BinaryHeap;

use edgeloop_train::CostModel;

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
    /// Σ_b log p_b(selection_b).
    pub log_prob: f64,
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
    log_prob: f64,
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
    let capacity = limit - costs.fixed;
    // NaN limits fit nothing either.
    if k == 0 || capacity.is_nan() || capacity < 0.0 {
        return Vec::new();
    }
    // The most the blocks from b on can add: a partial architecture that
    // cannot reach `floor` even so is dropped (the score bound ignores the
    // floor, so it stays optimistic and the order exact).
    let mut most = vec![0.0; blocks + 1];
    for b in (0..blocks).rev() {
        most[b] = most[b + 1] + costs.per_block[b].iter().copied().fold(0.0, f64::max);
    }
    // Cost in grid cells, rounded down; costs beyond the capacity never fit.
    let cell = capacity / GRID as f64;
    let cells = |c: f64| -> usize {
        if c > capacity {
            GRID + 1
        } else if cell > 0.0 {
            ((c / cell).floor() as usize).min(GRID)
        } else {
            0
        }
    };
    // Cells still free once `cost` (fixed included) is spent; generous by a
    // hair so that rounding in the division never makes the bound too tight.
    let free = |cost: f64| -> Option<usize> {
        let left = limit - cost;
        if left < 0.0 {
            None
        } else if cell > 0.0 {
            Some((((left / cell) * (1.0 + 1e-12) + 1e-9).floor() as usize).min(GRID))
        } else {
            Some(GRID)
        }
    };
    let block_cells: Vec<Vec<usize>> = costs.per_block.iter().map(|c| c.iter().map(|&c| cells(c)).collect()).collect();
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
        queue.push(Partial { bound: best[0][u], log_prob: 0.0, cost: costs.fixed, selection: Vec::new(), seq });
    }
    let mut expansions = 0;
    while let Some(partial) = queue.pop() {
        expansions += 1;
        if expansions > MAX_EXPANSIONS {
            break;
        }
        let b = partial.selection.len();
        if b == blocks {
            found.push(Derived { selection: partial.selection, log_prob: partial.log_prob, predicted: partial.cost });
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
            let bound = partial.log_prob + lp + best[b + 1][u];
            if bound.is_finite() {
                seq += 1;
                let mut selection = partial.selection.clone();
                selection.push(i);
                queue.push(Partial { bound, log_prob: partial.log_prob + lp, cost, selection, seq });
            }
        }
    }
    found
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
                let log_prob = selection.iter().zip(log_probs).map(|(&i, lp)| lp[i]).sum::<f64>();
                Derived { predicted: predicted_cost(costs, &selection), log_prob, selection }
            })
            .filter(|d| floor <= d.predicted && d.predicted <= limit)
            .collect();
        all.sort_by(|a, b| b.log_prob.total_cmp(&a.log_prob));
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
                assert!((d.log_prob - e.log_prob).abs() < 1e-12);
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
                assert!((d.log_prob - score).abs() < 1e-9 && (d.predicted - p).abs() < 1e-9, "case {case}");
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
}
