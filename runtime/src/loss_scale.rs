//! Dynamic loss scaling: [`LossScaler`], torch's `GradScaler` policy for an [`Optimizer`] built
//! with [`Options::loss_scale`](crate::Options::loss_scale).
//!
//! The policy (`docs/loss_scaling.md`; torch's `torch/amp/grad_scaler.py` and
//! `_amp_update_scale_`, `aten/src/ATen/native/cpu/AmpGradScalerKernels.cpp`): the scale is an
//! f32, `init_scale` (2^16) at first. After each step, a skipped step (a gradient held an inf or
//! a NaN) multiplies it by `backoff_factor` (0.5) and resets the count of good steps; a good
//! step adds one to that count, and when it reaches `growth_interval` (2000) the scale is
//! multiplied by `growth_factor` (2) unless that would be infinite, and the count restarts.

use crate::error::RuntimeError;
use crate::optimizer::{Optimizer, StepReport, Update};

/// A loss scaler with growth and backoff, as torch's `GradScaler`. See the module docs.
#[derive(Clone, Debug, PartialEq)]
pub struct LossScaler {
    scale: f32,
    growth_factor: f64,
    backoff_factor: f64,
    growth_interval: u64,
    growth_tracker: u64,
}

impl Default for LossScaler {
    /// torch's defaults: `init_scale` 2^16, `growth_factor` 2, `backoff_factor` 0.5,
    /// `growth_interval` 2000.
    fn default() -> Self {
        LossScaler {
            scale: 65536.0,
            growth_factor: 2.0,
            backoff_factor: 0.5,
            growth_interval: 2000,
            growth_tracker: 0,
        }
    }
}

fn bad(what: String) -> RuntimeError {
    RuntimeError::Unsupported(what)
}

impl LossScaler {
    /// A scaler with torch's defaults and the initial scale `init_scale` (positive, finite as
    /// an f32).
    pub fn new(init_scale: f64) -> Result<LossScaler, RuntimeError> {
        LossScaler::default().with_scale(init_scale)
    }

    /// The same scaler with the current scale set to `scale`.
    pub fn with_scale(mut self, scale: f64) -> Result<LossScaler, RuntimeError> {
        let s = scale as f32;
        if !(s.is_finite() && s > 0.0) {
            return Err(bad(format!(
                "a loss scale must be positive and finite in f32; got {scale}"
            )));
        }
        self.scale = s;
        Ok(self)
    }

    /// The same scaler with `growth_factor` (more than 1, as torch requires).
    pub fn with_growth_factor(mut self, factor: f64) -> Result<LossScaler, RuntimeError> {
        if !(factor.is_finite() && factor > 1.0) {
            return Err(bad(format!(
                "the growth factor must be finite and more than 1; got {factor}"
            )));
        }
        self.growth_factor = factor;
        Ok(self)
    }

    /// The same scaler with `backoff_factor` (between 0 and 1, exclusive, as torch requires).
    pub fn with_backoff_factor(mut self, factor: f64) -> Result<LossScaler, RuntimeError> {
        if !(factor > 0.0 && factor < 1.0) {
            return Err(bad(format!(
                "the backoff factor must be between 0 and 1 (exclusive); got {factor}"
            )));
        }
        self.backoff_factor = factor;
        Ok(self)
    }

    /// The same scaler with `growth_interval`, the number of good steps in a row after which
    /// the scale grows (at least 1).
    pub fn with_growth_interval(mut self, steps: u64) -> Result<LossScaler, RuntimeError> {
        if steps == 0 {
            return Err(bad("the growth interval must be at least 1 step".into()));
        }
        self.growth_interval = steps;
        Ok(self)
    }

    /// The current scale: multiply the loss by it before computing the gradients of the next
    /// step.
    pub fn scale(&self) -> f64 {
        f64::from(self.scale)
    }

    /// Good steps since the last growth or backoff (torch's `_growth_tracker`).
    pub fn growth_tracker(&self) -> u64 {
        self.growth_tracker
    }

    /// Moves the scale after a step: back off when it was `skipped`, else count it and grow
    /// after `growth_interval` good steps in a row (torch's `_amp_update_scale_`).
    pub fn update(&mut self, skipped: bool) {
        if skipped {
            self.scale = (f64::from(self.scale) * self.backoff_factor) as f32;
            self.growth_tracker = 0;
            return;
        }
        let successful = self.growth_tracker + 1;
        if successful == self.growth_interval {
            let grown = (f64::from(self.scale) * self.growth_factor) as f32;
            if grown.is_finite() {
                self.scale = grown;
            }
            self.growth_tracker = 0;
        } else {
            self.growth_tracker = successful;
        }
    }

    /// One scaled step: sets the optimizer's loss scale to [`LossScaler::scale`] (the factor
    /// `updates`' gradients carry), steps, and [`LossScaler::update`]s from the report. On
    /// error the step has changed nothing and the scaler has not moved.
    pub fn step<'a>(
        &mut self,
        optimizer: &mut Optimizer,
        updates: impl IntoIterator<Item = Update<'a>>,
    ) -> Result<StepReport, RuntimeError> {
        optimizer.set_loss_scale(self.scale())?;
        let report = optimizer.step(updates)?;
        self.update(report.skipped);
        Ok(report)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backs_off_on_a_skip_and_grows_after_the_interval() {
        let mut s = LossScaler::new(8.0)
            .and_then(|s| s.with_growth_interval(3))
            .expect("scaler");
        s.update(false);
        s.update(false);
        assert_eq!((s.scale(), s.growth_tracker()), (8.0, 2));
        s.update(true);
        assert_eq!((s.scale(), s.growth_tracker()), (4.0, 0));
        for _ in 0..3 {
            s.update(false);
        }
        assert_eq!((s.scale(), s.growth_tracker()), (8.0, 0));
    }

    #[test]
    fn never_grows_to_infinity() {
        let mut s = LossScaler::new(f64::from(f32::MAX))
            .and_then(|s| s.with_growth_interval(1))
            .expect("scaler");
        s.update(false);
        assert_eq!(s.scale(), f64::from(f32::MAX));
        assert_eq!(s.growth_tracker(), 0);
    }

    #[test]
    fn refuses_torchs_invalid_settings() {
        let d = LossScaler::default;
        assert!(d().with_growth_factor(1.0).is_err());
        assert!(d().with_backoff_factor(1.0).is_err());
        assert!(d().with_backoff_factor(0.0).is_err());
        assert!(d().with_growth_interval(0).is_err());
        assert!(LossScaler::new(f64::INFINITY).is_err());
        assert!(LossScaler::new(1e300).is_err());
        assert!(LossScaler::new(-1.0).is_err());
        assert_eq!(d().scale(), 65536.0);
    }
}
