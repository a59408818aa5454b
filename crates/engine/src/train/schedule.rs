//! The schedules of EFFP: the FLOPs budget, the regrow fraction, the learning rate.

/// Share of the pruning phase over which the budget falls to the target.
pub const BUDGET_RAMP: f64 = 0.75;

fn ramp(step: usize, prune_steps: usize) -> f64 {
    let span = (prune_steps as f64 * BUDGET_RAMP).max(1.0);
    (step as f64 / span).min(1.0)
}

/// FLOPs budget as a fraction of the original: falls from 1 to `target` on a cubic
/// curve (fast at first, gently at the end) over the first 75% of the pruning steps.
pub fn budget(step: usize, prune_steps: usize, target: f64) -> f64 {
    let left = 1.0 - ramp(step, prune_steps);
    target + (1.0 - target) * left * left * left
}

/// Fraction of the switched-off groups to regrow: `initial` at first, decaying on a
/// cosine to zero when the budget reaches the target, so that masks settle.
pub fn regrow_fraction(step: usize, prune_steps: usize, initial: f64) -> f64 {
    initial * 0.5 * (1.0 + (std::f64::consts::PI * ramp(step, prune_steps)).cos())
}

/// Learning rate: linear warm-up, then cosine decay to 1% of `base`.
pub fn learning_rate(step: usize, total: usize, warmup: usize, base: f64) -> f64 {
    if step < warmup {
        return base * (step + 1) as f64 / warmup as f64;
    }
    let progress = (step - warmup) as f64 / (total.saturating_sub(warmup)).max(1) as f64;
    base * (0.01 + 0.99 * 0.5 * (1.0 + (std::f64::consts::PI * progress.min(1.0)).cos()))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn budget_falls_cubically_to_the_target_and_stays() {
        assert_eq!(budget(0, 100, 0.5), 1.0);
        assert!((budget(75, 100, 0.5) - 0.5).abs() < 1e-12);
        assert_eq!(budget(99, 100, 0.5), 0.5);
        let mid = budget(37, 100, 0.5);
        assert!(
            mid > 0.5 && mid < 0.6,
            "cubic: most of the cut happens early ({mid})"
        );
        assert_eq!(regrow_fraction(80, 100, 0.3), 0.0);
        assert!((regrow_fraction(0, 100, 0.3) - 0.3).abs() < 1e-12);
        assert!(learning_rate(0, 100, 10, 1e-3) < learning_rate(9, 100, 10, 1e-3));
        assert!((learning_rate(100, 100, 10, 1e-3) - 1e-5).abs() < 1e-12);
    }
}
