//! Schedules: a hyperparameter's value as a function of the step, evaluated on the host once per
//! step and handed to the optimizer with [`crate::Optimizer::set_hyper`], so a schedule never
//! recompiles a kernel.
//!
//! Takes a base value (the hyper's value when the schedule is attached, `b` below) and `s`, the
//! number of optimizer steps already taken: torch's `scheduler.last_epoch`. The value returned
//! for `s` is the one the optimizer uses at its step `t = s + 1` (optc's `t` starts at 1), just
//! as torch's first `optimizer.step()` uses the value at `last_epoch = 0`. Gives that value.
//!
//! The schedules and their formulas are in `docs/schedules.md`; [`Schedule::parse`] reads the
//! textual form (`cosine(warmup=100, total=1000, floor=1e-5)`), and [`Scheduler`] applies
//! schedules to an optimizer.

mod parse;
#[cfg(any(feature = "compiler", feature = "cuda"))]
mod scheduler;

pub use parse::ScheduleError;
#[cfg(any(feature = "compiler", feature = "cuda"))]
pub use scheduler::Scheduler;

use std::f64::consts::PI;

/// A schedule: how a hyper's value moves with the step. Every factor multiplies the base value
/// `b`; every `floor` is an absolute value (torch's `eta_min`).
#[derive(Debug, Clone, PartialEq)]
pub enum Schedule {
    /// `b` at every step.
    Constant,
    /// `b * (start + (end - start) * min(s, steps) / steps)`: torch's `LinearLR(start_factor,
    /// end_factor, total_iters)`. Linear warmup is `start < 1`, `end = 1`.
    Linear {
        /// Factor at `s = 0`.
        start: f64,
        /// Factor from `s = steps` on.
        end: f64,
        /// Steps of the ramp (at least 1).
        steps: u64,
    },
    /// A linear warmup from `b * start` over `warmup` steps, then a cosine from `b` down to
    /// `floor` at `s = total`, then `floor`: torch's `SequentialLR([LinearLR(start, 1, warmup),
    /// CosineAnnealingLR(total - warmup, floor)], [warmup])`, or `CosineAnnealingLR(total, floor)`
    /// when `warmup = 0`.
    Cosine {
        /// Steps of the whole schedule, warmup included.
        total: u64,
        /// Warmup steps (`< total`).
        warmup: u64,
        /// The value at `total` and after.
        floor: f64,
        /// The warmup's starting factor.
        start: f64,
    },
    /// `b * gamma ^ floor(s / every)`: torch's `StepLR(step_size, gamma)`.
    Step {
        /// Steps between decays (at least 1).
        every: u64,
        /// Factor per decay.
        gamma: f64,
    },
    /// `b * gamma ^ s`: torch's `ExponentialLR(gamma)`.
    Exponential {
        /// Factor per step.
        gamma: f64,
    },
    /// `b / (1 + rate * s)` (optax's `inverse_time_decay` with `transition_steps = 1`; torch has
    /// no class for it).
    InverseTime {
        /// The decay rate `λ` (at least 0).
        rate: f64,
    },
    /// `b * (1 - min(s, total) / total) ^ power`: torch's `PolynomialLR(total_iters, power)`.
    Polynomial {
        /// Steps to reach 0 (at least 1).
        total: u64,
        /// The exponent.
        power: f64,
    },
    /// Warmup-stable-decay: linear warmup from `b * start` to `b` over `warmup` steps, `b` until
    /// `total - decay`, then linear down to `floor` at `total`, then `floor`.
    WarmupStableDecay {
        /// Warmup steps.
        warmup: u64,
        /// Decay steps, at the end.
        decay: u64,
        /// Steps of the whole schedule (`>= warmup + decay`).
        total: u64,
        /// The value at `total` and after.
        floor: f64,
        /// The warmup's starting factor.
        start: f64,
    },
    /// Piecewise: `parts[0]` until `at[0]`, then `parts[1]` restarted from step 0 until `at[1]`,
    /// and so on; every part starts from the same base. torch's `SequentialLR(parts, at)`.
    Sequence {
        /// The parts (one more than `at`).
        parts: Vec<Schedule>,
        /// The steps at which the next part begins, increasing.
        at: Vec<u64>,
    },
}

impl Schedule {
    /// The value for base `base` after `s` steps (used at step `t = s + 1`).
    pub fn value(&self, base: f64, s: u64) -> f64 {
        let sf = s as f64;
        match self {
            Schedule::Constant => base,
            Schedule::Linear { start, end, steps } => {
                let frac = s.min(*steps) as f64 / *steps as f64;
                base * (start + (end - start) * frac)
            }
            Schedule::Cosine {
                total,
                warmup,
                floor,
                start,
            } => {
                if s < *warmup {
                    base * (start + (1.0 - start) * sf / *warmup as f64)
                } else if s >= *total {
                    *floor
                } else {
                    let frac = (s - warmup) as f64 / (total - warmup) as f64;
                    floor + (base - floor) * (1.0 + (PI * frac).cos()) / 2.0
                }
            }
            Schedule::Step { every, gamma } => base * gamma.powf((s / every) as f64),
            Schedule::Exponential { gamma } => base * gamma.powf(sf),
            Schedule::InverseTime { rate } => base / (1.0 + rate * sf),
            Schedule::Polynomial { total, power } => {
                base * (1.0 - s.min(*total) as f64 / *total as f64).powf(*power)
            }
            Schedule::WarmupStableDecay {
                warmup,
                decay,
                total,
                floor,
                start,
            } => {
                let decay_from = total - decay;
                if s < *warmup {
                    base * (start + (1.0 - start) * sf / *warmup as f64)
                } else if s >= *total {
                    *floor
                } else if s >= decay_from {
                    let frac = (s - decay_from) as f64 / *decay as f64;
                    base + (floor - base) * frac
                } else {
                    base
                }
            }
            Schedule::Sequence { parts, at } => {
                let i = at.partition_point(|&m| m <= s);
                let begin = if i == 0 { 0 } else { at[i - 1] };
                parts[i].value(base, s - begin)
            }
        }
    }

    /// Parses a schedule's textual form, such as `cosine(warmup=100, total=1000, floor=1e-5)`
    /// (the forms are in `docs/schedules.md`). Errors point at the offending text.
    pub fn parse(spec: &str) -> Result<Schedule, ScheduleError> {
        parse::parse_spec(spec)
    }
}

/// A named hyper's schedule, from `NAME=SPEC` (the argument of `--schedule`).
#[derive(Debug, Clone, PartialEq)]
pub struct HyperSchedule {
    /// The hyper.
    pub name: String,
    /// Its schedule.
    pub schedule: Schedule,
}

impl HyperSchedule {
    /// Parses `NAME=SPEC`, as in `lr=cosine(total=1000)`. Errors point at the offending text of
    /// the whole argument.
    pub fn parse(arg: &str) -> Result<HyperSchedule, ScheduleError> {
        parse::parse_assignment(arg)
    }
}

impl std::fmt::Display for Schedule {
    /// The canonical textual form, every parameter written out; [`Schedule::parse`] reads it
    /// back to the same schedule.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Schedule::Constant => write!(f, "constant"),
            Schedule::Linear { start, end, steps } => {
                write!(f, "linear(steps={steps}, start={start:?}, end={end:?})")
            }
            Schedule::Cosine {
                total,
                warmup,
                floor,
                start,
            } => write!(
                f,
                "cosine(total={total}, warmup={warmup}, floor={floor:?}, start={start:?})"
            ),
            Schedule::Step { every, gamma } => write!(f, "step(every={every}, gamma={gamma:?})"),
            Schedule::Exponential { gamma } => write!(f, "exponential(gamma={gamma:?})"),
            Schedule::InverseTime { rate } => write!(f, "inverse_time(rate={rate:?})"),
            Schedule::Polynomial { total, power } => {
                write!(f, "polynomial(total={total}, power={power:?})")
            }
            Schedule::WarmupStableDecay {
                warmup,
                decay,
                total,
                floor,
                start,
            } => write!(
                f,
                "wsd(total={total}, decay={decay}, warmup={warmup}, floor={floor:?}, start={start:?})"
            ),
            Schedule::Sequence { parts, at } => {
                write!(f, "seq(")?;
                for p in parts {
                    write!(f, "{p}, ")?;
                }
                let at: Vec<String> = at.iter().map(u64::to_string).collect();
                write!(f, "at=[{}])", at.join(", "))
            }
        }
    }
}

impl std::fmt::Display for HyperSchedule {
    /// `NAME=SPEC`, as `--schedule` takes it.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "{}={}", self.name, self.schedule)
    }
}
