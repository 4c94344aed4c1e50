//! Schedules in a comparison: any contender, with some of its hypers following a
//! [`HyperSchedule`]. Before each step the stepper's hypers are set to the schedule's values for
//! the steps taken so far (torch's `last_epoch`; the kernel's `t` is one more), from base values
//! read when the run starts, after every `--set`. Compiled rules never recompile for it.

use optc_runtime::HyperSchedule;

use crate::compare::stepper::{unknown_setting, Contender, StepError, Stepper};
use crate::compare::task::TensorSpec;
use crate::compare::CompareError;

/// A contender whose hypers in `schedules` follow their schedules.
pub struct Scheduled {
    inner: Box<dyn Contender>,
    schedules: Vec<HyperSchedule>,
}

impl Scheduled {
    /// Wrap `inner` (no schedule yet).
    pub fn new(inner: Box<dyn Contender>) -> Scheduled {
        Scheduled {
            inner,
            schedules: Vec::new(),
        }
    }

    /// Schedule a hyper `inner` declares (an unknown name is an error with the nearest one; a
    /// second schedule for the same hyper replaces the first).
    pub fn add(&mut self, schedule: HyperSchedule) -> Result<(), CompareError> {
        if !self.inner.hypers().iter().any(|(n, _)| *n == schedule.name) {
            return Err(unknown_setting(self.inner.as_ref(), &schedule.name));
        }
        self.schedules.retain(|s| s.name != schedule.name);
        self.schedules.push(schedule);
        Ok(())
    }
}

impl Contender for Scheduled {
    fn label(&self) -> &str {
        self.inner.label()
    }
    fn source(&self) -> String {
        self.inner.source()
    }
    fn hypers(&self) -> Vec<(String, f64)> {
        self.inner.hypers()
    }
    fn set_hyper(&mut self, name: &str, value: f64) -> Result<(), CompareError> {
        self.inner.set_hyper(name, value)
    }
    fn flags(&self) -> Vec<(String, bool)> {
        self.inner.flags()
    }
    fn set_flag(&mut self, name: &str, value: bool) -> Result<(), CompareError> {
        self.inner.set_flag(name, value)
    }
    fn counts(&self) -> Vec<(String, u32)> {
        self.inner.counts()
    }
    fn set_count(&mut self, name: &str, value: u32) -> Result<(), CompareError> {
        self.inner.set_count(name, value)
    }
    fn schedules(&self) -> Vec<HyperSchedule> {
        self.schedules.clone()
    }
    fn build(&self, tensors: &[TensorSpec]) -> Result<Box<dyn Stepper>, CompareError> {
        let stepper = self.inner.build(tensors)?;
        if self.schedules.is_empty() {
            return Ok(stepper);
        }
        let hypers = self.inner.hypers();
        let base = |name: &str| hypers.iter().find(|(n, _)| n == name).map(|&(_, v)| v);
        let mut schedules = Vec::with_capacity(self.schedules.len());
        for s in &self.schedules {
            let b = base(&s.name).ok_or_else(|| unknown_setting(self.inner.as_ref(), &s.name))?;
            schedules.push((s.clone(), b));
        }
        Ok(Box::new(ScheduledStepper {
            inner: stepper,
            schedules,
            steps_done: 0,
        }))
    }
}

/// Sets the scheduled hypers, then steps.
struct ScheduledStepper {
    inner: Box<dyn Stepper>,
    /// Each schedule with its base value.
    schedules: Vec<(HyperSchedule, f64)>,
    steps_done: u64,
}

impl Stepper for ScheduledStepper {
    fn step(&mut self, params: &mut [Vec<f32>], grads: &[Vec<f32>]) -> Result<(), StepError> {
        for (s, base) in &self.schedules {
            self.inner
                .set_hyper(&s.name, s.schedule.value(*base, self.steps_done))?;
        }
        self.inner.step(params, grads)?;
        self.steps_done += 1;
        Ok(())
    }

    fn set_hyper(&mut self, name: &str, value: f64) -> Result<(), StepError> {
        self.inner.set_hyper(name, value)
    }

    fn state_bytes(&self) -> usize {
        self.inner.state_bytes()
    }
}

/// Parses a `--schedule` argument of `compare` and `tune`: `RULE:NAME=SPEC` for one rule (by
/// label) or `NAME=SPEC` for every rule. The error's text is the whole argument, so its carets
/// line up with what the user typed.
pub fn parse_arg(
    arg: &str,
) -> Result<(Option<String>, HyperSchedule), optc_runtime::ScheduleError> {
    let lhs_end = arg.find('=').unwrap_or(arg.len());
    let (label, offset) = match arg[..lhs_end].rfind(':') {
        Some(i) => (Some(arg[..i].trim().to_string()), i + 1),
        None => (None, 0),
    };
    HyperSchedule::parse(&arg[offset..])
        .map(|s| (label, s))
        .map_err(|mut e| {
            e.text = arg.to_string();
            e.span = (e.span.0 + offset, e.span.1 + offset);
            e
        })
}

/// Wraps every contender in [`Scheduled`] and attaches each `--schedule` argument: to the rule
/// it names, or to every rule that declares the hyper (an error when none does).
pub fn attach(
    contenders: Vec<Box<dyn Contender>>,
    args: &[String],
) -> Result<Vec<Box<dyn Contender>>, CompareError> {
    let mut wrapped: Vec<Scheduled> = contenders.into_iter().map(Scheduled::new).collect();
    for arg in args {
        let (label, schedule) =
            parse_arg(arg).map_err(|e| CompareError::Usage(format!("bad `--schedule`: {e}")))?;
        match label {
            Some(label) => {
                let labels: Vec<String> = wrapped.iter().map(|c| c.label().to_string()).collect();
                let Some(c) = wrapped.iter_mut().find(|c| c.label() == label) else {
                    let hint =
                        crate::compare::did_you_mean(&label, labels.iter().map(String::as_str))
                            .map(|s| format!(" (did you mean `{s}`?)"))
                            .unwrap_or_default();
                    return Err(CompareError::Usage(format!(
                        "`--schedule {arg}`: no rule labelled `{label}`{hint}; the rules are: {}",
                        labels.join(", ")
                    )));
                };
                c.add(schedule)?;
            }
            None => {
                let mut applied = false;
                for c in &mut wrapped {
                    if c.hypers().iter().any(|(n, _)| *n == schedule.name) {
                        c.add(schedule.clone())?;
                        applied = true;
                    }
                }
                if !applied {
                    return Err(match wrapped.first() {
                        Some(c) => unknown_setting(c, &schedule.name),
                        None => CompareError::Usage("there are no rules".into()),
                    });
                }
            }
        }
    }
    Ok(wrapped
        .into_iter()
        .map(|c| Box::new(c) as Box<dyn Contender>)
        .collect())
}
