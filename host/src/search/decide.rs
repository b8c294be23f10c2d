//! The end of the search proper (DESIGN §8.1): the final architecture is
//! derived under the budget from the table — the k best-ranked
//! architectures by the strategy (the most likely under α, `derive::k_best`)
//! whose calibrated prediction fits the budget less a safety margin, among
//! those that use at least [`BUDGET_USE`] of it when there are any — and
//! those candidates are measured on the
//! device; the best of them by held-out accuracy (supernet weights) that
//! meets the budget there is retrained. When none does, the margin grows
//! from what the device measured and the derivation runs again. A budget
//! is declared infeasible only when the space's fastest architecture
//! (by the table) measures over it on the device.

use std::fmt::Write as _;

use anyhow::{Context as _, bail};
use edgeloop_space::Arch;
use serde::{Deserialize, Serialize};

use super::derive;
use super::state::SearchModel;
use super::strategy::{Context, SearchStrategy, measure_archs, remeasure_arch};
use super::{Decision, holdout_accuracy};
use crate::calibrate::MIN_MARGIN;
use crate::events::Event;
use crate::measure::Measurements;

/// Derivations per round at most: each one measures its candidates and,
/// when none meets the budget, grows the margin.
const DERIVE_ATTEMPTS: usize = 4;

/// The least a margin grows by after a miss.
pub const MARGIN_STEP: f64 = 0.03;

/// Derivation looks first at architectures predicted to use at least this
/// share of the budget, and below it only when none is there. α alone
/// does not use a budget: a supernet trained for minutes favours skipped
/// blocks (their paths learn fastest), and its most likely architectures
/// sat at half the budget (quickstart: E[LAT] 0.96 T, the most likely arch
/// 0.5 T, and 4 points less accurate than MobileNetV2 at 0.35 width).
pub const BUDGET_USE: f64 = 0.85;

/// A margin beyond this leaves nothing worth deriving.
const MAX_MARGIN: f64 = 0.9;

/// One derived candidate and what the device said of it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct CandidateRecord {
    pub arch_hash: String,
    pub ops: Vec<String>,
    /// What the strategy ranked it by: Σ log p under the final α, or its
    /// held-out accuracy with the supernet's weights (random).
    #[serde(alias = "log_prob")]
    pub score: f64,
    /// The table's calibrated prediction of the budget's figure.
    pub predicted: f64,
    /// The device's measurement of it (short probe).
    pub measured: f64,
    pub met: bool,
    /// Held-out accuracy with the supernet's weights (measured only for candidates that met the budget).
    pub holdout_accuracy: Option<f64>,
    /// The margin it was derived with.
    pub margin: f64,
}

/// A final model that missed the budget on the device.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Miss {
    pub round: usize,
    pub arch_hash: String,
    pub predicted: f64,
    pub measured: f64,
    pub margin: f64,
}

/// The margin after `current` let through architectures whose
/// (predicted, measured) figures are `observed` and that missed: enough that
/// the worst of them, had it been predicted that far off, would have been
/// left out — and at least [`MARGIN_STEP`] more than before.
pub fn grow_margin(current: f64, observed: &[(f64, f64)]) -> f64 {
    let evidence = observed
        .iter()
        .filter(|(p, m)| *p > 0.0 && *m > 0.0)
        .map(|(p, m)| 1.0 - p / m + MIN_MARGIN)
        .fold(0.0, f64::max);
    (current + MARGIN_STEP).max(evidence).min(MAX_MARGIN)
}

/// The fastest architecture of the space by the table: its measurement, or
/// an error with the evidence when even it misses the budget. A miss is
/// measured again first, bypassing the cache: a reading from a slow
/// stretch of the device is no evidence that the budget cannot be met.
async fn fastest(ctx: &Context<'_>, pool: &mut dyn Measurements, m: &SearchModel) -> anyhow::Result<(Arch, f64)> {
    let selection = derive::cheapest(ctx.budget_costs());
    let arch = m.model.net.arch(&selection);
    let mut measured =
        ctx.budget.measured(&measure_archs(ctx, pool, &m.model.vs, std::slice::from_ref(&arch)).await?[0]);
    if !ctx.budget.met_by(measured) {
        let again = ctx.budget.measured(&remeasure_arch(ctx, pool, &m.model.vs, &arch).await?);
        ctx.events().emit(Event::FastestRemeasured {
            first: ctx.budget.show(measured),
            budget: ctx.budget.describe(),
            again: ctx.budget.show(again),
        });
        measured = again;
    }
    if !ctx.budget.met_by(measured) {
        let ops: Vec<String> = arch.ops.iter().map(ToString::to_string).collect();
        bail!(
            "the {} cannot be met on this device: the fastest architecture of {} by its table, {} [{}], \
             measured {} (predicted {}); give a larger budget",
            ctx.budget.describe(),
            ctx.space.name(),
            &arch.hash()[..12],
            ops.join(", "),
            ctx.budget.show(measured),
            ctx.budget.show(derive::predicted_cost(ctx.budget_costs(), &selection))
        );
    }
    Ok((arch, measured))
}

/// Refuses, before any training, a budget that the space's fastest
/// architecture misses on the device.
pub async fn check_feasible(ctx: &Context<'_>, pool: &mut dyn Measurements, m: &SearchModel) -> anyhow::Result<()> {
    let (_, measured) = fastest(ctx, pool, m).await?;
    ctx.events().emit(Event::Feasible { measured: ctx.budget.show(measured), budget: ctx.budget.describe() });
    Ok(())
}

/// Derives, measures and chooses the architecture of the round after `misses`.
pub async fn decide(
    ctx: &Context<'_>,
    pool: &mut dyn Measurements,
    m: &SearchModel,
    misses: &[Miss],
    strategy: &impl SearchStrategy,
) -> anyhow::Result<Decision> {
    let budget = ctx.budget;
    let net = &m.model.net;
    let mut margin = match misses.last() {
        Some(last) => grow_margin(last.margin, &[(last.predicted, last.measured)]),
        None => ctx.margin,
    };
    let (fastest_arch, fastest_measured) = fastest(ctx, pool, m).await?;
    // The strategy's favourite, for reference; for one without, its best-ranked candidate.
    let mut derived = match strategy.leader(m) {
        Some(leader) => {
            let arch = net.arch(&leader);
            let measured =
                budget.measured(&measure_archs(ctx, pool, &m.model.vs, std::slice::from_ref(&arch)).await?[0]);
            Some((arch, measured))
        }
        None => None,
    };
    let missed: Vec<&str> = misses.iter().map(|miss| miss.arch_hash.as_str()).collect();
    let mut candidates: Vec<CandidateRecord> = Vec::new();
    let decision = |derived: Option<(Arch, f64)>, chosen: Arch, reason: String, margin: f64, candidates| {
        let (derived, derived_measured) = derived.unwrap_or_else(|| (fastest_arch.clone(), fastest_measured));
        Decision {
            derived,
            derived_measured,
            chosen,
            reason,
            round: misses.len(),
            margin,
            candidates,
            misses: misses.to_vec(),
            fastest_measured: Some(fastest_measured),
            lambda: strategy.multiplier(),
        }
    };
    for _ in 0..DERIVE_ATTEMPTS {
        let limit = budget.limit * (1.0 - margin);
        let k = ctx.settings.derive.derive_candidates;
        let floor = BUDGET_USE * budget.limit;
        let mut upper = limit;
        let mut picks =
            if floor < limit { strategy.candidates(ctx, m, (floor, limit), k, &missed)? } else { Vec::new() };
        if picks.is_empty() {
            picks = strategy.candidates(ctx, m, (0.0, limit), k, &missed)?;
        }
        if picks.is_empty() && margin > 0.0 {
            // The margin left nothing (a calibration network measured in a
            // slow stretch makes it large): the device judges candidates
            // the table puts within the budget itself, rather than the
            // fastest architecture being retrained untried.
            picks = strategy.candidates(ctx, m, (0.0, budget.limit), k, &missed)?;
            upper = budget.limit;
        }
        if picks.is_empty() {
            break;
        }
        let archs: Vec<Arch> = picks.iter().map(|d| net.arch(&d.selection)).collect();
        let measured = measure_archs(ctx, pool, &m.model.vs, &archs).await?;
        if derived.is_none() {
            derived = Some((archs[0].clone(), budget.measured(&measured[0])));
        }
        let first = candidates.len();
        for ((pick, arch), meas) in picks.iter().zip(&archs).zip(&measured) {
            let value = budget.measured(meas);
            let met = budget.met_by(value);
            candidates.push(CandidateRecord {
                arch_hash: arch.hash(),
                ops: arch.ops.iter().map(ToString::to_string).collect(),
                score: pick.score,
                predicted: pick.predicted,
                measured: value,
                met,
                holdout_accuracy: met.then(|| holdout_accuracy(net, &pick.selection, ctx.data, ctx.device)),
                margin,
            });
        }
        let round = &candidates[first..];
        let best = round
            .iter()
            .zip(&archs)
            .filter_map(|(c, a)| c.holdout_accuracy.map(|acc| (acc, c, a)))
            // Highest accuracy; among equals the more likely (earlier).
            .fold(None, |best: Option<(f64, &CandidateRecord, &Arch)>, x| match best {
                Some(b) if b.0 >= x.0 => Some(b),
                _ => Some(x),
            });
        if let Some((acc, chosen, arch)) = best {
            let met = round.iter().filter(|c| c.met).count();
            let bound = if upper == limit {
                format!("the {} less a {:.1}% margin", budget.describe(), margin * 100.0)
            } else {
                format!("the {} itself: a {:.1}% margin left none", budget.describe(), margin * 100.0)
            };
            let reason = format!(
                "derived the {} architectures {} predicted {} {} ({bound}); \
                 {met} measured within it on the device; retraining the most accurate of them (held-out \
                 accuracy {acc:.3} with supernet weights), predicted {}, measured {}",
                round.len(),
                strategy.ranking(),
                if round.iter().all(|c| c.predicted >= floor) && floor < upper {
                    format!("between {} and", budget.show(floor))
                } else {
                    "under".to_string()
                },
                budget.show(upper),
                budget.show(chosen.predicted),
                budget.show(chosen.measured)
            );
            ctx.events().emit(Event::Decided { reason: reason.clone() });
            let arch = arch.clone();
            write_archs_csv(ctx, pool, m, &candidates, &arch)?;
            return Ok(decision(derived, arch, reason, margin, candidates));
        }
        let observed: Vec<(f64, f64)> = round.iter().map(|c| (c.predicted, c.measured)).collect();
        let grown = grow_margin(margin, &observed);
        ctx.events().emit(Event::Rederiving {
            candidates: round.len(),
            budget: budget.describe(),
            margin,
            next_margin: grown,
        });
        margin = grown;
    }
    let reason = format!(
        "no derived candidate measured within the {} (margin up to {:.1}%); retraining the space's fastest \
         architecture by the table, which measured {}",
        budget.describe(),
        margin * 100.0,
        budget.show(fastest_measured)
    );
    ctx.events().emit(Event::Decided { reason: reason.clone() });
    write_archs_csv(ctx, pool, m, &candidates, &fastest_arch)?;
    Ok(decision(derived, fastest_arch.clone(), reason, margin, candidates))
}

/// `archs.csv`: every architecture measured on the device during the
/// search, with its prediction, its measurement and its held-out accuracy
/// with the final supernet weights (the report's second panel).
fn write_archs_csv(
    ctx: &Context<'_>,
    pool: &dyn Measurements,
    m: &SearchModel,
    candidates: &[CandidateRecord],
    chosen: &Arch,
) -> anyhow::Result<()> {
    let path = ctx.dir.archs_csv();
    let mut rows: Vec<_> = pool
        .all_cached()
        .into_iter()
        .filter_map(|c| {
            let ops = c.ops.iter().map(|o| o.parse()).collect::<Result<Vec<_>, _>>().ok()?;
            let arch = Arch { space: ctx.space.name().into(), width: ctx.space.width, ops };
            let selection = m.model.net.selection(&arch).ok()?;
            Some((c, arch, selection))
        })
        .collect();
    rows.sort_by(|a, b| a.0.measured_at.cmp(&b.0.measured_at).then(a.0.arch_hash.cmp(&b.0.arch_hash)));
    let mut text = String::from(
        "arch_hash,predicted,measured_p50_ms,measured_p90_ms,measured_min_ms,measured_energy_mj,supernet_accuracy,role,ops\n",
    );
    for (c, arch, selection) in rows {
        let role = if arch == *chosen {
            "chosen"
        } else if candidates.iter().any(|r| r.arch_hash == c.arch_hash) {
            "candidate"
        } else {
            "sampled"
        };
        let accuracy = holdout_accuracy(&m.model.net, &selection, ctx.data, ctx.device);
        let predicted = derive::predicted_cost(ctx.budget_costs(), &selection);
        let ops: Vec<String> = arch.ops.iter().map(ToString::to_string).collect();
        writeln!(
            text,
            "{},{predicted:.6},{:.6},{:.6},{:.6},{},{accuracy:.5},{role},{}",
            c.arch_hash,
            c.p50_ms,
            c.p90_ms,
            c.min_ms,
            c.energy_mj.map_or(String::new(), |e| format!("{e:.6}")),
            ops.join(" ")
        )
        .expect("writing to a String");
    }
    edgeloop_durable::write_atomic(&path, text.as_bytes()).with_context(|| format!("writing {}", path.display()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn margin_grows_from_the_evidence_and_at_least_a_step() {
        // Predicted 0.10, measured 0.125: 20% under-predicted, so the next
        // derivation aims 20% (+ the least margin) under the budget.
        assert!((grow_margin(0.02, &[(0.10, 0.125)]) - (0.2 + MIN_MARGIN)).abs() < 1e-12);
        // Measured as predicted, yet over the budget: one step more.
        assert!((grow_margin(0.05, &[(0.10, 0.10)]) - 0.08).abs() < 1e-12);
        // The worst of several decides; never past the cap.
        assert!((grow_margin(0.0, &[(0.1, 0.11), (0.1, 0.2)]) - (0.5 + MIN_MARGIN)).abs() < 1e-12);
        assert_eq!(grow_margin(0.89, &[(0.1, 0.11)]), MAX_MARGIN);
    }

    #[test]
    fn repeated_misses_exclude_what_missed() {
        // A final model predicted p measured m > T: the next limit
        // T(1 − margin) is under p·T/m, so it is not derived again.
        let (t, p, m) = (0.12, 0.115, 0.13);
        let margin = grow_margin(0.02, &[(p, m)]);
        assert!(t * (1.0 - margin) < p * t / m);
    }
}
