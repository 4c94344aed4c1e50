//! How an [`crate::OptcOptimizer`] is configured: the rule, the defaults of every group, and
//! parameter groups (vars with their own hypers and flags).
//!
//! Takes a [`Rule`] and, optionally, [`Options`], default hypers and flags, then groups of vars;
//! gives what [`crate::Builder::build`] needs. Nothing here is checked: names, dtypes and devices
//! are checked when the optimizer is built, and a bad one is an error then.

use candle_core::Var;
use optc_runtime::{Options, Rule};

/// The rule and the defaults of every parameter group: the `Config` of
/// [`candle_nn::Optimizer::new`].
#[derive(Debug)]
pub struct Config {
    /// The update rule.
    pub rule: Rule,
    /// How the optimizer runs (target, threads, FMA). `options.flags` are default flags of
    /// every group.
    pub options: Options,
    /// Hyper values of every group, overriding the rule's defaults, applied in order.
    pub hypers: Vec<(String, f64)>,
}

impl Config {
    /// The rule with its own defaults, on the CPU.
    pub fn new(rule: Rule) -> Config {
        Config {
            rule,
            options: Options::default(),
            hypers: Vec::new(),
        }
    }

    /// Sets hyper `name` in every group (`lr`, `weight_decay`, ...).
    pub fn hyper(mut self, name: &str, value: f64) -> Config {
        self.hypers.push((name.to_string(), value));
        self
    }

    /// Sets flag `name` in every group (`amsgrad`, `nesterov`, ...).
    pub fn flag(mut self, name: &str, value: bool) -> Config {
        self.options.flags.push((name.to_string(), value));
        self
    }

    /// Replaces the run options (keeps the flags set with [`Config::flag`] before, ahead of
    /// `options.flags`).
    pub fn options(mut self, options: Options) -> Config {
        let mut flags = std::mem::take(&mut self.options.flags);
        flags.extend(options.flags.iter().cloned());
        self.options = Options { flags, ..options };
        self
    }
}

/// One parameter group: vars, each with a name (the key of its state in checkpoints), and the
/// hypers and flags that override the [`Config`]'s for these vars.
#[derive(Debug, Default)]
pub struct Group {
    pub(crate) vars: Vec<(Option<String>, Var)>,
    pub(crate) hypers: Vec<(String, f64)>,
    pub(crate) flags: Vec<(String, bool)>,
}

impl Group {
    /// An empty group.
    pub fn new() -> Group {
        Group::default()
    }

    /// Adds a var named by its position among all vars of the optimizer (`"0"`, `"1"`, ...,
    /// as torch numbers the parameters in `optimizer.state_dict()`).
    pub fn var(mut self, var: Var) -> Group {
        self.vars.push((None, var));
        self
    }

    /// Adds vars named by their position, as [`Group::var`] does.
    pub fn vars(mut self, vars: impl IntoIterator<Item = Var>) -> Group {
        self.vars.extend(vars.into_iter().map(|v| (None, v)));
        self
    }

    /// Adds a var under `name` (for example its `VarMap` path, `fc1.weight`).
    pub fn named(mut self, name: &str, var: Var) -> Group {
        self.vars.push((Some(name.to_string()), var));
        self
    }

    /// Adds every var of a `VarMap` under its path, in path order.
    pub fn varmap(mut self, varmap: &candle_nn::VarMap) -> Group {
        let data = varmap
            .data()
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        let mut named: Vec<(String, Var)> =
            data.iter().map(|(k, v)| (k.clone(), v.clone())).collect();
        drop(data);
        named.sort_by(|a, b| a.0.cmp(&b.0));
        self.vars
            .extend(named.into_iter().map(|(k, v)| (Some(k), v)));
        self
    }

    /// Sets hyper `name` for this group's vars.
    pub fn hyper(mut self, name: &str, value: f64) -> Group {
        self.hypers.push((name.to_string(), value));
        self
    }

    /// Sets flag `name` for this group's vars (a group with other flags runs its own kernel).
    pub fn flag(mut self, name: &str, value: bool) -> Group {
        self.flags.push((name.to_string(), value));
        self
    }
}
