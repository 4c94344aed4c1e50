//! Applying schedules to an [`Optimizer`]: before each step, every scheduled hyper of every
//! group is set to its schedule's value, computed on the host in f64. Setting a hyper never
//! recompiles, so the optimizer keeps one kernel per flag set however many steps are taken.

use super::HyperSchedule;
use crate::{GroupId, Optimizer, RuntimeError};

/// Schedules attached to an optimizer's hypers, with each group's base value.
#[derive(Debug, Clone)]
pub struct Scheduler {
    /// Per schedule: the hyper, its schedule, and the base value of each group in order.
    hypers: Vec<(HyperSchedule, Vec<f64>)>,
}

impl Scheduler {
    /// Attaches `schedules` to `opt`: the base value of each hyper is its value in each group
    /// now. An unknown hyper (with the nearest name) or a hyper scheduled twice is an error.
    pub fn new(opt: &Optimizer, schedules: &[HyperSchedule]) -> Result<Scheduler, RuntimeError> {
        let mut hypers: Vec<(HyperSchedule, Vec<f64>)> = Vec::with_capacity(schedules.len());
        for s in schedules {
            if hypers.iter().any(|(h, _)| h.name == s.name) {
                return Err(RuntimeError::Unsupported(format!(
                    "hyper `{}` has two schedules; give one (combine parts with `seq`)",
                    s.name
                )));
            }
            let bases = (0..opt.group_count())
                .map(|g| opt.hyper(GroupId(g), &s.name))
                .collect::<Result<Vec<f64>, RuntimeError>>()?;
            hypers.push((s.clone(), bases));
        }
        Ok(Scheduler { hypers })
    }

    /// Sets every scheduled hyper for the next step, given `steps_done`, the steps taken so far
    /// (torch's `last_epoch`; the kernel's `t` of that step is `steps_done + 1`).
    pub fn apply(&self, opt: &mut Optimizer, steps_done: u64) -> Result<(), RuntimeError> {
        for (h, bases) in &self.hypers {
            for (g, &base) in bases.iter().enumerate() {
                let value = h.schedule.value(base, steps_done);
                opt.set_group_hyper(GroupId(g), &h.name, value)?;
            }
        }
        Ok(())
    }

    /// Whether no hyper is scheduled.
    pub fn is_empty(&self) -> bool {
        self.hypers.is_empty()
    }
}
