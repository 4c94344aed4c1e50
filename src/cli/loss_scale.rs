//! `--loss-scale S|dynamic`, shared by `optc run`, `bench` and `compare`: loss scaling with
//! inf/NaN skip (`docs/loss_scaling.md`).
//!
//! `S` (a positive number) is a fixed scale: the gradients a step gets are `S` times the true
//! ones, every kernel divides them by `S`, and a step whose gradients hold an inf or a NaN is
//! skipped. `dynamic` moves the scale with [`LossScaler`] (torch's `GradScaler` policy:
//! 2^16 at first, halved on a skip, doubled after 2000 good steps), and each verb makes the
//! gradients of a step scaled by it (as a scaled loss would).

use clap::Args;
use optc_runtime::LossScaler;

/// The value of `--loss-scale`.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum LossScale {
    /// A fixed scale.
    Fixed(f64),
    /// A scale moved by [`LossScaler`] with torch's defaults.
    Dynamic,
}

impl std::str::FromStr for LossScale {
    type Err = String;

    fn from_str(text: &str) -> Result<Self, String> {
        if text == "dynamic" {
            return Ok(LossScale::Dynamic);
        }
        match text.parse::<f64>() {
            Ok(v) if v.is_finite() && v > 0.0 && (v as f32).is_finite() => Ok(LossScale::Fixed(v)),
            _ => Err(format!(
                "`{text}`: expected a positive, finite loss scale (such as 1024) or `dynamic`"
            )),
        }
    }
}

/// The `--loss-scale` option (flattened into each verb's arguments).
#[derive(Args, Clone, Debug, Default)]
pub struct LossScaleArgs {
    /// Loss scaling with inf/NaN skip, as torch's GradScaler: `S` (the gradients are S times the
    /// true ones; each is divided by S) or `dynamic` (torch's GradScaler policy moves the scale).
    /// A step whose gradients hold an inf or a NaN writes nothing. docs/loss_scaling.md.
    #[arg(long = "loss-scale", value_name = "S|dynamic")]
    pub loss_scale: Option<LossScale>,
}

impl LossScaleArgs {
    /// The optimizer's initial loss scale (`Options::loss_scale`), if scaling is on.
    pub fn initial(&self) -> Option<f64> {
        match self.loss_scale? {
            LossScale::Fixed(s) => Some(s),
            LossScale::Dynamic => Some(LossScaler::default().scale()),
        }
    }

    /// The scaler that moves the scale, for `dynamic`.
    pub fn scaler(&self) -> Option<LossScaler> {
        matches!(self.loss_scale, Some(LossScale::Dynamic)).then(LossScaler::default)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_numbers_and_dynamic_and_refuses_the_rest() {
        assert_eq!("1024".parse(), Ok(LossScale::Fixed(1024.0)));
        assert_eq!("dynamic".parse(), Ok(LossScale::Dynamic));
        for bad in ["0", "-2", "inf", "nan", "1e300", "big"] {
            assert!(bad.parse::<LossScale>().is_err(), "{bad}");
        }
    }
}
